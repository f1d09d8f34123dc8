"""The one scalable font report images draw with, and fitting text into boxes."""

from __future__ import annotations

from functools import lru_cache

from PIL import ImageDraw, ImageFont

ELLIPSIS = "…"
_CANDIDATES = ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")

Box = tuple[int, int, int, int]  # (left, top, right, bottom), right/bottom exclusive like crop()


@lru_cache(maxsize=32)
def font(size: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans at `size` px, else Pillow's bundled scalable font at that size."""
    for name in _CANDIDATES:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    # Pillow >= 10.1 ships a scalable default; the old 11-px bitmap would be unreadable on
    # a large sheet, so it is never used.
    fallback = ImageFont.load_default(size=size)
    if not isinstance(fallback, ImageFont.FreeTypeFont):
        raise RuntimeError("no scalable font: install fonts-dejavu-core or Pillow with FreeType")
    return fallback


def line_height(size: int) -> int:
    """Pixels one line of `font(size)` needs, ascender to descender."""
    ascent, descent = font(size).getmetrics()
    return ascent + descent


def fit_text(text: str, face: ImageFont.FreeTypeFont, max_width: float) -> str:
    """`text`, or its longest prefix plus an ellipsis that fits in `max_width` px."""
    if face.getlength(text) <= max_width:
        return text
    if face.getlength(ELLIPSIS) > max_width:
        return ""
    lo, hi = 0, len(text)  # invariant: prefix of length lo fits, hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if face.getlength(text[:mid].rstrip() + ELLIPSIS) <= max_width:
            lo = mid
        else:
            hi = mid
    return text[:lo].rstrip() + ELLIPSIS


def wrap_text(
    text: str, face: ImageFont.FreeTypeFont, max_width: float, max_lines: int
) -> list[str]:
    """Greedy word wrap into at most `max_lines` lines; what does not fit ends in an ellipsis."""
    words = text.split()
    lines: list[str] = []
    i = 0
    while i < len(words) and len(lines) < max_lines:
        line = words[i]
        i += 1
        while i < len(words) and face.getlength(f"{line} {words[i]}") <= max_width:
            line = f"{line} {words[i]}"
            i += 1
        lines.append(line)
    if i < len(words):
        lines[-1] = " ".join([lines[-1], *words[i:]])
    return [fit_text(line, face, max_width) for line in lines]


def draw_centred(
    draw: ImageDraw.ImageDraw, box: Box, text: str, size: int, fill: tuple[int, int, int]
) -> str:
    """Draw `text` centred in `box`, shortened to its width; returns what was drawn."""
    face = font(size)
    shown = fit_text(text, face, box[2] - box[0])
    if shown:
        centre = ((box[0] + box[2]) // 2, (box[1] + box[3]) // 2)
        draw.text(centre, shown, font=face, fill=fill, anchor="mm")
    return shown
