"""`zhgpt export --format gguf|ollama`: a single .gguf file for llama.cpp / LM Studio, or a folder with
the .gguf and an Ollama ``Modelfile`` (``ollama create NAME -f Modelfile``).

The file is written beside its destination and renamed into place, so an interrupted export never
leaves a half file under the final name.
"""
from __future__ import annotations

import os
from pathlib import Path

from zhgpt.errors import ZhgptError

# Ollama's Go template for ChatML, the format zhgpt's chat stage trains (zhgpt.data.chat_template).
OLLAMA_CHATML = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n"
    "{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
)
# Without chat tokens the model is a plain continuation model: the prompt is the text to continue.
OLLAMA_PLAIN = "{{ .Prompt }}"


def _chat_template(tokenizer_dir: Path) -> str | None:
    from zhgpt.config import load_json
    cfg = Path(tokenizer_dir) / "tokenizer_config.json"
    return load_json(cfg).get("chat_template") if cfg.is_file() else None


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise ZhgptError(f"{out} already exists; pass --force to overwrite it or choose another --out")


def export_gguf(model, tokenizer_dir, out, quant: str = "f16", eot_id: int = 0, force: bool = False,
                name: str = "zhgpt") -> tuple[Path, list[str]]:
    """Write ``out`` (.gguf); returns (path, notes)."""
    from zhgpt.data.tokenizer import load_tokenizer
    from zhgpt.model.gguf import QUANTS, write_gguf
    from zhgpt.model.gguf_vocab import gguf_vocab
    if quant not in QUANTS:
        raise ZhgptError(f"--quantize {quant!r} is not a GGUF type; choose one of {', '.join(QUANTS)}")
    out = Path(out)
    _check_out(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    vocab = gguf_vocab(load_tokenizer(tokenizer_dir), model.cfg.vocab_size, eot_id, _chat_template(tokenizer_dir))
    tmp = out.with_name(out.name + ".tmp")
    try:
        notes = write_gguf(model.float().cpu(), vocab, tmp, quant, name=name)
        os.replace(tmp, out)
    except OSError as e:
        raise ZhgptError(f"{out}: cannot write the GGUF file ({e.strerror})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return out, notes


def modelfile(gguf_name: str, chat: bool, block_size: int) -> str:
    """An Ollama Modelfile for the GGUF beside it: template, stop tokens and zhgpt's default sampling."""
    template = OLLAMA_CHATML if chat else OLLAMA_PLAIN
    stops = ["<|im_end|>", "<|endoftext|>"] if chat else ["<|endoftext|>"]
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    lines += ["PARAMETER temperature 0.8", "PARAMETER top_k 50", "PARAMETER top_p 0.95",
              "PARAMETER repeat_penalty 1.1", f"PARAMETER num_ctx {block_size}"]
    return "\n".join(lines) + "\n"


def export_ollama(model, tokenizer_dir, out_dir, quant: str = "q8_0", eot_id: int = 0, force: bool = False,
                  name: str = "zhgpt") -> tuple[Path, list[str]]:
    """Write ``out_dir/`` with ``model.gguf`` and ``Modelfile``; returns (folder, notes)."""
    out_dir = Path(out_dir)
    _check_out(out_dir, force)
    out_dir.mkdir(parents=True, exist_ok=True)
    gguf_path, notes = export_gguf(model, tokenizer_dir, out_dir / "model.gguf", quant, eot_id, force=True, name=name)
    chat = _chat_template(tokenizer_dir) is not None
    (out_dir / "Modelfile").write_text(modelfile(gguf_path.name, chat, model.cfg.block_size), encoding="utf-8")
    return out_dir, notes
