"""Contact sheets, strength animations and report fonts, on synthetic images."""

from __future__ import annotations

import gc
import io
import re
import weakref

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from farm.report.animate import strength_animation
from farm.report.fonts import ELLIPSIS, fit_text, font, line_height, wrap_text
from farm.report.sheets import (
    FLAG_RED,
    MISSING_GRAY,
    Axis,
    SheetCell,
    layout,
    rotated_label,
    sheet_pages,
)

STRENGTHS = Axis("neon strength", ["0", "0.2", "0.4", "0.6", "0.8", "1"])
SEEDS = Axis("seed", ["1", "2", "3"])


def swatch(key: str, size: int = 128) -> Image.Image:
    """A blue-green gradient that varies with the key and never contains red."""
    seed = sum(map(ord, key))
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    pixels = np.zeros((size, size, 3), np.uint8)
    pixels[..., 1] = (ramp[None, :] + seed) % 200
    pixels[..., 2] = 120 + (ramp[:, None] + seed) % 120
    return Image.fromarray(pixels)


class Loader:
    """Counts loads and keeps weak references, to check laziness and release."""

    def __init__(self, size: int = 128) -> None:
        self.size = size
        self.calls: list[str] = []
        self.images: list[weakref.ref[Image.Image]] = []

    def __call__(self, key: str) -> Image.Image:
        self.calls.append(key)
        image = swatch(key, self.size)
        self.images.append(weakref.ref(image))
        return image


def full_grid(rows: Axis, cols: Axis) -> dict[tuple[int, int], SheetCell]:
    return {
        (r, c): SheetCell(f"{r}-{c}")
        for r in range(len(rows.values))
        for c in range(len(cols.values))
    }


