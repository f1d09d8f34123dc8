"""The gallery's axes (prompt, seed, each swept LoRA's strength, a training run's
checkpoint, any setting that varies) and its entries, one per rendered image."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from farm.report.census import Facts
from farm.report.runs import Place, checkpoint_label
from farm.report.shots import Shot
from farm.spec.strength import format_number

Getter = Callable[[Shot], str]


def gallery_axes(facts: Facts, loras: list[str],
                 places: dict[str, Place]) -> list[tuple[dict, Getter]]:  # fmt: skip
    """The gallery's axes, each with how to read it off a shot; values are those of the
    rendered shots."""
    axes: list[tuple[dict, Getter]] = []

    def add(name: str, kind: str, values: list[str], get: Getter) -> None:
        axes.append(({"name": name, "label": name, "kind": kind, "values": values}, get))

    add("prompt", "prompt", list(facts.prompts), lambda s: s.text)
    add("seed", "seed", [str(v) for v in sorted(facts.seeds)], lambda s: str(s.seed))
    runs: dict[str, list[str]] = defaultdict(list)
    for lora in loras:
        if lora in places:
            runs[places[lora].run].append(lora)
            continue
        add(f"{lora} strength", "strength",
            [format_number(v) for v in facts.strengths({lora})],
            lambda s, lora=lora: format_number(s.weight(lora)))  # fmt: skip
    for run, names in runs.items():
        names.sort(key=lambda n: places[n].order)
        labels = {n: checkpoint_label(n, places[n]) for n in names}

        def member(s: Shot, names=tuple(names)) -> str | None:
            return next((x.name for x in s.loras if x.name in names), None)

        add(f"{run} checkpoint", "checkpoint", [labels[n] for n in names],
            lambda s, m=member, at=labels: at.get(m(s) or "", "none"))  # fmt: skip
        add(f"{run} strength", "strength",
            [format_number(v) for v in facts.strengths(set(names))],
            lambda s, member=member: format_number(s.weight(member(s) or "")))  # fmt: skip
    for lora, values in facts.shapes.items():
        if len(values) > 1:
            add(f"{lora} blocks/schedule", "other", sorted(values),
                lambda s, lora=lora: _shape_of(s, lora))  # fmt: skip
    for key in sorted(facts.varying(rendered=True)):
        add(key, "other", sorted(facts.rendered_context[key]),
            lambda s, key=key: s.setting(key) or "")  # fmt: skip
    if len(facts.presets) > 1:
        add("preset", "other", sorted(p or "" for p in facts.presets), lambda s: s.preset or "")
    return axes


def gallery_entry(shot: Shot, axes: list[tuple[dict, Getter]], d0: float | None,
                  marks: list[str], infotext: str, row: dict) -> dict:  # fmt: skip
    return {
        "id": shot.item_id,
        "src": f"../{shot.key}",
        "axes": {axis["name"]: get(shot) for axis, get in axes},
        "flags": [*shot.flags, *marks],
        "d0": d0,
        "detail": {"infotext": infotext, "row": row},
    }


def _shape_of(shot: Shot, lora: str) -> str:
    mine = next((x for x in shot.loras if x.name == lora), None)
    return (mine.shape or "plain") if mine else "plain"
