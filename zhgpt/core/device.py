"""Devices and number formats for tensors: one table of dtypes, one rule for `--device auto`,
one rule for `--dtype auto`, one autocast context, used by training, evaluation and every front end."""
from __future__ import annotations

import platform
from contextlib import nullcontext

import torch

from zhgpt.errors import ZhgptError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = tuple(DTYPES)


def resolve_device(name: str) -> str:
    """'auto' -> cuda, else mps, else cpu; an explicit CUDA device without a GPU is a user error."""
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ZhgptError(f"--device {name}: no CUDA GPU is visible to PyTorch; use --device cpu "
                         "(or install a CUDA build of torch)")
    return name


def cpu_has_native_bf16() -> bool:
    try:
        caps = torch._C._cpu._get_cpu_capability()   # what oneDNN/ATen dispatch on; private, hence the fallback
        return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
    except (AttributeError, RuntimeError):
        return False


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """'auto' -> the fastest precision that trains well on ``device``; otherwise the named one."""
    if name == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        # CPUs with native bf16 dot products ran the step 1.3-1.4x faster under bf16 autocast (2-core EPYC,
        # 2026-11-25) and reached a lower bits/char in the same time (bench/RESULTS.md); elsewhere bf16 is
        # emulated and slower than fp32.
        return torch.bfloat16 if device == "cpu" and cpu_has_native_bf16() else torch.float32
    if name not in DTYPES:
        raise ZhgptError(f"--dtype {name}: unknown precision; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).split(".")[-1]


def autocast_ctx(device: str, dtype: torch.dtype):
    """Mixed precision for the forward pass; fp32 runs plain."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


def hardware_info(device: str) -> dict:
    info = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpus"] = torch.cuda.device_count()
    return info
