"""Train, save, load and measure tokenizers (Hugging Face ``tokenizers``; no hand-written BPE).

Three kinds, all lossless (``decode(encode(x)) == x`` for any string, NFKC-normalised or not) and all
with ``<|endoftext|>`` at id 0 (also bos/eos/unk/pad for ``transformers``):

* ``bpe`` (default) -- byte-level BPE as in GPT-2/GPT-4: every byte is in the vocabulary, so no
  text is ever unknown. Pre-tokenizer: the GPT-4 (cl100k) split regex, then ByteLevel.
* ``unigram`` -- SentencePiece-style unigram LM with byte fallback (``<0x00>``..``<0xFF>``): a
  character not in the vocabulary becomes its UTF-8 bytes instead of ``<unk>``. No pre-tokenizer
  and no Metaspace: Chinese has no spaces, and spaces/newlines stay ordinary characters.
* ``char`` -- one token per character seen in the sample (most frequent first) plus the same 256
  byte-fallback tokens for unseen characters: a BPE model with no merges.

Normalisation (NFKC etc.) is *not* part of the tokenizer: ``zhgpt.data.clean`` does it before text is
tokenised, and the tokenizer itself round-trips any string exactly.

Numbers below were measured on the built-in corpus on a 2-core machine. Pre-tokenizer experiments:
People's Daily 1998-01 + reviews, NFKC, no dedup (4.3 M characters), 5 % of documents + pd1998 val.txt
held out. Defaults: `zhgpt data prepare builtin` (cleaned and deduplicated: 3.1 M characters, 9 MB).
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from zhgpt.config import atomic_write_text, save_json
from zhgpt.errors import ZhgptError

EOT = "<|endoftext|>"
EOT_ID = 0
KINDS = ("bpe", "unigram", "char")

# Default vocabulary sizes. 32k is the size of gpt2-chinese-mini's sentencepiece and of most small
# Chinese GPTs. `zhgpt data prepare builtin`, validation split: 1.87 chars/token (bpe), 1.92
# (unigram), 1.00 (char, 5,718 tokens). The char vocabulary is a cap: the cleaned built-in corpus
# has 5,465 distinct characters, pd1998 4,688.
DEFAULT_VOCAB = {"bpe": 32000, "unigram": 32000, "char": 8000}

# Training sample (characters) per kind: what keeps training under a minute on 2 idle cores.
# bpe at 32k vocab: 4.3 M chars -> 15 s / 0.97 GB peak RSS, 10 M -> 22 s / 1.3 GB, 20 M -> 36 s / 1.8 GB
#   (10 M and 20 M: builtin documents spliced at random points so that, as in a real corpus, the
#   number of distinct pre-tokens keeps growing). 10 M leaves room under the 2 GB memory budget of
#   `zhgpt data prepare` (0.2 GB input: 1.5 GB peak). On the shared host, with about one of the two
#   cores free, the builtin corpus (3.1 M chars after dedup) trains in 19-22 s (45-50 s when busier).
# unigram is ~5x slower per character than bpe (EM over every substring): 1 M -> 9 s, 4 M -> 29-33 s;
#   the builtin corpus 50-53 s on the shared host.
# char only counts characters (~20 M chars/s); 20 M is plenty to see every character in use.
DEFAULT_SAMPLE_CHARS = {"bpe": 10_000_000, "unigram": 4_000_000, "char": 20_000_000}

# The 256 byte-fallback tokens (unigram and char), spelled as SentencePiece spells them.
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]
_BYTE_TOKEN = re.compile(r"^<0x([0-9A-F]{2})>$")
_BYTE_TOKEN_CHARS = "<>x0123456789ABCDEF"

# Byte-level BPE pre-tokenizer: the GPT-4 (cl100k) split regex. Held-out chars/token at 32k vocab
# (the alternatives differ only in this regex; all keep whole Han runs together, which is fine
# for Chinese: a merge may then span a whole clause):
#   GPT-4 regex (letters keep one leading punctuation mark, digits in groups of <= 3)  1.851
#   GPT-2 regex (digit runs whole)                                                      1.743
#   GPT-2 regex, digits in groups of <= 3                                               1.738
#   GPT-2 regex, digits one by one                                                      1.707
#   one Han character per pre-token (merges never cross characters)                    1.039
# GPT-4's gains 6 % over GPT-2's mostly from "，我们"-style tokens (a comma or quote glued to the
# clause after it). Encoding speed is the same within noise (5-7 MB/s raw encode_batch, 2 cores),
# training time too (13-16 s on 4.1 M chars). Capping letter runs at 16 / 8 / 4 characters (so
# merges span less) costs compression -- 1.849 / 1.770 / 1.648 vs 1.873 chars/token on the deduplicated
# corpus -- and does not make encoding measurably faster, so runs stay whole.
SPLIT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
                 r"""|\s*[\r\n]|\s+(?!\S)|\s+""")

# Unigram trainer settings. The HF defaults (seed_size 1 M, 2 EM sub-iterations) took 34 s on 1 M
# chars for held-out 1.775 chars/token; seed 100 k with one sub-iteration takes 8.6 s and gives
# 1.817 (4 M chars: 33 s, 1.894). Fewer seed pieces means fewer pruning rounds to reach 32k.
UNIGRAM_SEED_SIZE = 100_000
UNIGRAM_SUB_ITERATIONS = 1
UNIGRAM_MAX_PIECE = 16
UNIGRAM_CHAR_COVERAGE = 0.9995
# Byte tokens sit in the unigram lattice like any piece, so a literal "<0x41>" in the text could
# match one and decode as "A". A score far below any real path (six single characters score
# > -200) keeps them out of the Viterbi path; they are only reached through byte fallback.
BYTE_TOKEN_SCORE = -1e6


def _fail_kind(kind: str):
    raise ZhgptError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(KINDS)} "
                     "or give the path of a tokenizer folder / tokenizer.json")


def default_vocab_size(kind: str) -> int:
    if kind not in KINDS:
        _fail_kind(kind)
    return DEFAULT_VOCAB[kind]


def default_sample_chars(kind: str) -> int:
    if kind not in KINDS:
        _fail_kind(kind)
    return DEFAULT_SAMPLE_CHARS[kind]


# ----------------------------------------------------------------------------------------------
# training

def take_sample(texts: Iterable[str], sample_chars: int) -> list[str]:
    """The first documents of ``texts`` up to ``sample_chars`` characters in all (the last one cut)."""
    out, n = [], 0
    for t in texts:
        if n >= sample_chars:
            break
        if not t:
            continue
        t = t[: sample_chars - n]
        out.append(t)
        n += len(t)
    return out


def _bpe(sample: list[str], vocab_size: int, show_progress: bool) -> Tokenizer:
    tok = Tokenizer(models.BPE())     # no unk token: the 256-byte alphabet covers every string
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    # min_frequency 2: a pair seen once in the sample is noise, not a unit worth a vocabulary slot.
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=show_progress)
    tok.train_from_iterator(sample, trainer, length=len(sample))
    return tok


def _fallback_decoder():
    # ByteFallback turns runs of <0xE4><0xBD><0xA0> back into "你"; Fuse joins the pieces with no
    # separator (the default decoder would put spaces between tokens).
    return decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])


def _common_chars(sample: list[str], coverage: float, cap: int) -> set[str]:
    """The most frequent characters covering ``coverage`` of the sample, at most ``cap`` of them."""
    counts: Counter = Counter()
    for t in sample:
        counts.update(t)
    total, run, keep = sum(counts.values()), 0, set()
    for ch, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if run >= coverage * total or len(keep) >= cap:
            break
        keep.add(ch)
        run += c
    return keep


def _split_rare(sample: list[str], keep: set[str]) -> Iterator[str]:
    """Each text cut into pieces at characters outside ``keep`` (which are left out), so the trainer
    never sees them and byte fallback spells them."""
    rare = {ord(ch): "\x00" for t in sample for ch in set(t) if ch not in keep}
    if not rare:
        yield from sample
        return
    rare[0] = "\x00"
    for t in sample:
        for piece in t.translate(rare).split("\x00"):
            if piece:
                yield piece


def _unigram(sample: list[str], vocab_size: int, show_progress: bool) -> Tokenizer:
    # HF's UnigramTrainer has no character_coverage: every character of the sample must fit in the
    # vocabulary or it refuses to train. Like SentencePiece (character_coverage 0.9995 for CJK),
    # keep the characters covering 99.95 % of the sample, and at most half the vocabulary, and
    # leave the rarest ones to byte fallback.
    keep = _common_chars(sample, UNIGRAM_CHAR_COVERAGE, (vocab_size - len(BYTE_TOKENS)) // 2)
    sample = list(_split_rare(sample, keep))
    tmp = Tokenizer(models.Unigram())
    trainer = trainers.UnigramTrainer(
        vocab_size=max(vocab_size - len(BYTE_TOKENS), 2), special_tokens=[EOT], unk_token=EOT,
        seed_size=UNIGRAM_SEED_SIZE, n_sub_iterations=UNIGRAM_SUB_ITERATIONS,
        max_piece_length=UNIGRAM_MAX_PIECE, shrinking_factor=0.75, show_progress=show_progress)
    tmp.train_from_iterator(sample, trainer, length=len(sample))
    pieces = json.loads(tmp.to_str())["model"]["vocab"]
    byte_set = set(BYTE_TOKENS)
    # Ids: 0 = EOT, 1..256 = bytes (as SentencePiece orders them), then the trained pieces.
    vocab = [(EOT, 0.0)] + [(b, BYTE_TOKEN_SCORE) for b in BYTE_TOKENS]
    vocab += [(p, s) for p, s in pieces if p != EOT and p not in byte_set]
    # The characters that spell a byte token must be pieces themselves: an unknown character
    # scores (lowest score - 10), which would make the single piece "<0x41>" beat six unknown
    # characters and decode a literal "<0x41>" as "A".
    have, low = {p for p, _ in vocab}, min((s for _, s in pieces), default=0.0)
    missing = [(ch, low) for ch in _BYTE_TOKEN_CHARS if ch not in have]
    excess = len(vocab) + len(missing) - vocab_size
    if missing and excess > 0:
        # make room by dropping the lowest-scoring multi-character pieces (the trainer lists best first)
        drop = [i for i in range(len(vocab) - 1, 256, -1) if len(vocab[i][0]) > 1][:excess]
        vocab = [v for i, v in enumerate(vocab) if i not in set(drop)]
    vocab += missing
    # unk_id 0 is only a formality: with byte_fallback an unknown character becomes bytes.
    tok = Tokenizer(models.Unigram(vocab, unk_id=EOT_ID, byte_fallback=True))
    tok.add_special_tokens([EOT])
    tok.decoder = _fallback_decoder()
    return tok


def _char(sample: list[str], vocab_size: int) -> Tokenizer:
    counts: Counter = Counter()
    for t in sample:
        counts.update(t)   # C-accelerated count, ~20 M chars/s
    n_chars = max(vocab_size - 1 - len(BYTE_TOKENS), 0)
    vocab = {EOT: EOT_ID}
    for b in BYTE_TOKENS:
        vocab[b] = len(vocab)
    # most frequent first; ties broken by code point so training is deterministic
    for ch, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n_chars]:
        vocab[ch] = len(vocab)
    # A BPE with no merges maps each character to its id, and byte_fallback spells an unseen
    # character as its UTF-8 bytes (<0xF0><0xA0><0x80><0x80> for 𠀀) rather than <unk>. No
    # pre-tokenizer: the text stays as it is (one "word" per document; with no merges that is O(n)).
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
    tok.add_special_tokens([EOT])
    tok.decoder = _fallback_decoder()
    return tok


def train_tokenizer(texts: Iterable[str], kind: str = "bpe", vocab_size: int | None = None, *,
                    sample_chars: int | None = None, show_progress: bool = True) -> Tokenizer:
    """Train a tokenizer of ``kind`` on at most ``sample_chars`` characters of ``texts``.

    ``vocab_size`` is the size of the whole vocabulary (EOT and byte tokens included); for ``char``
    it is a cap (the vocabulary is EOT + 256 bytes + the characters seen, at most this many in all).
    """
    if kind not in KINDS:
        _fail_kind(kind)
    vocab_size = int(vocab_size or DEFAULT_VOCAB[kind])
    if vocab_size < 1 + len(BYTE_TOKENS) + 1:
        raise ZhgptError(f"--vocab-size {vocab_size} is too small: the vocabulary holds <|endoftext|> and "
                         f"256 byte tokens before any text; use at least 300 (typical: {DEFAULT_VOCAB[kind]})")
    sample_chars = int(sample_chars or DEFAULT_SAMPLE_CHARS[kind])
    sample = take_sample(texts, sample_chars)
    if not sample:
        raise ZhgptError("no text to train the tokenizer on; check the sources (every document may "
                         "have been dropped by cleaning)")
    if kind == "bpe":
        tok = _bpe(sample, vocab_size, show_progress)
    elif kind == "unigram":
        tok = _unigram(sample, vocab_size, show_progress)
    else:
        tok = _char(sample, vocab_size)
    if tok.token_to_id(EOT) != EOT_ID:   # pragma: no cover - guards the construction above
        raise AssertionError(f"{EOT} must have id {EOT_ID}, got {tok.token_to_id(EOT)}")
    return tok


# ----------------------------------------------------------------------------------------------
# files

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"


def save_tokenizer(tok: Tokenizer, out_dir, kind: str, model_max_length: int = 1024) -> Path:
    """Write a folder that both ``tokenizers`` and ``transformers.AutoTokenizer`` load."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ZhgptError(f"{out}: cannot create the tokenizer folder ({e.strerror}); choose another --out")
    atomic_write_text(out / TOKENIZER_JSON, tok.to_str(pretty=True))
    special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT, "pad_token": EOT}
    save_json(out / TOKENIZER_CONFIG, {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "model_max_length": int(model_max_length),
        # transformers would otherwise be free to "clean up" spaces before punctuation when decoding
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False, "add_eos_token": False,
        "zhgpt_kind": kind,
    })
    save_json(out / SPECIAL_TOKENS_MAP, special)
    return out