def decode(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return image.convert("RGB")


def centred_template(size: tuple[int, int], text: str, px: int) -> Image.Image:
    """`text` drawn independently the way a label is specified: centred, fitted to the width."""
    template = Image.new("RGB", size, (255, 255, 255))
    shown = fit_text(text, font(px), size[0])
    ImageDraw.Draw(template).text(
        (size[0] // 2, size[1] // 2), shown, font=font(px), fill=(20, 20, 20), anchor="mm"
    )
    return template


def has_ink(region: Image.Image) -> bool:
    return bool((np.asarray(region.convert("L")) < 100).any())


def box_size(box: tuple[int, int, int, int]) -> tuple[int, int]:
    return box[2] - box[0], box[3] - box[1]


def test_font_is_scalable_not_the_bitmap_default() -> None:
    face = font(20)
    assert isinstance(face, ImageFont.FreeTypeFont)
    assert face.size == 20
    assert font(20) is face
    assert font(40).getlength("strength") > 1.8 * face.getlength("strength")


def test_fit_and_wrap_shorten_with_an_ellipsis() -> None:
    face = font(16)
    assert fit_text("0.4", face, 200) == "0.4"
    short = fit_text("a very long lora name that cannot fit", face, 80)
    assert short.endswith(ELLIPSIS) and face.getlength(short) <= 80
    lines = wrap_text("a cat in neon light " * 20, face, 300, 2)
    assert len(lines) == 2 and lines[-1].endswith(ELLIPSIS)
    assert all(face.getlength(line) <= 300 for line in lines)


def test_labels_are_the_expected_text() -> None:
    (page,) = layout(STRENGTHS, SEEDS, cell_px=128)
    assert page.label_px >= 14 and page.page_label is None
    (suffix, png), *rest = sheet_pages(
        title="a cat",
        rows=STRENGTHS,
        cols=SEEDS,
        cells=full_grid(STRENGTHS, SEEDS),
        load=Loader(),
        cell_px=128,
    )
    assert suffix == "" and not rest
    sheet = decode(png)
    assert sheet.size == (page.width, page.height)

    labels = [(page.col_title, SEEDS.title)]
    labels += [(page.col_labels[c], v) for c, v in enumerate(SEEDS.values)]
    labels += [(page.row_labels[r], v) for r, v in enumerate(STRENGTHS.values)]
    for box, text in labels:
        crop = sheet.crop(box)
        assert has_ink(crop), text
        assert crop.tobytes() == centred_template(box_size(box), text, page.label_px).tobytes(), (
            text
        )

    # The row axis title reads bottom to top: the same text, turned a quarter counter-clockwise.
    w, h = box_size(page.row_title)
    upright = centred_template((h, w), STRENGTHS.title, page.label_px)
    crop = sheet.crop(page.row_title)
    assert has_ink(crop)
    assert crop.tobytes() == upright.transpose(Image.Transpose.ROTATE_90).tobytes()
    assert crop.tobytes() == rotated_label(page.row_title, STRENGTHS.title, page.label_px).tobytes()

    # A different label would not match: the template check is not trivially true.
    other = centred_template(box_size(page.col_labels[0]), "9", page.label_px)
    assert sheet.crop(page.col_labels[0]).tobytes() != other.tobytes()


def test_long_labels_are_ellipsized_not_overlapped() -> None:
    cols = Axis("lora", ["an-extremely-long-adapter-name-v2", "another-very-long-adapter-name"])
    (page,) = layout(STRENGTHS, cols, cell_px=128)
    (_, png), *_ = sheet_pages(
        title="t", rows=STRENGTHS, cols=cols, cells={}, load=Loader(), cell_px=128
    )
    sheet = decode(png)
    left, right = page.col_labels[0], page.col_labels[1]
    shown = fit_text(cols.values[0], font(page.label_px), box_size(left)[0])
    assert shown.endswith(ELLIPSIS)
    assert (
        sheet.crop(left).tobytes()
        == centred_template(box_size(left), cols.values[0], page.label_px).tobytes()
    )
    gap = sheet.crop((left[2], left[1], right[0], left[3]))
    assert not has_ink(gap)


@pytest.mark.parametrize("max_pixels", [1_200_000, 300_000])
def test_a_grid_over_the_cap_is_paged(max_pixels: int) -> None:
    rows = Axis("neon strength", [f"{i / 10:g}" for i in range(40)])
    cols = Axis("seed", [str(100 + i) for i in range(11)])
    pages = layout(rows, cols, cell_px=128, max_pixels=max_pixels)
    load = Loader()
    out = list(
        sheet_pages(
            title="a long prompt " * 40,
            rows=rows,
            cols=cols,
            cells=full_grid(rows, cols),
            load=load,
            max_pixels=max_pixels,
            cell_px=128,
        )
    )
    assert len(out) == len(pages) > 2
    assert [s for s, _ in out] == [f"-p{i}" for i in range(1, len(pages) + 1)]
    if max_pixels == 300_000:
        assert any(len(p.cols) < len(cols.values) for p in pages)  # one row was too wide

    seen: list[tuple[int, int]] = []
    for page, (_, png) in zip(pages, out, strict=True):
        sheet = decode(png)
        assert sheet.size == (page.width, page.height)
        assert page.width * page.height <= max_pixels
        seen += list(page.cells)
        assert set(page.row_labels) == set(page.rows) and set(page.col_labels) == set(page.cols)
        assert page.page_label is not None and has_ink(sheet.crop(page.page_label))
        for box in [page.col_title, page.row_title, *page.row_labels.values()]:
            assert has_ink(sheet.crop(box))
        first_row = page.rows[0]
        box = page.row_labels[first_row]
        template = centred_template(box_size(box), rows.values[first_row], page.label_px)
        assert sheet.crop(box).tobytes() == template.tobytes()
        page_box = page.page_label
        text = f"page {page.number} of {len(pages)}"
        assert (
            sheet.crop(page_box).tobytes()
            == centred_template(box_size(page_box), text, page.label_px).tobytes()
        )

    everything = [(r, c) for r in range(40) for c in range(11)]
    assert sorted(seen) == everything  # every cell on exactly one page
    assert sorted(load.calls) == sorted(f"{r}-{c}" for r, c in everything)


def test_too_small_a_cap_names_the_cap_and_what_works() -> None:
    with pytest.raises(ValueError, match="5,000") as err:
        layout(STRENGTHS, SEEDS, cell_px=128, max_pixels=5_000)
    message = str(err.value)
    assert "\n" not in message
    need = max(int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", message))
    pages = layout(STRENGTHS, SEEDS, cell_px=128, max_pixels=need)
    assert all(p.width * p.height <= need for p in pages)
    with pytest.raises(ValueError):
        layout(STRENGTHS, SEEDS, cell_px=128, max_pixels=need - 1)


def test_flagged_missing_and_absent_cells() -> None:
    cols = Axis("seed", ["1", "2", "3", "4"])
    rows = Axis("ink strength", ["1"])
    cells = {
        (0, 0): SheetCell("hot", ("saturated", "overdriven")),
        (0, 1): SheetCell("fine"),
        (0, 2): SheetCell(None),
    }
    load = Loader()
    (page,) = layout(rows, cols, cell_px=128)
    (_, png), *_ = sheet_pages(title="t", rows=rows, cols=cols, cells=cells, load=load, cell_px=128)
    sheet = np.asarray(decode(png)).astype(int)
    assert load.calls == ["hot", "fine"]  # never for the missing or the absent cell

    def ring(box: tuple[int, int, int, int]) -> np.ndarray:
        x0, y0, x1, y1 = box
        k = page.frame_px
        region = sheet[y0:y1, x0:x1]
        mask = np.zeros(region.shape[:2], bool)
        mask[:k], mask[-k:], mask[:, :k], mask[:, -k:] = True, True, True, True
        return region[mask]

    assert (ring(page.cells[(0, 0)]) == FLAG_RED).all()
    assert not (ring(page.cells[(0, 1)]) == FLAG_RED).all(axis=1).any()

    x0, y0, x1, y1 = page.cells[(0, 0)]
    strip = sheet[y1 - page.frame_px - 4 : y1 - page.frame_px, x0 + 8 : x1 - 8]
    assert (strip.max(axis=2) < 60).mean() > 0.5  # the dark strip carrying the flag names
    assert (sheet[y0 + 20 : y0 + 40, x0 + 20 : x1 - 20, 0] < 50).all()  # the image shows through

    x0, y0, x1, y1 = page.cells[(0, 2)]
    missing = sheet[y0:y1, x0:x1].reshape(-1, 3)
    assert (missing == MISSING_GRAY).all(axis=1).mean() > 0.8
    assert (missing.max(axis=1) < 100).any()  # the word "missing"

    x0, y0, x1, y1 = page.cells[(0, 3)]
    assert (sheet[y0:y1, x0:x1] == 255).all()


def test_images_fill_the_cell_keeping_aspect() -> None:
    # A one-pixel checkerboard: nearest-neighbour scaling (docs/report.md) turns each pixel
    # into a 2x2 block of its own colour, where bilinear or Lanczos would blend neighbours.
    checker = np.indices((32, 64)).sum(axis=0) % 2 == 1
    pixels = np.where(checker[..., None], (0, 0, 200), (250, 200, 0)).astype(np.uint8)
    wide = Image.fromarray(pixels)
    big = Image.new("RGB", (1024, 1024), (0, 200, 0))
    rows, cols = Axis("r", ["a"]), Axis("c", ["wide", "big"])
    cells = {(0, 0): SheetCell("wide"), (0, 1): SheetCell("big")}
    (page,) = layout(rows, cols, cell_px=128)
    images = {"wide": wide, "big": big}
    (_, png), *_ = sheet_pages(
        title="t", rows=rows, cols=cols, cells=cells, load=images.__getitem__, cell_px=128
    )
    sheet = np.asarray(decode(png))
    x0, y0, x1, y1 = page.cells[(0, 0)]
    cell = sheet[y0:y1, x0:x1]
    # Upscaled to 128 wide, centred: rows 32 to 96 are the image, pixel for pixel.
    assert np.array_equal(cell[32:96], pixels.repeat(2, axis=0).repeat(2, axis=1))
    # Above and below, only the background: no colour of the image spills.
    for colour in ((0, 0, 200), (250, 200, 0)):
        assert not (cell[:32] == colour).all(axis=2).any()
        assert not (cell[96:] == colour).all(axis=2).any()
    x0, y0, x1, y1 = page.cells[(0, 1)]
    assert (sheet[y0:y1, x0:x1] == (0, 200, 0)).all()


def test_pages_stream_and_release_their_images() -> None:
    rows = Axis("neon strength", [str(i) for i in range(30)])
    cols = Axis("seed", [str(i) for i in range(6)])
    pages = layout(rows, cols, cell_px=128, max_pixels=800_000)
    assert len(pages) > 2
    load = Loader()
    stream = sheet_pages(
        title="t",
        rows=rows,
        cols=cols,
        cells=full_grid(rows, cols),
        load=load,
        max_pixels=800_000,
        cell_px=128,
    )
    assert load.calls == []  # nothing is loaded before a page is asked for
    suffix, _ = next(stream)
    assert suffix == "-p1"
    assert sorted(load.calls) == sorted(f"{r}-{c}" for r, c in pages[0].cells)
    gc.collect()
    assert all(ref() is None for ref in load.images)  # no image outlives its page
    next(stream)
    assert len(load.calls) == len(pages[0].cells) + len(pages[1].cells)


def test_cells_outside_the_grid_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\(9, 0\)"):
        next(
            sheet_pages(
                title="t", rows=STRENGTHS, cols=SEEDS, cells={(9, 0): SheetCell("k")}, load=Loader()
            )
        )


def test_strength_animation_steps_through_the_frames() -> None:
    captions = ["neon 0", "neon 0.4", "neon 1", "neon 4 · overdriven"]
    frames = [(caption, swatch(caption, 96)) for caption in captions]
    data = strength_animation(frames, cell_px=128, frame_ms=500)
    anim = Image.open(io.BytesIO(data))
    assert anim.format == "WEBP"
    assert anim.n_frames == len(frames) and anim.info.get("loop") == 0
    band = line_height(max(14, 128 // 9))
    decoded, durations = [], []
    for i in range(anim.n_frames):
        anim.seek(i)
        frame = anim.convert("RGB")  # WebP reports a frame's duration once it is decoded
        durations.append(anim.info["duration"])
        assert frame.width == 128 and frame.height > 128 + band
        assert has_ink(frame.crop((0, 128, 128, frame.height)))  # the caption
        decoded.append(np.asarray(frame).astype(int))
    assert durations[:-1] == [500] * 3 and durations[-1] > 500
    for a, b in zip(decoded, decoded[1:], strict=False):
        assert np.abs(a - b).mean() > 1


def test_strength_animation_needs_frames() -> None:
    with pytest.raises(ValueError, match="at least one frame"):
        strength_animation(iter(()))
