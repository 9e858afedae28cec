"""Generation statistics on hand-made texts with known values."""
import pytest

from zhgpt.data.textstats import cjk_ratio, distinct_2, distinct_n, repeat_4, text_stats


def test_known_values():
    # 哈哈哈哈哈: 4 bigrams, all 哈哈; 2 four-grams, both 哈哈哈哈 (the second repeats the first)
    assert distinct_2("哈哈哈哈哈") == 0.25
    assert repeat_4("哈哈哈哈哈") == 0.5
    assert cjk_ratio("哈哈哈哈哈") == 1.0
    # no bigram twice, no 4-gram twice
    assert distinct_2("我们一起去公园") == 1.0 and repeat_4("我们一起去公园") == 0.0
    # 我们的我们的我们的: 8 bigrams, 3 distinct (我们 们的 的我); 6 four-grams, 3 distinct
    assert distinct_2("我们的我们的我们的") == 3 / 8
    assert repeat_4("我们的我们的我们的") == 0.5
    # Chinese script: ideographs, CJK and full-width punctuation, full-width digits; not ASCII, not U+FFFD
    assert cjk_ratio("中文abc") == 2 / 5
    assert cjk_ratio("１９９８年，“好”…") == 1.0
    assert cjk_ratio("\ufffd\ufffd中中") == 0.5


def test_whitespace_is_ignored_and_texts_do_not_join():
    assert distinct_2("哈 哈\n哈") == distinct_2("哈哈哈") == 0.5
    assert cjk_ratio("中 文\u3000a") == 2 / 3
    # pooled over texts (Distinct-n): the bigram 你好 twice in all, none across the two texts
    assert distinct_2(["你好", "你好"]) == 0.5
    assert distinct_n(["ab", "cd"], 2) == 1.0       # "bc" would span the two texts: not counted
    assert repeat_4(["一二三四", "一二三四"]) == 0.5


def test_undefined_is_none_and_everything_in_range():
    assert distinct_2("哈") is None and repeat_4("哈哈哈") is None and cjk_ratio("  \n") is None
    assert text_stats(["哈"]) == {"cjk_ratio": 1.0}
    texts = ["，，，，，，", "的的的的的的的的", "abc def", "中华人民共和国成立了。", "\ufffd\ufffd1"]
    for t in texts + [texts]:
        for v in text_stats(t).values():
            assert 0.0 <= v <= 1.0


@pytest.mark.parametrize("text", ["的的的的的的的的的的的的的的的的", "，的，的，的，的，的，的，的"])
def test_a_loop_scores_as_one(text):
    s = text_stats(text)
    assert s["distinct_2"] < 0.2 and s["repeat_4"] > 0.7
