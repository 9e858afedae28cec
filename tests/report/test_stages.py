"""The measured stage rule: each threshold decides, probes and the copy rate may be absent."""
from zhgpt.report.stages import STAGES, eval_stage, sample_stage

GOOD = {"cjk_ratio": 1.0, "distinct_2": 0.9, "repeat_4": 0.02, "copy_rate": 0.03}


def test_each_threshold():
    assert eval_stage({}, 1.0) is None                                  # an old run: no statistics
    assert eval_stage(GOOD, 1.0) == "sentences"
    assert eval_stage({**GOOD, "cjk_ratio": 0.4}, 1.0) == "noise"
    assert eval_stage(GOOD, 0.05) == "noise"
    assert eval_stage({**GOOD, "repeat_4": 0.6}, 1.0) == "characters"
    assert eval_stage({**GOOD, "distinct_2": 0.25}, 1.0) == "characters"
    assert eval_stage({**GOOD, "probe_acc": 0.52}, 1.0) == "characters"
    assert eval_stage({**GOOD, "copy_rate": 0.7}, 1.0) == "copying"
    assert eval_stage({**GOOD, "repeat_4": 0.2}, 1.0) == "words and punctuation"
    assert eval_stage({**GOOD, "probe_acc": 0.7}, 0.9) == "words and punctuation"
    assert eval_stage({**GOOD, "probe_acc": 0.8}, 0.9) == "sentences"
    # probe bounds are gains over what the tokenizer alone scores (probe_base; 0.5 when not recorded)
    assert eval_stage({**GOOD, "probe_acc": 0.65}, 1.0) == "words and punctuation"
    assert eval_stage({**GOOD, "probe_acc": 0.65, "probe_base": 0.58}, 1.0) == "characters"
    assert eval_stage({**GOOD, "probe_acc": 0.8, "probe_base": 0.58}, 1.0) == "words and punctuation"
    assert eval_stage({**GOOD, "probe_acc": 0.85, "probe_base": 0.58}, 1.0) == "sentences"
    no_copy = {k: v for k, v in GOOD.items() if k != "copy_rate"}
    assert eval_stage(no_copy, None) == "sentences"                    # absent numbers take no part


def test_without_probes_the_text_caps_the_stage():
    salad = "进一是不是是以大的大地的时，一起她在在种样了成，而一些，将她"    # no sentence closed
    prose = "我们一起去公园散步。孩子们在草地上玩耍。"
    assert sample_stage(GOOD, salad, 4.0, 8.0, 4.0) == "words and punctuation"
    assert sample_stage(GOOD, prose, 4.0, 8.0, 4.0) == "sentences"
    assert sample_stage({**GOOD, "probe_acc": 0.9}, salad, 4.0, 8.0, 4.0) == "sentences"   # probes decide
    assert sample_stage({}, salad, 4.0, 8.0, 4.0) == "words and punctuation"              # old run: text rule
    assert sample_stage({**GOOD, "copy_rate": 0.8}, salad, 4.0, 8.0, 4.0) == "copying"
    assert set(STAGES) == {"noise", "characters", "words and punctuation", "sentences", "copying"}
