"""`zhgpt eval --continuation N` (character-level ROUGE-L and BLEU of continuations) and `--lm-eval TASKS`
(lm-evaluation-harness on a task read from local files, offline)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli
from zhgpt.errors import ZhgptError
from zhgpt.inference.continuation import MIN_DOC_CHARS, Reservoir, bleu, rouge_l, split_document
from zhgpt.inference.evaluate import EvalConfig

pytest.importorskip("sacrebleu")
pytest.importorskip("rouge_score")


# ------------------------------------------------------------------ the scores on hand-made texts

def test_identical_texts_score_one_and_disjoint_texts_zero():
    ref = ["今天天气很好，我们去公园散步。"]
    assert rouge_l(ref, ref) == 1.0 and bleu(ref, ref) == 1.0
    assert rouge_l(["明年我们去北京"], ["今天天气很好"]) == 0.0
    assert bleu(["明年我们去北京"], ["今天天气很好"]) == 0.0


def test_partial_overlap_has_the_textbook_values():
    # ROUGE-L: longest common subsequence 今天天气 = 4 of 6 characters on both sides -> P = R = F = 2/3.
    assert rouge_l(["今天天气不错"], ["今天天气很好"]) == pytest.approx(2 / 3)
    # Order matters for ROUGE-L (LCS 2 of 4), not for a bag of characters.
    assert rouge_l(["好很天今"], ["今天很好"]) == pytest.approx(0.25)
    # BLEU, per character: 1..4-gram precisions 6/7, 4/6, 2/5, 1/4, same length (brevity penalty 1).
    want = (6 / 7 * 4 / 6 * 2 / 5 * 1 / 4) ** 0.25
    assert bleu(["今天天气不好。"], ["今天天气很好。"]) == pytest.approx(want, abs=1e-6)
    # Mean of per-document ROUGE-L; BLEU is one corpus score.
    assert rouge_l(["今天天气很好", "明年"], ["今天天气很好", "北京"]) == pytest.approx(0.5)


def test_rouge_score_default_tokenizer_would_see_no_chinese():
    # Why rouge_l passes its own tokenizer: the default keeps only [a-z0-9], so any Chinese pair scores 0.
    from rouge_score import rouge_scorer
    default = rouge_scorer.RougeScorer(["rougeL"]).score("今天天气很好", "今天天气很好")["rougeL"].fmeasure
    assert default == 0.0 and rouge_l(["今天天气很好"], ["今天天气很好"]) == 1.0


def test_documents_are_split_in_half_and_chosen_reproducibly():
    assert split_document("短" * (MIN_DOC_CHARS - 1), 100) is None
    assert split_document("一二三四五六七八九十甲乙丙丁戊己庚", 100) == ("一二三四五六七八", "九十甲乙丙丁戊己")
    assert split_document("字" * 50 + "尾" * 50, 10) == ("字" * 10, "字" * 10)   # long: its first 2 x 10
    docs = [f"第{i}篇" * 8 for i in range(100)]
    picks = []
    for _ in range(2):
        r = Reservoir(5, seed=3)
        for d in docs + ["短"]:
            r.offer(split_document(d, 100))
        picks.append(r.items)
        assert len(r.items) == 5 and r.seen == 100 and r.skipped == 1
    assert picks[0] == picks[1]
    assert picks[0] != [split_document(d, 100) for d in docs[:5]]   # a spread, not just the first five


# ------------------------------------------------------------------ bad input: one-line errors

@pytest.mark.parametrize("kw, msg", [
    (dict(files=["x.txt"], continuation=0), "--continuation 0: must be a number of documents >= 1"),
    (dict(files=["x.txt"], continuation=-3), "--continuation -3"),
    (dict(lm_eval="mytask", lm_eval_include="/no/such/folder"), "--lm-eval-include /no/such/folder: no such folder"),
    (dict(lm_eval=" , "), "no task names"),
    (dict(files=["x.txt"], lm_eval_include="."), "--lm-eval-include needs --lm-eval"),
    (dict(), "at least one text file"),
])
def test_bad_flags_are_one_line_errors(kw, msg):
    with pytest.raises(ZhgptError, match=msg.replace("(", r"\(")) as e:
        EvalConfig(model="runs/x", **kw)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("modules, kw", [(["lm_eval"], dict(lm_eval="cmmlu")), (["sacrebleu"], dict(continuation=3)),
                                          (["rouge_score", "rouge_score.rouge_scorer"], dict(continuation=3))])
def test_missing_eval_extra_says_what_to_install(monkeypatch, modules, kw):
    import sys
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)   # import fails as if the package were not installed
    with pytest.raises(ZhgptError, match=r'pip install -e "\.\[eval\]"') as e:
        EvalConfig(model="runs/x", files=["x.txt"], **kw)
    assert "\n" not in str(e.value)


def test_cli_rejects_zero_continuations_with_exit_2(tmp_path):
    res = run_cli("eval", "--model", tmp_path, tmp_path / "x.txt", "--continuation", "0")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == ("zhgpt: error: --continuation 0: must be a number of documents "
                                                   ">= 1")


# ------------------------------------------------------------------ on the tiny trained model

@pytest.mark.slow
def test_eval_prints_continuation_scores_next_to_bits_per_char(trained_run, pd_text, tmp_path):
    _, val = pd_text
    out = tmp_path / "eval.json"
    res = run_cli("eval", "--model", trained_run, val, "--continuation", 6, "--continuation-chars", 30,
                  "--json", out, check=True)
    head, _, row = res.stdout.strip().splitlines()[-3:]
    assert head.split()[-4:] == ["bits/char", "continued", "ROUGE-L", "BLEU"]
    cells = row.split()
    assert cells[-3] == "6"
    rows = json.loads(out.read_text())["files"]
    r = rows[0]
    assert float(cells[-2]) == pytest.approx(r["rouge_l"], abs=1e-4) and float(cells[-1]) == pytest.approx(r["bleu"], abs=1e-4)
    assert 0 <= r["bleu"] <= 1 and 0 <= r["rouge_l"] <= 1
    # A model trained 60 steps on this kind of text shares some characters (的, 。, 中国) with any real
    # continuation, but does not reproduce it.
    assert 0 < r["rouge_l"] < 0.8
    assert r["continuation_docs"] == 6 and r["bpc"] > 0
    ex = r["continuation_examples"][0]
    assert len(ex["prompt"]) == len(ex["reference"]) == 30 and 0 < len(ex["output"]) <= 30
    # Greedy and seeded: the same command gives the same scores.
    again = run_cli("eval", "--model", trained_run, val, "--continuation", 6, "--continuation-chars", 30, check=True)
    assert again.stdout.strip().splitlines()[-1] == res.stdout.strip().splitlines()[-1]


def test_more_documents_asked_than_long_enough_says_so(trained_run, tmp_path):
    from zhgpt.inference.evaluate import main
    f = tmp_path / "short.txt"
    f.write_text("人民日报发表新年献词，回顾过去一年的成就。\n短句。\n很短\n", encoding="utf-8")
    out = main(EvalConfig(model=str(trained_run), files=[str(f)], continuation=5, continuation_chars=20))
    r = out["files"][0]
    assert r["continuation_docs"] == 1 and r["continuation_skipped"] == 2 and r["docs"] == 3
    g = tmp_path / "tiny.txt"
    g.write_text("短句。\n", encoding="utf-8")
    with pytest.raises(ZhgptError, match="no document of at least 16 characters"):
        main(EvalConfig(model=str(trained_run), files=[str(g)], continuation=1))


# ------------------------------------------------------------------ lm-evaluation-harness, offline

ITEMS = [
    ("中国的首都是", ["北京", "苹果", "跑步", "蓝色"], 0),
    ("一年有十二个", ["月", "书", "猫", "山"], 0),
    ("我们要认真学习和", ["贯彻", "香蕉", "飞机", "红色"], 0),
    ("新年的钟声即将", ["敲响", "吃饭", "游泳", "桌子"], 0),
    ("人民日报", ["社论", "西瓜", "跳舞", "铅笔"], 0),
    ("经济体制", ["改革", "雨伞", "唱歌", "耳朵"], 0),
    ("今天天气", ["很好", "电脑", "三个", "的地"], 0),
    ("加强党的", ["建设", "苹果", "游泳", "黄色"], 0),
]


def write_task(folder: Path, name: str = "zh_tiny_mc") -> Path:
    """A multiple-choice task read from a local JSONL, as the README shows."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "items.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}, ensure_ascii=False) + "\n"
                            for q, c, a in ITEMS), encoding="utf-8")
    (folder / f"{name}.yaml").write_text(f"""task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""", encoding="utf-8")
    return folder


