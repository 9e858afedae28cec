""""Is my loss normal?": the run's validation bits-per-character curve beside a measured reference curve of
the same preset, shipped as package data (``zhgpt/assets/reference_<preset>.json``, made from a real run by
``bench/make_reference.py``), and whether this run is ahead or behind.

The comparison is at equal *tokens seen* (the reference's curve interpolated linearly between its
evaluations), at the furthest point both curves reach: learning per token is what a preset and recipe fix,
while wall time also measures the machine (stated separately, as a speed ratio). Bits per character only
compare like with like when the validation text and the tokenizer are the same: the reference records its
dataset, and when the run's differs the report says the comparison is indicative only.
"""
from __future__ import annotations

import html
import json
import re
from importlib import resources

from zhgpt.core import fmt
from zhgpt.report.runs import Run, dig, finite, first_of

FORMAT = "zhgpt-reference/1"
# |difference| under this is "level": bench/RESULTS.md calls 6.055 vs 6.083 bits/char (two 10-minute cpu-tiny
# variants) a tie within run-to-run noise
TIE_BITS = 0.05
SAME_SIZE = 0.01   # train/val character counts within 1 %: the same corpus, cleaned and split the same way


def load_reference(preset: str | None) -> dict | None:
    """The shipped reference of a preset, or None when there is none (or its file is unreadable)."""
    if not preset or not re.fullmatch(r"[A-Za-z0-9_.-]+", preset):
        return None
    f = resources.files("zhgpt").joinpath("assets").joinpath(f"reference_{preset}.json")   # one name a call on 3.10
    try:
        ref = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return ref if isinstance(ref, dict) and ref.get("format") == FORMAT and curve(ref.get("points")) else None


def curve(points, x: str = "tokens_seen") -> list[tuple[float, float]]:
    """(x, val_bpc) of the evaluations that have both, sorted by x, one per x."""
    out: dict[float, float] = {}
    for p in points or []:
        if isinstance(p, dict) and finite(p.get(x)) is not None and finite(p.get("val_bpc")) is not None:
            out[float(p[x])] = float(p["val_bpc"])
    return sorted(out.items())


def interp(pts: list[tuple[float, float]], x: float) -> float:
    """Linear interpolation of a sorted curve at x (inside its range)."""
    import numpy as np
    return float(np.interp(x, [p[0] for p in pts], [p[1] for p in pts]))


def compare_curves(run_pts: list[tuple[float, float]], ref_pts: list[tuple[float, float]],
                   tie: float = TIE_BITS) -> dict | None:
    """Run vs reference at the furthest x both reach: {"at", "run", "ref", "delta", "verdict"} with
    delta = run - reference in bits/char and verdict ahead (lower BPC) / behind / level; None without
    an overlap past x = 0 (step 0 is the untrained model: nothing to compare)."""
    if not run_pts or not ref_pts:
        return None
    lo, hi = max(run_pts[0][0], ref_pts[0][0]), min(run_pts[-1][0], ref_pts[-1][0])
    if hi <= 0 or hi < lo:
        return None
    r, f = interp(run_pts, hi), interp(ref_pts, hi)
    delta = r - f
    verdict = "level" if abs(delta) < tie else "ahead" if delta < 0 else "behind"
    return {"at": hi, "run": r, "ref": f, "delta": delta, "verdict": verdict}


def run_dataset(run: Run) -> dict:
    """What identifies the run's data, in the reference's terms (``bench/make_reference.py`` stores these)."""
    data, train = run.config.get("data") or {}, run.config.get("train") or {}
    splits = data.get("splits") or {}
    return {"spec": train.get("data"), "val_data": train.get("val_data") or "",
            "tokenizer_kind": data.get("tokenizer_kind"), "vocab_size": data.get("vocab_size"),
            "train_chars": first_of(data.get("train_chars"), dig(splits, "train", "chars")),
            "val_chars": first_of(data.get("val_chars"), dig(splits, "val", "chars"))}


