"""The rule that picks a training run's checkpoint to ship (docs/report.md), on made-up
curves: each step of the rule decides where the ones before it tie."""

from __future__ import annotations

import math

from farm.report.response import Point, Summary
from farm.report.runs import Candidate, Place, recommend, run_places


def candidate(step: int, likeness: float, spread: float, recommended=(0.2, 1.0),
              break_at: float | None = None, onset: float | None = 0.2,
              effect: float = 0.3) -> Candidate:  # fmt: skip
    point = Point(1.0, 4, effect, effect, effect, 0.05, 0.0, 0.0, spread)
    summary = Summary(f"m-{step}", f"m-{step}", [point], 1.0, onset, 0.5, break_at,
                      recommended=recommended if onset is not None else None)  # fmt: skip
    return Candidate(f"m-{step}", Place("m", step // 100 - 1, step, None), summary, effect,
                     spread, likeness)  # fmt: skip


def test_the_earliest_that_learned_when_the_rest_ties():
    run = [candidate(100, 0.5, 0.3), candidate(200, 0.82, 0.3), candidate(300, 0.9, 0.3),
           candidate(400, 1.0, 0.3)]  # fmt: skip
    chosen, why = recommend(run)
    assert chosen is run[1] and "82% of the way" in why and "the earliest of 3 tied" in why
    assert run[0].why_not == ("its pictures at full strength are 50% of the way to the last "
                              "checkpoint's, under 80%")  # fmt: skip


def test_a_wider_range_beats_an_earlier_checkpoint():
    run = [candidate(100, 0.85, 0.3, recommended=(0.2, 0.8)),
           candidate(200, 0.9, 0.3, recommended=(0.2, 1.25)),
           candidate(300, 1.0, 0.3, recommended=(0.4, 1.0))]  # fmt: skip
    chosen, why = recommend(run)
    assert chosen is run[1] and "the widest recommended range of the 3 that learned" in why


def test_consistency_decides_between_equal_ranges_beyond_the_tie_margin():
    run = [candidate(100, 0.9, 0.50), candidate(200, 0.95, 0.30), candidate(300, 1.0, 0.34)]
    chosen, why = recommend(run)
    # 0.30 and 0.34 are within 0.05: a tie, which the earlier of the two wins; 0.50 is not.
    assert chosen is run[1] and "the most consistent" in why and "earliest of 2" in why


def test_a_break_at_or_below_full_strength_rules_a_checkpoint_out():
    run = [candidate(100, 0.9, 0.3, break_at=0.8, recommended=(0.2, 0.6)),
           candidate(200, 1.0, 0.3, break_at=1.5, recommended=(0.2, 1.25))]  # fmt: skip
    chosen, _ = recommend(run)
    assert chosen is run[1] and run[0].why_not == "breaks at 0.8, at or below strength 1"


def test_when_every_checkpoint_breaks_by_full_strength_the_ranges_below_decide():
    run = [candidate(100, 0.9, 0.3, break_at=0.6, recommended=(0.2, 0.4)),
           candidate(200, 1.0, 0.3, break_at=0.8, recommended=(0.2, 0.6))]  # fmt: skip
    chosen, why = recommend(run)
    assert chosen is run[1] and "break at or below strength 1" in why
    assert not run[0].why_not  # still in the running


def test_nothing_to_recommend_is_said():
    flat = [candidate(100, math.nan, math.nan, effect=0.0),
            candidate(200, math.nan, math.nan, effect=0.0)]  # fmt: skip
    assert recommend(flat) == (None, "no checkpoint shows an effect at full strength")
    silent = [candidate(100, 0.9, 0.3, onset=None), candidate(200, 1.0, 0.3, onset=None)]
    chosen, why = recommend(silent)
    assert chosen is None and why.startswith("no checkpoint with an onset comes 80%")
    apart = [candidate(100, math.nan, 0.3), candidate(200, math.nan, 0.3)]
    assert recommend(apart)[0] is None
    assert apart[0].why_not == "not comparable with the last checkpoint's pictures"


def test_places_come_from_job_json_in_training_order():
    doc = {"adapters": [
        {"name": "ink", "sha256": "a"},
        {"name": "m-2", "checkpoint": {"run": "m", "step": 200, "epoch": 2}},
        {"name": "m-1", "checkpoint": {"run": "m", "step": "x", "epoch": None}},
        {"name": "k", "checkpoint": "damaged"},
    ]}  # fmt: skip
    places = run_places(doc)
    assert places == {"m-2": Place("m", 0, 200, 2), "m-1": Place("m", 1, None, None)}
