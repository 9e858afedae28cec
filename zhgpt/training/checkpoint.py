"""Checkpoints: a directory you can rebuild from, written atomically, verified on load.

    RUN/checkpoints/step_0000500/
        model.safetensors   weights (tied embeddings stored once)
        optim.pt            optimizer state, RNG states, train state (step, tokens seen, elapsed time)
        meta.json           model config, train config, step, metrics, and size + sha256 of every file
        tokenizer/          the tokenizer the model was trained with

A checkpoint is written to ``.tmp-step_...`` and renamed when complete, so a crash mid-write leaves
no folder that looks finished (``list_checkpoints`` only sees ``step_NNNNNNN``; the next save deletes stale
temp folders). A full disk, or any failed write, deletes the temp folder, keeps every earlier checkpoint and
stops the run with one line naming the folder and the space a checkpoint needs. On load, sizes and hashes
are checked against meta.json; a damaged checkpoint is skipped in favour of the previous good one, with a message.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from zhgpt.config import load_json, save_json
from zhgpt.core.files import atomic_dir, atomic_write_text, new_temp_dir, sha256_file
from zhgpt.core.fmt import nbytes
from zhgpt.errors import ZhgptError
from zhgpt.model.gpt import GPT
# The file names are the run-folder layout's, re-exported because every checkpoint user needs them.
from zhgpt.training.layout import CKPT_DIR, META, OPTIM, TOKENIZER, WEIGHTS, list_checkpoints


def state_dict_for_save(model_state: dict, tie_embeddings: bool) -> dict[str, torch.Tensor]:
    """Weights without duplicates: tied lm_head.weight is the embedding and is stored once."""
    sd = dict(model_state)
    if tie_embeddings:
        sd.pop("lm_head.weight", None)
    return {k: v.detach().contiguous().cpu() for k, v in sd.items() if not k.startswith("rope_")}


def load_weights(model: GPT, path: Path) -> None:
    """Strict load: a missing or unexpected weight is an error, never silently ignored."""
    sd = load_file(str(path))
    if any(".lora_A." in k for k in sd) and not any(".lora_A." in k for k in model.state_dict()):
        # A LoRA run's checkpoint (base and adapters unmerged) loaded as a plain model: merge the adapters.
        from zhgpt.training.lora import fold_lora
        sd = fold_lora(sd, float(load_json(Path(path).parent / META)["train"]["lora_alpha"]))
    if model.cfg.tie_embeddings:
        sd["lm_head.weight"] = sd["transformer.wte.weight"]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.startswith("rope_")]
    if missing or unexpected:
        raise ZhgptError(f"{path}: weights do not match the model config (missing: {missing[:5]}, "
                         f"unexpected: {unexpected[:5]}); was it written by another model shape?")


def save_checkpoint(run_dir: Path, step: int, model_state, optim_state: dict | None, train_state: dict,
                    meta: dict, tokenizer_dir: Path, keep_last: int = 2, best: bool = False) -> Path:
    """Write RUN/checkpoints/step_NNNNNNN atomically; prune old ones (keeping the best).
    ``model_state`` is a module or its full (unsharded) state dict, ``optim_state`` the optimizer's;
    ``meta["model"]`` is the model config. A write that fails for want of space raises a one-line ZhgptError
    and leaves the earlier checkpoints as they were."""
    ckpt_root = Path(run_dir) / CKPT_DIR
    ckpt_root.mkdir(parents=True, exist_ok=True)
    clean_stale(ckpt_root)
    name = f"step_{step:07d}"
    final = ckpt_root / name
    if isinstance(model_state, torch.nn.Module):
        model_state = model_state.state_dict()
    tied = bool(meta.get("model", {}).get("tie_embeddings", False))
    weights = state_dict_for_save(model_state, tied)
    training = {"optimizer": optim_state,
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                "train_state": train_state}
    need = checkpoint_bytes(weights, training, tokenizer_dir)
    free = shutil.disk_usage(ckpt_root).free
    if free < need:      # fail before writing a byte: a half-written checkpoint would only use up the rest
        raise ZhgptError(no_room(run_dir, final, "not enough free space", need, free))
    try:
        with atomic_dir(final, tmp=new_temp_dir(final, prefix=f".tmp-{name}."), durable=True) as tmp:
            save_file(weights, str(tmp / WEIGHTS), metadata={"format": "pt"})
            torch.save(training, tmp / OPTIM)
            shutil.copytree(tokenizer_dir, tmp / TOKENIZER)
            files = {f: {"bytes": (tmp / f).stat().st_size, "sha256": sha256_file(tmp / f)} for f in (WEIGHTS, OPTIM)}
            save_json(tmp / META, {**meta, "step": step, "files": files, "train_state": train_state})
    except Exception as e:     # atomic_dir has deleted the temp folder: nothing half-written is left
        reason = write_fault(e)
        if reason is None:
            raise
        raise ZhgptError(no_room(run_dir, final, reason, need, shutil.disk_usage(ckpt_root).free)) from None
    if best:
        atomic_write_text(ckpt_root / "best", name + "\n")
    _prune(ckpt_root, keep_last)
    return final


def checkpoint_bytes(weights: dict, training: dict, tokenizer_dir: Path) -> int:
    """About what a checkpoint takes on disk: the weights, the optimizer state (Adam: 2 tensors per weight,
    Muon: 1) and the tokenizer, plus 1 % and 64 KiB for file headers and meta.json."""
    def tensor_bytes(x) -> int:
        if isinstance(x, torch.Tensor):
            return x.numel() * x.element_size()
        if isinstance(x, dict):
            return sum(tensor_bytes(v) for v in x.values())
        if isinstance(x, (list, tuple)):
            return sum(tensor_bytes(v) for v in x)
        return 0
    tok = sum(f.stat().st_size for f in Path(tokenizer_dir).rglob("*") if f.is_file())
    raw = tensor_bytes(weights) + tensor_bytes(training) + tok
    return int(raw * 1.01) + 65536


# What a failed write looks like from each writer: OSError from Python (ENOSPC, EFBIG under RLIMIT_FSIZE,
# EDQUOT), "I/O error: ... (os error 28)" from safetensors' Rust writer, "unexpected pos" / "file write failed"
# from torch.save's C++ zip writer (measured on a 1 MB tmpfs and under RLIMIT_FSIZE, torch 2.13).
_WRITE_FAULT = re.compile(r"os error \d+|I/O error|No space left|File too large|quota|unexpected pos|write failed",
                          re.IGNORECASE)


def write_fault(e: BaseException) -> str | None:
    """The reason a checkpoint write failed, when it is the disk's doing (full, file size limit, I/O); else None."""
    if isinstance(e, OSError):
        return e.strerror or errno.errorcode.get(e.errno or 0) or str(e)
    m = _WRITE_FAULT.search(str(e))
    return str(e).splitlines()[0][:160] if m else None


