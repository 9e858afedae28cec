"""Growing a model's vocabulary for new special tokens (the chat template's), keeping what it knows.

The old rows are kept as they are, so every token the model has learned still means the same. A new
token's rows start at the mean of the learned tokens' rows: a neutral point inside the space the model
uses, rather than random vectors that give the new token an arbitrary (often large) logit from the first
step. Hugging Face's ``resize_token_embeddings(mean_resizing=True)`` starts them the same way.
"""
from __future__ import annotations

import dataclasses

import torch

from zhgpt.model.gpt import GPT


def pad_vocab(n: int) -> int:
    """Round the embedding up to a multiple of 64: matmuls on such shapes are markedly faster on GPUs."""
    return (n + 63) // 64 * 64


@torch.no_grad()
def add_token_rows(model: GPT, new_ids: list[int], n_learned: int) -> GPT:
    """``model`` with rows for the token ids ``new_ids`` set to the mean of rows ``[0, n_learned)``; a new
    (larger, padded) model when an id lies beyond its embedding, else the same model changed in place."""
    need = max(new_ids) + 1
    if need > model.cfg.vocab_size:
        grown = GPT(dataclasses.replace(model.cfg, vocab_size=pad_vocab(need)))
        old = model.state_dict()
        new = grown.state_dict()
        for k, v in old.items():
            if v.shape == new[k].shape:
                new[k].copy_(v)
            else:                       # wte / lm_head: the old rows, the rest left at their init
                new[k][: v.shape[0]].copy_(v)
        model = grown
    rows = torch.tensor(new_ids)
    for weight in {id(w): w for w in (model.transformer.wte.weight, model.lm_head.weight)}.values():
        weight[rows] = weight[:n_learned].mean(0)
    return model
