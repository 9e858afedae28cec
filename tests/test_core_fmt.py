"""zhgpt.core.fmt: the formatters every stage prints with, at their unit boundaries."""
from zhgpt.core import fmt


def test_count_rounds_across_unit_boundaries():
    assert [fmt.count(v) for v in (12, 999, 999.7, 65536, 999_999, 4_270_000, 999_999_999, 1.5e12)] == [
        "12", "999", "1k", "65.5k", "1M", "4.27M", "1B", "1.5T"]
    assert fmt.count(None) == fmt.count("?") == "–"


def test_durations_and_sizes():
    assert [fmt.clock(s) for s in (5, 185, 3725)] == ["0m05s", "3m05s", "1h02m"]
    assert [fmt.duration(s) for s in (42, 185, 3725, None)] == ["42 s", "3 min 05 s", "1 h 02 min", "–"]
    assert [fmt.estimate_time(s) for s in (0.35, 5, 192, 5400 * 2)] == ["350 ms", "5.0 s", "3.2 min", "3.0 h"]
    assert [fmt.axis_time(s) for s in (30, 300, 5400, 9000)] == ["30s", "5min", "90min", "2.5h"]
    assert fmt.nbytes(512 * 2 ** 20) == "512 MiB" and fmt.nbytes(2 * 2 ** 30) == "2.00 GiB"
    assert fmt.params(12_345_678) == "12.3M" and fmt.params(1_557_000_000) == "1.56B"
