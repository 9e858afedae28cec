"""The report as text: the run summary rows, report.md and a self-contained report.html (inline CSS, the PNG
as a data URI: one file to e-mail or open from disk), and compare.md / compare.html for several runs.

Model output is untrusted text: it is escaped for Markdown (:func:`md_cell`) and HTML (:func:`e`).
"""
from __future__ import annotations

import base64
import html
import json
import re
import time

from zhgpt.core import fmt
from zhgpt.report.chat import HEADS as CHAT_HEADS, NOTE as CHAT_NOTE, chat_columns, chat_rows
from zhgpt.report.evolution import EVOLUTION_ROWS, STAGES, pick_steps
from zhgpt.report.experts import experts_html, experts_md
from zhgpt.report.health import health_html, health_md
from zhgpt.report.probes import probes_html, probes_md
from zhgpt.report.reference import reference_html, reference_md
from zhgpt.report.surprise import CSS as SURPRISE_CSS, surprise_html, surprise_md
from zhgpt.report.stages import stats_html, stats_md
from zhgpt.report.runs import (Run, chars_per_token, dig, final_metrics, finite, first_of, run_params,
                               tokens_per_sec, tokens_seen, wall_time)


def _sources(data: dict) -> str:
    srcs = data.get("sources") or dig(data, "config", "sources") or []
    if isinstance(srcs, (str, dict)):
        srcs = [srcs]
    names = []
    for s in srcs:
        if isinstance(s, dict):
            s = first_of(s.get("name"), s.get("path"), s.get("source"), s.get("spec"), json.dumps(s, ensure_ascii=False))
        names.append(str(s))
    text = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return text or "–"


def hardware_text(info: dict) -> str:
    """"cuda: NVIDIA H200 x8, bf16" / "cpu: AMD EPYC (2 threads), float32" from run.json."""
    hw = info.get("hardware")
    dtype = info.get("dtype")
    if isinstance(hw, dict):
        device = hw.get("device") or info.get("device") or ""
        if hw.get("gpu"):
            what = f"{hw['gpu']}" + (f" x{hw['gpus']}" if (hw.get("gpus") or 1) > 1 else "")
        else:
            what = f"{hw.get('cpu', 'CPU')}" + (f" ({hw['threads']} threads)" if hw.get("threads") else "")
        world = info.get("world_size")
        text = f"{device}: {what}" if device else what
        if isinstance(world, int) and world > 1:
            text += f", {world} processes"
    else:
        text = " / ".join(str(x) for x in (info.get("device"), hw) if x)
    if dtype:
        text += f", {dtype}"
    return text or "–"


def summary_rows(run: Run) -> list[tuple[str, str]]:
    """(label, value) pairs for the run summary, from run.json, config.json and the metrics."""
    cfg, info = run.config, run.info
    data = cfg.get("data") or {}
    model = cfg.get("model") or {}
    train_cfg = cfg.get("train") or {}
    fin = final_metrics(run)
    tr = dig(data, "splits", "train") or {}
    train_tokens = finite(first_of(tr.get("tokens"), data.get("train_tokens")))
    train_chars = finite(first_of(tr.get("chars"), data.get("train_chars")))
    data_desc = _sources(data)
    if train_tokens:
        data_desc += f" ({fmt.count(train_chars)} chars, {fmt.count(train_tokens)} tokens in the train split)"
    cpt = chars_per_token(run)
    tok_kind = first_of(data.get("tokenizer_kind"), dig(data, "tokenizer", "kind"), train_cfg.get("tokenizer"))
    vocab = first_of(data.get("vocab_size"), model.get("vocab_size"))
    arch = "–"
    if model:
        arch = (f"{model.get('arch', 'gpt2')}: {model.get('n_layer')} layers, {model.get('n_head')} heads, "
                f"{model.get('n_embd')} hidden, context {model.get('block_size')}")
        preset = first_of(info.get("preset"), train_cfg.get("preset"))
        if preset:
            arch = f"{preset} ({arch})"
    rows_hw = hardware_text(info)
    best = min((e["val_loss"] for e in run.evals), default=None)
    rows = [
        ("run", f"{run.path}" + (f" ({info['status']})" if info.get("status") else "")),
        ("data", data_desc),
        ("tokenizer", f"{tok_kind or '–'}, vocab {vocab or '–'}, "
                      f"{fmt.num(cpt, 2) if cpt else '–'} chars/token"),
        ("model", arch),
        ("parameters", fmt.count(run_params(run))),
        ("hardware", rows_hw),
        ("wall time", fmt.duration(wall_time(run))),
        ("tokens seen", fmt.count(tokens_seen(run))),
        ("tokens/s", fmt.count(tokens_per_sec(run)) + (f" ({fmt.count(info['tokens_per_step'])} tokens/step)"
                                                     if finite(info.get("tokens_per_step")) else "")),
        ("MFU", _mfu_text(run)),
        ("steps", str(run.metrics[-1]["step"]) if run.metrics else "0"),
        ("final val loss", fmt.num(fin["val_loss"]) + (f" (best {best:.3f})" if best is not None else "")),
        ("final val BPC", fmt.num(fin["val_bpc"])),
        ("final val perplexity", fmt.num(fin["val_ppl"], 1)),
    ]
    return rows


