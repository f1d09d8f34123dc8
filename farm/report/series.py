"""Series: the shots that differ only in one LoRA's strength, in strength order."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from farm.report.shots import Shot
from farm.spec.strength import format_number


@dataclass(frozen=True)
class Series:
    lora: str
    text: str
    seed: int
    # The rest of what the series holds fixed: context, the other LoRAs, this one's shape.
    fixed: tuple
    shots: tuple[tuple[float, Shot], ...]  # (strength, shot), by strength

    @property
    def strengths(self) -> list[float]:
        return [s for s, _ in self.shots]

    @property
    def curve(self) -> str:
        """The response curve this series belongs to: its LoRA, that LoRA's blocks or
        schedule, and the other LoRAs it is blended with."""
        _, others, shape = self.fixed
        parts = [self.lora, *([shape] if shape else [])]
        if others:
            parts.append("with " + ", ".join(f"{x.name} {format_number(x.weight)}"
                                             for x in others))  # fmt: skip
        return " ".join(parts)

    @property
    def label(self) -> str:
        others = [f"{x.name}={format_number(x.weight)}" for x in self.fixed[1]]
        return " · ".join([f"seed {self.seed}", *others, self.text])


def series_of(shots: list[Shot], lora: str) -> list[Series]:
    """Every series of `lora`: same prompt, seed and settings, the strength moving.

    A shot without the LoRA counts as its strength 0, so a sweep that lists a plain
    render beside its strengths still gets a reference."""
    groups: dict[tuple, dict[float, Shot]] = defaultdict(dict)
    plain: dict[tuple, Shot] = {}
    for shot in shots:
        mine = next((x for x in shot.loras if x.name == lora), None)
        # Another LoRA at a plain 0 is no LoRA (bit for bit), so it does not split series.
        others = tuple(x for x in shot.loras if x.name != lora and (x.weight or x.shape))
        base = (shot.text, shot.seed, shot.context, others)
        if mine is None:
            plain[base] = shot
            continue
        # The first shot at a strength wins; a repeat is the same picture.
        groups[(*base, mine.shape)].setdefault(mine.weight, shot)
    result = []
    for (text, seed, context, others, shape), by_weight in groups.items():
        if 0.0 not in by_weight and (text, seed, context, others) in plain:
            by_weight[0.0] = plain[(text, seed, context, others)]
        if len(by_weight) < 2:
            continue
        ordered = tuple(sorted(by_weight.items()))
        result.append(Series(lora, text, seed, (context, others, shape), ordered))
    result.sort(key=lambda s: (s.text, repr(s.fixed), s.seed))
    return result
