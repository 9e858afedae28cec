"""Numbers, sizes and durations as people read them: one home for every formatter the CLI, the logs,
the estimates, the report and the demo print. ``None`` prints as an en dash (a value not recorded)."""
from __future__ import annotations

DASH = "–"
GiB = 1024 ** 3


def count(n, digits: int = 3) -> str:
    """4270000 -> '4.27M', 65536 -> '65.5k', 12 -> '12', 999999 -> '1M' (``digits`` significant digits)."""
    if n is None or not isinstance(n, (int, float)):
        return DASH
    n = float(n)
    units = (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3))
    for i, (unit, div) in enumerate(units):
        if abs(n) >= div:
            text = f"{n / div:.{digits}g}"
            if abs(float(text)) >= 1000 and i > 0:     # 999.9k rounds to 1e+03k: say 1M
                unit, div = units[i - 1]
                text = f"{n / div:.{digits}g}"
            return text + unit
    if abs(float(f"{n:.{digits}g}")) >= 1000:          # 999.7 -> 1k
        return f"{n / 1e3:.{digits}g}k"
    return f"{n:.0f}"


def params(n: int) -> str:
    """A parameter count as presets list it: '12.3M', '1.56B'."""
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def num(x, digits: int = 3) -> str:
    return DASH if x is None else f"{x:.{digits}f}"


def nbytes(n: float) -> str:
    """Memory: '512 MiB' below a GiB, '2.00 GiB' above."""
    if n >= GiB:
        return f"{n / GiB:.2f} GiB"
    return f"{n / 1024 ** 2:.0f} MiB"


def clock(s: float) -> str:
    """Elapsed time / ETA in log lines: '3m05s', '1h02m'."""
    s = int(max(s, 0))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def duration(s) -> str:
    """Wall time in reports: '42 s', '3 min 05 s', '1 h 02 min'."""
    if s is None:
        return DASH
    s = float(s)
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def estimate_time(s: float) -> str:
    """A predicted time, from milliseconds (one step) to hours (a run): '350 ms', '5.0 s', '3.2 min', '1.5 h'."""
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def axis_time(v: float) -> str:
    """A plot tick for seconds: '30s', '5min', '1.5h'."""
    if v < 120:
        return f"{v:.3g}s"
    if v < 7200:
        return f"{v / 60:.3g}min"
    return f"{v / 3600:.3g}h"
