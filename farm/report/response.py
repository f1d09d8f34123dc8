"""Response analysis: how far each strength moves a series' image, and where a LoRA turns
on, is half-way, and breaks. The definitions are in docs/report.md; keep the two in step."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

# LoRA Block Weight's "Effective Block Analyzer" counts a pixel as changed when a channel
# moves by more than 20 of 255; the same threshold keeps figures comparable with it.
CHANGED_AT = 20
# SSIM on a grayscale copy at most this many pixels on its long side: structure is what is
# compared, and a 1024² image then costs what a 256² one does.
SSIM_SIDE = 256
ONSET_SHARE = 0.10  # onset: the distance from 0 reaches this share of full strength's ...
ONSET_CHANGED = 0.01  # ... and at least this share of pixels changed
FLAGGED_BREAK = 0.25  # break: at least this share of a strength's images flagged
JUMP_BREAK = 2.0  # break: a neighbour step this many times the median step up to full
COLLAPSE_BREAK = 0.70  # break: past full strength, this far from full strength's structure
# How much a window with no contrast in either image counts in the structural distance,
# against a window of one gray level of local contrast: a little, so two flat images of
# different brightness still compare, but far less than the subject.
FLAT_WEIGHT = 1.0
MONOTONE_TOLERANCE = 0.02  # a dip in distance from 0 smaller than this is noise
NAN = {"pixel": math.nan, "structure": math.nan, "changed": math.nan}  # nothing to compare


def gray_small(rgb: np.ndarray) -> np.ndarray:
    """A float grayscale copy, at most SSIM_SIDE on its long side."""
    from PIL import Image

    h, w = rgb.shape[:2]
    img = Image.fromarray(rgb).convert("L")
    if max(h, w) > SSIM_SIDE:
        scale = SSIM_SIDE / max(h, w)
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    return np.asarray(img, dtype=np.float64)


def distances(a: np.ndarray, b: np.ndarray, ga: np.ndarray, gb: np.ndarray) -> dict:
    """Pixel, structural and changed-pixel distance of two RGB uint8 images (and their
    gray_small copies). Each is 0 for equal images and at most 1."""
    if a.shape != b.shape:
        return dict(NAN)
    diff = _diff(a, b)
    # Too small for a 7-pixel window: the pixel measure stands in for the structure.
    structure = _structure(ga, gb) if min(ga.shape) >= 7 else float(diff.mean() / 255.0)
    return {
        "pixel": float(diff.mean() / 255.0),
        "structure": structure,
        "changed": float((diff.max(axis=2) > CHANGED_AT).mean()),
    }


def pixel_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The pixel distance alone (see distances); nan for images of different sizes."""
    return float(_diff(a, b).mean() / 255.0) if a.shape == b.shape else math.nan


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16))


def _structure(ga: np.ndarray, gb: np.ndarray, win: int = 7) -> float:
    """1 − SSIM, averaged with each window weighted by the two images' local contrast.

    A plain mean lets the background vote: a subject that fills a fifth of the frame and
    is gone would count as four-fifths the same, because both images have the same flat
    background there. Weighted, the windows that hold the subject in either image decide.
    """
    from scipy import ndimage
    from skimage.metrics import structural_similarity

    _, similarity = structural_similarity(ga, gb, data_range=255.0, win_size=win, full=True)

    def contrast(g: np.ndarray) -> np.ndarray:
        mean = ndimage.uniform_filter(g, win)
        return np.sqrt(np.maximum(ndimage.uniform_filter(g * g, win) - mean * mean, 0.0))

    pad = (win - 1) // 2  # as structural_similarity: windows that fit inside the image
    inner = (slice(pad, -pad), slice(pad, -pad))
    weight = contrast(ga)[inner] + contrast(gb)[inner] + FLAT_WEIGHT
    distance = np.sum((1.0 - similarity[inner]) * weight) / np.sum(weight)
    return float(np.clip(distance, 0.0, 1.0))


@dataclass
class Point:
    """One strength of a LoRA, averaged over its series."""

    strength: float
    series: int
    pixel: float  # mean distance from the series' strength-0 image
    structure: float
    changed: float
    step_pixel: float  # mean distance from the next lower strength's image
    from_full: float  # mean structural distance from the strength-1 image (nan: none)
    flagged: float  # share of images with a flag
    # Consistency: the coefficient of variation (std / mean) of the pixel distance from 0
    # across the series; nan with fewer than two series or no distance to divide by.
    spread: float = math.nan


