"""Writing files and folders so that a reader never sees half of one.

A crash, a kill or a full disk mid-write leaves either the old content or nothing: files go to a temp
name in the same folder and are renamed (``os.replace`` is atomic within one filesystem); folders are
built under a hidden temp name and swapped in when complete. Every artifact zhgpt writes (datasets,
checkpoints, exports, reports) goes through here.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically, with the permissions a plain open() would give (0666 & ~umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())     # mkstemp creates 0600 files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a UTF-8 text file so that readers see either the old or the new content, never half of it."""
    atomic_write_bytes(path, text.encode("utf-8"))


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (best effort: some filesystems refuse directory fsync)."""
    try:
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    except OSError:
        pass


def fsync_files(folder: Path) -> None:
    for f in Path(folder).iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def replace_dir(tmp_dir, final_dir) -> None:
    """Move a fully written folder into place; an interrupted run never leaves a folder that looks complete.
    An existing ``final_dir`` is moved aside first and deleted only once the new one is in place."""
    final_dir = Path(final_dir)
    if final_dir.exists():
        old = final_dir.with_name(final_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final_dir, old)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_dir, final_dir)


def new_temp_dir(final_dir: Path, prefix: str | None = None) -> Path:
    """An empty hidden folder beside ``final_dir`` (same filesystem, so the final rename is atomic), with an
    ordinary folder's permissions (mkdtemp makes it 0700)."""
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix or f".{final_dir.name}.tmp-", dir=final_dir.parent))
    tmp.chmod(0o777 & ~_umask())
    return tmp


@contextlib.contextmanager
def atomic_dir(final_dir, *, tmp: Path | None = None, durable: bool = False) -> Iterator[Path]:
    """``with atomic_dir(out) as tmp:`` write into ``tmp``; on success it replaces ``out`` whole, on any
    error (or KeyboardInterrupt) it is deleted and ``out`` is left as it was. ``durable`` fsyncs the
    files and the parent folder before and after the rename (checkpoints: a power cut keeps them)."""
    final_dir = Path(final_dir)
    tmp = Path(tmp) if tmp is not None else new_temp_dir(final_dir)
    try:
        yield tmp
        if durable:
            fsync_files(tmp)
        replace_dir(tmp, final_dir)
        if durable:
            fsync_dir(final_dir.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(1 << 22):
            h.update(b)
    return h.hexdigest()
