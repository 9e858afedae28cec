"""What `--preset auto` needs to know about a corpus before anything is tokenised: its size in characters,
distinct characters, documents and their average length, and the share of CJK characters.

One streamed pass over the sources (the same reader `zhgpt data prepare` uses, so what is counted is what
will be trained on, before cleaning and deduplication). A corpus larger than ``max_chars`` is sampled: the
pass stops there and the totals are scaled by the files' bytes on disk over the UTF-8 bytes of the text
read (marked ``sampled``; compressed or markup-heavy files make that estimate rough).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

from zhgpt.data.sources import expand_sources, iter_documents
from zhgpt.data.textstats import is_cjk


@dataclass
class CorpusStats:
    chars: int               # characters (estimated from the read share when ``sampled``)
    docs: int
    distinct: int            # distinct characters seen (in the sample when ``sampled``)
    avg_doc_chars: float
    cjk_share: float         # CJK characters / all non-space characters
    sampled: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def corpus_stats(specs: Iterable[str], max_chars: int = 20_000_000) -> CorpusStats:
    files = expand_sources(list(specs))
    chars = docs = cjk = visible = text_bytes = 0
    seen: set[str] = set()
    sampled = False
    for doc in iter_documents(files):
        text = doc.text
        chars += len(text)
        text_bytes += len(text.encode("utf-8")) + 1
        docs += 1
        seen.update(text)
        visible += sum(1 for ch in text if not ch.isspace())
        cjk += sum(1 for ch in text if is_cjk(ch))
        if chars >= max_chars:
            sampled = True
            break
    total_bytes = sum(f.size for f in files)
    scale = max(1.0, total_bytes / text_bytes) if sampled else 1.0
    return CorpusStats(chars=int(chars * scale), docs=int(docs * scale), distinct=len(seen),
                       avg_doc_chars=chars / max(docs, 1), cjk_share=cjk / max(visible, 1), sampled=sampled)


def piece_compression(specs: Iterable[str], vocab_size: int = 4096, sample_chars: int = 300_000) -> float:
    """Characters per token of a unigram tokenizer of ``vocab_size`` trained on ~``sample_chars`` of the
    corpus (every 4th document) and read on other documents of it (every 4th, offset by one): how much
    pieces can compress this text at all. A few seconds; the reading stops once both samples are full."""
    from zhgpt.data.tokenizer import train_tokenizer
    train, held, n_train, n_held = [], [], 0, 0
    for i, doc in enumerate(iter_documents(expand_sources(list(specs)))):
        if i % 4 == 0 and n_train < sample_chars:
            train.append(doc.text)
            n_train += len(doc.text)
        elif i % 4 == 1 and n_held < sample_chars // 3:
            held.append(doc.text)
            n_held += len(doc.text)
        if n_train >= sample_chars and n_held >= sample_chars // 3:
            break
    tok = train_tokenizer(train, "unigram", vocab_size, show_progress=False)
    tokens = sum(len(tok.encode(t).ids) for t in held)
    return n_held / max(tokens, 1)
