"""One file's decoded text as chunks and lines, with long lines and documents cut while being read.

Nothing reads a whole file into memory: bytes are decoded in :data:`CHUNK_BYTES` chunks, lines are
yielded one at a time, and a line longer than ``max_doc_chars`` (a 200 MB crawl dump with no newline)
is cut into pieces, preferably after a sentence end, while it is still being read.
"""
from __future__ import annotations

import codecs
from typing import Iterator

from zhgpt.data.sources.decode import MARK, SAMPLE_BYTES, ByteStream, decode_sample, open_text
from zhgpt.data.sources.options import ReadOptions, ReadStats, SourceFile
from zhgpt.errors import ZhgptError

CHUNK_BYTES = 1 << 20          # decode 1 MiB at a time: ~2-4 MB of str, constant whatever the file size
MAX_RECORD_CHARS = 1 << 28     # one JSON/CSV record may not exceed 256 Mi chars (it must sit in RAM whole)

_SENTENCE_END = "。！？\n"
_CLOSERS = "”’」』）》】\"')"   # kept with the sentence they close when a long line is cut


def cut_point(text: str, limit: int) -> int:
    """Where to cut ``text`` (longer than ``limit``): after the last sentence end in the first
    ``limit`` characters if that keeps at least half of them, else exactly at ``limit``."""
    window = text[:limit]
    end = max(window.rfind(ch) for ch in _SENTENCE_END)
    if end + 1 < limit // 2:
        return limit
    end += 1
    while end < limit and text[end] in _CLOSERS:   # keep 。” together
        end += 1
    return end


def split_long(text: str, limit: int) -> Iterator[str]:
    while len(text) > limit:
        k = cut_point(text, limit)
        yield text[:k]
        text = text[k:]
    if text:
        yield text


class Reader:
    """Decodes one file's bytes incrementally and keeps its stats entry up to date."""

    def __init__(self, sf: SourceFile, opts: ReadOptions, stats: ReadStats | None):
        self.sf, self.opts, self.stats = sf, opts, stats
        self.entry = {"path": sf.name, "format": sf.format, "compression": sf.compression,
                      "encoding": None, "bytes": sf.size, "docs": 0, "bad_lines": 0,
                      "replaced_chars": 0, "cut_docs": 0, "weight": sf.weight}
        if stats is not None:
            stats.files.append(self.entry)
        self._last_pos = 0

    def progress(self, src: ByteStream):
        if self.stats is not None:
            pos = src.tell_raw()
            self.stats.bytes_read += max(0, pos - self._last_pos)
            self._last_pos = pos

    def chunks(self) -> Iterator[str]:
        """Decoded text of the file in ~1 MiB pieces, BOM removed, bad bytes handled per --errors."""
        src, sample, enc = open_text(self.sf, self.opts)
        self.entry["encoding"] = enc
        name, strict = self.sf.name, self.opts.errors == "strict"
        try:
            dec = codecs.getincrementaldecoder(enc)("zhgpt.mark")
            newlines = 0      # newlines already passed on: gives the line of a bad byte
            first, data = True, sample
            while True:
                final = not data
                text = dec.decode(data, final)
                if first and text:
                    first = False
                    if text[0] == "\ufeff":
                        text = text[1:]
                if MARK in text:
                    if strict:
                        line = newlines + text.count("\n", 0, text.index(MARK)) + 1
                        in_sample = decode_sample(sample, enc, len(sample) < SAMPLE_BYTES).count(MARK)
                        raise ZhgptError(
                            f"{name}:{line}: bytes that are not valid {enc} ({in_sample} bad byte "
                            f"sequence(s) in the first 64 KB); fix the file, pass --errors replace to "
                            f"replace them with U+FFFD, or --encoding NAME if it uses another encoding")
                    self.entry["replaced_chars"] += text.count(MARK)
                    text = text.replace(MARK, "\ufffd")
                if text:
                    newlines += text.count("\n")
                    yield text
                self.progress(src)
                if final:
                    break
                data = src.read(CHUNK_BYTES)
        finally:
            src.close()

    def lines(self, max_chars: int | None) -> Iterator[tuple[int, str, bool]]:
        """(line number, text, ends_line) without the newline (and without a trailing \\r).

        With ``max_chars``, a longer line comes as several pieces with the same line number, all
        but the last with ends_line False; it is cut while being read, so a 200 MB line costs
        ~max_chars + one chunk of memory. Without it (JSONL, CSV need whole records) a line longer
        than MAX_RECORD_CHARS is an error.
        """
        partial: list[str] = []   # pieces of the current unfinished line
        plen = 0
        line_no = 1
        for text in self.chunks():
            if "\n" not in text:
                partial.append(text)
                plen += len(text)
                if max_chars and plen > max_chars:
                    buf = "".join(partial)
                    while len(buf) > max_chars:
                        k = cut_point(buf, max_chars)
                        yield line_no, buf[:k], False
                        buf = buf[k:]
                    partial, plen = [buf], len(buf)
                elif not max_chars and plen > MAX_RECORD_CHARS:
                    raise ZhgptError(f"{self.sf.name}:{line_no}: a line is longer than "
                                     f"{MAX_RECORD_CHARS:,} characters; {self.sf.format.upper()} "
                                     "needs one record per line -- split the record or use a .txt file")
                continue
            parts = text.split("\n")
            if partial:
                parts[0] = "".join(partial) + parts[0]
            tail = parts.pop()
            for p in parts:
                yield from _line_pieces(line_no, p[:-1] if p.endswith("\r") else p, max_chars)
                line_no += 1
            partial, plen = ([tail], len(tail)) if tail else ([], 0)
        if partial:
            p = "".join(partial)
            p = p[:-1] if p.endswith("\r") else p
            if p:
                yield from _line_pieces(line_no, p, max_chars)


def _line_pieces(line_no: int, line: str, max_chars: int | None) -> Iterator[tuple[int, str, bool]]:
    """(line number, text, ends the line): the line whole, or cut into pieces of at most ``max_chars``."""
    if max_chars and len(line) > max_chars:
        pieces = list(split_long(line, max_chars))
        for i, piece in enumerate(pieces):
            yield line_no, piece, i == len(pieces) - 1
    else:
        yield line_no, line, True