@dataclass
class Summary:
    lora: str
    curve: str  # the LoRA, with its blocks or schedule and any LoRA it is blended with
    points: list[Point]
    full: float | None  # the strength taken as full: 1, or the largest swept at or below 1
    onset: float | None
    knee: float | None
    break_at: float | None
    break_reason: str = ""
    recommended: tuple[float, float] | None = None
    monotone: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def full_point(self) -> Point | None:
        """The point at full strength, where the curve has one."""
        return next((p for p in self.points if p.strength == self.full), None)


def summarize(lora: str, rows: list[dict], curve: str | None = None) -> Summary:
    """A response curve and its landmarks from its series' rows (farm.report.measure)."""
    sums = CurveSums()
    for row in rows:
        sums.add(row)
    return summarize_points(lora, sums.points(), curve)


class ExactSum:
    """A sum of floats without rounding, whatever order they are added in: held as
    Shewchuk's non-overlapping partials (what math.fsum does), a handful of floats."""

    __slots__ = ("partials",)

    def __init__(self) -> None:
        self.partials: list[float] = []

    def add(self, x: float) -> None:
        _add_exact(self.partials, x)

    def value(self) -> float:
        return math.fsum(self.partials)

    def fraction(self) -> Fraction:
        return sum(map(Fraction, self.partials), Fraction(0))


class RunningMean:
    """A running mean and population variance of the finite values, exact whatever order
    they come in: a report measured bucket by bucket, or by more workers, or of a job
    rendered in two halves, gives the same figures to the last bit."""

    __slots__ = ("n", "_sum", "_squares")

    def __init__(self) -> None:
        self.n = 0
        self._sum = ExactSum()
        self._squares = ExactSum()

    def add(self, value: float) -> None:
        if math.isnan(value):
            return
        self.n += 1
        self._sum.add(value)
        self._squares.add(value * value)

    def value(self) -> float:
        return self._sum.value() / self.n if self.n else math.nan

    def variation(self) -> float:
        """The coefficient of variation (population std / mean); nan with fewer than two
        values or a mean of 0 (strength 0 has no effect to vary)."""
        mean = self.value()
        if self.n < 2 or not mean > 0:
            return math.nan
        variance = self._squares.fraction() / self.n - (self._sum.fraction() / self.n) ** 2
        return math.sqrt(max(float(variance), 0.0)) / mean


def _add_exact(partials: list[float], x: float) -> None:
    """Add x to a sum held as non-overlapping partials, without rounding."""
    i = 0
    for y in partials:
        if abs(x) < abs(y):
            x, y = y, x
        high = x + y
        low = y - (high - x)
        if low:
            partials[i] = low
            i += 1
        x = high
    partials[i:] = [x]


_MEANS = ("d0_pixel", "d0_structure", "d0_changed", "step_pixel", "from_full")


class CurveSums:
    """A curve's points, accumulated row by row: memory per strength, not per image."""

    def __init__(self) -> None:
        self._at: dict[float, tuple[list[int], dict[str, RunningMean]]] = {}

    def add(self, row: dict) -> None:
        counts, means = self._at.setdefault(
            row["strength"], ([0, 0], {m: RunningMean() for m in _MEANS})
        )
        counts[0] += 1
        counts[1] += bool(row["flags"])
        for name, mean in means.items():
            mean.add(row[name])

    def points(self) -> list[Point]:
        out = []
        for strength in sorted(self._at):
            (n, flagged), m = self._at[strength]
            out.append(Point(strength, n, m["d0_pixel"].value(), m["d0_structure"].value(),
                             m["d0_changed"].value(), m["step_pixel"].value(),
                             m["from_full"].value(), flagged / n,
                             m["d0_pixel"].variation()))  # fmt: skip
        return out


