"""A CJK font for matplotlib, so Chinese prompts and samples in plots are not rows of boxes.

matplotlib's default DejaVu Sans has no Chinese glyphs. We look for a font that has them, in order:
matplotlib's own font list, then ``fc-list :lang=zh`` (fontconfig knows fonts installed after matplotlib
built its cache, e.g. by ``apt-get install fonts-noto-cjk``), then well-known font files. When none
exists we say so once and plots still render (with boxes for Chinese glyphs).
"""
from __future__ import annotations

import contextlib
import functools
import glob
import os
import shutil
import subprocess
import sys
import warnings

# Families in order of preference: Noto/Source Han (Linux, apt fonts-noto-cjk), WenQuanYi (apt
# fonts-wqy-microhei), Droid (old Android/Debian), then the macOS and Windows system fonts.
CJK_FAMILIES = (
    "Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "Source Han Sans CN", "Noto Sans CJK JP",
    "Noto Sans CJK TC", "WenQuanYi Micro Hei", "WenQuanYi Zen Hei", "Droid Sans Fallback",
    "PingFang SC", "Hiragino Sans GB", "Heiti SC", "STHeiti", "Microsoft YaHei", "SimHei", "SimSun",
    "Arial Unicode MS", "AR PL UMing CN", "AR PL UKai CN", "Noto Serif CJK SC",
)
# Where the fonts above live when fontconfig is missing (slim containers, macOS, Windows).
FONT_GLOBS = (
    "/usr/share/fonts/**/*CJK*", "/usr/share/fonts/**/wqy*", "/usr/share/fonts/**/DroidSansFallback*",
    "/usr/share/fonts/**/SourceHan*", "/usr/local/share/fonts/**/*CJK*", "~/.fonts/**/*CJK*",
    "~/.local/share/fonts/**/*CJK*", "/System/Library/Fonts/PingFang.ttc", "/System/Library/Fonts/STHeiti*",
    "/Library/Fonts/Arial Unicode.ttf", "C:/Windows/Fonts/msyh.tt*", "C:/Windows/Fonts/simhei.ttf",
)
PACKAGED_FONT = "NotoSansCJKsc-Regular.otf"     # in the mplfonts wheel (a zhgpt dependency)
INSTALL_HINT = ("install one, e.g. `apt-get install fonts-noto-cjk` (Debian/Ubuntu) or "
                "`dnf install google-noto-sans-cjk-fonts` (Fedora)")


def _known_families() -> set[str]:
    from matplotlib import font_manager
    return {f.name for f in font_manager.fontManager.ttflist}


def _pick(families: set[str]) -> str | None:
    return next((f for f in CJK_FAMILIES if f in families), None)


def _fc_list_files() -> list[str]:
    if not shutil.which("fc-list"):
        return []
    try:
        out = subprocess.run(["fc-list", ":lang=zh", "file"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted({line.split(":")[0].strip() for line in out.splitlines() if line.strip()})


def _add_files(paths) -> None:
    from matplotlib import font_manager
    for path in paths:
        try:
            font_manager.fontManager.addfont(path)
        except (OSError, RuntimeError, ValueError):
            continue   # a font format FreeType cannot read; others may do


def _packaged_font() -> list[str]:
    """Path of the Simplified Chinese Noto Sans CJK font inside the installed mplfonts package (found
    without importing it: its import sets matplotlib options of its own)."""
    import importlib.util
    spec = importlib.util.find_spec("mplfonts")
    for root in (spec.submodule_search_locations or []) if spec else []:
        f = os.path.join(root, "fonts", PACKAGED_FONT)
        if os.path.isfile(f):
            return [f]
    return []


@functools.lru_cache(maxsize=1)
def find_cjk_font() -> str | None:
    """Family name of a font with Chinese glyphs, registering it with matplotlib if needed; None if there
    is none (a warning is printed once: the cache makes this run once per process)."""
    family = _pick(_known_families())
    if family:
        return family
    # matplotlib caches its font list on first use; fonts installed later are unknown to it.
    _add_files(_fc_list_files())
    family = _pick(_known_families())
    if family:
        return family
    files = [p for pattern in FONT_GLOBS for p in glob.glob(os.path.expanduser(pattern), recursive=True)]
    _add_files(f for f in files if f.lower().endswith((".ttf", ".ttc", ".otf")))
    family = _pick(_known_families())
    if family is None:
        # No system font (a fresh container): the Noto Sans CJK SC file that the mplfonts wheel ships.
        _add_files(_packaged_font())
        family = _pick(_known_families())
    if family is None:
        print(f"zhgpt: warning: no CJK font found, Chinese text in plots will show as boxes; {INSTALL_HINT}",
              file=sys.stderr)
    return family


def cjk_rc() -> dict:
    """rcParams for ``matplotlib.rc_context``: DejaVu Sans for Latin text and digits (matplotlib's look),
    the CJK font as per-glyph fallback. matplotlib >= 3.6 falls back glyph by glyph along an explicit
    ``font.family`` list; a generic "sans-serif" family would resolve to one font only."""
    family = find_cjk_font()
    return {"font.family": ["DejaVu Sans"] + ([family] if family else []), "axes.unicode_minus": False}


@contextlib.contextmanager
def quiet_missing_glyphs():
    """Silence matplotlib's one-warning-per-missing-glyph flood when no CJK font exists (we already said
    so once)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph .* missing from")
        warnings.filterwarnings("ignore", message=r"Matplotlib currently does not support")
        yield
