"""Record formats: JSON Lines, JSON (streamed, any size), CSV/TSV; the text field of a record and what
to do with bad records (stop, or count them with --skip-bad-lines)."""
from __future__ import annotations

import csv
import json
import re
from typing import Iterator

from zhgpt.data.sources.reader import MAX_RECORD_CHARS, Reader, split_long
from zhgpt.errors import ZhgptError

JSON_SLACK = 64                # a JSON value ending this close to the buffer end may continue in the next chunk


class _BadRecord(Exception):
    pass


def name_list(names, limit: int = 20) -> str:
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
                keys = name_list(node) if isinstance(node, dict) else _type_name(node)
                raise _BadRecord(f"record has no field {path!r} ({'fields' if not where else where + ' has'}"
                                 f": {keys})")
            walked.append(part)
            node = node[part]
        value = node
    if not isinstance(value, str):
        raise _BadRecord(f"field {path!r} is {_type_name(value)}, not a string")
    return value


class RecordPolicy:
    """Bad lines/records: raise, or (with --skip-bad-lines) count them -- but if a file yields no
    record at all, raise anyway: a wrong --field must not quietly turn a corpus into nothing."""

    def __init__(self, r: Reader):
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


def emit_record(r: Reader, pol: RecordPolicy, line: int, rec) -> Iterator[tuple[int, str]]:
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
        for piece in split_long(text, limit):
            yield line, piece


def jsonl_docs(r: Reader) -> Iterator[tuple[int, str]]:
    pol = RecordPolicy(r)
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
        yield from emit_record(r, pol, ln, rec)
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


def _refuse_json_lines(js: _JsonStream):
    """JSON Lines saved as .json: the first line is a whole object and the next starts another.

    Checked up front because the first object may hold a list (tags) we would mistake for the records.
    """
    nl = js.buf.find("\n", js.pos)
    if nl > 0:
        try:
            first = json.loads(js.buf[js.pos:nl])
        except ValueError:
            first = None
        if isinstance(first, dict) and js.buf[nl:nl + 4096].lstrip()[:1] == "{":
            raise js.error("this looks like JSON Lines (one object per line); rename the file to "
                           ".jsonl")


def _keys_before_list(js: _JsonStream) -> tuple[int, dict] | None:
    """Read a top-level object up to its first list-valued key and stop before the list (None).
    An object that closes without one is a single record: (its line, the object)."""
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
            return start_line, seen
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
            return None   # the list of records
        seen[key] = js.value()
        if len(seen) > 1000:
            raise js.error("top-level object has no list of records in its first 1000 keys; "
                           "a .json file must hold a list of records or an object containing one")


def json_docs(r: Reader) -> Iterator[tuple[int, str]]:
    """A list of records/strings, or an object whose first list-valued key holds them.

    A single object without a list is one record; several top-level objects mean the file is
    really JSON Lines.
    """
    js = _JsonStream(r.chunks(), r.sf.name)
    pol = RecordPolicy(r)
    c = js.peek()
    if c == "":
        return
    if c == "{":
        _refuse_json_lines(js)
        single = _keys_before_list(js)
        if single is not None:
            yield from emit_record(r, pol, *single)   # one record
            pol.finish()
            return
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
        yield from emit_record(r, pol, line, js.value())
        c = js.peek()
        if c == ",":
            js.take(",")
        elif c != "]":
            raise js.error(f"not valid JSON (expected ',' or ']' after a record, found {c!r}); fix the file")
    pol.finish()


def csv_docs(r: Reader) -> Iterator[tuple[int, str]]:
    # Text fields can be long; the default 128 K-character cap would reject ordinary articles.
    # (csv's limit is process-wide; this only ever raises it.)
    if csv.field_size_limit() < MAX_RECORD_CHARS:
        csv.field_size_limit(MAX_RECORD_CHARS)
    delim = "\t" if r.sf.format == "tsv" else ","
    pol = RecordPolicy(r)
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
                                 f"(columns: {name_list(names)}); pass --field NAME (the first row "
                                 "must be a header)")
            continue
        if len(row) != len(header):
            pol.bad(start, f"row has {len(row)} columns but the header has {len(header)}",
                    "fix the row (quote fields that contain the delimiter) or pass --skip-bad-lines")
            continue
        yield from emit_record(r, pol, start, row[idx])
    pol.finish()
