"""The report's token surprise map (heat map in report.html, text in report.md) and "Is my loss normal?"
(the run beside the shipped reference curve of its preset: ahead / behind / level, comparable or not)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from zhgpt.report.reference import (FORMAT, compare_curves, load_reference, reference_lines, same_data)
from zhgpt.report.report import ReportConfig, load_run, main
from zhgpt.report.surprise import ROWS, class_means, finding, is_punct, load_surprise

REPO = Path(__file__).resolve().parents[2]
TEXT = "<b>新华社</b>北京1月1日电，A&B“人民”。"        # model-independent, but carries HTML to escape
DATA = {"tokenizer_kind": "unigram", "vocab_size": 16384, "train_chars": 3_000_000, "val_chars": 27_000}


def make_run(path: Path, preset: str = "cpu-tiny", bpc=lambda t: 8.2 - 1.6 * (t / 300_000) ** 0.5,
             evals: int = 20, data: dict | None = None, surprise: bool = True, train: dict | None = None) -> Path:
    """A run folder: evaluations every 15k tokens with val_bpc = bpc(tokens), and surprise.jsonl records in
    which punctuation falls from 10 to 2 bits and the other characters from 10 to 6."""
    path.mkdir(parents=True)
    lines = []
    for i in range(evals):
        t = i * 15_000
        lines.append({"step": i * 10, "tokens_seen": t, "elapsed_s": i * 5.0, "val_loss": bpc(t) * 1.2,
                      "val_bpc": bpc(t), "val_ppl": math.exp(bpc(t) * 1.2)})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    (path / "config.json").write_text(json.dumps({"train": {"preset": preset, "data": ["builtin"], **(train or {})},
                                                  "model": {"n_layer": 4}, "data": {**DATA, **(data or {})}}))
    (path / "run.json").write_text(json.dumps({"status": "completed", "preset": preset}))
    if surprise:
        with open(path / "surprise.jsonl", "w", encoding="utf-8") as f:
            for i in range(evals):
                frac = i / (evals - 1)
                bits = [10 - 8 * frac if is_punct(ch) else 10 - 4 * frac for ch in TEXT]
                f.write(json.dumps({"step": i * 10, "text": TEXT, "bits": bits}, ensure_ascii=False) + "\n")
    return path


def reference(points, **dataset) -> dict:
    return {"format": FORMAT, "preset": "cpu-tiny", "date": "2026-01-01", "command": "zhgpt train",
            "machine": {"device": "cpu", "cpu": "Test CPU", "threads": 2},
            "dataset": {**DATA, "spec": ["builtin"], **dataset},
            "points": [{"tokens_seen": t, "elapsed_s": t / 3000, "val_bpc": b} for t, b in points]}


# ------------------------------------------------------------------------- surprise map

def test_heat_map_section_escaped_and_thinned(tmp_path):
    run_dir = make_run(tmp_path / "run")
    main(ReportConfig(runs=[str(run_dir)]))
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    section = html.split("<h2>Token surprise map</h2>")[1]
    # one span per character: "<" and "&" arrive escaped, one at a time
    assert "<b>" not in html and '">&lt;</span>' in section and '">&amp;</span>' in section
    rows = section.count('<td class="heat">')
    assert 2 <= rows <= ROWS + 1 and f"Showing {rows} of 20 evaluations" in section
    # one coloured cell per character per row, and the legend's classes exist in the page's CSS
    assert section.split("</table>")[0].count(' bits">') == rows * len(TEXT)
    assert ".h0{background:#" in html and "bits per character:" in section
    # the finding is computed: punctuation fell 8 bits, the rest 4
    assert "punctuation became predictable faster, by 4.00 bits/char" in section

    md = (run_dir / "report.md").read_text(encoding="utf-8")
    part = md.split("## Token surprise map")[1]
    assert "&lt;b&gt;新华社&lt;/b&gt;" in part and "<b>" not in part
    assert "- step 0: most surprising" in part and "- step 190: most surprising" in part


def test_surprise_numbers(tmp_path):
    run = load_run(make_run(tmp_path / "run"))
    recs = load_surprise(run)
    assert len(recs) == 20 and all(len(r["bits"]) == len(TEXT) for r in recs)
    first, last = class_means(recs[0]), class_means(recs[-1])
    assert first["punctuation"] == pytest.approx(10) and last["punctuation"] == pytest.approx(2)
    assert last["other"] == pytest.approx(6)
    assert "Only one evaluation" in finding(recs[:1])


def test_no_surprise_file_still_reports(tmp_path):
    run_dir = make_run(tmp_path / "run", surprise=False)
    main(ReportConfig(runs=[str(run_dir)]))
    assert "no surprise.jsonl in this run" in (run_dir / "report.md").read_text(encoding="utf-8")


# ------------------------------------------------------------------------- reference curve

def test_ahead_behind_level_at_equal_tokens():
    ref = [(0, 8.0), (100_000, 7.0), (200_000, 6.5), (300_000, 6.2)]
    # the run's evaluations fall between the reference's: compared at its last one, 250k, ref = 6.35
    ahead = compare_curves([(0, 8.0), (125_000, 6.8), (250_000, 6.0)], ref)
    assert ahead["at"] == 250_000 and ahead["ref"] == pytest.approx(6.35)
    assert ahead["verdict"] == "ahead" and ahead["delta"] == pytest.approx(-0.35)
    behind = compare_curves([(0, 8.0), (250_000, 6.7)], ref)
    assert behind["verdict"] == "behind" and behind["delta"] == pytest.approx(0.35)
    assert compare_curves([(0, 8.0), (250_000, 6.37)], ref)["verdict"] == "level"
    # a run longer than the reference is compared where the reference ends
    longer = compare_curves([(0, 8.0), (200_000, 6.0), (400_000, 5.0)], ref)
    assert longer["at"] == 300_000 and longer["run"] == pytest.approx(5.5) and longer["verdict"] == "ahead"
    assert compare_curves([(0, 8.0)], ref) is None and compare_curves([], ref) is None


def test_report_says_ahead_or_behind(tmp_path, monkeypatch):
    import zhgpt.report.reference as reference_mod
    ref = reference([(0, 8.2), (150_000, 7.0), (300_000, 6.6)])
    monkeypatch.setattr(reference_mod, "load_reference", lambda preset: ref if preset == "cpu-tiny" else None)
    run = load_run(make_run(tmp_path / "fast", bpc=lambda t: 8.2 - 2.0 * (t / 285_000)))
    text = " ".join(reference_lines(run))
    # compared at the run's last evaluation, 285k tokens: the reference's 6.64 interpolated from 150k and 300k
    assert "this run is at 6.200 bits/char, the reference at 6.640: ahead of the reference by 0.44 bits/char" in text
    assert "indicative only" not in text
    slow = load_run(make_run(tmp_path / "slow", bpc=lambda t: 8.2 - 1.0 * (t / 285_000)))
    assert "behind the reference by 0.56 bits/char" in " ".join(reference_lines(slow))
    # another corpus or tokenizer: still compared, but said to be indicative only
    other = load_run(make_run(tmp_path / "other", data={"tokenizer_kind": "char", "vocab_size": 5000}))
    text = " ".join(reference_lines(other))
    assert "Different corpus or tokenizer (tokenizer kind char here, unigram in the reference)" in text
    assert "indicative only" in text
    bigger = load_run(make_run(tmp_path / "bigger", data={"val_chars": 90_000}))
    assert "val text of 90k characters here, 27k in the reference" in " ".join(reference_lines(bigger))
    # a different schedule is named: the LR decays elsewhere, which alone moves the curve
    assert "schedules differ" not in " ".join(reference_lines(slow))
    short = load_run(make_run(tmp_path / "short", train={"time_budget": "90s", "lr": 0.006}))
    text = " ".join(reference_lines(short, {**ref, "schedule": {"time_budget": "10m", "lr": 0.006}}))
    assert "The schedules differ (time budget 90s here, 10m in the reference)" in text


def test_same_data_rule():
    assert same_data(dict(DATA), dict(DATA)) == (True, "")
    assert same_data({**DATA, "train_chars": 3_020_000}, DATA)[0]            # within 1 %
    assert not same_data({**DATA, "train_chars": 3_100_000}, DATA)[0]
    assert not same_data({**DATA, "vocab_size": None}, DATA)[0]               # unknown is not the same


def test_missing_reference_said_plainly(tmp_path):
    run_dir = make_run(tmp_path / "run", preset="medium")
    written = main(ReportConfig(runs=[str(run_dir)]))
    assert not (run_dir / "reference_curve.png").exists() and len(written) == 3
    md = (run_dir / "report.md").read_text(encoding="utf-8")
    assert "No reference curve is shipped for the preset medium" in md
    assert "reference_curve.png" not in md
    assert load_reference("medium") is None and load_reference("../etc/passwd") is None


def test_shipped_cpu_tiny_reference_is_drawn(tmp_path):
    ref = load_reference("cpu-tiny")
    assert ref is not None and ref["preset"] == "cpu-tiny" and len(ref["points"]) >= 3
    for key in ("date", "command", "machine", "dataset"):
        assert ref[key], key
    assert {"tokenizer_kind", "vocab_size", "train_chars", "val_chars", "spec"} <= set(ref["dataset"])
    run_dir = make_run(tmp_path / "run")
    written = main(ReportConfig(runs=[str(run_dir)]))
    png = run_dir / "reference_curve.png"
    assert png in written and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    section = html.split("<h2>Is my loss normal?</h2>")[1].split("<h2>")[0]
    assert 'alt="reference curve" src="data:image/png;base64,' in section
    assert any(w in section for w in ("ahead of the reference", "behind the reference", "level with the reference"))


def test_make_reference_round_trip(tmp_path):
    run_dir = make_run(tmp_path / "run")
    out = tmp_path / "ref.json"
    subprocess.run([sys.executable, str(REPO / "bench" / "make_reference.py"), str(run_dir), "--preset", "cpu-tiny",
                    "--out", str(out)], check=True, capture_output=True, text=True)
    ref = json.loads(out.read_text(encoding="utf-8"))
    assert ref["format"] == FORMAT and len(ref["points"]) == 20
    assert ref["command"].startswith("zhgpt train --preset cpu-tiny") and ref["dataset"]["vocab_size"] == 16384
    # the run compared with a reference made from itself is level, on the same data
    lines = " ".join(reference_lines(load_run(run_dir), ref))
    assert "level with the reference" in lines and "indicative only" not in lines
    bad = subprocess.run([sys.executable, str(REPO / "bench" / "make_reference.py"), str(run_dir), "--preset",
                          "small", "--out", str(out)], capture_output=True, text=True)
    assert bad.returncode == 2 and "ran the cpu-tiny preset" in bad.stderr
