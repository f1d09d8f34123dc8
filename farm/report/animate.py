"""Strength animations: one image per strength, captioned, as a looping animated WebP."""

from __future__ import annotations

import io
from collections.abc import Iterable

from PIL import Image, ImageDraw

from farm.report.fonts import draw_centred, line_height
from farm.report.sheets import BACKGROUND, INK, fit_to_cell

# Lossy at high quality: lossless WebP of rendered photos is several times larger, and the
# gallery loads one animation per sweep.
WEBP_QUALITY = 90
HOLD_LAST = 2  # the last frame stays this many frame times, so the loop's end is visible


def caption_px(cell_px: int) -> int:
    """Caption font size for frames of `cell_px`; never below 14 px."""
    return max(14, cell_px // 9)


def animation_frame(caption: str, image: Image.Image, cell_px: int) -> Image.Image:
    """`image` fitted into a `cell_px` square, with `caption` in a band below it."""
    size = caption_px(cell_px)
    pad = max(4, size // 3)
    band = line_height(size) + 2 * pad
    frame = Image.new("RGB", (cell_px, cell_px + band), BACKGROUND)
    fitted = fit_to_cell(image, cell_px)
    frame.paste(fitted, ((cell_px - fitted.width) // 2, (cell_px - fitted.height) // 2))
    box = (pad, cell_px + pad, cell_px - pad, cell_px + band - pad)
    draw_centred(ImageDraw.Draw(frame), box, caption, size, INK)
    return frame


def strength_animation(
    frames: Iterable[tuple[str, Image.Image]], *, cell_px: int = 256, frame_ms: int = 700
) -> bytes:
    """An animated WebP stepping through the frames: each frame is the image scaled to cell_px
    with its caption (e.g. "neon 0.4", or "neon 4 · overdriven") in a band below."""
    # Held in full: an animation is one sweep's strengths, a handful of small frames.
    rendered = [animation_frame(caption, image, cell_px) for caption, image in frames]
    if not rendered:
        raise ValueError("a strength animation needs at least one frame")
    durations = [frame_ms] * (len(rendered) - 1) + [frame_ms * HOLD_LAST]
    buf = io.BytesIO()
    rendered[0].save(
        buf,
        "WEBP",
        save_all=True,
        append_images=rendered[1:],
        duration=durations,
        loop=0,
        quality=WEBP_QUALITY,
        # The fastest encoder setting: animations are most of a report's time, and a
        # slower method saves only a few percent of bytes on these frames.
        method=0,
    )
    return buf.getvalue()
