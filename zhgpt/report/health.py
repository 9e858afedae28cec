"""The "Health" section of a report: the warnings training printed (RUN/warnings.jsonl), with their step.

The checks themselves run during training (``zhgpt.training.health``); the report shows what they found, or
says that they found nothing.
"""
from __future__ import annotations

from collections.abc import Callable

from zhgpt.report.runs import Run

HEALTH_NOTE = ("Checked during training, and printed as it ran: the initial loss against ln(vocab), loss spikes "
               "and divergence, overfitting (val against train loss), tokens per parameter and epochs, a val "
               "plateau at a high learning rate. Thresholds and why: zhgpt/training/health.py.")


def health_rows(run: Run) -> list[tuple[str, str]]:
    """(step, message) of each warning, in the order they were given."""
    return [(str(w.get("step", "")), str(w.get("message", ""))) for w in run.warnings if w.get("message")]


def health_md(run: Run, cell: Callable[[str], str]) -> list[str]:
    """The section in Markdown; ``cell`` escapes text for a table cell (render.md_cell)."""
    rows = health_rows(run)
    out = ["## Health", ""]
    if not rows:
        return out + ["No warnings.", "", f"_{HEALTH_NOTE}_", ""]
    out += ["| step | warning |", "|---|---|"] + [f"| {s} | {cell(m)} |" for s, m in rows]
    return out + ["", f"_{HEALTH_NOTE}_", ""]


def health_html(run: Run, esc: Callable[[str], str]) -> list[str]:
    """The section in HTML; ``esc`` escapes text (render.e)."""
    rows = health_rows(run)
    out = ["<h2>Health</h2>"]
    if not rows:
        out.append("<p>No warnings.</p>")
    else:
        out.append("<table><tr><th>step</th><th>warning</th></tr>" + "".join(
            f'<tr><td class="num">{esc(s)}</td><td>{esc(m)}</td></tr>' for s, m in rows) + "</table>")
    return out + [f'<p class="note">{esc(HEALTH_NOTE)}</p>']
