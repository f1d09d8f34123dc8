"""Contact sheets: a job's images on a labelled grid, paged to stay under a pixel cap."""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from PIL import Image, ImageDraw

from farm.limits import SHEET_MAX_PIXELS
from farm.report.fonts import Box, draw_centred, font, line_height, wrap_text

DEFAULT_MAX_PIXELS = SHEET_MAX_PIXELS

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
MISSING_GRAY = (128, 128, 128)
FLAG_RED = (220, 30, 30)
STRIP = (25, 25, 25)
STRIP_INK = (235, 235, 235)

TITLE_LINES = 2


@dataclass(frozen=True)
class Axis:
    """One side of the grid: its title and its values' labels in display order."""

    title: str
    values: list[str]


@dataclass(frozen=True)
class SheetCell:
    """One grid position: the image's store key (None: not rendered yet) and its flags."""

    key: str | None
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Page:
    """Where everything on one page goes; all boxes are (left, top, right, bottom)."""

    number: int  # 1-based
    count: int
    rows: range
    cols: range
    width: int
    height: int
    label_px: int
    title_px: int
    flag_px: int
    frame_px: int
    title: Box
    page_label: Box | None  # "page 2 of 3"; None on a single page
    col_title: Box
    row_title: Box  # drawn rotated, reading bottom to top
    col_labels: Mapping[int, Box]
    row_labels: Mapping[int, Box]
    cells: Mapping[tuple[int, int], Box]

    @property
    def suffix(self) -> str:
        return "" if self.count == 1 else f"-p{self.number}"


@dataclass(frozen=True)
class _Metrics:
    cell: int
    label_px: int
    title_px: int
    flag_px: int
    pad: int
    gap: int
    row_label_w: int

    @property
    def margin(self) -> int:
        return 2 * self.pad

    @property
    def left_w(self) -> int:
        return self.margin + line_height(self.label_px) + self.pad + self.row_label_w

    def top_h(self, paged: bool) -> int:
        lh = line_height(self.label_px)
        title = TITLE_LINES * line_height(self.title_px)
        return self.margin + title + (lh if paged else 0) + self.pad + 2 * lh

    def span(self, n: int) -> int:
        return n * self.cell + (n - 1) * self.gap

    def size(self, n_rows: int, n_cols: int, paged: bool) -> tuple[int, int]:
        width = self.left_w + self.span(n_cols) + self.margin
        return width, self.top_h(paged) + self.span(n_rows) + self.margin


