"""The generation-statistics watcher: every evaluation row of a run carries distinct_2, repeat_4,
cjk_ratio and copy_rate in [0, 1], and the report shows them with the stage rule's thresholds."""
import json
from types import SimpleNamespace

from zhgpt.data.shards import TokenDataset
from zhgpt.training.genstats import GenStatsWatcher

STATS = ("distinct_2", "repeat_4", "cjk_ratio", "copy_rate")


def test_eval_rows_carry_the_statistics(trained_run):
    rows = [json.loads(x) for x in (trained_run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    evals = [r for r in rows if "val_loss" in r]
    assert len(evals) >= 3
    for r in evals:
        for k in STATS:
            assert 0.0 <= r[k] <= 1.0, (r["step"], k, r[k])
        assert 0.0 <= r["copy_rate_val"] <= 0.3        # held-out news text against the train index
    md = (trained_run / "report.md").read_text(encoding="utf-8")
    stats = md.split("## Generation statistics")[1]
    assert "| step |" in stats and "copy_rate" in stats and "How stages are assigned" in stats
    assert "repeat_4 > 0.5" in stats and "copy_rate >= 0.5" in stats     # the thresholds are stated
    html = (trained_run / "report.html").read_text(encoding="utf-8")
    assert "<h2>Generation statistics</h2>" in html and "How stages are assigned" in html


def test_outputs_only_and_no_index_no_copy_rate(pd_dataset, pd_text):
    w = GenStatsWatcher()
    tr = SimpleNamespace(ds=SimpleNamespace(path=pd_dataset, meta={}, splits={}), sampler=None)
    w.start(tr)                                         # a dataset prepared before the index: no index
    m = w.at_eval(tr, 0, [("哈哈哈哈", "哈哈哈哈哈"), ("今天", "今天天气很好")])
    assert "copy_rate" not in m
    # the prompt is cut from an output that repeats it: 哈 + 天气很好 -> no bigram twice
    assert m["distinct_2"] == 1.0 and m["repeat_4"] == 0.0 and m["cjk_ratio"] == 1.0
    w.start(SimpleNamespace(ds=TokenDataset(pd_dataset), sampler=None))      # with the index
    line = next(x for x in pd_text[0].read_text(encoding="utf-8").splitlines() if len(x) > 60)
    assert w.at_eval(tr, 0, [("", line)])["copy_rate"] == 1.0          # a copied passage