def _mfu_text(run: Run) -> str:
    """Median model FLOPs utilisation of the logged steps (the first log line includes start-up)."""
    vals = sorted(v for v in (finite(t.get("mfu")) for t in run.train[1:]) if v is not None)
    return f"{vals[len(vals) // 2]:.1%} (median of {len(vals)} log lines)" if vals else "–"


def md_cell(text) -> str:
    """Model output inside a Markdown table cell: escape what Markdown or HTML would interpret."""
    s = html.escape(str(text), quote=False)
    s = re.sub(r"([\\`*_\[\]|#])", r"\\\1", s)
    return s.replace("\r", "").replace("\n", "<br>")


def e(text) -> str:
    return html.escape(str(text), quote=True)


CSS = """
body{font-family:-apple-system,"Segoe UI","Noto Sans CJK SC","Noto Sans SC","Source Han Sans SC","PingFang SC",
"Microsoft YaHei","WenQuanYi Micro Hei",sans-serif;max-width:1180px;margin:24px auto;padding:0 16px;color:#1f2328;
line-height:1.5}
h1{font-size:1.6em;margin-bottom:4px}h2{margin-top:32px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0 16px 0}th,td{border:1px solid #d0d7de;padding:4px 8px;
vertical-align:top;text-align:left}th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums;
white-space:nowrap}table.summary{min-width:760px}table.summary th{width:170px}
td.out{white-space:pre-wrap;word-break:break-all;min-width:420px}
.stage{display:inline-block;padding:1px 8px;border-radius:10px;font-size:.85em;white-space:nowrap;color:#fff}
.s0{background:#8c959f}.s1{background:#d4a72c}.s2{background:#218bff}.s3{background:#2da44e}.s4{background:#8250df}
.note{color:#57606a;font-size:.9em}img{max-width:100%;border:1px solid #d0d7de}.prompt{font-weight:bold}
.best{font-weight:bold}
""" + SURPRISE_CSS


def _html_page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="zh-CN">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{e(title)}</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def _html_table(head: list[str] | None, rows: list[list[str]], cls: str = "", num_cols=(),
                row_headers: bool = False) -> str:
    """head and rows are already HTML; head None = no header row; row_headers: first cell is a <th>."""
    out = [f'<table class="{cls}">' if cls else "<table>"]
    if head:
        out.append("<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>")
    for r in rows:
        cells = [f"<th>{c}</th>" if i == 0 and row_headers else
                 f'<td class="num">{c}</td>' if i in num_cols else f"<td>{c}</td>" for i, c in enumerate(r)]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
                     + ["| " + " | ".join(r) + " |" for r in rows])


def _thinned(run: Run) -> str:
    steps = sorted({s["step"] for s in run.samples if isinstance(s.get("step"), (int, float))})
    shown = len(pick_steps(steps, EVOLUTION_ROWS))
    return (f" Showing {shown} of {len(steps)} evaluations, log-spaced; all are in samples.jsonl."
            if shown < len(steps) else "")


