"""Plain text files (one document per line, or blank-line separated) and People's Daily ``word/TAG`` text."""
from __future__ import annotations

import re
from typing import Iterator

from zhgpt.data.sources.reader import Reader, cut_point, split_long

def text_docs(r: Reader) -> Iterator[tuple[int, str]]:
    limit = int(r.opts.max_doc_chars)
    if r.opts.doc_sep == "line":
        prev_ends = True
        for ln, text, ends in r.lines(limit):
            if prev_ends and not ends:
                r.entry["cut_docs"] += 1   # first piece of a long line: count each line once
            prev_ends = ends
            if text.strip():
                yield ln, text
        return
    # blank: a document is a run of non-blank lines; pieces of one long line join without "\n"
    buf: list[str] = []
    size, start, open_line, was_cut = 0, 0, False, False
    for ln, text, ends in r.lines(limit):
        if not open_line and not text.strip():
            if buf:
                doc = "".join(buf)
                if doc.strip():
                    yield start, doc
                buf, size = [], 0
            continue
        if not buf:
            start, was_cut = ln, False
        elif not open_line:
            buf.append("\n")
            size += 1
        buf.append(text)
        size += len(text)
        open_line = not ends
        if size > limit:   # keep memory bounded: emit full pieces, carry the rest
            doc = "".join(buf)
            while len(doc) > limit:
                k = cut_point(doc, limit)
                r.entry["cut_docs"] += not was_cut
                was_cut = True
                yield start, doc[:k]
                doc = doc[k:]
            buf, size = [doc], len(doc)
    if buf and (doc := "".join(buf)).strip():
        yield start, doc


_SPACES = re.compile(r"[ \t]+")


def strip_pos_tags(line: str) -> str:
    """``迈向/v  充满/v  希望/n`` -> ``迈向充满希望`` (People's Daily `word/TAG` tokens).

    Only the last ``/TAG`` of a token is removed, so a word that itself contains "/" (a URL, a
    fraction) survives; tokens are split on ASCII spaces only, never on U+3000 inside a word.
    """
    # str.split() is C-fast but also splits on U+3000 and other Unicode spaces, which are all
    # non-printable: a printable line's only whitespace is the ASCII space.
    toks = line.split() if line.isprintable() else [t for t in _SPACES.split(line) if t]
    return "".join([tok.rpartition("/")[0] if "/" in tok else tok for tok in toks])


def people_daily_docs(r: Reader) -> Iterator[tuple[int, str]]:
    for ln, text, _ in r.lines(None):
        if doc := strip_pos_tags(text):
            yield from ((ln, p) for p in split_long(doc, int(r.opts.max_doc_chars)))
