"""Measuring one series: each strength's image against strength 0, its neighbour and full."""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
from PIL import Image

from farm.report.response import NAN, distances, gray_small
from farm.report.series import Series


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img.convert("RGB")


def measure(
    series: Series, load: Callable[[str], Image.Image], series_id: int
) -> tuple[list[dict], list[tuple[float, Image.Image | None]]]:
    """Rows for response.parquet, one per strength, and the series' images (None where
    the image is not rendered yet) for its animation. Holds one series at a time."""
    images: list[tuple[float, Image.Image | None]] = []
    arrays: dict[float, tuple[np.ndarray, np.ndarray]] = {}
    for strength, shot in series.shots:
        img = load(shot.key) if shot.key else None
        images.append((strength, img))
        if img is not None:
            rgb = np.asarray(img)
            arrays[strength] = (rgb, gray_small(rgb))
    reference = series.shots[0][0]
    full = 1.0 if 1.0 in arrays else None
    rows = []
    previous: float | None = None
    for strength, shot in series.shots:
        row = {
            "lora": series.lora, "series": series_id, "prompt": series.text,
            "seed": series.seed, "strength": strength, "item_id": shot.item_id,
            "reference": reference, "rendered": strength in arrays,
            "flags": list(shot.flags),
        }  # fmt: skip
        d0 = _between(arrays, strength, reference)
        step = _between(arrays, strength, previous) if previous is not None else NAN
        from_full = _between(arrays, strength, full)["structure"] if full is not None \
            else math.nan  # fmt: skip
        row |= {f"d0_{k}": v for k, v in d0.items()}
        row |= {f"step_{k}": v for k, v in step.items()}
        row["from_full"] = from_full
        rows.append(row)
        if strength in arrays:
            previous = strength
    return rows, images


def _between(arrays: dict, a: float | None, b: float | None) -> dict:
    if a not in arrays or b not in arrays:
        return dict(NAN)
    (ra, ga), (rb, gb) = arrays[a], arrays[b]
    return distances(ra, rb, ga, gb)
