"""Training runs in a report: every checkpoint's response side by side, and which one to
ship at what strengths. The rule is stated in docs/report.md; keep the two in step."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from farm.report.response import Summary

# A checkpoint has learned the LoRA when its full-strength pictures have come this far of
# the way from the plain pictures to the last checkpoint's (by pixel distance): the last
# has trained longest, so it is the yardstick. On the tiny model's own run
# (docs/training-runs.md) the checkpoints at steps 100 to 600 come 0.70, 0.75, 0.82, 0.86,
# 0.94 and 1 of the way; the sheet shows the plain shape's colour still under the outline
# up to step 200 and the finished style from step 300. Magnitude alone (how far a picture
# moves from strength 0, in any direction) put step 100 at 93% of the last checkpoint's.
LIKENESS = 0.80
# Consistency figures (coefficients of variation) closer than this count as equal: with a
# few prompts and seeds per strength, smaller differences are noise.
SPREAD_TIE = 0.05


@dataclass(frozen=True)
class Place:
    """A checkpoint's place in its training run, as job.json records it."""

    run: str
    order: int  # position in the run, in training order
    step: int | None
    epoch: int | None


def run_places(doc: dict) -> dict[str, Place]:
    """Adapter name → its place in a training run, for every checkpoint the job sweeps.
    job.json lists each run's checkpoints in training order."""
    from farm.plan.stored import run_of

    places: dict[str, Place] = {}
    counts: dict[str, int] = {}
    for adapter in doc.get("adapters") or ():
        run = run_of(adapter) if isinstance(adapter, dict) else {}
        if not run or not isinstance(adapter.get("name"), str):
            continue
        order = counts[run["run"]] = counts.get(run["run"], -1) + 1
        places[adapter["name"]] = Place(run["run"], order, run["step"], run["epoch"])
    return places


def checkpoint_label(name: str, place: Place, short: bool = False) -> str:
    """How sheets and the gallery name a checkpoint: its file stem, and its step (or epoch)
    where the run recorded one; `short`: the step (or epoch) alone, where known."""
    at = (f"step {place.step}" if place.step is not None else
          f"epoch {place.epoch}" if place.epoch is not None else None)  # fmt: skip
    if at is None:
        return name
    return at if short else f"{name} · {at}"


@dataclass
class Candidate:
    """One checkpoint's curve, measured against the rest of its run."""

    name: str  # the checkpoint's adapter name (its file stem)
    place: Place
    summary: Summary
    effect: float  # mean pixel distance from strength 0 at full strength (nan: none)
    spread: float  # the consistency of that distance across series (nan: unknown)
    # 1 − (pixel distance from the last checkpoint's full-strength pictures) / (the last's
    # distance from strength 0), over the series both have: 1 for the last, about 0 for a
    # checkpoint that has learned nothing; nan where nothing could be compared.
    likeness: float = math.nan
    why_not: str = ""  # why it cannot be recommended; "" when it can

    @property
    def file(self) -> str:
        return f"{self.name}.safetensors"

    @property
    def width(self) -> float:
        low, high = self.summary.recommended or (math.nan, math.nan)
        return high - low

    @property
    def label(self) -> str:
        """`step 300` (or `epoch 3`, or the file's stem where neither is known)."""
        return checkpoint_label(self.name, self.place, short=True)


@dataclass
class RunComparison:
    """The checkpoints of one run, swept under one base, and the one to ship."""

    run: str
    base: str  # what every curve of it holds fixed besides the run ("with ink 0.5"), or ""
    candidates: list[Candidate]  # in training order
    chosen: Candidate | None
    reason: str  # why the chosen one, or why none

    @property
    def title(self) -> str:
        return " ".join([self.run, *([self.base] if self.base else [])])

    def sentence(self) -> str:
        """One line for the terminal and the gallery."""
        c = self.chosen
        if c is None:
            return f"{self.title}: no checkpoint to recommend: {self.reason}"
        low, high = c.summary.recommended
        return (f"{self.title}: ship {c.file} ({c.label}) at strengths {low:g} to {high:g}; "
                f"{self.reason}")  # fmt: skip


# How far apart each checkpoint's full-strength pictures are from the last one's, series
# by series: per candidate, (sum of the distances, sum of the last's distances from 0).
Apart = Callable[[list["Candidate"], "Candidate"], list[tuple[float, float]]]