def _resolve(path) -> Path:
    """The tokenizer.json for a tokenizer file, a tokenizer folder, an HF model folder or a
    dataset/checkpoint folder holding ``tokenizer/``."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        for cand in (p / TOKENIZER_JSON, p / "tokenizer" / TOKENIZER_JSON):
            if cand.is_file():
                return cand
        return p / TOKENIZER_JSON   # may not exist: an HF folder with only vocab files
    raise ZhgptError(f"{p}: no such tokenizer file or folder; give a folder with tokenizer.json "
                     f"(made by `zhgpt tokenizer train`), or one of {', '.join(KINDS)}")


def load_tokenizer(path) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` from a folder (ours, a dataset's or a Hugging Face model's) or a
    tokenizer.json file."""
    f = _resolve(path)
    if f.is_file():
        try:
            return Tokenizer.from_file(str(f))
        except Exception as e:   # the Rust side raises plain Exception for bad JSON/models
            raise ZhgptError(f"{f}: not a valid tokenizer.json ({str(e).splitlines()[0][:200]}); "
                             "re-create it with `zhgpt tokenizer train` or point at another tokenizer")
    folder = f.parent
    # A Hugging Face folder without tokenizer.json (vocab.txt, vocab.json + merges.txt, or a
    # sentencepiece model): let transformers build the fast tokenizer.
    if any((folder / n).is_file() for n in ("vocab.txt", "vocab.json", "tokenizer.model", TOKENIZER_CONFIG)):
        try:
            from transformers import AutoTokenizer
            hf = AutoTokenizer.from_pretrained(str(folder))
            backend = getattr(hf, "backend_tokenizer", None)
            if backend is not None:
                return backend
        except Exception as e:
            raise ZhgptError(f"{folder}: transformers could not load a tokenizer from this folder "
                             f"({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})") from None
    raise ZhgptError(f"{folder}: no tokenizer.json here; give a folder made by `zhgpt tokenizer train` "
                     "(or a dataset / Hugging Face model folder that contains one)")


