"""`zhgpt eval --model M FILE...`: perplexity and bits per character of a model on any text.

The text is read through the same sources and cleaning as the data stage; each document is scored with a
sliding window so long documents keep context. The arithmetic (nats -> loss, ppl, bits/char) is the one
training uses on its validation split (``zhgpt.training.evaluation``).

``--continuation N`` adds character-level ROUGE-L and BLEU of the model's continuations of N held-out documents
per file (``zhgpt.inference.continuation``); ``--lm-eval TASKS`` runs lm-evaluation-harness on the model
(``zhgpt.inference.harness``).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from zhgpt.config import add_args, from_args, narrow, opt, print_config, save_json, text_table
from zhgpt.data.sources import ReadOptions
from zhgpt.errors import ZhgptError
from zhgpt.inference.continuation import (MIN_DOC_CHARS, Reservoir, require_packages, score_continuations,
                                          split_document)
from zhgpt.inference.loading import ModelOptions
from zhgpt.model.engine import SamplingParams
from zhgpt.training.evaluation import metrics_from_nats

# ------------------------------------------------------------------------ zhgpt eval

@dataclass(kw_only=True)
class EvalConfig(ReadOptions, ModelOptions):
    """`zhgpt eval`: its own fields below; the model (ModelOptions) and how the text is read (ReadOptions,
    the same flags as `zhgpt data prepare`) are inherited."""
    files: list[str] = opt(help="text sources to score (files, folders, globs, builtin:...)", positional=True,
                           factory=list)
    stride: int = opt(0, "sliding-window step in tokens for documents longer than the context "
                         "(0 = half the context: every scored token sees at least half a context of history)")
    batch_size: int = opt(8, "windows per forward pass")
    max_chars: int = opt(0, "score at most this many characters per file (0 = all)")
    continuation: int | None = opt(None, "also let the model continue N held-out documents per file (a seeded "
                                         "choice): it gets each one's first half and writes as many characters as "
                                         "the real second half; prints character-level ROUGE-L (F1) and BLEU, both "
                                         "0..1, next to bits/char (needs the eval extra)")
    continuation_chars: int = opt(200, "at most this many characters of prompt and of reference per document "
                                       "(a longer document keeps its first 2x)")
    continuation_temperature: float = opt(0.0, "sampling temperature of the continuations (0 = greedy)")
    continuation_top_p: float = opt(1.0, "nucleus sampling of the continuations (1 = off; only with a temperature)")
    continuation_seed: int = opt(0, "seed of the choice of documents and of the sampling")
    lm_eval: str = opt("", "comma-separated lm-evaluation-harness tasks to run on the model (cmmlu, ceval-valid, "
                           "your own...); their data must already be on disk: zhgpt runs lm-eval offline")
    lm_eval_include: str = opt("", "folder of your own lm-eval task YAML files (e.g. a task reading a local JSONL)")
    lm_eval_limit: int = opt(0, "at most this many examples per lm-eval task (0 = all)")
    lm_eval_fewshot: int = opt(-1, "few-shot examples per lm-eval question (-1 = the task's default)")
    json: str = opt("", "also write all results (bits/char, continuation scores and examples, lm-eval) to this "
                        "JSON file")

    def __post_init__(self):
        self.require_model("eval")
        ReadOptions.__post_init__(self)
        if not self.files and not self.lm_eval:
            raise ZhgptError("zhgpt eval needs at least one text file to score (or --lm-eval TASKS)")
        if self.continuation is not None and self.continuation <= 0:
            raise ZhgptError(f"--continuation {self.continuation}: must be a number of documents >= 1")
        if self.continuation:
            require_packages()
        if self.continuation_chars < 8:
            raise ZhgptError(f"--continuation-chars {self.continuation_chars}: must be >= 8 "
                             "(BLEU counts up to 4-character n-grams)")
        if self.lm_eval:
            from zhgpt.inference.harness import check_include, parse_tasks, require_lm_eval
            require_lm_eval()
            parse_tasks(self.lm_eval)
            check_include([self.lm_eval_include] if self.lm_eval_include else [])
        elif self.lm_eval_include:
            raise ZhgptError("--lm-eval-include needs --lm-eval TASKS (the tasks to run from that folder)")

    def sampling(self) -> SamplingParams:
        return SamplingParams(temperature=self.continuation_temperature, top_k=0, top_p=self.continuation_top_p,
                              seed=self.continuation_seed)


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
def score_file(loaded, spec: str, cfg: EvalConfig) -> dict:
    """Bits/char of one text source and, with --continuation, the ROUGE-L/BLEU of continuations of a
    seeded choice of its documents (chosen in the same single pass over the text)."""
    from zhgpt.data.clean import normalize
    from zhgpt.data.sources import iter_documents
    model, tok, eot = loaded.model, loaded.tokenizer, loaded.info.get("eot_id", 0)
    block = model.cfg.block_size
    stride = cfg.stride or max(1, block // 2)
    pick = Reservoir(cfg.continuation or 0, cfg.continuation_seed)
    nats, tokens, chars, docs = 0.0, 0, 0, 0
    for doc in iter_documents([spec], narrow(cfg, ReadOptions)):
        text = normalize(doc.text)
        if not text:
            continue
        if cfg.max_chars and chars >= cfg.max_chars:
            break
        # Each document starts after an end-of-text token, as in training, and ends with one
        # (which stands for the newline counted in its characters).
        ids = [eot] + tok.encode(text, add_special_tokens=False).ids + [eot]
        d_nats, d_n = score_document(model, ids, block, stride, loaded.device)
        nats, tokens, chars, docs = nats + d_nats, tokens + d_n, chars + len(text) + 1, docs + 1
        if cfg.continuation:
            pick.offer(split_document(text, cfg.continuation_chars))
    if docs == 0:
        raise ZhgptError(f"{spec}: no text to score")
    m = metrics_from_nats(nats, tokens, chars)
    row = {"file": spec, "docs": docs, "chars": chars, "tokens": tokens,
           "loss": m["val_loss"], "ppl": m["val_ppl"], "bpc": m["val_bpc"]}
    if cfg.continuation:
        if not pick.items:
            raise ZhgptError(f"{spec}: no document of at least {MIN_DOC_CHARS} characters to continue; "
                             "--continuation needs longer documents (one per line)")
        row.update(score_continuations(loaded.engine, pick.items, cfg.sampling(), desc=f"continuation {spec}"),
                   continuation_skipped=pick.skipped)
    return row


def main(cfg: EvalConfig) -> dict:
    """-> {"files": one row per text source, "lm_eval": the harness's results (with --lm-eval)}."""
    out: dict = {"model": cfg.model, "files": []}
    if cfg.files:
        loaded = cfg.load()
        out["files"] = [score_file(loaded, spec, cfg) for spec in cfg.files]
        print(format_table(out["files"]))
        for r in out["files"]:
            if "rouge_l" in r and r["continuation_docs"] < cfg.continuation:
                print(f"note: {r['file']}: only {r['continuation_docs']} documents long enough to continue "
                      f"(asked for {cfg.continuation}; {r['continuation_skipped']} under {MIN_DOC_CHARS} characters)")
    if cfg.lm_eval:
        from zhgpt.core.device import resolve_device
        from zhgpt.inference.harness import parse_tasks, run_lm_eval
        res = run_lm_eval(cfg.model, parse_tasks(cfg.lm_eval), [cfg.lm_eval_include] if cfg.lm_eval_include else [],
                          resolve_device(cfg.device), cfg.dtype, cfg.lm_eval_limit, cfg.lm_eval_fewshot,
                          cfg.batch_size, **cfg.context_options())
        print(res["table"])
        out["lm_eval"] = res["results"]
    if cfg.json:
        save_json(cfg.json, out)
    return out


def format_table(rows: list[dict]) -> str:
    """bits/char per file; with --continuation, its ROUGE-L and BLEU (0..1) in two more columns after it."""
    cont = any("rouge_l" in r for r in rows)
    head = ("file", "docs", "chars", "tokens", "chars/token", "loss", "ppl", "bits/char")
    head += ("continued", "ROUGE-L", "BLEU") if cont else ()
    body = [(r["file"], str(r["docs"]), str(r["chars"]), str(r["tokens"]), f"{r['chars'] / max(r['tokens'], 1):.2f}",
             f"{r['loss']:.4f}", f"{r['ppl']:.2f}", f"{r['bpc']:.4f}")
            + ((str(r["continuation_docs"]), f"{r['rouge_l']:.4f}", f"{r['bleu']:.4f}") if cont else ())
            for r in rows]
    return text_table([head, *body])


def configure_parser(p: argparse.ArgumentParser) -> None:
    add_args(p, EvalConfig)


def run_cli(args) -> None:
    cfg = from_args(EvalConfig, args)
    print_config(cfg)
    main(cfg)
