"""Model FLOPs utilisation: the share of the hardware's peak that training turns into model arithmetic.

    MFU = tokens/s x training FLOPs per token / (peak FLOP/s x processes)

FLOPs per token come from the model's shape (``GPT.flops_per_token``: 6 per weight used in a matmul, forward
and backward, plus 12*L*C*T for the attention scores; PaLM appendix B, as nanoGPT and nanochat count them).
The peak is the vendor's dense bf16/fp16 tensor-core figure for GPUs zhgpt knows; anywhere else (a CPU, an
unknown GPU) it is measured once, with a large matmul in the run's precision, and cached per machine,
threads and dtype, so a CPU gets an honest figure instead of an assumed one.
"""
from __future__ import annotations

import json
import os
import time

import torch

from zhgpt.core.device import hardware_info

# Dense (no sparsity) tensor-core peaks, FLOP/s, bf16 and fp16 with fp32 accumulation.
KNOWN_PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "4090": 165e12, "3090": 71e12,
               "T4": 65e12}
_MEASURED: dict[str, float] = {}   # peaks this process has read or measured, by cache folder and key
MATMUL_N = 2048          # square matrices for the measurement; large enough to reach a CPU's steady rate


def known_peak(device_name: str) -> float | None:
    for name, peak in KNOWN_PEAKS.items():
        if name in device_name:
            return peak
    return None


def measure_peak(device: str, dtype: torch.dtype, seconds: float = 0.5) -> float:
    """FLOP/s of repeated (N x N) @ (N x N) matmuls on ``device`` in ``dtype`` (after a warm-up)."""
    n = MATMUL_N if device.startswith("cuda") else MATMUL_N // 2
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    a @ b
    sync()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    sync()
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def peak_flops(device: str, dtype: torch.dtype, cache_dir) -> tuple[float, str]:
    """(peak FLOP/s of one process, where it came from: "table" or "measured")."""
    hw = hardware_info(device)
    if device.startswith("cuda"):
        peak = known_peak(hw.get("gpu", ""))
        if peak and dtype in (torch.bfloat16, torch.float16):
            return peak, "table"
    key = f"{hw.get('gpu', hw['cpu'])} | threads {hw['threads']} | {str(dtype).replace('torch.', '')}"
    path, busy_path = cache_dir / "peak_flops.json", cache_dir / "peak_flops_busy.json"
    memo = f"{cache_dir} | {key}"
    if memo in _MEASURED:         # once per process: an estimate and the run it predicts use the same peak
        return _MEASURED[memo], "measured"
    cache, busy = _read(path, {}), set(_read(busy_path, []))
    if key not in cache or key in busy:
        # A machine busy with other work reads low (0.13 vs 0.97 TFLOP/s on the 2-core EPYC at load 7), and a
        # low peak inflates every MFU after it (78 % was printed): such a measurement is redone at a later
        # start-up, and the highest one is kept.
        now_busy = machine_busy(hw["threads"])
        cache[key] = max(cache.get(key, 0.0), measure_peak(device, dtype))
        busy = (busy | {key}) if now_busy else (busy - {key})
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(cache, indent=1), encoding="utf-8")
            busy_path.write_text(json.dumps(sorted(busy)), encoding="utf-8")
        except OSError:
            pass          # an unwritable cache only costs the measurement next time
    _MEASURED[memo] = cache[key]
    return cache[key], "measured"


def machine_busy(threads: int) -> bool:
    """Other work running now: a 1-minute load average above half the threads (on Unix; False elsewhere)."""
    try:
        return os.getloadavg()[0] > 0.5 * max(threads, 1)
    except (AttributeError, OSError):
        return False


def _read(path, default):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def mfu(tokens_per_sec: float, flops_per_token: float, peak: float, world: int = 1) -> float:
    return tokens_per_sec * flops_per_token / (peak * world)
