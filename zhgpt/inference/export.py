"""`zhgpt export`: a run or checkpoint as a Hugging Face folder (``zhgpt.model.hf``), an int8 CPU model
(``zhgpt.model.quantize``) or an ONNX graph checked in ONNX Runtime.
"""
from __future__ import annotations

import argparse
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from zhgpt.config import add_args, from_args, opt, print_config, save_json
from zhgpt.core.device import DTYPES
from zhgpt.core.files import atomic_dir
from zhgpt.errors import ZhgptError
from zhgpt.model.gpt import GPT
from zhgpt.model.hf import EOT_ID, export_hf

# ------------------------------------------------------------------------- ONNX

class _LogitsOnly(torch.nn.Module):
    """The exported graph: token ids (B, T) -> logits (B, T, V), no cache (T is a dynamic axis)."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids)[0]


def export_onnx(model: GPT, tokenizer_dir, out_dir, check: bool = True) -> float:
    """Write out_dir/model.onnx (+ tokenizer, meta.json) with torch.onnx's dynamo exporter and, with
    ``check``, run it in ONNX Runtime on a fresh input: returns the max abs logit difference to PyTorch."""
    try:
        import onnxscript  # noqa: F401  # pyflakes: ignore (the dynamo exporter needs it)
    except ImportError:
        raise ZhgptError("--format onnx needs the onnx extra: pip install onnx onnxscript onnxruntime")
    out_dir = Path(out_dir)
    model = model.float().cpu().eval()
    wrapper = _LogitsOnly(model)
    T = torch.export.Dim("T", min=1, max=model.cfg.block_size)
    example = torch.zeros(1, min(16, model.cfg.block_size), dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(wrapper, (example,), dynamo=True, input_names=["input_ids"],
                                    output_names=["logits"], dynamic_shapes={"input_ids": {1: T}}, verbose=False)
    with atomic_dir(out_dir) as tmp:
        program.save(str(tmp / "model.onnx"))
        shutil.copytree(tokenizer_dir, tmp / "tokenizer")
        save_json(tmp / "meta.json", {"format": "onnx", "inputs": {"input_ids": "int64 (1, T), T <= block_size"},
                                      "outputs": {"logits": "float32 (1, T, vocab)"}, "model": asdict(model.cfg)})
    if not check:
        return float("nan")
    try:
        import onnxruntime as ort
    except ImportError:
        raise ZhgptError("the ONNX file was written but cannot be checked: pip install onnxruntime")
    sess = ort.InferenceSession(str(out_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, model.cfg.vocab_size, (1, max(2, model.cfg.block_size // 2 + 3)), generator=g)
    got = sess.run(None, {"input_ids": x.numpy()})[0]
    with torch.no_grad():
        want = model(x)[0].numpy()
    return float(abs(got - want).max())


# ------------------------------------------------------------------------- zhgpt export

@dataclass
class ExportConfig:
    model: str = opt("", "run folder or checkpoint folder to export")
    out: str = opt("", "output folder (default: MODEL/final for a run, CHECKPOINT-hf for a checkpoint)")
    dtype: str = opt("fp32", "weight precision of the export", choices=("fp32", "bf16", "fp16"))
    quantize: str = opt("", "int8: write a dynamically quantised CPU model (int8 linear layers) that "
                            "`zhgpt generate` loads, instead of a Hugging Face folder", choices=("", "int8"))
    format: str = opt("hf", "hf: Hugging Face model folder; onnx: model.onnx (token ids -> logits, dynamic "
                            "length) for ONNX Runtime, checked against PyTorch after export", choices=("hf", "onnx"))

    def __post_init__(self):
        if not self.model:
            raise ZhgptError("zhgpt export needs --model (a run folder or a checkpoint folder)")


def main(cfg: ExportConfig) -> Path:
    from zhgpt.training.checkpoint import TOKENIZER
    from zhgpt.training.runs import resolve_model_path, load_for_inference
    kind, p = resolve_model_path(cfg.model)
    if kind == "hf":
        raise ZhgptError(f"{p} is already a Hugging Face model folder; nothing to export")
    if kind == "int8":
        raise ZhgptError(f"{p} is already an int8 model; export from the run or checkpoint it came from")
    model, _, info = load_for_inference(p)
    run_dir = p.parent.parent
    is_run = (run_dir / "config.json").is_file()
    if cfg.quantize == "int8":
        from zhgpt.model.quantize import save_int8
        out = Path(cfg.out) if cfg.out else (run_dir / "final-int8" if is_run else p.with_name(p.name + "-int8"))
        save_int8(model, p / TOKENIZER, out, eot_id=info.get("eot_id", EOT_ID))
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        print(f"exported int8 model {p} -> {out} ({size / 2**20:.1f} MiB); run it with `zhgpt generate --model {out}`")
        return out
    if cfg.format == "onnx":
        out = Path(cfg.out) if cfg.out else (run_dir / "final-onnx" if is_run else p.with_name(p.name + "-onnx"))
        diff = export_onnx(model, p / TOKENIZER, out)
        print(f"exported ONNX model {p} -> {out / 'model.onnx'}; ONNX Runtime logits match PyTorch "
              f"(max abs diff {diff:.2e})")
        return out
    out = Path(cfg.out) if cfg.out else (run_dir / "final" if is_run else p.with_name(p.name + "-hf"))
    dtype = DTYPES[cfg.dtype]
    export_hf(model, p / TOKENIZER, out, eot_id=info.get("eot_id", EOT_ID), dtype=dtype)
    print(f"exported {p} -> {out}")
    print(f"load it with: AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return out


def configure_parser(p: argparse.ArgumentParser) -> None:
    add_args(p, ExportConfig)


def run_cli(args) -> None:
    cfg = from_args(ExportConfig, args)
    print_config(cfg, titles=("export",))
    main(cfg)