def no_room(run_dir: Path, final: Path, reason: str, need: int, free: int) -> str:
    prev = latest_good(run_dir, quiet=True)
    kept = (f"{prev.name} is intact: make room (or lower --keep-last) and continue with `--resume {run_dir}`"
            if prev else f"no earlier checkpoint; make room and start again with --out {run_dir}")
    size = lambda n: nbytes(n) if n >= 10 * 2 ** 20 else f"{n / 2 ** 20:.1f} MiB"
    return (f"{final}: could not write the checkpoint ({reason}); it needs about {size(need)} free and "
            f"{final.parent} has {size(free)}. {kept}")


def clean_stale(ckpt_root: Path) -> None:
    """Left over from a process killed mid-save: temp folders (never loaded: they are not named step_N) are
    deleted; a ``step_N.old`` whose ``step_N`` is missing (killed between the two renames of a re-save) is the
    complete earlier copy, and is put back."""
    for p in ckpt_root.glob(".tmp-step_*"):
        shutil.rmtree(p, ignore_errors=True)
    for old in ckpt_root.glob("step_*.old"):
        target = old.with_name(old.name[:-len(".old")])
        if target.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, target)


def _best_name(ckpt_root: Path) -> str | None:
    f = ckpt_root / "best"
    return f.read_text(encoding="utf-8").strip() if f.is_file() else None


def _prune(ckpt_root: Path, keep_last: int) -> None:
    steps = list_checkpoints(ckpt_root.parent)
    best = _best_name(ckpt_root)
    for p in steps[:-keep_last] if keep_last > 0 else []:
        if p.name != best:
            shutil.rmtree(p, ignore_errors=True)


def verify(ckpt: Path) -> str | None:
    """None if the checkpoint is complete and intact, else the reason it is not."""
    meta_path = ckpt / META
    if not meta_path.is_file():
        return "no meta.json (half-written)"
    try:
        meta = load_json(meta_path)
    except ZhgptError as e:
        return str(e)
    for f, info in meta.get("files", {}).items():
        p = ckpt / f
        if not p.is_file():
            return f"{f} is missing"
        if p.stat().st_size != info["bytes"]:
            return f"{f} has {p.stat().st_size} bytes, expected {info['bytes']}"
        if sha256_file(p) != info["sha256"]:
            return f"{f} does not match its sha256"
    return None


def latest_good(run_dir: Path, quiet: bool = False) -> Path | None:
    """Newest intact checkpoint of a run; damaged ones are reported and skipped."""
    for ckpt in reversed(list_checkpoints(run_dir)):
        reason = verify(ckpt)
        if reason is None:
            return ckpt
        if not quiet:
            print(f"zhgpt: warning: checkpoint {ckpt} is damaged ({reason}); using the previous one",
                  file=sys.stderr)
    return None


def best_or_latest(run_dir: Path) -> Path | None:
    ckpt_root = Path(run_dir) / CKPT_DIR
    best = _best_name(ckpt_root)
    if best and (ckpt_root / best).is_dir() and verify(ckpt_root / best) is None:
        return ckpt_root / best
    return latest_good(run_dir)


def load_training_state(ckpt: Path) -> dict:
    return torch.load(ckpt / OPTIM, map_location="cpu", weights_only=False)


def restore_rng(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