def _config_of(path) -> dict:
    try:
        f = _resolve(path)
    except ZhgptError:
        return {}
    cfg = f.parent / TOKENIZER_CONFIG
    if cfg.is_file():
        try:
            return json.loads(cfg.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
    return {}


def tokenizer_kind(path) -> str:
    """``bpe`` / ``unigram`` / ``char`` for our tokenizers, ``pretrained`` for anything else."""
    kind = _config_of(path).get("zhgpt_kind")
    return kind if kind in KINDS else "pretrained"


def tokenizer_hash(path) -> str:
    """sha256 of the tokenizer.json bytes (what decides whether two datasets/models agree)."""
    f = _resolve(path)
    if f.is_file():
        return hashlib.sha256(f.read_bytes()).hexdigest()
    return hashlib.sha256(load_tokenizer(path).to_str().encode("utf-8")).hexdigest()


def _token_text(v) -> str | None:
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


def eot_id(tok: Tokenizer, path=None) -> int:
    """Id of the end-of-text token that separates documents in shards.

    ``<|endoftext|>`` if the vocabulary has it (ours always at 0), else the eos (then sep) token
    named by a Hugging Face folder's config, else a common spelling (``</s>``, ``[SEP]``, ``<eos>``).
    """
    if (i := tok.token_to_id(EOT)) is not None:
        return i
    names = []
    if path is not None:
        cfg = _config_of(path)
        try:
            smap_path = _resolve(path).parent / SPECIAL_TOKENS_MAP
            smap = json.loads(smap_path.read_text(encoding="utf-8")) if smap_path.is_file() else {}
        except (OSError, ValueError, ZhgptError):
            smap = {}
        for key in ("eos_token", "sep_token"):
            for src in (cfg, smap):
                if (t := _token_text(src.get(key))) is not None:
                    names.append(t)
    names += ["</s>", "[SEP]", "<eos>", "<|im_end|>"]
    for n in names:
        if (i := tok.token_to_id(n)) is not None:
            return i
    raise ZhgptError(f"{path or 'the tokenizer'}: has no end-of-text token ({EOT}, an eos_token, </s> or "
                     "[SEP]) to separate documents; use a tokenizer that has one, or train one with "
                     "--tokenizer bpe|unigram|char")


# ----------------------------------------------------------------------------------------------
# statistics

def _fallback_ids(tok: Tokenizer) -> set[int]:
    """Ids of tokens that stand for a single byte of a character missing from the vocabulary:
    ``<0xXX>`` byte-fallback tokens, or (byte-level BPE) lone bytes >= 0x80."""
    vocab = tok.get_vocab(with_added_tokens=False)
    ids = {i for t, i in vocab.items() if _BYTE_TOKEN.match(t)}
    if ids:
        return ids
    spec = json.loads(tok.to_str())
    if "ByteLevel" in json.dumps(spec.get("decoder")):
        # ByteLevel maps byte b to a printable character; bytes >= 0x80 alone are never a character.
        alphabet = _bytes_to_unicode()
        for b in range(0x80, 0x100):
            if (i := vocab.get(alphabet[b])) is not None:
                ids.add(i)
    return ids


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the one ByteLevel uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def _unk_id(tok: Tokenizer) -> int | None:
    model = json.loads(tok.to_str()).get("model", {})
    unk = model.get("unk_token")
    i = tok.token_to_id(unk) if isinstance(unk, str) else model.get("unk_id")
    # Ours point unk at <|endoftext|> as a formality (byte fallback means it is never produced).
    return None if i is None or i == tok.token_to_id(EOT) else int(i)


def longest_tokens(tok: Tokenizer, n: int = 20) -> list[tuple[int, str]]:
    """The ``n`` tokens that decode to the most characters (whole characters only), as (id, text)."""
    items, skip = [], _fallback_ids(tok)
    for i in range(tok.get_vocab_size()):
        if i in skip:
            continue
        text = tok.decode([i], skip_special_tokens=True)
        if text and "\ufffd" not in text:
            items.append((len(text), i, text))
    items.sort(key=lambda x: (-x[0], x[1]))
    return [(i, t) for _, i, t in items[:n]]


def _batches(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    batch = []
    for t in texts:
        batch.append(t)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def stats(tok: Tokenizer, texts: Iterable[str], *, top: int = 20) -> dict:
    """Chars/token, byte-fallback and unknown-token rates, vocabulary size and longest tokens.

    ``texts`` is streamed in batches (any size of corpus). ``fallback`` counts tokens that are a
    lone byte of a character the vocabulary lacks (see ``_fallback_ids``); ``unknown`` counts the
    model's unk token, which our tokenizers never produce.
    """
    fb_ids, unk = _fallback_ids(tok), _unk_id(tok)
    docs = chars = tokens = fallback = unknown = 0
    t0 = time.perf_counter()
    for batch in _batches(texts, 1000):
        for text, enc in zip(batch, tok.encode_batch(batch, add_special_tokens=False)):
            ids = enc.ids
            docs += 1
            chars += len(text)
            tokens += len(ids)
            if fb_ids:
                fallback += sum(1 for i in ids if i in fb_ids)
            if unk is not None:
                unknown += ids.count(unk)
    return {
        "vocab_size": tok.get_vocab_size(),
        "docs": docs, "chars": chars, "tokens": tokens,
        "chars_per_token": chars / tokens if tokens else 0.0,
        "fallback_tokens": fallback, "fallback_rate": fallback / tokens if tokens else 0.0,
        "unknown_tokens": unknown, "unknown_rate": unknown / tokens if tokens else 0.0,
        "longest_tokens": [t for _, t in longest_tokens(tok, top)],
        "seconds": time.perf_counter() - t0,
    }