def same_data(mine: dict, ref: dict) -> tuple[bool, str]:
    """(comparable, why not): same tokenizer kind and vocabulary, and train and validation text of the same
    size within 1 % (the same corpus through the same cleaning and split)."""
    for k in ("tokenizer_kind", "vocab_size"):
        if mine.get(k) is None or mine.get(k) != ref.get(k):
            return False, f"{k.replace('_', ' ')} {mine.get(k)} here, {ref.get(k)} in the reference"
    for k in ("train_chars", "val_chars"):
        a, b = finite(mine.get(k)), finite(ref.get(k))
        if not a or not b or abs(a - b) > SAME_SIZE * b:
            return False, (f"{k.split('_')[0]} text of {fmt.count(a) if a else '?'} characters here, "
                           f"{fmt.count(b) if b else '?'} in the reference")
    return True, ""


SCHEDULE = ("time_budget", "max_steps", "max_tokens", "lr", "schedule", "warmup_steps", "optimizer", "batch_size")


def run_schedule(run: Run) -> dict:
    """The training-config fields that shape the curve at equal tokens (when and how the LR decays)."""
    train = run.config.get("train") or {}
    return {k: train.get(k) for k in SCHEDULE}


def schedule_difference(mine: dict, ref: dict) -> str:
    """"time budget 90s here, 10m in the reference; ..." for the known fields that differ, else ""."""
    diffs = [f"{k.replace('_', ' ')} {mine[k] or '–'} here, {ref[k] or '–'} in the reference" for k in SCHEDULE
             if k in ref and mine.get(k) is not None and mine.get(k) != ref[k]]
    return "; ".join(diffs)


def run_preset(run: Run) -> str | None:
    """The run's preset; for ``auto`` the preset whose shape it chose (the shipped cpu-tiny reference is the
    yardstick of a CPU auto run; same_data then says whether its tokenizer and data make it comparable)."""
    preset = first_of(run.info.get("preset"), dig(run.config, "train", "preset"))
    if preset == "auto":
        return dig(run.config, "train", "auto", "facts", "shape_preset") or preset
    return preset


def describe_reference(ref: dict) -> str:
    hw = ref.get("machine") or {}
    what = hw.get("gpu") or hw.get("cpu") or "?"
    if hw.get("threads") and not hw.get("gpu"):
        what += f" ({hw['threads']} threads)"
    ds = ref.get("dataset") or {}
    spec = ", ".join(map(str, ds.get("spec") or [])) or "?"
    return (f"measured {ref.get('date', '?')} on {hw.get('device', '?')}: {what}, data {spec} "
            f"({ds.get('tokenizer_kind', '?')} {ds.get('vocab_size', '?')}), command `{ref.get('command', '?')}`")


def reference_lines(run: Run, ref: dict | None = None) -> list[str]:
    """The section's sentences (plain text): which reference, ahead or behind by how much, and whether the
    comparison holds. ``ref``: the reference to use (default: the shipped one of the run's preset)."""
    preset = run_preset(run)
    ref = ref if ref is not None else load_reference(preset)
    if ref is None:
        return [f"No reference curve is shipped for the preset {preset or '(unknown)'}; zhgpt ships one for "
                "cpu-tiny (the CPU default). Compare runs with `zhgpt report --compare` instead."]
    lines = [f"Reference: the {ref.get('preset', preset)} preset, {describe_reference(ref)}."]
    if dig(run.config, "train", "init_from"):
        return lines + ["This run started from another model (--init-from): the reference learns from random "
                        "weights, so its curve is not this run's yardstick."]
    ok, why = same_data(run_dataset(run), ref.get("dataset") or {})
    cmp = compare_curves(curve(run.evals), curve(ref.get("points")))
    if cmp is None:
        return lines + ["No evaluation after step 0 overlaps the reference's tokens seen yet: nothing to compare."]
    at = fmt.count(cmp["at"])
    if cmp["verdict"] == "level":
        verdict = f"level with the reference (within {TIE_BITS} bits/char, run-to-run noise)"
    else:
        where = "ahead of" if cmp["verdict"] == "ahead" else "behind"
        verdict = f"{where} the reference by {abs(cmp['delta']):.2f} bits/char"
    lines.append(f"At {at} tokens seen this run is at {cmp['run']:.3f} bits/char, the reference at "
                 f"{cmp['ref']:.3f}: {verdict}.")
    if not ok:
        lines.append(f"Different corpus or tokenizer ({why}): bits per character of different validation "
                     "text are not the same measurement, so this comparison is indicative only.")
    sched = schedule_difference(run_schedule(run), ref.get("schedule") or {})
    if sched:
        lines.append(f"The schedules differ ({sched}): the learning rate decays at another point, which alone "
                     "moves a curve at equal tokens seen (a run that anneals early looks ahead early).")
    speed = time_to_tokens(run, ref, cmp["at"])
    if speed:
        lines.append(f"Wall time to reach {at} tokens: {fmt.duration(speed[0])} here, {fmt.duration(speed[1])} for "
                     "the reference (that compares the machines, not the learning).")
    return lines


