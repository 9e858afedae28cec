"""`zhgpt export`: a run or checkpoint as a Hugging Face folder (``zhgpt.model.hf``), an int8 CPU model
(``zhgpt.model.quantize``), an ONNX graph checked in ONNX Runtime, or a GGUF file / Ollama folder for
llama.cpp (``zhgpt.inference.gguf_export``).
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
    quantize: str = opt("", "int8: a dynamically quantised CPU model (int8 linear layers) that `zhgpt generate` "
                            "loads, instead of a Hugging Face folder; with --format gguf/ollama: f16 (default for "
                            "gguf), q8_0 (default for ollama) or q4_0", choices=("", "int8", "f16", "q8_0", "q4_0"))
    format: str = opt("hf", "hf: Hugging Face model folder; onnx: model.onnx (token ids -> logits, dynamic "
                            "length) for ONNX Runtime, checked against PyTorch after export; gguf: one .gguf file "
                            "for llama.cpp / LM Studio; ollama: a folder with the .gguf and a Modelfile",
                      choices=("hf", "onnx", "gguf", "ollama"))
    force: bool = opt(False, "overwrite --out if it exists (gguf and ollama)")

    def __post_init__(self):
        if not self.model:
            raise ZhgptError("zhgpt export needs --model (a run folder or a checkpoint folder)")
        gguf = self.format in ("gguf", "ollama")
        if gguf and self.quantize == "int8":
            raise ZhgptError("--quantize int8 is zhgpt's own CPU format; for GGUF use --quantize q8_0 (or f16, q4_0)")
        if not gguf and self.quantize in ("f16", "q8_0", "q4_0"):
            raise ZhgptError(f"--quantize {self.quantize} is a GGUF type; add --format gguf (or ollama)")


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
    if cfg.format in ("gguf", "ollama"):
        return _export_gguf(cfg, model, p, info, run_dir if is_run else None)
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


def _export_gguf(cfg: ExportConfig, model, p: Path, info: dict, run_dir: Path | None) -> Path:
    from zhgpt.inference.gguf_export import export_gguf, export_ollama
    from zhgpt.training.checkpoint import TOKENIZER
    name = (run_dir if run_dir is not None else p).name
    if cfg.format == "gguf":
        quant = cfg.quantize or "f16"
        out = Path(cfg.out) if cfg.out else (run_dir / f"{name}-{quant}.gguf" if run_dir is not None
                                             else p.with_name(f"{p.name}-{quant}.gguf"))
        out, notes = export_gguf(model, p / TOKENIZER, out, quant, info.get("eot_id", EOT_ID), cfg.force, name)
        hint = f"run it with: llama-cli -m {out}   (or llama_cpp.Llama(model_path={str(out)!r}))"
    else:
        quant = cfg.quantize or "q8_0"
        out = Path(cfg.out) if cfg.out else (run_dir / "ollama" if run_dir is not None else p.with_name(p.name + "-ollama"))
        out, notes = export_ollama(model, p / TOKENIZER, out, quant, info.get("eot_id", EOT_ID), cfg.force, name)
        hint = f"load it with: cd {out} && ollama create {name} -f Modelfile && ollama run {name}"
    for n in notes:
        print(f"note: {n}")
    size = sum(f.stat().st_size for f in ([out] if out.is_file() else out.rglob("*")) if f.is_file())
    print(f"exported {p} -> {out} ({quant}, {size / 2**20:.1f} MiB)")
    print(hint)
    return out


def configure_parser(p: argparse.ArgumentParser) -> None:
    add_args(p, ExportConfig)


def run_cli(args) -> None:
    cfg = from_args(ExportConfig, args)
    print_config(cfg, titles=("export",))
    main(cfg)