def compare_runs(summaries: list[Summary], places: dict[str, Place],
                 apart: Apart | None = None) -> list[RunComparison]:  # fmt: skip
    """Group the curves of each run's checkpoints (those that hold the same base), measure
    each against the group's last with `apart`, and pick the checkpoint to ship."""
    groups: dict[tuple[str, str], list[Candidate]] = {}
    for s in summaries:
        place = places.get(s.lora)
        if place is None:
            continue
        base = s.curve.removeprefix(s.lora).strip()
        point = s.full_point
        effect = point.pixel if point is not None else math.nan
        spread = point.spread if point is not None else math.nan
        groups.setdefault((place.run, base), []).append(Candidate(s.lora, place, s, effect,
                                                                  spread))  # fmt: skip
    out = []
    for (run, base), candidates in groups.items():
        candidates.sort(key=lambda c: c.place.order)
        last = candidates[-1]
        sums = apart(candidates, last) if apart else [(math.nan, math.nan)] * len(candidates)
        for c, (apart_sum, span) in zip(candidates, sums, strict=True):
            c.likeness = 1 - apart_sum / span if span > 0 else math.nan
        chosen, reason = recommend(candidates)
        out.append(RunComparison(run, base, candidates, chosen, reason))
    return out


def recommend(candidates: list[Candidate]) -> tuple[Candidate | None, str]:
    """The checkpoint to ship (candidates in training order, `likeness` measured), and
    why; see docs/report.md.

    1. A candidate must show an onset and a recommended range, and its full-strength
       pictures must have come LIKENESS of the way to the last checkpoint's.
    2. Of those, the ones that do not break at or below strength 1, where any does not.
    3. Of those, the widest recommended range; then the most consistent across prompts and
       seeds (the lowest spread at full strength, within SPREAD_TIE); then the earliest.
    Each candidate's `why_not` (why it was not in the final pool) is filled in.
    """
    if not any(c.effect > 0 for c in candidates):  # NaN compares false
        for c in candidates:
            c.why_not = "no effect measured at full strength"
        return None, "no checkpoint shows an effect at full strength"
    for c in candidates:
        s = c.summary
        if not c.effect > 0:
            c.why_not = "no effect measured at full strength"
        elif s.onset is None or s.recommended is None:
            c.why_not = "no onset or recommended range"
        elif math.isnan(c.likeness):
            c.why_not = "not comparable with the last checkpoint's pictures"
        elif c.likeness < LIKENESS:
            c.why_not = (f"its pictures at full strength are {c.likeness:.0%} of the way to "
                         f"the last checkpoint's, under {LIKENESS:.0%}")  # fmt: skip
    learned = [c for c in candidates if not c.why_not]
    if not learned:
        return None, (f"no checkpoint with an onset comes {LIKENESS:.0%} of the way to the "
                      "last checkpoint's pictures")  # fmt: skip
    holding = [c for c in learned if not _breaks_by_full(c)]
    why = []
    if holding:
        for c in learned:
            if _breaks_by_full(c):
                c.why_not = f"breaks at {c.summary.break_at:g}, at or below strength 1"
        eligible = holding
    else:
        eligible = learned
        why.append("all that learned break at or below strength 1, so their ranges below the "
                   "break decide")  # fmt: skip
    widest = max(round(c.width, 6) for c in eligible)
    best = [c for c in eligible if round(c.width, 6) == widest]
    if len(best) < len(eligible):
        why.append(f"the widest recommended range of the {len(eligible)} that learned")
    spreads = [c.spread for c in best if not math.isnan(c.spread)]
    if len(best) > 1 and spreads:
        least = min(spreads)
        steady = [c for c in best if not math.isnan(c.spread) and c.spread <= least + SPREAD_TIE]
        if len(steady) < len(best):
            why.append("the most consistent across prompts and seeds of those tied on range")
        best = steady
    if len(best) > 1:
        why.append(f"the earliest of {len(best)} tied")
    chosen = best[0]
    like = (f"its pictures at full strength are {chosen.likeness:.0%} of the way to the last "
            "checkpoint's")  # fmt: skip
    return chosen, "; ".join([like, *why])


def _breaks_by_full(c: Candidate) -> bool:
    return c.summary.break_at is not None and c.summary.break_at <= 1