def time_to_tokens(run: Run, ref: dict, tokens: float) -> tuple[float, float] | None:
    """Seconds each run took to see ``tokens`` tokens (interpolated), or None where unknown."""
    def secs(points):
        pts = sorted((float(p["tokens_seen"]), float(p["elapsed_s"])) for p in points
                     if finite(p.get("tokens_seen")) is not None and finite(p.get("elapsed_s")) is not None)
        return interp(pts, tokens) if len(pts) >= 2 and pts[0][0] <= tokens <= pts[-1][0] else None
    mine, theirs = secs(run.evals), secs(ref.get("points") or [])
    return (mine, theirs) if mine and theirs else None


def reference_png(run: Run, ref: dict | None = None) -> bytes | None:
    """val BPC against tokens seen and against wall time, this run beside the reference; None with no
    reference for the preset."""
    from zhgpt.report.plots import _figure, _png
    ref = ref if ref is not None else load_reference(run_preset(run))
    if ref is None:
        return None
    from matplotlib.ticker import FuncFormatter
    fig = _figure((11, 3.8))
    cmp = compare_curves(curve(run.evals), curve(ref.get("points")))
    for i, (x, label) in enumerate((("tokens_seen", "tokens seen"), ("elapsed_s", "wall time (s)"))):
        ax = fig.add_subplot(1, 2, i + 1)
        ref_pts, run_pts = curve(ref.get("points"), x), curve(run.evals, x)
        if ref_pts:
            ax.plot(*zip(*ref_pts), "--", color="0.45", lw=2.2, label=f"reference ({ref.get('preset', '')})")
        if run_pts:
            ax.plot(*zip(*run_pts), "o-", color="C1", ms=3, lw=1.5, label=run.name)
        if i == 0:
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt.count(v) if v >= 0 else ""))
            if cmp:
                ax.axvline(cmp["at"], color="C3", lw=0.8, ls=":")
                delta = round(cmp["delta"], 2) + 0.0   # no "-0.00"
                ax.text(0.97, 0.6, f"at {fmt.count(cmp['at'])} tokens: {delta:+.2f} bits/char\n({cmp['verdict']})",
                        transform=ax.transAxes, ha="right", fontsize=9, color="C3")
        ax.set_xlabel(label)
        ax.set_ylabel("val bits per character")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=9)
    fig.suptitle("Is my loss normal? val BPC beside the reference curve", x=0.01, ha="left")
    return _png(fig)


def reference_md(run: Run) -> list[str]:
    """The section for report.md (the PNG is written beside it by ``write_report``)."""
    lines = reference_lines(run)
    img = ["![reference curve](reference_curve.png)", ""] if load_reference(run_preset(run)) else []
    return ["## Is my loss normal?", "", *img, *(line for s in lines for line in (html.escape(s, quote=False), ""))]


def reference_html(run: Run, e) -> str:
    """The section for report.html, the PNG inline; ``e`` escapes HTML."""
    import base64
    png = reference_png(run)
    out = ["<h2>Is my loss normal?</h2>"]
    if png:
        out.append(f'<img alt="reference curve" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">')
    out += [f"<p>{e(s)}</p>" for s in reference_lines(run)]
    return "\n".join(out)
