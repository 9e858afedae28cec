"""Bytes to text: open a file, decompress .gz/.zst, refuse binary files, detect the encoding.

Detection looks at the first 64 KB: magic numbers (images, PDFs, archives), BOMs, UTF-16 without BOM,
strict UTF-8, GB18030 vs Big5 by a common-character score, then charset-normalizer. Undecodable bytes
are decoded as :data:`MARK` so the reader can count them or name the exact line.
"""
from __future__ import annotations

import codecs
import gzip
import re
import zlib

from zhgpt.data.sources.options import ReadOptions, SourceFile
from zhgpt.data.sources.specs import file_source
from zhgpt.errors import ZhgptError

SAMPLE_BYTES = 64 * 1024       # enough text for detection to see ~20k CJK characters, cheap per file


class ByteStream:
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
MARK = "\ud800"
codecs.register_error("zhgpt.mark", lambda e: (MARK, e.end))


class _NotText(Exception):
    """Raised by sniffing; the caller turns it into a ZhgptError naming the file."""


def decode_sample(sample: bytes, encoding: str, complete: bool) -> str:
    # final=False tolerates a character cut in half at the end of a 64 KB sample.
    return codecs.getincrementaldecoder(encoding)("zhgpt.mark").decode(sample, final=complete)


def _cjk_score(text: str) -> float:
    """Share of non-ASCII characters that are common Chinese characters or punctuation."""
    nonascii = _NONASCII.findall(text)
    if not nonascii:
        return 0.0
    hits = sum(ch in _COMMON_CJK for ch in nonascii)
    bad = text.count(MARK)
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
        text = decode_sample(sample[:n], enc, complete)
        if not text or text.count(MARK) > len(text) // 1000:
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
    utf8 = decode_sample(sample, "utf-8", complete)
    bad = utf8.count(MARK)
    if bad == 0:
        return "utf-8"
    # Valid 3-byte sequences (all CJK) by chance in GBK data are ~2 % of characters, while a UTF-8
    # file with a few damaged bytes has far more of them than bad sequences.
    if len(_WIDE.findall(utf8)) >= max(8, 4 * bad):
        return "utf-8"
    best, best_score = None, 0.0
    for enc in _CJK_CANDIDATES:
        score = _cjk_score(decode_sample(sample, enc, complete))
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


def open_text(sf: SourceFile, opts: ReadOptions) -> tuple[ByteStream, bytes, str]:
    """Open a file, read its first 64 KB and settle its encoding."""
    src = ByteStream(sf)
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
    sf = file_source(path, path, 1.0, explicit=True)
    src, _, enc = open_text(sf, ReadOptions())
    src.close()
    return enc