STAGE_RULE = ("Stage: the evaluation's stage from its generation statistics and probes where the run has them "
              "(see \"How stages are assigned\" under Generation statistics); otherwise derived per row from the "
              "text — noise (under half Chinese script, or under 10% of the run's BPC improvement), characters "
              "(no punctuation or over 30% punctuation, heavy repetition, or under 40%), words and punctuation "
              "(no completed sentence, or under 70%), sentences (otherwise). Full rules: zhgpt/report/stages.py, "
              "zhgpt/report/evolution.py.")
LOSS_HEAD = ["step", "tokens seen", "time", "train loss (EMA)", "val loss", "val BPC", "val ppl"]


def _loss_cells(r: dict) -> list[str]:
    return [str(r["step"]), fmt.count(r["tokens_seen"]), fmt.duration(r["elapsed_s"]), fmt.num(r["train_loss"]),
            fmt.num(r["val_loss"]), fmt.num(r["val_bpc"]), fmt.num(r["val_ppl"], 1)]


def render_md(run: Run, rows: list[tuple[str, str]], table: list[dict], evo: dict) -> str:
    out = [f"# zhgpt report: {md_cell(run.name)}", ""]
    out += [_md_table(["", ""], [[f"**{k}**", md_cell(v)] for k, v in rows]), ""]
    out += ["## Learning curves", "", "![loss curve](loss_curve.png)", ""]
    out += reference_md(run)
    out += ["## Loss at selected steps", ""]
    out += [_md_table(LOSS_HEAD, [_loss_cells(r) for r in table]) if table else "_no steps logged yet_", ""]
    out += probes_md(run, _md_table)
    out += health_md(run, md_cell)
    out += experts_md(run, _md_table)
    chat = chat_rows(run)
    if chat:
        cols = chat_columns(chat)
        out += ["## Answers", "", _md_table(["step"] + [CHAT_HEADS[c] for c in cols],
                                            [[str(r["step"])] + [fmt.num(r[c]) for c in cols] for r in chat]),
                "", f"_{CHAT_NOTE}_", ""]
    out += ["## Sample evolution", ""]
    if not evo:
        out += ["_no samples yet (samples.jsonl missing or empty)_", ""]
    for prompt, prow in evo.items():
        out += [f"### Prompt: 「{md_cell(prompt)}」", ""]
        out += [_md_table(["step", "tokens seen", "val loss", "BPC", "stage", "output"],
                          [[str(r["step"]), fmt.count(r["tokens_seen"]), fmt.num(r["val_loss"]),
                            fmt.num(r["val_bpc"]), r["stage"], md_cell(r["output"]) or "_(empty)_"] for r in prow]), ""]
    if evo:
        out += [f"_{STAGE_RULE}{_thinned(run)}_", ""]
    out += stats_md(run)
    out += surprise_md(run, md_cell)
    if run.notes:
        out += ["## Notes", ""] + [f"- {md_cell(n)}" for n in run.notes] + [""]
    return "\n".join(out)


