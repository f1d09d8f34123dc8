"""The response rules on drawn pictures: the structural distance, the collapse marks and
the break, without rendering."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from PIL import Image, ImageDraw

from farm.report.response import (
    COLLAPSE_BREAK,
    RunningMean,
    collapsed,
    curve_spans,
    distances,
    gray_small,
    summarize,
)


def picture(shape: str, colour=(200, 30, 30), background=(240, 240, 240), r: int = 14):
    img = Image.new("RGB", (128, 128), background)
    draw = ImageDraw.Draw(img)
    box = (64 - r, 64 - r, 64 + r, 64 + r)
    if shape == "disc":
        draw.ellipse(box, fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=3)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    return np.asarray(img)


def structure(a: np.ndarray, b: np.ndarray) -> float:
    return distances(a, b, gray_small(a), gray_small(b))["structure"]


def test_a_lost_subject_is_far_whatever_its_share_of_the_frame():
    """A disc a twentieth of the frame that vanishes is a large structural change: the flat
    background both pictures share does not outvote it (plain SSIM reads it as 0.1)."""
    from skimage.metrics import structural_similarity

    disc, empty = picture("disc"), picture("none")
    plain = 1 - structural_similarity(gray_small(disc), gray_small(empty), data_range=255.0)
    assert plain < 0.15
    assert structure(disc, empty) > 0.5
    assert structure(disc, disc) == 0
    # A small change of the subject is a small distance: the same disc moved by a pixel
    # or slightly larger is far closer than a lost one.
    assert structure(disc, picture("disc", r=15)) < structure(disc, empty) / 2


def test_flat_pictures_of_different_brightness_still_compare():
    dark, light = picture("none", background=(20, 20, 20)), picture("none")
    assert structure(dark, light) > 0
    assert structure(dark, dark) == 0


def rows_of(series: int, spans: dict[float, float], strengths_from_full: dict[float, float]):
    """Rows as measure() writes them: one series of curve "x" starting at 0."""
    rows = []
    for s in sorted({0.0, 1.0, *strengths_from_full}):
        rows.append({
            "curve": "x", "series": series, "strength": s, "reference": 0.0,
            "rendered": not math.isnan(strengths_from_full.get(s, 0.0)),
            "d0_structure": spans.get(s, 0.0), "from_full": strengths_from_full.get(s, math.nan),
            "item_id": f"{series}-{s}",
        })  # fmt: skip
    return rows


def test_collapse_is_measured_against_the_curve_and_does_not_heal():
    # Two series: one travels 0.9 from 0 to 1, the other 0.3; the curve's span is 0.6.
    far = rows_of(0, {1.0: 0.9}, {2.0: 0.5, 3.0: 0.3, 4.0: 0.8})
    near = rows_of(1, {1.0: 0.3}, {2.0: 0.3, 3.0: 0.5, 4.0: 0.1})
    spans = curve_spans(far + near)
    assert spans == {"x": 0.6}
    limit = COLLAPSE_BREAK * 0.6
    assert 0.3 < limit < 0.5
    # 2 in `far` is past the curve's limit, though it is under its own 0.9's; 3 and 4
    # follow it, even where 3 happens to land near the full-strength picture again.
    assert [r["strength"] for r in collapsed(far, spans["x"])] == [2.0, 3.0, 4.0]
    # In `near`, 2 is within the limit (though past 70% of its own 0.3); 3 is not.
    assert [r["strength"] for r in collapsed(near, spans["x"])] == [3.0, 4.0]
    # Strengths up to 1 are never marked, nor a missing image, nor anything without a span.
    assert collapsed(rows_of(2, {1.0: 0.5}, {0.5: 0.9, 2.0: math.nan}), 0.5) == []
    assert collapsed(far, math.nan) == [] and collapsed(far, 0.0) == []


def test_curve_span_uses_series_from_zero_only():
    rows = rows_of(0, {1.0: 0.4}, {})
    rows += [dict(r, reference=0.5, d0_structure=0.9) for r in rows_of(1, {}, {})]
    assert curve_spans(rows) == {"x": 0.4}


def test_break_lands_where_the_mean_collapses():
    def row(s, series, d0_pixel, d0_structure, from_full, flags=()):
        return {"strength": s, "series": series, "d0_pixel": d0_pixel,
                "d0_structure": d0_structure, "d0_changed": d0_pixel, "step_pixel": 0.05,
                "from_full": from_full, "flags": list(flags)}  # fmt: skip

    rows = []
    for series in (0, 1):
        rows += [row(0, series, 0, 0, 0.5), row(0.5, series, 0.1, 0.2, 0.3),
                 row(1, series, 0.2, 0.5, 0.0), row(2, series, 0.25, 0.6, 0.2),
                 row(3, series, 0.3, 0.7, 0.45)]  # fmt: skip
    summary = summarize("x", rows)
    assert summary.break_at == 3 and "structure collapses" in summary.break_reason
    assert summary.recommended == (0.5, 2)


def jump_rows(pixels: dict[float, float]) -> list[dict]:
    """Two series of one curve, each strength's distance from 0 as given, each step the
    difference from the strength below."""
    rows, before = [], 0.0
    for s, d in sorted(pixels.items()):
        rows += [{"strength": s, "series": n, "d0_pixel": d, "d0_structure": d,
                  "d0_changed": d, "step_pixel": d - before if s else math.nan,
                  "from_full": 0.0, "flags": []} for n in (0, 1)]  # fmt: skip
        before = d
    return rows


def test_a_jump_up_to_the_knee_is_the_take_over_not_a_break():
    # Barely there, then the style takes over between 0.4 and 0.6: that step is 13 times
    # the median, and it is where the curve crosses half of full strength's effect.
    summary = summarize("x", jump_rows({0: 0, 0.2: 0.02, 0.4: 0.04, 0.6: 0.30, 0.8: 0.32,
                                        1: 0.34}))  # fmt: skip
    assert 0.4 < summary.knee < 0.6
    assert summary.break_at is None and summary.recommended == (0.4, 1)


def test_a_jump_past_the_knee_is_a_break():
    summary = summarize("x", jump_rows({0: 0, 0.25: 0.1, 0.5: 0.2, 0.75: 0.3, 1: 0.35,
                                        1.5: 0.9}))  # fmt: skip
    assert summary.knee < 1
    assert summary.break_at == 1.5 and summary.break_reason.startswith("a jump")
    assert summary.recommended == (0.25, 1)


def test_curve_sums_are_exact_in_any_order():
    """A curve's figures do not depend on the order its rows come in (bucket by bucket,
    worker by worker), to the last bit, and they are numpy's mean and population std."""
    rng = random.Random(7)
    values = [rng.uniform(0, 1) * 10 ** rng.randint(-3, 3) for _ in range(500)]
    values += [math.nan] * 5  # not rendered: left out
    results = set()
    for _ in range(5):
        rng.shuffle(values)
        mean = RunningMean()
        for v in values:
            mean.add(v)
        results.add((mean.n, mean.value(), mean.variation()))
    assert len(results) == 1
    n, value, spread = results.pop()
    finite = np.array([v for v in values if not math.isnan(v)])
    assert n == 500
    assert value == pytest.approx(float(np.mean(finite)), rel=1e-12)
    assert spread == pytest.approx(float(np.std(finite) / np.mean(finite)), rel=1e-9)
    one = RunningMean()
    one.add(0.5)
    assert one.value() == 0.5 and math.isnan(one.variation())


def test_a_key_set_knows_its_keys_and_no_others():
    from farm.report.key_set import KeySet

    keys = KeySet(f"report/animations/{n:05d}-x.webp" for n in range(2000))
    keys.add("report/index.html")
    assert "report/index.html" in keys and "report/animations/01999-x.webp" in keys
    assert "report/animations/02000-x.webp" not in keys and "" not in keys
    keys.add("report/animations/02000-x.webp")  # added after a lookup: still found
    assert "report/animations/02000-x.webp" in keys and None not in keys
