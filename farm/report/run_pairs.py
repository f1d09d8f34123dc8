"""How far each checkpoint of a training run has come toward the run's last one.

Each checkpoint's full-strength picture is compared with the last checkpoint's picture of
the same prompt, seed and settings. Those pairs live in one bucket of the report (a bucket
holds whole places), so they are measured bucket by bucket, as tasks, and summed here."""

from __future__ import annotations

import math

from farm.report.response import ExactSum
from farm.report.runs import Candidate, RunComparison
from farm.report.tasks import TaskRunner

# A series as the report keeps it on disk: its LoRA (the caption), whether it starts at
# strength 0, its place (prompt, seed and settings, as JSON) and its rows.
SeriesRows = list
# Places compared in one task.
PLACES_PER_TASK = 64


class RunPairs:
    """The sums behind each checkpoint's likeness, over every bucket's pairs."""

    def __init__(self, runs: list[RunComparison]) -> None:
        # Per run: its last checkpoint, and those with the same full strength (the last
        # included), which are the ones that can be compared with it.
        self._groups: list[tuple[Candidate, list[Candidate]]] = []
        self._sums: dict[tuple[str, str], tuple[ExactSum, ExactSum]] = {}
        for run in runs:
            last = run.candidates[-1]
            full = last.summary.full
            comparable = [c for c in run.candidates if full is not None and c.summary.full == full]
            self._groups.append((last, comparable))
            for c in comparable:
                self._sums[(c.name, c.summary.curve)] = (ExactSum(), ExactSum())

    def add(self, series: list[SeriesRows], key_of: dict[str, str | None], store_url: str,
            runner: TaskRunner) -> None:  # fmt: skip
        """Measure one bucket's pairs: write `to_last` into each compared row and add the
        distances to the sums."""
        places: list[tuple[str, list[str]]] = []  # (the last's image, the others')
        waiting: list[list[tuple[tuple, dict]]] = []  # per place: (sums, row) of each other
        for last, comparable in self._groups:
            mine = {c.name: _at_full(series, c) for c in comparable}
            for where, other in _at_full(series, last).items():
                if math.isnan(other["d0_pixel"]):
                    continue
                rows: list[tuple[tuple, dict]] = []
                for c in comparable:
                    row = mine[c.name].get(where)
                    if row is None:
                        continue
                    sums = self._sums[(c.name, c.summary.curve)]
                    sums[1].add(other["d0_pixel"])
                    if c is last:
                        row["to_last"] = 0.0
                    else:
                        rows.append((sums, row))
                if rows:
                    places.append((key_of[other["item_id"]],
                                   [key_of[r["item_id"]] for _, r in rows]))  # fmt: skip
                    waiting.append(rows)
        calls = [(store_url, places[i:i + PLACES_PER_TASK])
                 for i in range(0, len(places), PLACES_PER_TASK)]  # fmt: skip
        for n, found in runner.run(distances_to, calls):
            for rows, distances in zip(waiting[n * PLACES_PER_TASK :], found, strict=False):
                for (sums, row), distance in zip(rows, distances, strict=True):
                    row["to_last"] = distance
                    sums[0].add(distance)

    def apart(self, candidates: list[Candidate], _last: Candidate) -> list[tuple[float, float]]:
        """Per candidate: (sum of its distances from the last's pictures, sum of the last's
        distances from strength 0); nan where it could not be compared."""
        out = []
        for c in candidates:
            sums = self._sums.get((c.name, c.summary.curve))
            out.append((sums[0].value(), sums[1].value()) if sums else (math.nan, math.nan))
        return out


def distances_to(store_url: str, places: list[tuple[str, list[str]]]) -> list[list[float]]:
    """A task: for each place, the pixel distance of each image from the last's image,
    which is read once for all of them."""
    import numpy as np

    from farm.report.measure import decode
    from farm.report.response import pixel_distance
    from farm.storage import open_store

    store = open_store(store_url)

    def read(key: str):
        return np.asarray(decode(store.get(key)))

    out = []
    for last, others in places:
        theirs = read(last)
        out.append([pixel_distance(read(key), theirs) for key in others])
    return out


def _at_full(series: list[SeriesRows], c: Candidate) -> dict[str, dict]:
    """A checkpoint's rendered rows at its full strength, by place, in the series of its
    curve that start at 0."""
    return {place: r for caption, from_zero, place, rows in series
            if from_zero and caption == c.name and rows and rows[0]["curve"] == c.summary.curve
            for r in rows if r["strength"] == c.summary.full and r["rendered"]}  # fmt: skip
