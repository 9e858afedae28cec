"""The probes section of the report: plot, table against chance, and no section for runs without probes."""
from __future__ import annotations

import json
from pathlib import Path

from zhgpt.report.probes import PNG_NAME, probes_md, table_rows
from zhgpt.report.report import ReportConfig, load_run, main

GROUPS = ["punctuation", "measure_words"]
ACC = {0: (0.5, 0.5), 100: (0.7, 0.55), 200: (0.9, 0.6)}     # punctuation learned before measure words


def make_run(path: Path, probes: bool = True) -> Path:
    path.mkdir(parents=True)
    rows = []
    for step, (p, m) in ACC.items():
        if step:
            rows.append({"step": step, "tokens_seen": step * 1000, "loss": 5 - step / 100, "lr": 1e-3,
                         "elapsed_s": step / 10})
        ev = {"step": step, "tokens_seen": step * 1000, "elapsed_s": step / 10, "val_loss": 6 - step / 100,
              "val_bpc": 8 - step / 100, "val_ppl": 100.0}
        if probes:
            ev.update(probe_acc=(p + m) / 2, probe_acc_punctuation=p, probe_acc_measure_words=m)
        rows.append(ev)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (path / "config.json").write_text(json.dumps({"train": {}, "model": {}, "data": {}}), encoding="utf-8")
    if probes:
        info = {"files": ["builtin"], "items": 100, "chance": 0.5, "token_baseline": 0.6,
                "groups": {g: {"items": 50, "chance": 0.5, "token_baseline": 0.6} for g in GROUPS}}
        (path / "probes.json").write_text(json.dumps(info), encoding="utf-8")
    return path


def test_report_has_the_probe_plot_and_table(tmp_path):
    run = make_run(tmp_path / "run")
    written = main(ReportConfig(runs=[str(run)]))
    assert run / PNG_NAME in written and (run / PNG_NAME).read_bytes()[:4] == b"\x89PNG"
    md = (run / "report.md").read_text(encoding="utf-8")
    assert "## Probes of Chinese" in md and f"![probes]({PNG_NAME})" in md
    assert "| punctuation | 50 | 0.50 | 0.60 | 0.50 | 0.90 (step 200) |" in md
    assert "| all | 100 | 0.50 | 0.60 | 0.50 | 0.75 (step 200) |" in md
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "<h2>Probes of Chinese</h2>" in html and html.count("data:image/png;base64,") >= 2
    # the groups keep probes.json's order, the overall row comes last
    assert [r[0] for r in table_rows(load_run(run))] == GROUPS + ["all"]


def test_run_without_probes_has_no_section(tmp_path):
    run = make_run(tmp_path / "old", probes=False)
    written = main(ReportConfig(runs=[str(run)]))
    assert run / PNG_NAME not in written and not (run / PNG_NAME).exists()
    assert "Probes of Chinese" not in (run / "report.md").read_text(encoding="utf-8")
    assert "Probes of Chinese" not in (run / "report.html").read_text(encoding="utf-8")
    assert probes_md(load_run(run), None) == []


def test_missing_probes_json_still_reports(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "probes.json").unlink()
    main(ReportConfig(runs=[str(run)]))
    md = (run / "report.md").read_text(encoding="utf-8")
    assert "| measure_words | – | – | – | 0.50 | 0.60 (step 200) |" in md
