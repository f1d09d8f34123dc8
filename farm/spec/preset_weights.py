"""A spec's presets as resolved (`preset_weights`): parsed, checked against the spec's
LoRAs, and refused where two would render the same images.

A spec names presets (`preset: bold`, `presets: [subtle, bold]`); farm/tenancy/policy.py
turns the names into these entries from tenants.yaml, and job.json keeps them, so a job
resumes, verifies and reports without the tenants file.
"""

from __future__ import annotations

import json
from typing import Any

from farm.spec.errors import SpecError, show
from farm.spec.model import Catalog, LoraAxis, PresetWeights

PRESET_KEYS = ("preset", "weight", "loras", "lora", "at")


def parse_preset_weights(value: Any, loras: tuple[LoraAxis, ...], catalog: Catalog | None,
                         combine: Any) -> tuple[PresetWeights, ...]:  # fmt: skip
    from farm.spec.fields import NAME_RE, as_mapping, as_number, as_str, check_keys, combo_strength

    if value is None:
        if catalog is not None and catalog.preset_by is not None:
            raise SpecError("catalog.preset_by: picks presets, and the spec names none "
                            "(preset_by needs a tenants file: give --tenants)")  # fmt: skip
        return ()
    if not isinstance(value, list) or not value:
        raise SpecError("preset_weights: expected a non-empty list of {preset, weight | loras}")
    names = [x.name for x in loras]
    if combine != "product":
        raise SpecError("combine: a preset job takes its combinations from its presets; "
                        "remove combine")  # fmt: skip
    for i, x in enumerate(loras):
        if x.alphas:
            raise SpecError(f"loras[{i}].alpha: a preset job takes its strengths from its "
                            "presets; remove alpha")  # fmt: skip
    out: list[PresetWeights] = []
    for i, item in enumerate(value):
        at = f"preset_weights[{i}]"
        m = as_mapping(item, at)
        check_keys(m, PRESET_KEYS, at)
        label = as_str(m.get("preset"), f"{at}.preset")
        lora = m.get("lora")
        if lora is not None and lora not in names:
            raise SpecError(f"{at}.lora: {show(lora)} is not one of the spec's loras "
                            f"({', '.join(names) or 'none'})")  # fmt: skip
        where_at = None if m.get("at") is None else as_number(m["at"], f"{at}.at", strings=True)
        if (m.get("weight") is None) == (m.get("loras") is None):
            raise SpecError(f"{at}: give weight or loras")
        if m.get("loras") is not None:
            pairs = []
            for name, w in as_mapping(m["loras"], f"{at}.loras").items():
                if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name not in names:
                    raise SpecError(f"{at}.loras.{name}: not one of the spec's loras "
                                    f"({', '.join(names) or 'none'}); add it to loras")  # fmt: skip
                pairs.append((name, combo_strength(w, f"{at}.loras.{name}")))
            out.append(PresetWeights(label, loras=tuple(pairs), at=where_at))
            continue
        weight = combo_strength(m["weight"], f"{at}.weight")
        by_row = catalog is not None and catalog.lora_by is not None
        if lora is None and not names and not by_row:
            raise SpecError(
                f"{at}: preset {label!r} sets the job's LoRAs, and the spec "
                "names none; add one to loras (e.g. loras: [{name: house}])"
            )
        out.append(PresetWeights(label, weight=weight, lora=lora, at=where_at))
    row_bound = catalog is not None and (catalog.preset_by or catalog.lora_by)
    if not row_bound:
        seen: dict[str, int] = {}
        for i, p in enumerate(out):
            key = json.dumps(sorted((n, w.key()) for n, w in p.bind(tuple(names))))
            if key in seen:
                raise SpecError(f"preset_weights[{i}]: preset {p.preset!r} sets the same weights "
                                f"as {out[seen[key]].preset!r}, so both would render the same "
                                "images; keep one")  # fmt: skip
            seen[key] = i
    elif catalog.preset_by is not None:
        labels = {p.preset for p in out}
        wanted = [v for _, v in catalog.preset_by.map] + [catalog.preset_by.default]
        for label in wanted:
            if label is not None and label not in labels:
                raise SpecError(f"catalog.preset_by: preset {label!r} has no weights in "
                                "preset_weights")  # fmt: skip
    elif len(out) != 1:
        raise SpecError(
            "catalog.lora_by: picks each row's LoRA, so the job takes one "
            "preset (preset:) or one per row (catalog.preset_by), not an axis"
        )
    if catalog is not None and catalog.lora_by is not None:
        for _, name in [*catalog.lora_by.map, ("", catalog.lora_by.default)]:
            if name is not None and name not in names:
                raise SpecError(f"catalog.lora_by: LoRA {name!r} is not one of the spec's loras "
                                f"({', '.join(names) or 'none'})")  # fmt: skip
    return tuple(out)
