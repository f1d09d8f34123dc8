"""Presets: named strength settings (`subtle`, `bold`, a `style` slider), as tenants.yaml
defines them (farm/tenancy/tenants.py) and a spec picks them (farm/tenancy/policy.py).

A preset sets `weight` (each LoRA the job names, or one named by `lora`), `loras` (a
weight per LoRA: te/unet, blocks and schedule allowed) or a `slider` with min, max, step
and default, set in a spec with `preset: {name: style, at: 0.7}`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from farm.spec.errors import SpecError, show
from farm.spec.model import strength_fields, strength_to_spec
from farm.spec.strength import Strength

PRESET_KEYS = ("weight", "loras", "slider", "lora", "description")
SLIDER_KEYS = ("min", "max", "step", "default")
GRID_TOLERANCE = 1e-9  # a slider position counts as on its grid within this


@dataclass(frozen=True)
class Slider:
    min: float
    max: float
    step: float
    default: float

    def positions(self) -> list[float]:
        n = math.floor((self.max - self.min) / self.step + GRID_TOLERANCE) + 1
        return [round(self.min + i * self.step, 10) + 0.0 for i in range(n)]

    def check(self, at: float, where: str) -> float:
        """`at` if it is a position of the slider, else a SpecError naming the closest."""
        if not self.min - GRID_TOLERANCE <= at <= self.max + GRID_TOLERANCE:
            raise SpecError(f"{where}: {at:g} is outside the slider's {self.min:g}..{self.max:g}")
        steps = (at - self.min) / self.step
        if abs(steps - round(steps)) > 1e-6:
            lo = self.min + math.floor(steps) * self.step
            raise SpecError(f"{where}: {at:g} is not a slider position (steps of {self.step:g} "
                            f"from {self.min:g}: try {lo:g} or {lo + self.step:g})")  # fmt: skip
        return round(self.min + round(steps) * self.step, 10) + 0.0


@dataclass(frozen=True)
class Preset:
    name: str
    origin: str  # "global" or the tenant that defines it
    weight: Strength | None = None  # for each LoRA the job names
    loras: tuple[tuple[str, Strength], ...] = ()  # a weight per named LoRA
    slider: Slider | None = None
    lora: str | None = None  # the one LoRA a weight or slider preset applies to, if named
    description: str = ""

    def resolved(self, at: float | None, where: str) -> dict:
        """The preset at a slider position (or as it is), as a spec's preset_weights entry."""
        if self.slider is None:
            if at is not None:
                raise SpecError(f"{where}.at: preset {self.name!r} is not a slider")
            if self.loras:
                return {"preset": self.name,
                        "loras": {n: strength_to_spec(w) for n, w in self.loras}}  # fmt: skip
            out: dict[str, Any] = {"preset": self.name, "weight": strength_to_spec(self.weight)}
        else:
            value = self.slider.default if at is None else self.slider.check(at, f"{where}.at")
            out = {"preset": self.name, "weight": value, "at": value}
        if self.lora:
            out["lora"] = self.lora
        return out

    def describe(self) -> dict:
        """What `farm presets show --json` prints."""
        d: dict[str, Any] = {"name": self.name, "origin": self.origin}
        if self.description:
            d["description"] = self.description
        if self.lora:
            d["lora"] = self.lora
        if self.slider is not None:
            s = self.slider
            d["slider"] = {"min": s.min, "max": s.max, "step": s.step, "default": s.default,
                           "positions": s.positions()}  # fmt: skip
        elif self.loras:
            d["loras"] = {n: strength_fields(w) for n, w in self.loras}
        else:
            d["weight"] = strength_fields(self.weight)
        return d


def parse_presets(value: Any, at: str, origin: str) -> dict[str, Preset]:
    from farm.spec.fields import NAME_RE, as_mapping

    out = {}
    for name, body in as_mapping(value, at, "a mapping {preset name: setting}").items():
        where = f"{at}.{name}"
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise SpecError(f"{where}: a preset name uses letters, digits, '_', '.', '-'")
        out[name] = _preset(name, body, where, origin)
    return out


def _preset(name: str, body: Any, at: str, origin: str) -> Preset:
    from farm.spec.fields import NAME_RE, as_mapping, as_number, as_str, check_keys, combo_strength

    if isinstance(body, int | float | str) and not isinstance(body, bool):
        return Preset(name, origin, weight=combo_strength(body, at))
    m = as_mapping(body, at, "a mapping with weight, loras or slider")
    check_keys(m, PRESET_KEYS, at)
    kinds = [k for k in ("weight", "loras", "slider") if m.get(k) is not None]
    if len(kinds) != 1:
        raise SpecError(f"{at}: give exactly one of weight, loras or slider"
                        + (f" (got {', '.join(kinds)})" if kinds else ""))  # fmt: skip
    lora = m.get("lora")
    if lora is not None:
        lora = as_str(lora, f"{at}.lora")
        if not NAME_RE.fullmatch(lora):
            raise SpecError(f"{at}.lora: {show(lora)} is not a LoRA name")
        if kinds == ["loras"]:
            raise SpecError(f"{at}.lora: a loras preset names its LoRAs already")
    description = as_str(m.get("description", ""), f"{at}.description", empty_ok=True)
    if kinds == ["weight"]:
        return Preset(name, origin, weight=combo_strength(m["weight"], f"{at}.weight"),
                      lora=lora, description=description)  # fmt: skip
    if kinds == ["loras"]:
        per = as_mapping(m["loras"], f"{at}.loras", "a mapping {lora name: weight}")
        if not per:
            raise SpecError(f"{at}.loras: is empty (give at least one lora name: weight)")
        pairs = []
        for lname, w in per.items():
            if not isinstance(lname, str) or not NAME_RE.fullmatch(lname):
                raise SpecError(f"{at}.loras: {show(lname)} is not a LoRA name")
            pairs.append((lname, combo_strength(w, f"{at}.loras.{lname}")))
        return Preset(name, origin, loras=tuple(pairs), description=description)
    s = as_mapping(m["slider"], f"{at}.slider", "a mapping {min, max, step, default}")
    check_keys(s, SLIDER_KEYS, f"{at}.slider")
    values = {}
    for key in SLIDER_KEYS:
        if s.get(key) is None:
            raise SpecError(f"{at}.slider.{key}: required")
        values[key] = as_number(s[key], f"{at}.slider.{key}", strings=True)
    if values["step"] <= 0:
        raise SpecError(f"{at}.slider.step: {values['step']:g} must be more than 0")
    if values["min"] > values["max"]:
        raise SpecError(f"{at}.slider: min {values['min']:g} is above max {values['max']:g}")
    if (values["max"] - values["min"]) / values["step"] > 10_000:
        raise SpecError(f"{at}.slider.step: more than 10,000 positions (use a larger step)")
    slider = Slider(values["min"], values["max"], values["step"], values["default"])
    slider_default = slider.check(values["default"], f"{at}.slider.default")
    slider = Slider(slider.min, slider.max, slider.step, slider_default)
    return Preset(name, origin, slider=slider, lora=lora, description=description)


def preset_strengths(preset: Preset) -> list[tuple[str, Strength]]:
    if preset.loras:
        return list(preset.loras)
    if preset.slider is not None:
        s = preset.slider
        return [("", Strength.plain(s.min)), ("", Strength.plain(s.max))]
    return [("", preset.weight)]
