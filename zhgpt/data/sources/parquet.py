"""Parquet files: only the text column is read, one batch of rows at a time (pyarrow)."""
from __future__ import annotations

import os
import tempfile
from typing import Iterator

from zhgpt.data.sources.decode import ByteStream
from zhgpt.data.sources.options import ReadStats, SourceFile
from zhgpt.data.sources.reader import CHUNK_BYTES, Reader
from zhgpt.data.sources.records import RecordPolicy, emit_record, name_list
from zhgpt.errors import ZhgptError

def _decompress_to_temp(sf: SourceFile) -> str:
    """Parquet needs random access (its index is at the end): decompress to a temp file, return its path."""
    src = ByteStream(sf)
    fd, tmp = tempfile.mkstemp(suffix=".parquet", prefix="zhgpt-")
    try:
        with os.fdopen(fd, "wb") as out:
            while b := src.read(CHUNK_BYTES):
                out.write(b)
    except BaseException:
        os.unlink(tmp)
        raise
    finally:
        src.close()
    return tmp


def _open_text_column(pa, pq, sf: SourceFile, path: str, f: str):
    """-> (ParquetFile, rows per batch, number of rows) after checking that column ``f`` holds strings.
    ``pa``, ``pq``: the pyarrow and pyarrow.parquet modules (imported by the caller, which names the file
    when pyarrow is missing)."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head != b"PAR1":
        raise ZhgptError(f"{sf.name}: not a parquet file (it does not start with PAR1); "
                         "check the file or its extension")
    try:
        pf = pq.ParquetFile(path, memory_map=False)
    except (pa.ArrowException, OSError) as e:
        raise ZhgptError(f"{sf.name}: cannot read parquet ({e}); the file may be damaged")
    schema = pf.schema_arrow
    if f not in schema.names:
        raise ZhgptError(f"{sf.name}: parquet file has no column {f!r} (columns: "
                         f"{name_list(schema.names)}); pass --field NAME")
    typ = schema.field(f).type
    if not (pa.types.is_string(typ) or pa.types.is_large_string(typ)
            or getattr(pa.types, "is_string_view", lambda t: False)(typ)):
        raise ZhgptError(f"{sf.name}: column {f!r} has type {typ}, not string; "
                         "pass --field NAME to choose a text column")
    md, col = pf.metadata, schema.names.index(f)
    rows = max(md.num_rows, 1)
    nbytes = sum(md.row_group(i).column(col).total_uncompressed_size for i in range(md.num_row_groups)) \
        if md.num_columns == len(schema.names) else 0
    # ~64 MB of text per batch, from the column's uncompressed size
    batch = max(1, min(8192, (64 << 20) // max(1, nbytes // rows))) if nbytes else 1024
    return pf, batch, rows


def parquet_docs(r: Reader, stats: ReadStats | None) -> Iterator[tuple[int, str]]:
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
            path = tmp = _decompress_to_temp(sf)
        f = r.opts.field
        pf, batch, rows = _open_text_column(pa, pq, sf, path, f)
        pol = RecordPolicy(r)
        row = 0
        try:
            for b in pf.iter_batches(batch_size=batch, columns=[f]):
                for v in b.column(0).to_pylist():
                    row += 1
                    yield from emit_record(r, pol, row, v)
                if stats is not None:
                    stats.bytes_read += sf.size * b.num_rows // rows
        except pa.ArrowException as e:
            raise ZhgptError(f"{sf.name}: cannot read parquet near row {row + 1} ({e}); "
                             "the file may be damaged")
        pol.finish()
    finally:
        if tmp:
            os.unlink(tmp)
