"""A zhgpt tokenizer as GGUF tokenizer metadata that makes llama.cpp produce the same token ids.

llama.cpp does not run the Hugging Face tokenizer; it re-implements a handful of tokenizer families
and picks one from ``tokenizer.ggml.model`` (and, for BPE, the split regex from ``tokenizer.ggml.pre``).
Each zhgpt kind maps onto the family whose algorithm is the same, or is refused:

* ``bpe`` (byte-level BPE, GPT-4 split regex) -> ``gpt2`` with pre-tokenizer ``dbrx``. DBRX uses the
  cl100k regex, which is ours: llama.cpp's spelling differs only in writing the case-insensitive
  contractions out and dropping possessive quantifiers, neither of which changes a split here. The
  ``llama3`` pre-tokenizer has the same regex but also sets ``ignore_merges`` (a whole pre-token found
  in the vocabulary is emitted without running merges), which HF's BPE trained by zhgpt does not do.
* ``char`` (one token per known character, byte fallback) -> ``plamo2``, llama.cpp's unigram Viterbi
  with byte fallback. With single characters as the only pieces there is one segmentation, so its
  score rounding (1e-4) and tie-breaking cannot matter; unknown characters become the same
  ``<0xXX>`` tokens.
* ``unigram`` is refused, for now. No llama.cpp tokenizer reproduces HF's unigram exactly:
  ``plamo2`` breaks ties the other way (HF's forward Viterbi keeps the longest *last* piece, PLaMo-2's
  backward one the longest *first*), and ties are common in Chinese text: "９０００" with pieces "０"
  and "００" is "９|０|００" to HF and "９|００|０" to llama.cpp (measured on pd1998: 1 line in 200).
  ``t5``'s UGM breaks ties as HF does but has no byte fallback (an unknown character becomes <unk>),
  and ``llama``'s SPM merges pairs greedily by score, a different segmentation altogether.

Anything else (a pretrained tokenizer with a normalizer, another split regex...) is refused with a
one-line error naming the ``--tokenizer`` to train instead: a GGUF file that tokenizes differently from
the model's own tokenizer would quietly give worse text, which is worse than no file.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from zhgpt.errors import ZhgptError

# gguf.TokenType values (kept here so this module needs no gguf import to be tested)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
CHAR_SCORE = -1.0            # char kind: every character one piece, all equal
UNIGRAM_REFUSAL = ("llama.cpp has no tokenizer that splits text exactly as this unigram tokenizer does (it breaks "
                   "ties such as '９０００' the other way, and its unigram with HF's tie order has no byte fallback); "
                   "train the model with `--tokenizer bpe` (or `--tokenizer char`) to export it to GGUF")
RETRAIN = "train a tokenizer with `zhgpt tokenizer train --kind bpe` (or unigram/char) and a model on it"


@dataclass
class GGUFVocab:
    model: str                          # tokenizer.ggml.model
    pre: str | None                     # tokenizer.ggml.pre (BPE only)
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    special: dict[str, int] = field(default_factory=dict)   # role -> id (bos, eos, eot, unk, pad)
    chat_template: str | None = None
    notes: list[str] = field(default_factory=list)


def _spec(tok) -> dict:
    return json.loads(tok.to_str())


def _check_bpe(spec: dict) -> None:
    from zhgpt.data.tokenizer import SPLIT_PATTERN
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    ok = (len(parts) == 2 and parts[0].get("type") == "Split"
          and (parts[0].get("pattern") or {}).get("Regex") == SPLIT_PATTERN
          and parts[0].get("behavior") == "Isolated"
          and parts[1].get("type") == "ByteLevel" and not parts[1].get("add_prefix_space")
          and not parts[1].get("use_regex", True))
    if not ok or spec.get("normalizer") or spec["model"].get("ignore_merges"):
        raise ZhgptError("this byte-level BPE tokenizer splits text differently from zhgpt's (another "
                         "pre-tokenizer regex, a normalizer or ignore_merges), so llama.cpp would tokenize "
                         f"it differently; {RETRAIN}")


def _check_fallback(spec: dict) -> None:
    from zhgpt.data.tokenizer import BYTE_TOKENS
    m = spec["model"]
    vocab = m["vocab"]
    texts = {p for p, _ in vocab} if m["type"] == "Unigram" else set(vocab)
    if spec.get("normalizer") or spec.get("pre_tokenizer") or not m.get("byte_fallback") \
            or not set(BYTE_TOKENS) <= texts or (m["type"] == "BPE" and m.get("merges")):
        raise ZhgptError("this tokenizer is not one of zhgpt's unigram/char tokenizers (it has a normalizer, "
                         f"a pre-tokenizer, merges or no byte fallback); llama.cpp cannot match it: {RETRAIN}")


def gguf_vocab(tok, n_vocab: int, eot_id: int = 0, chat_template: str | None = None) -> GGUFVocab:
    """GGUF tokenizer metadata for ``tok`` padded to the model's ``n_vocab`` rows (refuses what llama.cpp
    cannot reproduce exactly)."""
    from zhgpt.data.tokenizer import BYTE_TOKENS
    spec = _spec(tok)
    mtype = spec["model"]["type"]
    bytelevel = "ByteLevel" in json.dumps(spec.get("decoder"))
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    id_to_text = {i: t for t, i in tok.get_vocab(with_added_tokens=True).items()}
    size = tok.get_vocab_size(with_added_tokens=True)
    if set(id_to_text) != set(range(size)):
        raise ZhgptError("the tokenizer's ids are not contiguous from 0; it cannot be written as a GGUF vocabulary")
    if size > n_vocab:
        raise ZhgptError(f"the tokenizer has {size} tokens but the model only {n_vocab} rows; they do not belong together")
    if mtype == "BPE" and bytelevel:
        _check_bpe(spec)
        model, pre = "gpt2", "dbrx"
        merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
        scores = None
    elif mtype in ("Unigram", "BPE") and not bytelevel:
        _check_fallback(spec)
        if mtype == "Unigram":
            raise ZhgptError(UNIGRAM_REFUSAL)
        model, pre, merges = "plamo2", None, []
        scores = []
    else:
        raise ZhgptError(f"tokenizer model {mtype!r} has no exact llama.cpp counterpart: {RETRAIN}")
    byte_set = set(BYTE_TOKENS)
    tokens, types = [], []
    for i in range(n_vocab):
        if i >= size:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            if scores is not None:
                scores.append(-math.inf)   # PLaMo-2 never picks a piece with a non-finite score
            continue
        text = id_to_text[i]
        tokens.append(text)
        if i in added and added[i].get("special"):
            types.append(CONTROL)
        elif scores is not None and text in byte_set:
            types.append(BYTE)
        else:
            types.append(NORMAL)
        if scores is not None:
            # control tokens at 0 beat spelling them out, as HF always matches its special tokens
            scores.append(0.0 if types[-1] == CONTROL else CHAR_SCORE)
    special = {"bos": eot_id, "eos": eot_id, "unk": eot_id, "pad": eot_id}
    if (im_end := tok.token_to_id("<|im_end|>")) is not None:
        special["eot"] = im_end
    return GGUFVocab(model=model, pre=pre, tokens=tokens, types=types, scores=scores, merges=merges,
                     special=special, chat_template=chat_template)


def write_vocab(writer, v: GGUFVocab) -> None:
    """Add ``v`` to a ``gguf.GGUFWriter``."""
    writer.add_tokenizer_model(v.model)
    if v.pre:
        writer.add_tokenizer_pre(v.pre)
    writer.add_token_list(v.tokens)
    writer.add_token_types(v.types)
    if v.scores is not None:
        writer.add_token_scores(v.scores)
    if v.merges:
        writer.add_token_merges(v.merges)
    writer.add_bos_token_id(v.special["bos"])
    writer.add_eos_token_id(v.special["eos"])
    writer.add_unk_token_id(v.special["unk"])
    writer.add_pad_token_id(v.special["pad"])
    if "eot" in v.special:
        writer.add_eot_token_id(v.special["eot"])
    writer.add_add_bos_token(False)    # zhgpt models never saw a BOS at the start of a prompt
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    if v.chat_template:
        writer.add_chat_template(v.chat_template)
