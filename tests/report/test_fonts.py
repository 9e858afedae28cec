"""Chinese plot labels without a system CJK font: the font packaged in the mplfonts wheel."""
from __future__ import annotations

from matplotlib import font_manager

from zhgpt.report import fonts


def test_packaged_font_is_found_and_has_chinese_glyphs():
    files = fonts._packaged_font()
    assert len(files) == 1 and files[0].endswith(fonts.PACKAGED_FONT)
    fonts._add_files(files)
    entry = next(f for f in font_manager.fontManager.ttflist if f.fname == files[0])
    assert entry.name in fonts.CJK_FAMILIES
    from matplotlib.ft2font import FT2Font
    face = FT2Font(files[0])
    assert all(face.get_char_index(ord(ch)) for ch in "这们说话国")   # simplified-only forms included
