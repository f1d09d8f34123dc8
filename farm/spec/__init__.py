"""The job spec: read a YAML or JSON file, validate it, get a Spec.

The front door for the rest of farm: the data model lives in farm/spec/model.py, the
validation in farm/spec/parse.py, and both are re-exported here. Nothing here imports
torch or ray: `farm plan` and `farm --help` must stay fast.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from farm.spec.errors import SpecError
from farm.spec.fields import read_text_file
from farm.spec.lora_axes import parse_strengths
from farm.spec.model import Catalog, ComboList, LoraAxis, Render, Spec, strength_to_spec
from farm.spec.parse import parse_spec, with_output
from farm.spec.yaml_rules import load_yaml

# (the mapping read, the spec's folder) -> the mapping to validate
Resolve = Callable[[Any, Path], Any]

__all__ = [
    "Catalog",
    "ComboList",
    "LoraAxis",
    "Render",
    "Spec",
    "SpecError",
    "load_spec",
    "parse_spec",
    "parse_strengths",
    "strength_to_spec",
    "with_output",
]


def load_spec(path: str | Path, resolve: Resolve | None = None) -> Spec:
    """Read a YAML (.yaml/.yml) or JSON (.json) spec file and validate it. `resolve`, if
    given, turns the mapping read into the one to validate first (farm.tenancy.policy's
    resolver fills in a tenant's defaults and presets); it gets the spec's folder too."""
    path = Path(path)
    name = str(path)
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json") and path.is_file():
        raise SpecError(f"{name}: unknown spec format (use a .yaml, .yml or .json file)")
    text = read_text_file(path, name, "spec file", "a spec may hold; put long prompt lists "
                          "in a catalog (catalog: {path: prompts.csv, template: '{prompt}', "
                          "key: id}), which farm streams")  # fmt: skip
    if suffix == ".json":
        try:
            data = json.loads(text, object_pairs_hook=lambda kv: _no_repeats(kv, name))
        except json.JSONDecodeError as e:
            raise SpecError(f"{name}: invalid JSON at line {e.lineno}: {e.msg}") from None
        except RecursionError:
            raise SpecError(f"{name}: invalid JSON: nested too deeply") from None
    else:
        data = load_yaml(text, name)
    if isinstance(data, dict) and "preset_weights" in data:
        # Resolved weights are farm's to write, from the tenants file: a spec that wrote
        # them would skip the presets' own checks (a slider's range and steps).
        raise SpecError("preset_weights: farm writes this from the tenants file; pick "
                        "presets with preset: or presets:")  # fmt: skip
    if resolve is not None:
        data = resolve(data, path.absolute().parent)
    return parse_spec(data, source=name, base_dir=path.absolute().parent)


def _no_repeats(pairs: list[tuple[str, Any]], name: str) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise SpecError(f"{name}: invalid JSON: duplicate key {key!r}")
        out[key] = value
    return out
