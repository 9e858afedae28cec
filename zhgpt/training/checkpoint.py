"""Checkpoints: a directory you can rebuild from, written atomically, verified on load.

    RUN/checkpoints/step_0000500/
        model.safetensors   weights (tied embeddings stored once)
        optim.pt            optimizer state, RNG states, train state (step, tokens seen, elapsed time)
        meta.json           model config, train config, step, metrics, and size + sha256 of every file
        tokenizer/          the tokenizer the model was trained with

A checkpoint is written to ``.tmp-step_...`` and renamed when complete, so a crash mid-write leaves
no folder that looks finished. On load, sizes and hashes are checked against meta.json; a damaged
checkpoint is skipped in favour of the previous good one, with a message.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from zhgpt.config import load_json, save_json
from zhgpt.core.files import fsync_dir, fsync_files, sha256_file
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
    ``meta["model"]`` is the model config."""
    ckpt_root = Path(run_dir) / CKPT_DIR
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:07d}"
    final = ckpt_root / name
    tmp = ckpt_root / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    if isinstance(model_state, torch.nn.Module):
        model_state = model_state.state_dict()
    tied = bool(meta.get("model", {}).get("tie_embeddings", False))
    save_file(state_dict_for_save(model_state, tied), str(tmp / WEIGHTS), metadata={"format": "pt"})
    torch.save({"optimizer": optim_state,
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                "train_state": train_state}, tmp / OPTIM)
    shutil.copytree(tokenizer_dir, tmp / TOKENIZER)
    files = {}
    for f in (WEIGHTS, OPTIM):
        files[f] = {"bytes": (tmp / f).stat().st_size, "sha256": sha256_file(tmp / f)}
    save_json(tmp / META, {**meta, "step": step, "files": files, "train_state": train_state})
    fsync_files(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(ckpt_root)
    if best:
        (ckpt_root / "best").write_text(name + "\n", encoding="utf-8")
    _prune(ckpt_root, keep_last)
    return final


def _best_name(ckpt_root: Path) -> str | None:
    f = ckpt_root / "best"
    return f.read_text(encoding="utf-8").strip() if f.is_file() else None


def _prune(ckpt_root: Path, keep_last: int) -> None:
    steps = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())
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
