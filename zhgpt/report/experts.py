"""Mixture of experts in the report: where the router sends the tokens, from the ``expert_frac`` of the
training records (per layer, the share of routed (token, expert) pairs each expert got since the previous
record) and the ``aux_loss`` / ``z_loss`` beside them.

A balanced layer keeps every band near 1/E; an expert starving (band shrinking to 0) or the router
collapsing onto a few experts (one band taking most of the height) is visible at a glance. Runs without
experts get nothing here.
"""
from __future__ import annotations

import base64
import io

from zhgpt.core import fmt
from zhgpt.report.runs import Run, finite

PNG_NAME = "experts.png"
STARVED = 0.25     # an expert under a quarter of its fair share 1/E in the last record is called starving
MAX_PANELS = 8     # layers drawn (evenly picked beyond that): the figure stays readable


def expert_records(run: Run) -> list[dict]:
    return [m for m in run.train if isinstance(m.get("expert_frac"), list) and m["expert_frac"]]


def experts_png(run: Run) -> bytes | None:
    """Stacked share of tokens per expert against steps, one panel per layer; None for a dense run."""
    recs = expert_records(run)
    if not recs:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    steps = [r["step"] for r in recs]
    n_layer, n_exp = len(recs[-1]["expert_frac"]), len(recs[-1]["expert_frac"][0])
    layers = list(range(n_layer)) if n_layer <= MAX_PANELS else \
        sorted({round(i * (n_layer - 1) / (MAX_PANELS - 1)) for i in range(MAX_PANELS)})
    fig = Figure(figsize=(8, 1.6 * len(layers) + 0.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(layers), 1, sharex=True, squeeze=False)[:, 0]
    for ax, layer in zip(axes, layers):
        shares = [[r["expert_frac"][layer][e] if layer < len(r["expert_frac"]) else 0.0 for r in recs]
                  for e in range(n_exp)]
        ax.stackplot(steps, shares, labels=[f"expert {e}" for e in range(n_exp)], alpha=0.85)
        for k in range(1, n_exp):
            ax.axhline(k / n_exp, color="white", lw=0.6, ls=":")    # where the bands sit when balanced
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"layer {layer}")
    axes[0].set_title("share of routed tokens per expert (dotted: balanced)")
    axes[-1].set_xlabel("step")
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", dpi=100)
    return buf.getvalue()


def summary(run: Run) -> list[list[str]] | None:
    """Per layer, at the last record: min and max share, starving experts, and the run's last aux/z-loss."""
    recs = expert_records(run)
    if not recs:
        return None
    last = recs[-1]
    rows = []
    for layer, fr in enumerate(last["expert_frac"]):
        fair = 1 / len(fr)
        starving = [str(e) for e, v in enumerate(fr) if v < STARVED * fair]
        rows.append([str(layer), fmt.num(min(fr), 3), fmt.num(max(fr), 3), ", ".join(starving) or "none"])
    return rows


HEAD = ["layer", "min share", "max share", f"starving (< {STARVED:g} of 1/E)"]


def _losses(run: Run) -> str:
    last = expert_records(run)[-1]
    aux, z = finite(last.get("aux_loss")), finite(last.get("z_loss"))
    return (f"At step {last['step']}: load-balancing loss {fmt.num(aux, 3)} per layer (1.0 = balanced, E = one "
            f"expert takes all), router z-loss {fmt.num(z, 3)}.")


def experts_md(run: Run, table) -> list[str]:
    """The report.md section (``table(head, rows)`` is render's Markdown table)."""
    rows = summary(run)
    if rows is None:
        return []
    return ["## Experts", "", f"![experts]({PNG_NAME})", "", table(HEAD, rows), "", f"_{_losses(run)}_", ""]


def experts_html(run: Run, table) -> str:
    """The report.html section, the plot inline (``table(head, rows)`` is render's HTML table)."""
    rows = summary(run)
    png = experts_png(run) if rows is not None else None
    if png is None:
        return ""
    import html
    img = f'<img alt="experts" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
    return "\n".join(["<h2>Experts</h2>", img, table(HEAD, [[html.escape(c) for c in r] for r in rows]),
                      f'<p class="note">{html.escape(_losses(run))}</p>'])