def summarize_points(lora: str, points: list[Point], curve: str | None = None) -> Summary:
    """A response curve's landmarks from its points, one per strength in order."""
    summary = Summary(lora, curve or lora, points, None, None, None, None)
    if len(points) < 2:
        summary.notes.append("fewer than two strengths: no curve")
        return summary
    strengths = [p.strength for p in points]
    at_or_below = [s for s in strengths if 0 < s <= 1]
    summary.full = 1.0 if 1.0 in strengths else (max(at_or_below) if at_or_below
                                                  else max(strengths))  # fmt: skip
    full = next(p for p in points if p.strength == summary.full)
    size = full.pixel
    if not size > 0:
        summary.notes.append(f"no change up to strength {summary.full:g}: the LoRA has no "
                             "visible effect here")  # fmt: skip
    else:
        summary.onset = next((p.strength for p in points if p.strength > points[0].strength
                              and p.pixel >= ONSET_SHARE * size
                              and p.changed >= ONSET_CHANGED), None)  # fmt: skip
        summary.knee = _crossing(points, size / 2)
    summary.break_at, summary.break_reason = _break(points, summary.full, summary.knee)
    summary.monotone = _monotone(points, summary.break_at)
    if summary.onset is not None:
        below = [s for s in strengths if s >= summary.onset and
                 (summary.break_at is None or s < summary.break_at)]  # fmt: skip
        if below:
            summary.recommended = (summary.onset, max(below))
    return summary


def curve_spans(rows: list[dict]) -> dict[str, float]:
    """Each curve's structural distance from strength 0 to strength 1, averaged over its
    series that start at 0: the yardstick of the collapse rule. One series' own distance
    is noisy (a shape on black moves further to paper-white ink than one on white does);
    the curve's mean is what the break rule compares with too."""
    spans: dict[str, RunningMean] = {}
    for r in rows:
        add_span(spans, r)
    return {curve: mean.value() for curve, mean in spans.items() if mean.n}


def add_span(spans: dict[str, RunningMean], row: dict) -> None:
    """Count one measured row toward its curve's span (see curve_spans)."""
    if row["strength"] == 1.0 and row["reference"] == 0.0:
        spans.setdefault(row["curve"], RunningMean()).add(row["d0_structure"])


def collapsed(series_rows: list[dict], span: float) -> list[dict]:
    """The rows of one series (in strength order) whose image has collapsed: past full
    strength, and as far from this series' strength-1 picture as COLLAPSE_BREAK of `span`,
    or past a strength that has. Overdrive does not heal: a picture that happens to land
    near the full-strength one again, beyond a collapsed one, is still past the break."""
    if not span > 0:
        return []
    found: list[dict] = []
    for r in series_rows:
        past = r["from_full"] > COLLAPSE_BREAK * span  # NaN (not rendered) compares false
        if r["strength"] > 1 and r["rendered"] and (found or past):
            found.append(r)
    return found


def _crossing(points: list[Point], level: float) -> float | None:
    """The strength where the distance from 0 first reaches `level`, interpolated."""
    for lo, hi in zip(points, points[1:], strict=False):
        if hi.pixel >= level > lo.pixel:
            t = (level - lo.pixel) / (hi.pixel - lo.pixel)
            return round(lo.strength + t * (hi.strength - lo.strength), 3)
    return None


def _break(points: list[Point], full: float | None,
           knee: float | None = None) -> tuple[float | None, str]:  # fmt: skip
    """The first strength past the lowest where images are flagged, a sudden jump appears
    past the knee, or (past full strength) the structure leaves the full-strength picture.

    A jump up to the knee is the LoRA taking over, which is what a style LoRA does around
    its knee; past it the effect should settle, and a jump there leaves the style."""
    upto = [p.step_pixel for p in points[1:] if full is None or p.strength <= full]
    median_step = float(np.median(upto)) if upto else math.nan
    start = next((p for p in points if p.strength == full), points[0])
    span = start.structure  # how far full strength's structure is from strength 0's
    for before, p in zip(points, points[1:], strict=False):
        if p.flagged >= FLAGGED_BREAK:
            return p.strength, f"{p.flagged:.0%} of images flagged"
        settled = knee is None or before.strength >= knee
        if settled and median_step > 0 and p.step_pixel > JUMP_BREAK * median_step:
            return p.strength, (f"a jump: the step from the last strength is "
                                f"{p.step_pixel / median_step:.1f}× the usual step")  # fmt: skip
        if full is not None and p.strength > full and span > 0 and \
                p.from_full > COLLAPSE_BREAK * span:  # fmt: skip
            return p.strength, (
                f"structure collapses: as far from the strength-{full:g} "
                f"picture as {p.from_full / span:.0%} of the way from 0 to it"
            )
    return None, ""


def _monotone(points: list[Point], break_at: float | None) -> bool:
    """Whether the distance from 0 rises (within the tolerance) up to the break."""
    kept = [p.pixel for p in points if break_at is None or p.strength < break_at]
    return all(b >= a - MONOTONE_TOLERANCE for a, b in zip(kept, kept[1:], strict=False))
