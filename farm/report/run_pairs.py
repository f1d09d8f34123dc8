"""How far each checkpoint of a training run has come toward the run's last one.

Each checkpoint's full-strength picture is compared with the last checkpoint's picture of
the same prompt, seed and settings. Those pairs live in one bucket of the report (a bucket
holds whole places), so the distances are measured bucket by bucket and summed here."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image

from farm.report.response import pixel_distance
from farm.report.runs import Candidate, RunComparison

# A series as the report keeps it on disk: its LoRA (the caption), whether it starts at
# strength 0, its place (prompt, seed and settings, as JSON) and its rows.
SeriesRows = list


class RunPairs:
    """The sums behind each checkpoint's likeness, over every bucket's pairs."""

    def __init__(self, runs: list[RunComparison]) -> None:
        # Per run: its last checkpoint, and those with the same full strength (the last
        # included), which are the ones that can be compared with it.
        self._groups: list[tuple[Candidate, list[Candidate]]] = []
        self._sums: dict[tuple[str, str], list[float]] = {}
        for run in runs:
            last = run.candidates[-1]
            full = last.summary.full
            comparable = [c for c in run.candidates if full is not None and c.summary.full == full]
            self._groups.append((last, comparable))
            for c in comparable:
                self._sums[(c.name, c.summary.curve)] = [0.0, 0.0]

    def add(self, series: list[SeriesRows], key_of: dict[str, str | None],
            load: Callable[[str], Image.Image]) -> None:  # fmt: skip
        """Measure one bucket's pairs: write `to_last` into each compared row and add the
        distances to the sums. Each of the last's pictures is read once, for every
        checkpoint it is compared with."""
        for last, comparable in self._groups:
            mine = {c.name: _at_full(series, c) for c in comparable}
            for where, other in _at_full(series, last).items():
                if math.isnan(other["d0_pixel"]):
                    continue
                theirs = None  # read when a checkpoint other than the last needs it
                for c in comparable:
                    row = mine[c.name].get(where)
                    if row is None:
                        continue
                    if c is last:
                        row["to_last"] = 0.0
                    else:
                        if theirs is None:
                            theirs = np.asarray(load(key_of[other["item_id"]]))
                        row["to_last"] = pixel_distance(
                            np.asarray(load(key_of[row["item_id"]])), theirs
                        )
                    sums = self._sums[(c.name, c.summary.curve)]
                    sums[0] += row["to_last"]
                    sums[1] += other["d0_pixel"]

    def apart(self, candidates: list[Candidate], _last: Candidate) -> list[tuple[float, float]]:
        """Per candidate: (sum of its distances from the last's pictures, sum of the last's
        distances from strength 0); nan where it could not be compared."""
        return [tuple(self._sums.get((c.name, c.summary.curve), (math.nan, math.nan)))
                for c in candidates]  # fmt: skip


def _at_full(series: list[SeriesRows], c: Candidate) -> dict[str, dict]:
    """A checkpoint's rendered rows at its full strength, by place, in the series of its
    curve that start at 0."""
    return {place: r for caption, from_zero, place, rows in series
            if from_zero and caption == c.name and rows and rows[0]["curve"] == c.summary.curve
            for r in rows if r["strength"] == c.summary.full and r["rendered"]}  # fmt: skip