def _metrics(rows: Axis, cell_px: int) -> _Metrics:
    # Text scales with the cells so labels stay legible however large the sheet is viewed.
    label_px = max(14, cell_px // 9)
    pad = max(4, label_px // 3)
    widest = max(font(label_px).getlength(v) for v in rows.values)
    row_label_w = int(min(max(widest + 2 * pad, 2 * label_px), max(cell_px, 2 * label_px)))
    return _Metrics(
        cell=cell_px,
        label_px=label_px,
        title_px=max(16, label_px * 5 // 4),
        flag_px=max(12, cell_px // 16),
        pad=pad,
        gap=max(2, cell_px // 32),
        row_label_w=row_label_w,
    )


def _largest(n: int, fits: Callable[[int], bool]) -> int:
    """The largest k in 1..n with fits(k) (fits is monotone), or 0 if none."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _chunks(n: int, most: int) -> list[range]:
    # Even chunks: 40 rows at most 17 a page give 14+13+13, not a thin last page.
    count = math.ceil(n / most)
    size = math.ceil(n / count)
    return [range(start, min(start + size, n)) for start in range(0, n, size)]


def layout(
    rows: Axis, cols: Axis, cell_px: int = 256, max_pixels: int = DEFAULT_MAX_PIXELS
) -> list[Page]:
    """Split the grid into pages of at most `max_pixels` and place every label and cell."""
    if not rows.values or not cols.values:
        raise ValueError("a contact sheet needs at least one row and one column")
    m = _metrics(rows, cell_px)
    n_rows, n_cols = len(rows.values), len(cols.values)

    def area(r: int, c: int, paged: bool) -> int:
        width, height = m.size(r, c, paged)
        return width * height

    if area(n_rows, n_cols, paged=False) <= max_pixels:
        row_chunks, col_chunks = [range(n_rows)], [range(n_cols)]
    else:
        # Whole rows first; columns are split only when a single row is too wide.
        most_cols = _largest(n_cols, lambda c: area(1, c, paged=True) <= max_pixels)
        if most_cols == 0:
            need = area(1, 1, paged=n_rows * n_cols > 1)
            raise ValueError(
                f"max pixels {max_pixels:,} is too small for one {cell_px}-px cell with its "
                f"labels; use at least {need:,}"
            )
        col_chunks = _chunks(n_cols, most_cols)
        widest = max(len(c) for c in col_chunks)
        most_rows = _largest(n_rows, lambda r: area(r, widest, paged=True) <= max_pixels)
        row_chunks = _chunks(n_rows, most_rows)

    count = len(row_chunks) * len(col_chunks)
    pages = []
    for row_range in row_chunks:
        for col_range in col_chunks:
            pages.append(_place(m, row_range, col_range, len(pages) + 1, count))
    return pages


def _place(m: _Metrics, row_range: range, col_range: range, number: int, count: int) -> Page:
    paged = count > 1
    width, height = m.size(len(row_range), len(col_range), paged)
    lh = line_height(m.label_px)
    step = m.cell + m.gap

    y = m.margin
    title = (m.margin, y, width - m.margin, y + TITLE_LINES * line_height(m.title_px))
    y = title[3]
    page_label = None
    if paged:
        page_label = (m.margin, y, width - m.margin, y + lh)
        y += lh
    y += m.pad
    grid_x, grid_y = m.left_w, m.top_h(paged)
    grid_w, grid_h = m.span(len(col_range)), m.span(len(row_range))
    col_title = (grid_x, y, grid_x + grid_w, y + lh)
    row_title = (m.margin, grid_y, m.margin + lh, grid_y + grid_h)
    label_x = m.margin + lh + m.pad

    col_labels = {}
    row_labels = {}
    cells = {}
    for j, c in enumerate(col_range):
        x = grid_x + j * step
        col_labels[c] = (x, y + lh, x + m.cell, y + 2 * lh)
    for i, r in enumerate(row_range):
        top = grid_y + i * step
        row_labels[r] = (label_x, top, label_x + m.row_label_w, top + m.cell)
        for j, c in enumerate(col_range):
            x = grid_x + j * step
            cells[(r, c)] = (x, top, x + m.cell, top + m.cell)
    return Page(
        number=number,
        count=count,
        rows=row_range,
        cols=col_range,
        width=width,
        height=height,
        label_px=m.label_px,
        title_px=m.title_px,
        flag_px=m.flag_px,
        frame_px=max(4, m.cell // 64),
        title=title,
        page_label=page_label,
        col_title=col_title,
        row_title=row_title,
        col_labels=col_labels,
        row_labels=row_labels,
        cells=cells,
    )


def fit_to_cell(image: Image.Image, cell_px: int) -> Image.Image:
    """`image` as RGB with its long side exactly `cell_px`, aspect kept."""
    # JPEG can decode at a reduced scale, which is much faster for large renders.
    image.draft("RGB", (cell_px, cell_px))
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.new("RGB", rgba.size, BACKGROUND)
        image.paste(rgba, mask=rgba.getchannel("A"))
    else:
        image = image.convert("RGB")
    scale = cell_px / max(image.size)
    if scale == 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    # Upscaling uses NEAREST so small renders show their real pixels: a sheet is for spotting
    # artefacts, and interpolation would smear exactly what the reader is looking for.
    resample = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.NEAREST
    return image.resize(size, resample)


def sheet_pages(
    *,
    title: str,
    rows: Axis,
    cols: Axis,
    cells: Mapping[tuple[int, int], SheetCell],
    load: Callable[[str], Image.Image],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    cell_px: int = 256,
) -> Iterator[tuple[str, bytes]]:
    """Yields (page suffix, PNG bytes) per page: "" when one page, else "-p1", "-p2", ..."""
    for r, c in cells:
        if not (0 <= r < len(rows.values) and 0 <= c < len(cols.values)):
            raise ValueError(
                f"sheet cell ({r}, {c}) is outside the {len(rows.values)}×{len(cols.values)} grid"
            )
    for page in layout(rows, cols, cell_px, max_pixels):
        # One page at a time: images are loaded, pasted and dropped before the next page.
        canvas = draw_page(page, title=title, rows=rows, cols=cols, cells=cells, load=load)
        buf = io.BytesIO()
        canvas.save(buf, "PNG", optimize=False)
        del canvas
        yield page.suffix, buf.getvalue()


def draw_page(
    page: Page,
    *,
    title: str,
    rows: Axis,
    cols: Axis,
    cells: Mapping[tuple[int, int], SheetCell],
    load: Callable[[str], Image.Image],
) -> Image.Image:
    """Draw one page of the layout; `load` is called once for each rendered cell on it."""
    canvas = Image.new("RGB", (page.width, page.height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)

    _draw_title(draw, page.title, title, page.title_px)
    if page.page_label is not None:
        draw_centred(
            draw, page.page_label, f"page {page.number} of {page.count}", page.label_px, INK
        )
    draw_centred(draw, page.col_title, cols.title, page.label_px, INK)
    canvas.paste(rotated_label(page.row_title, rows.title, page.label_px), page.row_title[:2])
    for c, box in page.col_labels.items():
        draw_centred(draw, box, cols.values[c], page.label_px, INK)
    for r, box in page.row_labels.items():
        draw_centred(draw, box, rows.values[r], page.label_px, INK)

    for pos, box in page.cells.items():
        cell = cells.get(pos)
        if cell is not None:
            _draw_cell(canvas, draw, box, cell, load, page)
    return canvas


def rotated_label(box: Box, text: str, size: int) -> Image.Image:
    """A label for a tall `box`, drawn turned 90° counter-clockwise (read bottom to top)."""
    width, height = box[2] - box[0], box[3] - box[1]
    strip = Image.new("RGB", (height, width), BACKGROUND)
    draw_centred(ImageDraw.Draw(strip), (0, 0, height, width), text, size, INK)
    return strip.transpose(Image.Transpose.ROTATE_90)


def _draw_title(draw: ImageDraw.ImageDraw, box: Box, text: str, size: int) -> None:
    # Prompts can be paragraphs: wrap to the page width, ellipsize what is left.
    lh = line_height(size)
    lines = wrap_text(text, font(size), box[2] - box[0], TITLE_LINES)
    for i, line in enumerate(lines):
        top = box[1] + i * lh
        draw_centred(draw, (box[0], top, box[2], top + lh), line, size, INK)


def _draw_cell(
    canvas: Image.Image,
    draw: ImageDraw.ImageDraw,
    box: Box,
    cell: SheetCell,
    load: Callable[[str], Image.Image],
    page: Page,
) -> None:
    x0, y0, x1, y1 = box
    side = x1 - x0
    if cell.key is None:
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=MISSING_GRAY)
        draw_centred(draw, box, "missing", page.label_px, INK)
    else:
        image = fit_to_cell(load(cell.key), side)
        canvas.paste(image, (x0 + (side - image.width) // 2, y0 + (side - image.height) // 2))
        del image
    if not cell.flags:
        return
    strip_top = y1 - line_height(page.flag_px) - 2 * page.frame_px
    draw.rectangle((x0, strip_top, x1 - 1, y1 - 1), fill=STRIP)
    inner = (x0 + page.frame_px, strip_top, x1 - page.frame_px, y1 - page.frame_px)
    draw_centred(draw, inner, ", ".join(cell.flags), page.flag_px, STRIP_INK)
    # The frame goes last so it stays unbroken over the strip.
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=FLAG_RED, width=page.frame_px)
