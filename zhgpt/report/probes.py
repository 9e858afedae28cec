"""Probes of Chinese in the report: each group's accuracy against steps (``probes.png``) with its chance
level, and a table of the chance level, the tokenizer's head start, step 0 and the last evaluation.

The numbers are the ``probe_acc`` / ``probe_acc_<group>`` columns of the eval rows in metrics.jsonl, written
by ``zhgpt.training.probes`` (where the items, the scoring and the token baseline are explained);
RUN/probes.json gives each group's size, chance level and token baseline. Runs without probe metrics (older
runs, ``--probes none``) get no section.
"""
from __future__ import annotations

import base64

from zhgpt.config import load_json
from zhgpt.report.runs import Run, finite
from zhgpt.training.layout import RunFolder

PNG_NAME = "probes.png"
OVERALL = "probe_acc"
PREFIX = "probe_acc_"
HEAD = ["group", "items", "chance", "tokenizer alone", "step 0", "last evaluation"]
NOTE = ("Each item is a minimal pair or a cloze item; the model picks the alternative with the highest total "
        "log-likelihood (no generation). Chance: the accuracy of guessing (1 / alternatives). Tokenizer alone: "
        "what an untrained model scores by preferring the text cut into fewer tokens, a head start the "
        "tokenizer's vocabulary gives before any training (see zhgpt/training/probes.py).")


def probe_info(run: Run) -> dict:
    """RUN/probes.json, or {} (missing or unreadable: the report then draws no chance lines)."""
    path = RunFolder(run.path).probes
    try:
        info = load_json(path) if path.is_file() else {}
    except Exception:   # a damaged file must not stop the report
        return {}
    return info if isinstance(info, dict) else {}


def probe_groups(run: Run, info: dict | None = None) -> list[str]:
    """The groups with probe metrics in the run: probes.json's order (the file's), then any others sorted."""
    seen = {k[len(PREFIX):] for e in run.evals for k in e if k.startswith(PREFIX) and finite(e[k]) is not None}
    ordered = [g for g in ((info or {}).get("groups") or {}) if g in seen]
    return ordered + sorted(seen - set(ordered))


def series(run: Run, key: str) -> list[tuple[float, float]]:
    return [(e["step"], float(e[key])) for e in run.evals if finite(e.get(key)) is not None]


def has_probes(run: Run) -> bool:
    return any(finite(e.get(OVERALL)) is not None for e in run.evals)


def _group_info(info: dict, group: str | None) -> dict:
    d = info if group is None else ((info.get("groups") or {}).get(group) or {})
    return d if isinstance(d, dict) else {}


def table_rows(run: Run) -> list[list[str]]:
    """One row per group and a last one for all items: size, chance, token baseline, step 0, last eval."""
    info = probe_info(run)
    rows = []
    for g in [*probe_groups(run, info), None]:
        pts = series(run, OVERALL if g is None else PREFIX + g)
        d = _group_info(info, g)
        num = lambda v: f"{v:.2f}" if finite(v) is not None else "–"
        first = num(pts[0][1]) if pts and pts[0][0] == 0 else "–"
        last = f"{pts[-1][1]:.2f} (step {pts[-1][0]})" if pts else "–"
        rows.append(["all" if g is None else g, str(d.get("items", "–")), num(d.get("chance")),
                     num(d.get("token_baseline")), first, last])
    return rows


def probes_png(run: Run) -> bytes | None:
    """Accuracy of every group and of all items against steps, chance dashed; None without probe metrics."""
    if not has_probes(run):
        return None
    from zhgpt.report.plots import _figure, _png
    info = probe_info(run)
    fig = _figure((9, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    chances = set()
    for i, g in enumerate(probe_groups(run, info)):
        pts = series(run, PREFIX + g)
        if pts:
            ax.plot(*zip(*pts), "o-", color=f"C{i % 10}", ms=3, lw=1.2, label=g)
        c = finite(_group_info(info, g).get("chance"))
        if c is not None:
            chances.add(round(c, 4))
    ax.plot(*zip(*series(run, OVERALL)), "o-", color="black", ms=4, lw=2.4, label="all items")
    for c in sorted(chances):   # one line per distinct level (every built-in group: 0.5)
        ax.axhline(c, color="0.4", ls="--", lw=1.2, label="chance" if len(chances) == 1 else f"chance {c:.2f}")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("step")
    ax.set_ylabel("probe accuracy")
    ax.set_title(f"{run.name}: probes of Chinese", loc="left")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9)
    return _png(fig)


def probes_md(run: Run, table) -> list[str]:
    """The report.md section (``table(head, rows)`` is render's Markdown table); [] without probe metrics."""
    if not has_probes(run):
        return []
    return ["## Probes of Chinese", "", f"![probes]({PNG_NAME})", "", table(HEAD, table_rows(run)), "",
            f"_{NOTE}_", ""]


def probes_html(run: Run, table, e) -> str:
    """The report.html section, the plot inline; "" without probe metrics."""
    png = probes_png(run)
    if png is None:
        return ""
    img = f'<img alt="probes" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
    return "\n".join(["<h2>Probes of Chinese</h2>", img,
                      table(HEAD, [[e(c) for c in r] for r in table_rows(run)], num_cols=range(1, 6)),
                      f'<p class="note">{e(NOTE)}</p>'])