def render_html(run: Run, rows: list[tuple[str, str]], table: list[dict], evo: dict, png: bytes) -> str:
    body = [f"<h1>zhgpt report: {e(run.name)}</h1>",
            f'<p class="note">generated {e(time.strftime("%Y-%m-%d %H:%M"))} from {e(run.path)}</p>',
            _html_table(None, [[e(k), e(v)] for k, v in rows], cls="summary", row_headers=True),
            "<h2>Learning curves</h2>",
            f'<img alt="loss curve" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">',
            reference_html(run, e), "<h2>Loss at selected steps</h2>"]
    body.append(_html_table(LOSS_HEAD, [[e(c) for c in _loss_cells(r)] for r in table], num_cols=range(7))
                if table else '<p class="note">no steps logged yet</p>')
    body.append(probes_html(run, _html_table, e))
    body += health_html(run, e)
    body.append(experts_html(run, _html_table))
    chat = chat_rows(run)
    if chat:
        cols = chat_columns(chat)
        body += ["<h2>Answers</h2>", _html_table(["step"] + [CHAT_HEADS[c] for c in cols],
                                                 [[e(r["step"])] + [e(fmt.num(r[c])) for c in cols] for r in chat],
                                                 num_cols=range(len(cols) + 1)),
                 f'<p class="note">{e(CHAT_NOTE)}</p>']
    body.append("<h2>Sample evolution</h2>")
    if not evo:
        body.append('<p class="note">no samples yet (samples.jsonl missing or empty)</p>')
    for prompt, prow in evo.items():
        body.append(f'<h3>Prompt: <span class="prompt">「{e(prompt)}」</span></h3>')
        cells = []
        for r in prow:
            i = STAGES.index(r["stage"])
            cells.append([e(r["step"]), e(fmt.count(r["tokens_seen"])), e(fmt.num(r["val_loss"])),
                          e(fmt.num(r["val_bpc"])), f'<span class="stage s{i}">{e(r["stage"])}</span>',
                          f'<span class="prompt">{e(prompt)}</span>{e(r["output"])}'])
        t = _html_table(["step", "tokens seen", "val loss", "BPC", "stage", "output"], cells, cls="evolution",
                        num_cols=(0, 1, 2, 3))
        # the output column wraps; mark it so the CSS can give it the width
        body.append(re.sub(r"<td>(<span class=\"prompt\">)", r'<td class="out">\1', t))
    if evo:
        body.append(f'<p class="note">{e(STAGE_RULE + _thinned(run))}</p>')
    body.append(stats_html(run, e))
    body.append(surprise_html(run, e))
    if run.notes:
        body.append("<h2>Notes</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in run.notes) + "</ul>")
    return _html_page(f"zhgpt report: {run.name}", "\n".join(body))


COMPARE_HEAD = ["run", "final val BPC", "final val loss", "params", "model", "tokenizer", "tokens seen",
                "wall time", "tokens/s"]
COMPARE_NOTE = ("Compare runs by bits per character: loss is per token, and tokens differ between tokenizers. "
                "Best BPC in bold.")


def compare_rows(runs: list[Run], labels: list[str]) -> list[list]:
    """One row of COMPARE_HEAD cells per run, plus a last item: True for the best final val BPC."""
    fins = [final_metrics(r) for r in runs]
    best = min((f["val_bpc"] for f in fins if f["val_bpc"] is not None), default=None)
    rows = []
    for run, label, fin in zip(runs, labels, fins):
        model = run.config.get("model") or {}
        data = run.config.get("data") or {}
        shape = f"{model.get('arch', '–')} {model.get('n_layer', '?')}x{model.get('n_embd', '?')}" if model else "–"
        vocab = first_of(data.get("vocab_size"), model.get("vocab_size")) or ""
        rows.append([label, fmt.num(fin["val_bpc"]), fmt.num(fin["val_loss"]), fmt.count(run_params(run)), shape,
                     f"{data.get('tokenizer_kind') or '–'} {vocab}".strip(),
                     fmt.count(tokens_seen(run)), fmt.duration(wall_time(run)), fmt.count(tokens_per_sec(run)),
                     fin["val_bpc"] is not None and fin["val_bpc"] == best])
    return rows


def render_compare_md(runs: list[Run], rows: list[list]) -> str:
    md = ["# zhgpt compare", "", "![compare](compare.png)", "",
          _md_table(COMPARE_HEAD, [[md_cell(c) if j == 0 else (f"**{c}**" if j == 1 and r[-1] else c)
                                    for j, c in enumerate(r[:-1])] for r in rows]), "", f"_{COMPARE_NOTE}_", "",
          "Runs: " + ", ".join(f"`{r.path}`" for r in runs), ""]
    return "\n".join(md)


def render_compare_html(runs: list[Run], labels: list[str], rows: list[list], png: bytes) -> str:
    html_rows = [[e(c) if not (j == 1 and r[-1]) else f'<span class="best">{e(c)}</span>'
                  for j, c in enumerate(r[:-1])] for r in rows]
    body = ["<h1>zhgpt compare</h1>",
            f'<p class="note">generated {e(time.strftime("%Y-%m-%d %H:%M"))}: '
            + ", ".join(e(r.path) for r in runs) + "</p>",
            _html_table(COMPARE_HEAD, html_rows, num_cols=(1, 2, 3, 6, 7, 8)),
            f'<p class="note">{e(COMPARE_NOTE)}</p>',
            f'<img alt="comparison" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">']
    for run, label in zip(runs, labels):
        for n in run.notes:
            body.append(f'<p class="note">{e(label)}: {e(n)}</p>')
    return _html_page("zhgpt compare", "\n".join(body))
