"""The token surprise map in the report: one validation paragraph, its characters coloured by how many bits
each cost the model, one row per evaluation (``RUN/surprise.jsonl``, written by
``zhgpt.training.surprise``, where the rule that spreads a token's loss over its characters is documented).

Reading it top to bottom shows which characters become predictable first. The numbers beside it compare
punctuation with the other characters, because at step 0 every *token* costs about log2(vocabulary) bits:
characters that share a token start cheaper than characters that are a token of their own, so the
comparison that means something is how far each class falls.
"""
from __future__ import annotations

import unicodedata

from zhgpt.report.evolution import pick_steps
from zhgpt.report.runs import Run, _after_resume, read_jsonl
from zhgpt.training.layout import RunFolder

ROWS = 10            # evaluations shown, log-spaced (the file has them all)
SHOWN_CHARS = 5      # most / least surprising characters listed in report.md
# Sequential colour scale from cheap (pale) to surprising (dark red): YlOrRd's anchor colours.
SCALE = [(255, 255, 204), (255, 237, 160), (254, 217, 118), (254, 178, 76), (253, 141, 60), (252, 78, 42),
         (227, 26, 28), (189, 0, 38), (128, 0, 38)]
NONE = ("no surprise.jsonl in this run (zhgpt train writes one at every evaluation; older runs and "
        "fine-tuning runs have none)")
LEVELS = 16         # colour classes: a CSS class per cell keeps a 150-character x 10-row map ~60 kB


def load_surprise(run: Run) -> list[dict]:
    """The records of RUN/surprise.jsonl for the run's paragraph (the last one written), one per step (a
    resumed run's redone evaluation replaces the killed run's), each with as many bits as characters."""
    path = RunFolder(run.path).surprise
    if not path.is_file():
        return []
    recs = [r for r in _after_resume(read_jsonl(path, run.notes))
            if isinstance(r.get("step"), (int, float)) and isinstance(r.get("text"), str)
            and isinstance(r.get("bits"), list) and len(r["bits"]) == len(r["text"]) and r["text"]]
    if not recs:
        return []
    text = recs[-1]["text"]
    by_step = {r["step"]: r for r in recs if r["text"] == text}
    return [by_step[s] for s in sorted(by_step)]


def is_punct(ch: str) -> bool:
    return unicodedata.category(ch).startswith("P")


def class_means(rec: dict) -> dict[str, float | None]:
    """Mean bits of the paragraph, of its punctuation and of its other characters (spaces left out)."""
    groups: dict[str, list[float]] = {"all": [], "punctuation": [], "other": []}
    for ch, b in zip(rec["text"], rec["bits"]):
        groups["all"].append(b)
        if not ch.isspace():
            groups["punctuation" if is_punct(ch) else "other"].append(b)
    return {k: (sum(v) / len(v) if v else None) for k, v in groups.items()}


def extremes(rec: dict, n: int = SHOWN_CHARS) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """(most surprising, least surprising) characters of one evaluation, with their bits."""
    pairs = sorted(((ch, b) for ch, b in zip(rec["text"], rec["bits"]) if not ch.isspace()), key=lambda p: -p[1])
    return pairs[:n], pairs[::-1][:n]


def finding(recs: list[dict]) -> str:
    """One sentence on what became predictable first, computed from the first and last evaluation."""
    if len(recs) < 2:
        return "Only one evaluation so far: nothing to compare yet."
    a, b = class_means(recs[0]), class_means(recs[-1])
    s0, s1 = recs[0]["step"], recs[-1]["step"]
    text = f"Mean over the paragraph: {a['all']:.2f} bits/char at step {s0}, {b['all']:.2f} at step {s1}."
    if a["punctuation"] is None or a["other"] is None:
        return text
    dp, do = a["punctuation"] - b["punctuation"], a["other"] - b["other"]
    text += (f" Punctuation went from {a['punctuation']:.2f} to {b['punctuation']:.2f} bits "
             f"({-dp:+.2f}); the other characters from {a['other']:.2f} to {b['other']:.2f} ({-do:+.2f}).")
    if abs(dp - do) >= 0.1:
        first = "punctuation" if dp > do else "the other characters"
        text += f" In this run {first} became predictable faster, by {abs(dp - do):.2f} bits/char."
    if s0 == 0:
        text += (" (At step 0 every token costs about log2(vocabulary) bits, so characters that share a long "
                 "token start cheap: compare how far each falls, not where it starts.)")
    return text