def own_accuracy(model_dir) -> float:
    """The same multiple-choice accuracy computed by hand with zhgpt's own model: the choice whose characters
    have the highest total log-probability after the question."""
    import torch
    from zhgpt.inference.loading import load_engine
    eng = load_engine(model_dir, "cpu").engine
    right = 0
    for q, choices, answer in ITEMS:
        scores = []
        for c in choices:
            ctx, cont = eng.encode(q), eng.encode(c)
            x = torch.tensor([ctx + cont[:-1]])
            with torch.no_grad():
                logp = eng.model(x)[0].log_softmax(-1)[0]
            scores.append(sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont)))
        right += max(range(len(choices)), key=scores.__getitem__) == answer
    return right / len(ITEMS)


@pytest.mark.slow
def test_lm_eval_runs_a_local_task_offline(trained_run, tmp_path):
    pytest.importorskip("lm_eval")
    tasks = write_task(tmp_path / "tasks")
    out = tmp_path / "lm.json"
    offline = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    res = run_cli("eval", "--model", trained_run, "--lm-eval", "zh_tiny_mc", "--lm-eval-include", tasks,
                  "--device", "cpu", "--json", out, env=offline, check=True, timeout=600)
    assert "zh_tiny_mc" in res.stdout and "acc" in res.stdout
    acc = json.loads(out.read_text())["lm_eval"]["zh_tiny_mc"]["acc,none"]
    assert 0 <= acc <= 1
    # The harness scores the exported Hugging Face copy; zhgpt's own model must agree item by item.
    assert acc == pytest.approx(own_accuracy(trained_run))


@pytest.mark.slow
def test_unknown_lm_eval_task_is_a_one_line_error(tmp_path):
    pytest.importorskip("lm_eval")
    from zhgpt.inference.harness import task_manager
    tasks = write_task(tmp_path / "tasks")
    with pytest.raises(ZhgptError, match="unknown task no_such_task_zz") as e:
        task_manager(["no_such_task_zz"], [str(tasks)])   # not in the folder: lm-eval's own tasks are searched too
    assert "\n" not in str(e.value)
    assert task_manager(["zh_tiny_mc"], [str(tasks)]).match_tasks(["zh_tiny_mc"]) == ["zh_tiny_mc"]
