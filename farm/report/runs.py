"""Training runs in a report: every checkpoint's response side by side, and which one to
ship at what strengths. The rule is stated in docs/report.md; keep the two in step."""

from __future__ import annotations

import math
from dataclasses import dataclass

from farm.report.response import Summary

# A checkpoint has learned the LoRA when its effect at full strength reaches this share of
# the run's last checkpoint's: the last has trained longest, so it is the yardstick.
REACH = 0.90
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
    reach: float = math.nan  # effect / the last checkpoint's effect
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


def compare_runs(summaries: list[Summary], places: dict[str, Place]) -> list[RunComparison]:
    """Group the curves of each run's checkpoints (those that hold the same base) and pick
    the checkpoint to ship from each group."""
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
        chosen, reason = recommend(candidates)
        out.append(RunComparison(run, base, candidates, chosen, reason))
    return out


def recommend(candidates: list[Candidate]) -> tuple[Candidate | None, str]:
    """The checkpoint to ship (candidates in training order), and why; see docs/report.md.

    1. A candidate must show an onset and a recommended range, and its full-strength effect
       must reach REACH of the last checkpoint's.
    2. Of those, the ones that do not break at or below strength 1, where any does not.
    3. Of those, the widest recommended range; then the most consistent across prompts and
       seeds (the lowest spread at full strength, within SPREAD_TIE); then the earliest.
    Each candidate's `reach` and `why_not` (why it was not in the final pool) are filled in.
    """
    measured = [c for c in candidates if c.effect > 0]  # NaN compares false
    if not measured:
        for c in candidates:
            c.why_not = "no effect measured at full strength"
        return None, "no checkpoint shows an effect at full strength"
    last = measured[-1]
    for c in candidates:
        c.reach = c.effect / last.effect if c.effect > 0 else math.nan
        s = c.summary
        if not c.effect > 0:
            c.why_not = "no effect measured at full strength"
        elif s.onset is None or s.recommended is None:
            c.why_not = "no onset or recommended range"
        elif c.reach < REACH:
            c.why_not = (f"its effect at full strength is {c.reach:.0%} of the last "
                         f"checkpoint's, under {REACH:.0%}")  # fmt: skip
    learned = [c for c in candidates if not c.why_not]
    if not learned:
        return None, (f"no checkpoint with an onset reaches {REACH:.0%} of the last "
                      "checkpoint's effect")  # fmt: skip
    holding = [c for c in learned if not _breaks_by_full(c)]
    why = []
    if holding:
        for c in learned:
            if _breaks_by_full(c):
                c.why_not = f"breaks at {c.summary.break_at:g}, at or below strength 1"
        eligible = holding
    else:
        eligible = learned
        why.append(f"all that reach {REACH:.0%} break at or below strength 1, so their ranges "
                   "below the break decide")  # fmt: skip
    widest = max(round(c.width, 6) for c in eligible)
    best = [c for c in eligible if round(c.width, 6) == widest]
    if len(best) < len(eligible):
        why.append(f"the widest recommended range of the {len(eligible)} that reach "
                   f"{REACH:.0%}")  # fmt: skip
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
    reach = f"its effect at full strength reaches {chosen.reach:.0%} of the last checkpoint's"
    return chosen, "; ".join([reach, *why])


def _breaks_by_full(c: Candidate) -> bool:
    return c.summary.break_at is not None and c.summary.break_at <= 1
