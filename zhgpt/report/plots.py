"""The report's figures: loss_curve.png for one run and compare.png for several, as PNG bytes.

matplotlib is imported inside the functions (it takes ~0.5 s) and used through Figure + the Agg canvas,
never pyplot. Chinese prompts in titles and legends need a CJK font (``zhgpt.report.fonts``).
"""
from __future__ import annotations

import io

from zhgpt.core import fmt
from zhgpt.report import fonts
from zhgpt.report.evolution import ema
from zhgpt.report.runs import Run, finite


def _figure(figsize):
    # Figure + Agg canvas, not pyplot: no global figure registry, no GUI backend, safe in a training process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize, dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def _token_axis(ax, steps: list, tokens: list):
    """A top x-axis in tokens seen, mapped from steps (linear beyond the logged range)."""
    import numpy as np
    from matplotlib.ticker import FuncFormatter
    pairs = sorted((s, t) for s, t in zip(steps, tokens) if s is not None and t is not None)
    if len(pairs) < 2 or pairs[-1][0] <= 0:
        return
    xs, ys = np.array([p[0] for p in pairs], float), np.array([p[1] for p in pairs], float)
    if np.any(np.diff(xs) <= 0) or np.any(np.diff(ys) <= 0):
        return   # not invertible (e.g. repeated steps); better no axis than a wrong one
    k = ys[-1] / xs[-1] if xs[-1] else 1.0

    def s2t(s):
        s = np.asarray(s, float)
        return np.where(s < xs[0], ys[0] + (s - xs[0]) * k,
                        np.where(s > xs[-1], ys[-1] + (s - xs[-1]) * k, np.interp(s, xs, ys)))

    def t2s(t):
        t = np.asarray(t, float)
        return np.where(t < ys[0], xs[0] + (t - ys[0]) / k,
                        np.where(t > ys[-1], xs[-1] + (t - ys[-1]) / k, np.interp(t, ys, xs)))

    top = ax.secondary_xaxis("top", functions=(s2t, t2s))
    top.set_xlabel("tokens seen")
    if ax.get_xscale() == "log":
        top.set_xscale("log")
    top.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt.count(v) if v >= 0 else ""))


def _samples_label(run: Run) -> str:
    """Legend text for the sample stars: 'samples taken (prompt 「今天天气」 +1)'."""
    prompts = list(dict.fromkeys(str(s.get("prompt", "")) for s in run.samples))
    label = "samples taken"
    if prompts and prompts[0]:
        p = prompts[0] if len(prompts[0]) <= 12 else prompts[0][:12] + "…"
        label += f" (prompt 「{p}」" + (f" +{len(prompts) - 1}" if len(prompts) > 1 else "") + ")"
    return label


def _loss_panel(ax, run: Run, keep, log_x: bool, sample_steps: list):
    """Top: train loss (raw and EMA), val loss, stars where samples were taken, tokens on the top axis."""
    train = [t for t in run.train if keep(t["step"])]
    evals = [e for e in run.evals if keep(e["step"])]
    if train:
        xs = [t["step"] for t in train]
        ys = [t["loss"] for t in train]
        ax.plot(xs, ys, color="C0", alpha=0.25, lw=0.8, label="train loss")
        ax.plot(xs, ema(ys), color="C0", lw=1.8, label="train loss (EMA)")
    if evals:
        ax.plot([e["step"] for e in evals], [e["val_loss"] for e in evals], "o-", color="C1", ms=4,
                lw=1.5, label="val loss")
    marked = [(st, run.eval_at(st).get("val_loss")) for st in sample_steps]
    marked = [(st, v) for st, v in marked if finite(v) is not None]
    if marked:
        ax.plot(*zip(*marked), "*", color="C3", ms=11, label=_samples_label(run), zorder=5)
    if not train and not evals:
        ax.text(0.5, 0.5, "no steps logged yet", transform=ax.transAxes, ha="center", va="center")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(f"{run.name}: learning curves", loc="left")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize=9)
    if log_x and (train or evals):
        ax.set_xscale("log")   # before the token axis: a scale change resets the secondary axis
    _token_axis(ax, [m["step"] for m in run.metrics if keep(m["step"])],
                [m.get("tokens_seen") for m in run.metrics if keep(m["step"])])


