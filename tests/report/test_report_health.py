"""The report's Health section: the warnings of RUN/warnings.jsonl with their step, or "No warnings."."""
from __future__ import annotations

import json

from zhgpt.report.report import ReportConfig, load_run, main

WARNINGS = [{"step": 0, "message": "many epochs: this run will pass over its 15,919 training tokens ~77 times"},
            {"step": 75, "message": "overfitting: at step 75 val loss 6.387 vs train loss 4.049 <b>|x|</b>"}]


def make_run(path, warnings=None):
    path.mkdir(parents=True)
    recs = [{"step": 0, "tokens_seen": 0, "elapsed_s": 0.0, "val_loss": 7.4, "val_bpc": 10.7}]
    for step in range(10, 101, 10):
        recs.append({"step": step, "tokens_seen": step * 1024, "elapsed_s": step * 0.1, "loss": 7.0 - step / 40,
                     "lr": 3e-3})
    recs.append({"step": 100, "tokens_seen": 102400, "elapsed_s": 10.0, "val_loss": 6.5, "val_bpc": 9.4})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    if warnings is not None:
        (path / "warnings.jsonl").write_text("".join(json.dumps(w, ensure_ascii=False) + "\n" for w in warnings),
                                             encoding="utf-8")
    return path


def test_warnings_are_listed_with_their_step(tmp_path):
    # a run killed after warning at step 80 and resumed from step 75 re-did that step: the records after the
    # step it went back to are dropped, as for the metrics
    run2 = make_run(tmp_path / "run2", [WARNINGS[0], {"step": 80, "message": "overfitting: old"}, WARNINGS[1]])
    assert [w["message"][:12] for w in load_run(run2).warnings] == ["many epochs:", "overfitting:"]
    main(ReportConfig(runs=[str(run2)]))
    md = (run2 / "report.md").read_text(encoding="utf-8")
    section = md.split("## Health", 1)[1].split("\n## ", 1)[0]
    assert "| 0 | many epochs: this run will pass" in section
    assert "| 75 | overfitting: at step 75" in section and "\\|x\\|" in section and "<b>" not in section
    assert "No warnings" not in section
    page = (run2 / "report.html").read_text(encoding="utf-8")
    assert "<h2>Health</h2>" in page and "&lt;b&gt;|x|&lt;/b&gt;" in page and ">75</td>" in page


def test_a_run_without_warnings_says_so(tmp_path):
    run = make_run(tmp_path / "run")
    assert load_run(run).warnings == []
    main(ReportConfig(runs=[str(run)]))
    assert "## Health\n\nNo warnings." in (run / "report.md").read_text(encoding="utf-8")
    assert "<p>No warnings.</p>" in (run / "report.html").read_text(encoding="utf-8")
