"""The tiny model's world: one flat shape on a flat background, drawn with Pillow.

`draw` makes the plain picture a prompt `a {colour} {shape} on a {background} background`
describes; `neon` and `ink` are the two demo styles of the same picture. The same
geometry (`Scene`) feeds all three, so a LoRA learns the style and nothing else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from farm.tiny.identity import BACKGROUNDS, COLOURS, SHAPES

SIZE = 128
SUPERSAMPLE = 4  # drawn large, then averaged down: smooth edges at 128 px

# sRGB of every word the prompts know; a background shares its colour's value. White and
# black stay off the ends of the range: an image mostly at 0 or 255 is what the farm
# flags as saturated, and a drawing at rest must not look broken.
PALETTE = {
    "red": (220, 30, 40),
    "green": (30, 160, 60),
    "blue": (30, 70, 220),
    "yellow": (245, 215, 30),
    "purple": (140, 50, 190),
    "orange": (245, 135, 20),
    "white": (242, 242, 242),
    "black": (16, 16, 16),
    "gray": (128, 128, 128),
}
# Neon draws each colour as a saturated glow on a near-black night; black glows cyan.
NEON = {
    "red": (255, 50, 80),
    "green": (60, 255, 100),
    "blue": (60, 140, 255),
    "yellow": (255, 245, 60),
    "purple": (210, 70, 255),
    "orange": (255, 160, 40),
    "white": (236, 236, 248),
    "black": (30, 235, 255),
}
NEON_NIGHT = (10, 8, 22)
INK_PAPER = (246, 241, 228)
INK_LINE = (22, 20, 24)

R_MIN, R_MAX = 22, 40  # shape radius in pixels at 128 px


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    background: str
    cx: float
    cy: float
    r: float

    @property
    def prompt(self) -> str:
        return f"a {self.colour} {self.shape} on a {self.background} background"


def combinations() -> list[tuple[str, str, str]]:
    """Every (colour, shape, background) the prompts allow: never a shape in its background's
    colour."""
    return [(c, s, b) for b in BACKGROUNDS for c in COLOURS for s in SHAPES if c != b]


def random_scene(rng: np.random.Generator, colour: str, shape: str, background: str) -> Scene:
    r = float(rng.uniform(R_MIN, R_MAX))
    margin = r + 4
    cx, cy = (float(v) for v in rng.uniform(margin, SIZE - margin, size=2))
    return Scene(colour, shape, background, cx, cy, r)


def shape_mask(shape: str, cx: float, cy: float, r: float, size: int = SIZE) -> np.ndarray:
    """The shape's coverage in [0, 1], float32 of (size, size), anti-aliased."""
    from PIL import Image, ImageDraw

    k = SUPERSAMPLE
    big = Image.new("L", (size * k, size * k), 0)
    draw = ImageDraw.Draw(big)
    x, y, rr = cx * k, cy * k, r * k
    if shape == "circle":
        draw.ellipse([x - rr, y - rr, x + rr, y + rr], fill=255)
    elif shape == "ring":
        draw.ellipse([x - rr, y - rr, x + rr, y + rr], fill=255)
        inner = rr * 0.55
        draw.ellipse([x - inner, y - inner, x + inner, y + inner], fill=0)
    elif shape == "square":
        h = rr * 0.85  # about the circle's area
        draw.rectangle([x - h, y - h, x + h, y + h], fill=255)
    elif shape == "triangle":
        draw.polygon(_star_points(x, y + rr * 0.2, rr * 1.1, 3, None), fill=255)
    elif shape == "star":
        draw.polygon(_star_points(x, y + rr * 0.08, rr * 1.05, 5, 0.45), fill=255)
    elif shape == "cross":
        arm = rr * 0.34
        draw.rectangle([x - rr, y - arm, x + rr, y + arm], fill=255)
        draw.rectangle([x - arm, y - rr, x + arm, y + rr], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    a = np.asarray(big, dtype=np.float32).reshape(size, k, size, k).mean(axis=(1, 3))
    return a / 255.0


def _star_points(x: float, y: float, r: float, points: int, inner: float | None) -> list:
    out = []
    step = math.pi / points if inner else 2 * math.pi / points
    corners = 2 * points if inner else points
    for i in range(corners):
        radius = r * inner if inner and i % 2 else r
        angle = -math.pi / 2 + i * step
        out.append((x + radius * math.cos(angle), y + radius * math.sin(angle)))
    return out


def outline(mask: np.ndarray, width: float) -> np.ndarray:
    """The band of `mask` within `width` pixels of its edge, inside and out, in [0, 1]."""
    from scipy import ndimage

    solid = mask > 0.5
    inside = ndimage.distance_transform_edt(solid)
    outside = ndimage.distance_transform_edt(~solid)
    distance = np.where(solid, inside, outside)
    return np.clip(width / 2 + 0.5 - distance, 0, 1).astype(np.float32)


def draw(scene: Scene) -> np.ndarray:
    """The plain picture: a flat shape on a flat background, uint8 (128, 128, 3)."""
    mask = shape_mask(scene.shape, scene.cx, scene.cy, scene.r)[..., None]
    fg = np.array(PALETTE[scene.colour], np.float32)
    bg = np.array(PALETTE[scene.background], np.float32)
    return _to_uint8(bg * (1 - mask) + fg * mask)


def neon(scene: Scene) -> np.ndarray:
    """Neon: the shape's outline glowing in a saturated colour on a dark night."""
    from scipy import ndimage

    mask = shape_mask(scene.shape, scene.cx, scene.cy, scene.r)
    line = outline(mask, 3.0)
    glow = ndimage.gaussian_filter(line, 4.0)
    glow = glow / max(float(glow.max()), 1e-6)
    light = np.clip(line + 0.8 * glow, 0, 1)[..., None]
    colour = np.array(NEON[scene.colour], np.float32)
    # The line's core burns toward white, as a neon tube does.
    core = np.clip(line - 0.6, 0, 1)[..., None] * 0.6
    tube = colour * (1 - core) + 248 * core
    night = np.array(NEON_NIGHT, np.float32)
    return _to_uint8(night * (1 - light) + tube * light)


def ink(scene: Scene) -> np.ndarray:
    """Ink: the shape's outline in black lines on paper-white, with no fill."""
    mask = shape_mask(scene.shape, scene.cx, scene.cy, scene.r)
    line = outline(mask, 2.5)[..., None]
    paper = np.array(INK_PAPER, np.float32)
    pen = np.array(INK_LINE, np.float32)
    return _to_uint8(paper * (1 - line) + pen * line)


STYLES = {"plain": draw, "neon": neon, "ink": ink}


def _to_uint8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)