def scale_max(recs: list[dict]) -> float:
    """The top of the colour scale: the 98th percentile of all bits shown, so one outlier does not wash the
    rest out (values above it take the darkest colour)."""
    vals = sorted(b for r in recs for b in r["bits"])
    return max(1.0, float(vals[int(0.98 * (len(vals) - 1))])) if vals else 1.0


def colour(x: float) -> str:
    """The scale's colour at x in [0, 1]."""
    x = min(max(x, 0.0), 1.0) * (len(SCALE) - 1)
    i = min(int(x), len(SCALE) - 2)
    rgb = [round(c0 + (c1 - c0) * (x - i)) for c0, c1 in zip(SCALE[i], SCALE[i + 1])]
    return "#" + "".join(f"{c:02x}" for c in rgb)


def level(bits: float, top: float) -> int:
    """The colour class of a value: LEVELS steps from 0 to ``top`` bits (above it: the last)."""
    return min(max(int(bits / top * LEVELS), 0), LEVELS - 1)


def shown(recs: list[dict]) -> list[dict]:
    keep = set(pick_steps([r["step"] for r in recs], ROWS))
    return [r for r in recs if r["step"] in keep]


def surprise_md(run: Run, cell) -> list[str]:
    """The section's lines for report.md; ``cell`` escapes untrusted text for a Markdown table cell."""
    out = ["## Token surprise map", ""]
    recs = load_surprise(run)
    if not recs:
        return out + [f"_{NONE}_", ""]
    text = recs[-1]["text"]
    out += [f"Validation paragraph ({len(text)} characters): 「{cell(text)}」", ""]
    rows = []
    for r in shown(recs):
        m = class_means(r)
        rows.append([str(r["step"])] + [f"{m[k]:.2f}" if m[k] is not None else "–"
                                       for k in ("all", "punctuation", "other")])
    out += ["| step | mean bits/char | punctuation | other characters |", "|---|---|---|---|"]
    out += ["| " + " | ".join(r) + " |" for r in rows] + [""]
    for r in (recs[0], recs[-1]) if len(recs) > 1 else (recs[0],):
        hi, lo = extremes(r)
        fmt_pairs = lambda ps: " ".join(f"{cell(ch)} {b:.1f}" for ch, b in ps)
        out.append(f"- step {r['step']}: most surprising {fmt_pairs(hi)}; least {fmt_pairs(lo)}")
    out += ["", f"_{finding(recs)} The heat map is in report.html; every evaluation is in surprise.jsonl._", ""]
    return out


def _legend(top: float, e) -> str:
    cells = [f'<span class="hm key h{i}">{e(f"{top * i / LEVELS:.1f}")}</span>' for i in range(0, LEVELS, 3)]
    cells.append(f'<span class="hm key h{LEVELS - 1}">{e(f"{top:.1f}+")}</span>')
    return '<p class="note">bits per character: ' + "".join(cells) + "</p>"


def surprise_html(run: Run, e) -> str:
    """The section for report.html: the heat map, its legend and the computed finding. ``e`` escapes HTML."""
    head = "<h2>Token surprise map</h2>"
    recs = load_surprise(run)
    if not recs:
        return head + f'<p class="note">{e(NONE)}</p>'
    rows, top = shown(recs), scale_max(recs)
    lines = [head, '<p class="note">One validation paragraph, each character coloured by the bits it cost the '
             "model at that evaluation (hover for the number): pale = predictable, dark = surprising. A "
             "token's loss is split equally among the characters it spells.</p>", _legend(top, e),
             '<table class="surprise"><tr><th>step</th><th>bits/char</th><th>paragraph</th></tr>']
    for r in rows:
        spans = "".join(f'<span class="hm h{level(b, top)}" title="{b:.2f} bits">{e(ch)}</span>'
                        for ch, b in zip(r["text"], r["bits"]))
        mean = sum(r["bits"]) / len(r["bits"])
        lines.append(f'<tr><td class="num">{e(r["step"])}</td><td class="num">{mean:.2f}</td>'
                     f'<td class="heat">{spans}</td></tr>')
    lines.append("</table>")
    thinned = f" Showing {len(rows)} of {len(recs)} evaluations, log-spaced." if len(rows) < len(recs) else ""
    lines.append(f'<p class="note">{e(finding(recs) + thinned)}</p>')
    return "\n".join(lines)


CSS = (".hm{display:inline-block;min-width:1em;text-align:center;white-space:pre;line-height:1.5}"
       "td.heat{word-break:break-all;max-width:900px}.hm.key{padding:0 .5em}"
       + "".join(f".h{i}{{background:{colour((i + 0.5) / LEVELS)}" + (";color:#fff}" if i >= 0.7 * LEVELS else "}")
                 for i in range(LEVELS)))
