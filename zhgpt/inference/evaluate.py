"""`zhgpt eval --model M FILE...`: perplexity and bits per character of a model on any text.

The text is read through the same sources and cleaning as the data stage; each document is scored with a
sliding window so long documents keep context. The arithmetic (nats -> loss, ppl, bits/char) is the one
training uses on its validation split (``zhgpt.training.evaluation``).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from zhgpt.config import add_args, from_args, narrow, opt, print_config, text_table
from zhgpt.data.sources import ReadOptions
from zhgpt.inference.loading import ModelOptions
from zhgpt.errors import ZhgptError
from zhgpt.training.evaluation import metrics_from_nats

# ------------------------------------------------------------------------ zhgpt eval

@dataclass(kw_only=True)
class EvalConfig(ReadOptions, ModelOptions):
    """`zhgpt eval`: its own fields below; the model (ModelOptions) and how the text is read (ReadOptions,
    the same flags as `zhgpt data prepare`) are inherited."""
    files: list[str] = opt(help="text sources to score (files, folders, globs, builtin:...)", positional=True)
    stride: int = opt(0, "sliding-window step in tokens for documents longer than the context "
                         "(0 = half the context: every scored token sees at least half a context of history)")
    batch_size: int = opt(8, "windows per forward pass")
    max_chars: int = opt(0, "score at most this many characters per file (0 = all)")

    def __post_init__(self):
        self.require_model("eval")
        ReadOptions.__post_init__(self)
        if not self.files:
            raise ZhgptError("zhgpt eval needs at least one text file to score")


def score_document(model, ids: list[int], block_size: int, stride: int, device: str) -> tuple[float, int]:
    """(nats, predicted tokens) of one document, sliding a full context window by ``stride`` tokens and
    scoring only the tokens each window adds (the Hugging Face perplexity recipe)."""
    nats, n = 0.0, 0
    prev_end = 1                      # the first token has no prediction
    for begin in range(0, max(len(ids) - 1, 1), stride):
        end = min(begin + block_size + 1, len(ids))
        x = torch.tensor([ids[begin:end - 1]], device=device)
        y = torch.tensor([ids[begin + 1:end]], device=device)
        new = end - prev_end           # targets at positions prev_end..end-1 are new
        y[:, : y.size(1) - new] = -1
        _, loss = model(x, y, reduction="sum")
        nats += float(loss)
        n += new
        prev_end = end
        if end == len(ids):
            break
    return nats, n


@torch.no_grad()
def main(cfg: EvalConfig) -> list[dict]:
    from zhgpt.data.clean import normalize
    from zhgpt.data.sources import iter_documents
    loaded = cfg.load()
    model, tok, info, device = loaded.model, loaded.tokenizer, loaded.info, loaded.device
    block = model.cfg.block_size
    stride = cfg.stride or max(1, block // 2)
    eot = info.get("eot_id", 0)
    results = []
    for spec in cfg.files:
        opts = narrow(cfg, ReadOptions)
        nats, tokens, chars, docs = 0.0, 0, 0, 0
        for doc in iter_documents([spec], opts):
            text = normalize(doc.text)
            if not text:
                continue
            if cfg.max_chars and chars >= cfg.max_chars:
                break
            # Each document starts after an end-of-text token, as in training, and ends with one
            # (which stands for the newline counted in its characters).
            ids = [eot] + tok.encode(text, add_special_tokens=False).ids + [eot]
            d_nats, d_n = score_document(model, ids, block, stride, device)
            nats, tokens, chars, docs = nats + d_nats, tokens + d_n, chars + len(text) + 1, docs + 1
        if docs == 0:
            raise ZhgptError(f"{spec}: no text to score")
        m = metrics_from_nats(nats, tokens, chars)
        results.append({"file": spec, "docs": docs, "chars": chars, "tokens": tokens,
                        "loss": m["val_loss"], "ppl": m["val_ppl"], "bpc": m["val_bpc"]})
    print(format_table(results))
    return results


def format_table(rows: list[dict]) -> str:
    head = ("file", "docs", "chars", "tokens", "chars/token", "loss", "ppl", "bits/char")
    body = [(r["file"], str(r["docs"]), str(r["chars"]), str(r["tokens"]), f"{r['chars'] / max(r['tokens'], 1):.2f}",
             f"{r['loss']:.4f}", f"{r['ppl']:.2f}", f"{r['bpc']:.4f}") for r in rows]
    return text_table([head, *body])


def configure_parser(p: argparse.ArgumentParser) -> None:
    add_args(p, EvalConfig)


def run_cli(args) -> None:
    cfg = from_args(EvalConfig, args)
    print_config(cfg)
    main(cfg)
