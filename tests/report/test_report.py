"""zhgpt report: a hand-written run folder (the DESIGN.md format, as zhgpt train writes it) whose samples go
from noise to sentences, rendered to loss_curve.png, report.md, report.html and a comparison."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from zhgpt.errors import ZhgptError
from zhgpt.report.report import (STAGES, ReportConfig, load_run, main, pick_steps, stage_label, text_features)

EVAL_STEPS = [0, 50, 100, 200, 400, 800, 1600]
BPC = [8.0, 6.5, 5.8, 5.0, 4.5, 4.2, 4.0]   # progress 0, .38, .55, .75, .88, .95, 1
# What a tiny model writes after "今天天气" at each evaluation: noise, frequent characters, words with
# commas, then sentences. One early output carries HTML to prove it is escaped.
OUTPUTS_A = [
    "雯郝<b>鳖</b>Ｘ湃k&鍊zq�",
    "的的的的的的是是了了的的的的在在",
    "的，中国了在是，一个的，人的，发展",
    "很好，我们的发展，中国人民在经济上，要建设",
    "很好，我们一起去公园散步。孩子们在草地上玩耍。",
    "很好，阳光明媚。我们一起去公园散步，看到很多人。",
    "很好，阳光明媚，微风轻拂。我们一家人去公园散步，孩子们玩得很开心。",
]
OUTPUTS_B = [
    "ｑ罈x鍯9?Ｚ蕖",
    "国国国国国国国国国国国",
    "的发展，经济，的社会，建设的，",
    "继续发展，人民的生活水平，不断提高",
    "继续保持稳定增长。人民生活水平不断提高。",
    "继续保持稳定增长，人民生活水平不断提高。",
    "继续保持稳定增长，人民生活水平进一步提高。",
]
PROMPTS = ["今天天气", "中国的经济"]
EXPECTED = ["noise", "characters", "words and punctuation", "words and punctuation", "sentences", "sentences",
            "sentences"]


def make_run(path: Path, *, scale: float = 1.0, tokens_per_step: int = 4096, truncate: bool = False,
             run_json: bool = True, samples: bool = True) -> Path:
    """A run folder as zhgpt train writes it: metrics.jsonl (train lines every 10 steps, eval lines at
    EVAL_STEPS), samples.jsonl, config.json, run.json."""
    path.mkdir(parents=True)
    vocab = 4096
    lines = []
    bpc_at = dict(zip(EVAL_STEPS, BPC))
    for step in range(0, EVAL_STEPS[-1] + 1, 10):
        t = step * 0.35
        if step:
            # train loss: a noisy power law from ln(V) down, the eval loss a little above it
            loss = 2.6 + 5.7 * (1 + step / 40) ** -0.6 + 0.08 * math.sin(step * 1.7)
            lines.append({"step": step, "tokens_seen": step * tokens_per_step, "loss": loss * scale,
                          "lr": 2e-3 * min(1, step / 50) * (0.1 + 0.9 * (1 - step / 1600)),
                          "grad_norm": 1.2, "tokens_per_sec": tokens_per_step / 0.35, "elapsed_s": t,
                          "eta_s": (1600 - step) * 0.35})
        if step in bpc_at:
            bpc = bpc_at[step] * scale
            val_loss = bpc * math.log(2) * 1.45   # 1.45 chars/token
            lines.append({"step": step, "tokens_seen": step * tokens_per_step, "elapsed_s": t,
                          "val_loss": val_loss, "val_bpc": bpc, "val_ppl": math.exp(val_loss)})
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines)
    if truncate:
        text += '{"step": 1610, "tokens_seen": 65'   # killed mid-write
    (path / "metrics.jsonl").write_text(text, encoding="utf-8")
    if samples:
        with open(path / "samples.jsonl", "w", encoding="utf-8") as f:
            for i, step in enumerate(EVAL_STEPS):
                for prompt, outs in zip(PROMPTS, (OUTPUTS_A, OUTPUTS_B)):
                    bpc = BPC[i] * scale
                    f.write(json.dumps({"step": step, "tokens_seen": step * tokens_per_step,
                                        "elapsed_s": step * 0.35, "val_loss": bpc * math.log(2) * 1.45,
                                        "val_bpc": bpc, "prompt": prompt, "output": outs[i]},
                                       ensure_ascii=False) + "\n")
    model = {"arch": "gpt2", "vocab_size": vocab, "block_size": 256, "n_layer": 4, "n_head": 4, "n_kv_head": 0,
             "n_embd": 256, "intermediate_size": 0, "dropout": 0.0, "bias": True, "tie_embeddings": True,
             "rope_theta": 10000.0, "qk_norm": False, "norm_eps": 1e-5}
    data = {"path": "/data/pd-bpe", "vocab_size": vocab, "tokenizer_kind": "bpe", "train_tokens": 2_000_000,
            "train_chars": 2_900_000, "val_tokens": 60_000, "val_chars": 87_000, "chars_per_token": 1.45,
            "sources": ["builtin:people-daily"]}
    (path / "config.json").write_text(json.dumps({"train": {"preset": "cpu-tiny", "batch_size": 16},
                                                  "model": model, "data": data}, ensure_ascii=False))
    if run_json:
        info = {"status": "completed", "preset": "cpu-tiny", "params": 4_273_664,
                "hardware": {"device": "cpu", "torch": "2.13.0", "threads": 2, "cpu": "Test CPU @ 2GHz"},
                "world_size": 1, "tokens_per_step": tokens_per_step, "dtype": "float32", "steps": 1600,
                "tokens_seen": 1600 * tokens_per_step, "elapsed_s": 560.0,
                "final": {"val_loss": lines[-1]["val_loss"], "val_bpc": lines[-1]["val_bpc"],
                          "val_ppl": lines[-1]["val_ppl"]}, "tokens_per_sec": tokens_per_step / 0.35}
        (path / "run.json").write_text(json.dumps(info))
    return path


@pytest.fixture
def run_dir(tmp_path):
    return make_run(tmp_path / "runs" / "tiny-bpe")


def test_report_writes_files_and_tables(run_dir):
    written = main(ReportConfig(runs=[str(run_dir)]))
    # (+ reference_curve.png: the run's preset, cpu-tiny, ships a reference curve; tests/report/test_surprise_reference.py)
    assert [p.name for p in written][:3] == ["loss_curve.png", "report.md", "report.html"]
    for p in written:
        assert p.is_file() and p.stat().st_size > 500
    assert (run_dir / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    md = (run_dir / "report.md").read_text(encoding="utf-8")
    assert "## Sample evolution" in md and "「今天天气」" in md and "「中国的经济」" in md
    assert "4.27M" in md and "bpe, vocab 4096, 1.45 chars/token" in md and "cpu: Test CPU @ 2GHz (2 threads)" in md
    assert "9 min 20 s" in md                                # wall time from run.json
    # the loss table: log-spaced evaluation steps, first and last included
    table = md.split("## Loss at selected steps")[1].split("## Sample evolution")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| step")]
    assert [r.split("|")[1].strip() for r in rows] == [str(s) for s in EVAL_STEPS]

    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in html
    assert 'src="data:image/png;base64,' in html
    # self-contained: no external scripts, stylesheets, images or fonts
    assert not any(s in html for s in ('src="http', "href=", "url(", "<script", "<link"))
    # every (prompt, step) row of the evolution table is there, with the model output escaped
    assert html.count('<td class="out">') == len(EVAL_STEPS) * len(PROMPTS)
    assert "很好，阳光明媚，微风轻拂。" in html
    assert "&lt;b&gt;鳖&lt;/b&gt;" in html and "<b>鳖</b>" not in html and "k&amp;鍊" in html
    assert "&lt;b&gt;鳖&lt;/b&gt;" in md                      # Markdown renderers would run raw HTML too


def test_stage_labels_come_out_in_order(run_dir):
    from zhgpt.report.report import evolution
    evo = evolution(load_run(run_dir))
    assert list(evo) == PROMPTS
    assert [r["stage"] for r in evo["今天天气"]] == EXPECTED
    for prompt in PROMPTS:
        idx = [STAGES.index(r["stage"]) for r in evo[prompt]]
        assert idx[0] == 0 and idx[-1] == 3 and idx == sorted(idx), (prompt, idx)
    html = main(ReportConfig(runs=[str(run_dir)]))[2].read_text(encoding="utf-8")
    # (the fifth stage, "copying", needs the copy rate, which this old-style run does not have)
    positions = [html.index(f'class="stage s{i}">{s}<') for i, s in enumerate(STAGES[:4])]
    assert positions == sorted(positions)


def test_stage_rule_uses_numbers_not_steps():
    good = "我们一起去公园散步。孩子们在草地上玩耍。"
    # the same sentence-like text is not "sentences" before the run improved enough
    assert stage_label(good, bpc=7.9, first_bpc=8.0, last_bpc=4.0) == "noise"
    assert stage_label(good, bpc=6.5, first_bpc=8.0, last_bpc=4.0) == "characters"
    assert stage_label(good, bpc=5.5, first_bpc=8.0, last_bpc=4.0) == "words and punctuation"
    assert stage_label(good, bpc=4.5, first_bpc=8.0, last_bpc=4.0) == "sentences"
    # and a late evaluation with degenerate text is judged by the text
    assert stage_label("的的的的的的的的的的的", 4.0, 8.0, 4.0) == "characters"
    assert stage_label("abc xyz qqq ???", 4.0, 8.0, 4.0) == "noise"
    assert stage_label("经济，发展，人民，社会", 4.0, 8.0, 4.0) == "words and punctuation"
    assert stage_label(good) == "sentences"                  # no BPC at all: the text decides
    f = text_features("的的的的的的")
    assert f["rep"] > 0.5 and f["cjk"] == 1.0 and f["ends"] == 0


def test_truncated_jsonl_and_missing_optional_files(tmp_path, capsys):
    run = make_run(tmp_path / "killed", truncate=True, run_json=False, samples=False)
    written = main(ReportConfig(runs=[str(run)]))
    assert [p.name for p in written][:3] == ["loss_curve.png", "report.md", "report.html"]
    assert "skipped 1 unreadable line" in capsys.readouterr().err
    md = (run / "report.md").read_text(encoding="utf-8")
    assert "no samples yet" in md and "skipped 1 unreadable line" in md
    # without run.json the numbers come from config.json and metrics.jsonl
    assert "4.27M" in md and "9 min 20 s" in md and "| 1600 |" in md


def test_resumed_run_keeps_the_resumed_records(tmp_path):
    run = make_run(tmp_path / "resumed")
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 1600, "tokens_seen": 655360, "loss": 9.99\n')        # killed mid-line
        f.write(json.dumps({"step": 1590, "tokens_seen": 1590 * 4096, "loss": 3.0, "elapsed_s": 600}) + "\n")
        f.write(json.dumps({"step": 1600, "tokens_seen": 1600 * 4096, "loss": 2.9, "elapsed_s": 604}) + "\n")
    r = load_run(run)
    steps = [m["step"] for m in r.metrics]
    assert steps == sorted(set(steps)) and steps[-1] == 1600
    # the eval at 1600 came before the resume point of 1590, so it was redone (here: not yet)
    assert r.train[-1]["loss"] == 2.9 and r.evals[-1]["step"] == 800 and len(r.evals) == len(EVAL_STEPS) - 1


def test_not_a_run_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZhgptError, match="is not a zhgpt run folder \\(no metrics.jsonl\\)"):
        main(ReportConfig(runs=[str(tmp_path / "empty")]))
    with pytest.raises(ZhgptError, match="no such folder"):
        main(ReportConfig(runs=[str(tmp_path / "missing")]))
    with pytest.raises(ZhgptError, match="at least two"):
        ReportConfig(runs=[str(tmp_path)], compare=True)


def test_compare_and_options(tmp_path):
    a = make_run(tmp_path / "runs" / "small-lr")
    b = make_run(tmp_path / "runs" / "big-lr", scale=1.1, tokens_per_step=8192)
    out = tmp_path / "cmp"
    written = main(ReportConfig(runs=[str(a), str(b)], compare=True, out=str(out), log_x=True))
    assert [p.name for p in written] == ["compare.png", "compare.md", "compare.html"]
    assert all(p.parent == out and p.stat().st_size > 500 for p in written)
    md = (out / "compare.md").read_text(encoding="utf-8")
    assert "| small-lr | **4.000** |" in md and "| big-lr | 4.400 |" in md
    html = (out / "compare.html").read_text(encoding="utf-8")
    assert "small-lr" in html and "big-lr" in html and 'src="data:image/png;base64,' in html
    # default output folder: next to the first run
    written = main(ReportConfig(runs=[str(a), str(b)], compare=True))
    assert written[0].parent.parent == a.parent and written[0].parent.name.startswith("compare-")
    # --log-x and --steps on a single report
    written = main(ReportConfig(runs=[str(a)], log_x=True, steps=[90, 1000]))
    md = written[1].read_text(encoding="utf-8")
    table = md.split("## Loss at selected steps")[1].split("## Sample evolution")[0]
    assert [r.split("|")[1].strip() for r in table.splitlines() if r.startswith("| ") and "step" not in r] \
        == ["100", "800"]


def test_pick_steps_log_spaced():
    steps = list(range(0, 10001, 100))
    picked = pick_steps(steps, 8)
    assert picked[0] == 0 and picked[-1] == 10000 and 6 <= len(picked) <= 8
    gaps = [b / a for a, b in zip(picked[1:], picked[2:])]
    assert max(gaps) / min(gaps) < 2.5                       # roughly geometric


def loss_table_steps(md: str) -> list[str]:
    table = md.split("## Loss at selected steps")[1].split("## Sample evolution")[0]
    return [r.split("|")[1].strip() for r in table.splitlines() if r.startswith("| ") and not r.startswith("| step")]


def test_cli_report(run_dir):
    from zhgpt.cli import main as cli_main
    cli_main(["report", str(run_dir), "--steps", "0", "1590"])
    assert (run_dir / "report.html").is_file()
    # --steps picks the loss-table rows, each rounded to the nearest evaluation (1590 -> 1600)
    assert loss_table_steps((run_dir / "report.md").read_text(encoding="utf-8")) == ["0", "1600"]
    cli_main(["report", str(run_dir)])
    assert loss_table_steps((run_dir / "report.md").read_text(encoding="utf-8")) == [str(s) for s in EVAL_STEPS]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


@pytest.mark.slow
def test_report_html_renders_in_headless_chromium(run_dir, tmp_path):
    browser = _chromium()
    if not browser:
        pytest.skip("chromium not installed: apt-get install chromium")
    html = main(ReportConfig(runs=[str(run_dir)]))[2]
    shot = tmp_path / "shot.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
           "--window-size=1280,2000", html.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), f"no screenshot; chromium said:\n{proc.stderr[-2000:]}"
    import matplotlib.image as mpimg
    img = mpimg.imread(shot)
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000
    # not blank: a white page has ~0 variance; text, tables and the embedded plot give plenty
    assert img[..., :3].std() > 0.05
    # the embedded loss curve rendered: some rows are mostly non-white (plot lines and fills)
    dark = (img[..., :3].mean(axis=2) < 0.6).mean()
    assert dark > 0.01


def test_empty_run_still_reports(tmp_path):
    run = tmp_path / "just-started"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")
    written = main(ReportConfig(runs=[str(run)]))
    md = written[1].read_text(encoding="utf-8")
    assert "no steps logged yet" in md and "config.json missing" in md


def test_cjk_font_found_or_one_warning(tmp_path, monkeypatch, capsys):
    import io
    import warnings

    import matplotlib
    from matplotlib.figure import Figure

    from zhgpt.report import fonts
    from zhgpt.report.report import plot_run
    fonts.find_cjk_font.cache_clear()
    if fonts.find_cjk_font():
        # with a CJK font, Chinese in titles renders: matplotlib reports no missing glyph
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with matplotlib.rc_context(fonts.cjk_rc()):
                fig = Figure()
                fig.suptitle("今天天气「很好」 loss 3.2")
                fig.savefig(io.BytesIO(), format="png")
        assert not [w for w in caught if "missing from" in str(w.message)]
    # without one: a single warning line, and plots still render
    monkeypatch.setattr(fonts, "_known_families", lambda: set())
    monkeypatch.setattr(fonts, "_fc_list_files", lambda: [])
    monkeypatch.setattr(fonts, "FONT_GLOBS", ())
    fonts.find_cjk_font.cache_clear()
    try:
        capsys.readouterr()
        assert fonts.find_cjk_font() is None and fonts.find_cjk_font() is None
        run = load_run(make_run(tmp_path / "run"))
        assert plot_run(run)[:4] == b"\x89PNG"
        err = capsys.readouterr().err
        assert err.count("no CJK font found") == 1 and "fonts-noto-cjk" in err
    finally:
        fonts.find_cjk_font.cache_clear()


def test_long_runs_thin_the_evolution_table(tmp_path):
    from zhgpt.report.report import EVOLUTION_ROWS, evolution
    run = tmp_path / "long"
    run.mkdir()
    steps = list(range(0, 3001, 50))                          # 61 evaluations
    with open(run / "metrics.jsonl", "w", encoding="utf-8") as m, \
            open(run / "samples.jsonl", "w", encoding="utf-8") as s:
        for st in steps:
            bpc = 4 + 4 / (1 + st / 100)
            m.write(json.dumps({"step": st, "tokens_seen": st * 1000, "val_loss": bpc * 0.7, "val_bpc": bpc}) + "\n")
            s.write(json.dumps({"step": st, "prompt": "今天", "output": "很好。" * 5, "val_bpc": bpc},
                               ensure_ascii=False) + "\n")
    rows = evolution(load_run(run))["今天"]
    assert len(rows) <= EVOLUTION_ROWS and rows[0]["step"] == 0 and rows[-1]["step"] == 3000
    md = main(ReportConfig(runs=[str(run)]))[1].read_text(encoding="utf-8")
    assert f"of {len(steps)} evaluations, log-spaced" in md
