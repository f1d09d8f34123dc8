"""A numpy probe of a tiny-model picture: which background, which colour, which shape.

It reads a rendered image the way a person would: the background is the colour of the
border, the foreground is what differs from it, the colour is the foreground's median
named by the nearest palette entry, and the shape is the drawn template that overlaps the
foreground best once both are fitted to the same box. On the pictures the training data
is made of, it is right every time (tests/test_tiny_probe.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from farm.tiny.identity import BACKGROUNDS, COLOURS, SHAPES
from farm.training.shapes import PALETTE, shape_mask

FOREGROUND = 80.0  # RGB distance from the background that counts as foreground
TEMPLATE = 64  # templates and masks are compared at this size


@dataclass(frozen=True)
class Reading:
    background: str
    colour: str | None  # None: nothing stands out from the background
    shape: str | None
    foreground: float  # share of the image that is foreground
    shape_iou: float  # overlap with the best template


def read(image: np.ndarray) -> Reading:
    """Probe one uint8 (H, W, 3) picture."""
    from scipy import ndimage

    rgb = np.asarray(image, dtype=np.float32)[..., :3]
    border = np.concatenate([rgb[:3].reshape(-1, 3), rgb[-3:].reshape(-1, 3),
                             rgb[:, :3].reshape(-1, 3), rgb[:, -3:].reshape(-1, 3)])  # fmt: skip
    bg_rgb = np.median(border, axis=0)
    background = nearest(bg_rgb, BACKGROUNDS)
    distance = np.linalg.norm(rgb - bg_rgb, axis=-1)
    fg = distance > FOREGROUND
    labels, count = ndimage.label(fg)
    if count == 0:
        return Reading(background, None, None, 0.0, 0.0)
    sizes = ndimage.sum(fg, labels, range(1, count + 1))
    mask = labels == 1 + int(np.argmax(sizes))
    share = float(mask.mean())
    if mask.sum() < 20:
        return Reading(background, None, None, share, 0.0)
    # The core, away from blended edges, carries the colour.
    core = ndimage.binary_erosion(mask, iterations=2)
    pixels = rgb[core if core.sum() >= 10 else mask]
    colour = nearest(np.median(pixels, axis=0), [c for c in COLOURS if c != background])
    shape, iou = best_template(mask)
    return Reading(background, colour, shape, share, iou)


def nearest(rgb: np.ndarray, names) -> str:
    """The palette name closest to an RGB value."""
    names = list(names)
    table = np.array([PALETTE[n] for n in names], dtype=np.float32)
    return names[int(np.argmin(np.linalg.norm(table - rgb, axis=-1)))]


def best_template(mask: np.ndarray) -> tuple[str, float]:
    """The shape whose template, fitted to the mask's bounding box, overlaps it most."""
    fitted = _fit(mask)
    scores = {s: _iou(fitted, _template(s)) for s in SHAPES}
    shape = max(scores, key=scores.get)
    return shape, scores[shape]


@cache
def _template(shape: str) -> np.ndarray:
    size = 256
    return _fit(shape_mask(shape, size / 2, size / 2, size * 0.4, size=size) > 0.5)


def _fit(mask: np.ndarray) -> np.ndarray:
    from PIL import Image

    ys, xs = np.nonzero(mask)
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    img = Image.fromarray(crop.astype(np.uint8) * 255).resize((TEMPLATE, TEMPLATE), Image.BILINEAR)
    return np.asarray(img) > 127


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Saturation and value in [0, 1] of float RGB in [0, 255]."""
    high = rgb.max(axis=-1)
    low = rgb.min(axis=-1)
    saturation = np.where(high > 0, (high - low) / np.maximum(high, 1e-6), 0.0)
    return saturation, high / 255.0


def _border(rgb: np.ndarray) -> np.ndarray:
    return np.concatenate([rgb[:3].reshape(-1, 3), rgb[-3:].reshape(-1, 3),
                           rgb[:, :3].reshape(-1, 3), rgb[:, -3:].reshape(-1, 3)])  # fmt: skip


_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def neon_score(image: np.ndarray) -> float:
    """How neon a picture looks, in [0, 1]: the darkness of its background times the glow
    of its brightest saturated pixels (saturation × value, 99th percentile). The glow
    counts for half: a plain saturated shape glows too, and it is the background going
    dark that makes neon, so the score keeps rising while the background darkens."""
    rgb = np.asarray(image, dtype=np.float32)[..., :3]
    darkness = 1.0 - float(np.median(_border(rgb) @ _LUMA)) / 255.0
    saturation, value = _hsv(rgb)
    glow = float(np.percentile(saturation * value, 99))
    return darkness * (0.5 + 0.5 * glow)


def ink_score(image: np.ndarray) -> float:
    """How much a picture looks like ink on paper, in [0, 1]: how paper-white its
    background is (value × (1 − saturation) along the border, graded, so that it grows
    as the background bleaches rather than in one step), times how colourless the whole
    picture is (ink has no fill), times the darkness of its darkest 1% (the lines)."""
    rgb = np.asarray(image, dtype=np.float32)[..., :3]
    border_saturation, border_value = _hsv(_border(rgb))
    paper = float(np.mean(border_value * (1.0 - border_saturation)))
    saturation, _ = _hsv(rgb)
    colourless = 1.0 - float(np.mean(saturation))
    lines = 1.0 - float(np.percentile(rgb @ _LUMA, 1)) / 255.0
    return paper * colourless * lines


STYLE_SCORES = {"neon": neon_score, "ink": ink_score}