def _bpc_panel(ax, run: Run, keep, log_x: bool, sample_steps: list):
    """Bottom: val bits per character with the sample stars, and the learning rate on a second y axis."""
    evals = [e for e in run.evals if keep(e["step"])]
    bpc = [(e["step"], e["val_bpc"]) for e in evals if finite(e.get("val_bpc")) is not None]
    handles = []
    if bpc:
        handles += ax.plot(*zip(*bpc), "o-", color="C2", ms=4, label="val bits per character")
        bmarked = [(st, run.eval_at(st).get("val_bpc")) for st in sample_steps]
        bmarked = [(st, v) for st, v in bmarked if finite(v) is not None]
        if bmarked:
            ax.plot(*zip(*bmarked), "*", color="C3", ms=11, zorder=5)
    ax.set_ylabel("val bits per character")
    lrs = [(m["step"], m["lr"]) for m in run.metrics if finite(m.get("lr")) is not None and keep(m["step"])]
    if lrs:
        ax_lr = ax.twinx()
        handles += ax_lr.plot(*zip(*lrs), "--", color="C4", lw=1, label="learning rate")
        ax_lr.set_ylabel("learning rate")
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize=9)
    ax.grid(alpha=0.3)
    ax.set_xlabel("step" + (" (log scale; step 0 not shown)" if log_x else ""))


def plot_run(run: Run, log_x: bool = False) -> bytes:
    """loss_curve.png as bytes."""
    import matplotlib
    with matplotlib.rc_context(fonts.cjk_rc()), fonts.quiet_missing_glyphs():
        fig = _figure((10, 7.5))
        ax1, ax2 = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
        keep = (lambda s: s > 0) if log_x else (lambda s: True)   # a log axis cannot show step 0
        sample_steps = sorted({s["step"] for s in run.samples if isinstance(s.get("step"), (int, float))
                               and keep(s["step"])})
        _loss_panel(ax1, run, keep, log_x, sample_steps)
        _bpc_panel(ax2, run, keep, log_x, sample_steps)
        fig.tight_layout()
        return _png(fig)


def plot_compare(runs: list[Run], labels: list[str], log_x: bool = False) -> bytes:
    """compare.png: val BPC (top) and val loss (bottom) by tokens seen (left) and wall time (right)."""
    import matplotlib
    with matplotlib.rc_context(fonts.cjk_rc()), fonts.quiet_missing_glyphs():
        fig = _figure((12, 8))
        axes = fig.subplots(2, 2, sharey="row")
        for i, (run, label) in enumerate(zip(runs, labels)):
            for row, key in enumerate(("val_bpc", "val_loss")):
                for col, xkey in enumerate(("tokens_seen", "elapsed_s")):
                    pts = [(e[xkey], e[key]) for e in run.evals
                           if finite(e.get(xkey)) is not None and finite(e.get(key)) is not None
                           and (not log_x or e[xkey] > 0)]
                    if pts:
                        axes[row][col].plot(*zip(*pts), "o-", ms=3, lw=1.5, color=f"C{i % 10}", label=label)
        for row, name in enumerate(("val bits per character", "val loss (nats/token)")):
            axes[row][0].set_ylabel(name)
        for col, name in enumerate(("tokens seen", "wall time")):
            axes[1][col].set_xlabel(name + (" (log scale)" if log_x else ""))
        from matplotlib.ticker import FuncFormatter, NullFormatter
        for row in axes:
            for col, ax in enumerate(row):
                ax.grid(alpha=0.3)
                if log_x and ax.has_data():
                    ax.set_xscale("log")
                    ax.xaxis.set_minor_formatter(NullFormatter())   # 2x10^1 3x10^1 ... overlap
                ax.xaxis.set_major_formatter(FuncFormatter(
                    (lambda v, _: fmt.count(v) if v >= 0 else "") if col == 0 else
                    (lambda v, _: fmt.axis_time(v) if v >= 0 else "")))
        axes[0][0].set_title("by tokens seen (data efficiency)", loc="left")
        axes[0][1].set_title("by wall time (compute efficiency)", loc="left")
        if axes[0][0].has_data() or axes[1][0].has_data():
            (axes[0][0] if axes[0][0].has_data() else axes[1][0]).legend(fontsize=9)
        fig.tight_layout()
        return _png(fig)
