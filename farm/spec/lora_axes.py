"""The spec's LoRA axes: each LoRA entry (path, strengths, te/unet, blocks, schedule), a
strength list or 'start:stop:step' range, and how the entries combine."""

from __future__ import annotations

import json
import math
from pathlib import Path, PurePosixPath
from typing import Any

from farm.limits import PICKLE_SUFFIXES
from farm.loras.demo import DEMO_LORAS
from farm.loras.demo import PREFIX as DEMO_PREFIX
from farm.spec.errors import SpecError, show, suggest
from farm.spec.fields import (
    NAME_RE,
    URL_RE,
    as_local_path,
    as_mapping,
    as_number,
    as_str,
    blocks_field,
    check_keys,
    combo_strength,
    get_field,
    required_field,
    s3_url,
    schedule_field,
)
from farm.spec.model import ComboList, LoraAxis
from farm.spec.strength import Strength, is_lbw_preset

MAX_STRENGTHS = 10_000
LORA_KEYS = ("name", "path", "checkpoints", "alpha", "te", "unet", "blocks", "schedule")
STRENGTHS_HELP = "a number, a list of numbers or a range 'start:stop:step'"


def parse_strengths(value: Any, field: str) -> tuple[float, ...]:
    """Strengths from a number, a numeric string, a list, or a 'start:stop:step' range."""
    if isinstance(value, str) and ":" in value:
        values = _range(value, field)
    elif isinstance(value, list | tuple):
        if not value:
            raise SpecError(f"{field}: the list is empty (give at least one strength)")
        if len(value) > MAX_STRENGTHS:
            raise SpecError(f"{field}: {len(value)} values, more than {MAX_STRENGTHS}")
        values = [as_number(v, f"{field}[{i}]", strings=True) for i, v in enumerate(value)]
    elif isinstance(value, int | float | str) and not isinstance(value, bool):
        values = [as_number(value, field, strings=True)]
    else:
        raise SpecError(f"{field}: expected {STRENGTHS_HELP}, got {show(value)}")
    seen: set[float] = set()
    for v in values:
        if v in seen:
            raise SpecError(f"{field}: strength {v!r} is listed twice (give each value once)")
        seen.add(v)
    return tuple(values)


def _range(text: str, field: str) -> list[float]:
    parts = text.split(":")
    if len(parts) != 3:
        raise SpecError(
            f"{field}: {text!r} is not a range (write 'start:stop:step', e.g. '0:1:0.2')"
        )
    start, stop, step = (as_number(p, field, strings=True) for p in parts)
    if step == 0:
        raise SpecError(f"{field}: the step of {text!r} is 0 (use a step such as 0.1)")
    if (stop - start) * step < 0:
        raise SpecError(
            f"{field}: the step {step:g} of {text!r} points away from the stop {stop:g} "
            f"(use {-step:g})"
        )
    span = (stop - start) / step
    if not math.isfinite(span) or span + 1 > MAX_STRENGTHS:
        raise SpecError(
            f"{field}: {text!r} gives more than {MAX_STRENGTHS} values (use a larger step)"
        )
    n = math.floor(span + 1e-9) + 1  # the 1e-9 keeps a stop on the grid despite float error
    # Rounding to 10 decimals gives 0.3, not 0.30000000000000004; + 0.0 turns -0.0 into 0.0.
    return [round(start + i * step, 10) + 0.0 for i in range(n)]


def parse_loras(value: Any, base: Path, mode: Any) -> tuple[LoraAxis, ...]:
    # zip pairs every LoRA's strengths; in product mode a LoRA without alpha is not swept
    # and serves only `<lora:name:w>` tags in prompts; explicit combos carry their weights.
    alpha_required = mode == "zip"
    explicit = isinstance(mode, list | tuple)
    if not isinstance(value, list | tuple):
        raise SpecError(
            f"loras: expected a list of {{name, path, alpha}} mappings, got {show(value)}"
        )
    out: list[LoraAxis] = []
    names: dict[str, int] = {}
    for i, item in enumerate(value):
        at = f"loras[{i}]"
        m = as_mapping(item, at)
        check_keys(m, LORA_KEYS, at)
        name = as_str(required_field(m, "name", "a short name such as 'neon'", at), f"{at}.name")
        if not NAME_RE.fullmatch(name):
            raise SpecError(f"{at}.name: {show(name)} may only use letters, digits, '_', '.', '-'")
        if name in names:
            raise SpecError(f"{at}.name: {name!r} is already used by loras[{names[name]}]")
        names[name] = i
        checkpoints = _checkpoints(m, at, base, mode)
        if checkpoints:
            path = ""
            for c in checkpoints:
                stem = c.name.removesuffix(".safetensors")
                if not NAME_RE.fullmatch(stem):
                    raise SpecError(f"{at}.checkpoints: {c.name}: a checkpoint goes by its file "
                                    "name, which may only use letters, digits, '_', '.', '-'; "
                                    "rename the file")  # fmt: skip
                # The run's final save goes by the run's own name: no clash with itself.
                if stem in names and (names[stem] != i or stem != name):
                    raise SpecError(f"{at}.checkpoints: {c.name} goes by {stem!r}, a name "
                                    f"loras[{names[stem]}] already uses")  # fmt: skip
                names[stem] = i
        else:
            path = lora_path(as_str(required_field(m, "path", "a .safetensors file (or "
                                                   "checkpoints: a training run)", at),
                                    f"{at}.path"), f"{at}.path", base)  # fmt: skip
        alpha = get_field(m, "alpha")
        if checkpoints and alpha is None:
            raise SpecError(f"{at}.alpha: required with checkpoints ({STRENGTHS_HELP}, e.g. "
                            "'0:1:0.2')")  # fmt: skip
        if alpha is None and alpha_required:
            raise SpecError(f"{at}.alpha: required ({STRENGTHS_HELP}, e.g. '0:1:0.2')")
        alphas = parse_strengths(alpha, f"{at}.alpha") if alpha is not None else ()
        extras = _strength_extras(m, at, has_alpha=bool(alphas), zip_mode=alpha_required)
        # With explicit combos every weight comes from `combine`; a lora's own alpha is unused.
        out.append(LoraAxis(name, path, () if explicit else alphas, **extras,
                            checkpoints=tuple(checkpoints)))  # fmt: skip
    return tuple(out)


def _checkpoints(m: dict, at: str, base: Path, mode: Any) -> list:
    """A training run's checkpoints, in training order; [] for an entry with a path."""
    value = get_field(m, "checkpoints")
    if value is None:
        return []
    if get_field(m, "path") is not None:
        raise SpecError(f"{at}: give path (one file) or checkpoints (a training run), not both")
    if mode != "product":
        raise SpecError(f"{at}.checkpoints: a run's checkpoints are swept one per image "
                        "with combine: product; zip and lists cannot say which")  # fmt: skip
    from farm.families import LORA_KEYS
    from farm.loras.checkpoints import CheckpointError, find_checkpoints, resolved_checkpoints

    try:
        if isinstance(value, dict) and "resolved" in value:
            return resolved_checkpoints(value["resolved"], f"{at}.checkpoints")
        return find_checkpoints(value, base, f"{at}.checkpoints", LORA_KEYS)
    except CheckpointError as err:
        raise SpecError(str(err)) from None


def _strength_extras(m: dict, at: str, *, has_alpha: bool, zip_mode: bool) -> dict:
    te, unet = get_field(m, "te"), get_field(m, "unet")
    blocks, schedule = get_field(m, "blocks"), get_field(m, "schedule")
    if not has_alpha:
        for key, value in (("te", te), ("unet", unet), ("blocks", blocks),
                           ("schedule", schedule)):  # fmt: skip
            if value is not None:
                raise SpecError(
                    f"{at}.{key}: applies to a swept LoRA; give {at}.alpha too (or set it in "
                    "the prompt tag or the combine entry)"
                )
        return {}
    if te is not None and unet is not None:
        raise SpecError(
            f"{at}: te and unet are both fixed, so alpha would change nothing; fix at most "
            "one (alpha sets the other) or use combine entries {name: {te, unet}}"
        )
    extras: dict[str, Any] = {}
    if te is not None:
        extras["te"] = as_number(te, f"{at}.te", strings=True)
    if unet is not None:
        extras["unet"] = as_number(unet, f"{at}.unet", strings=True)
    if blocks is not None:
        # A list of settings (presets, 17-value lists or strings, dicts) is an axis; a list
        # of plain values (numbers, or a stray word among them) is one 17-value setting.
        axis = isinstance(blocks, list) and any(
            isinstance(b, list | dict) or is_lbw_preset(b) or (isinstance(b, str) and "," in b)
            for b in blocks
        )
        if axis and zip_mode:
            raise SpecError(f"{at}.blocks: combine: zip takes one block setting per LoRA")
        values = blocks if axis else [blocks]
        parsed = [blocks_field(b, f"{at}.blocks[{i}]" if axis else f"{at}.blocks")
                  for i, b in enumerate(values)]  # fmt: skip
        if len({b.pairs for b in parsed}) != len(parsed):
            raise SpecError(f"{at}.blocks: a block setting is listed twice")
        extras["blocks"] = tuple(parsed)
    if schedule is not None:
        extras["schedule"] = schedule_field(schedule, f"{at}.schedule")
    return extras


def lora_path(text: str, at: str, base: Path) -> str:
    if text.startswith(DEMO_PREFIX):
        if text[len(DEMO_PREFIX) :] not in DEMO_LORAS:
            known = ", ".join(DEMO_PREFIX + n for n in sorted(DEMO_LORAS))
            raise SpecError(f"{at}: unknown demo LoRA {text!r} (known: {known})")
        return text
    suffix = PurePosixPath(text).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise SpecError(
            f"{at}: {text} is a pickle-based {suffix} file; loading one can run arbitrary "
            "code, so farm refuses it. Convert it to .safetensors and point here at that file"
        )
    if suffix != ".safetensors":
        raise SpecError(f"{at}: {text} is not a .safetensors file (farm loads only .safetensors)")
    if text.startswith("s3://"):
        return s3_url(text, at)
    if URL_RE.match(text):
        raise SpecError(f"{at}: {text} — only local files, s3:// and tiny:NAME are supported")
    local = as_local_path(text, base)
    if not local.exists():
        raise SpecError(f"{at}: {local} not found")
    if not local.is_file():
        raise SpecError(f"{at}: {local} is not a file")
    return str(local)


def combine_mode(mode: Any) -> str | list | tuple:
    choices = "'product', 'zip' or a list of {lora name: weight} mappings"
    if isinstance(mode, str) and mode not in ("product", "zip"):
        hint = suggest(mode, ("product", "zip"))
        raise SpecError(f"combine: {mode!r} is not a combine mode{hint} (use {choices})")
    if not isinstance(mode, str | list | tuple):
        raise SpecError(f"combine: expected {choices}, got {show(mode)}")
    return mode


def parse_combine(mode: str | list | tuple, loras: tuple[LoraAxis, ...]) -> str | ComboList:
    if not loras:
        if mode != "product":
            raise SpecError("combine: there are no loras to combine (add loras or remove combine)")
        return mode
    if mode == "zip":
        lengths = {x.name: len(x.alphas) for x in loras}
        if len(set(lengths.values())) > 1:
            got = ", ".join(f"{n}: {k}" for n, k in lengths.items())
            raise SpecError(f"combine: zip needs alpha lists of one length; got {got}")
    if isinstance(mode, str):
        return mode
    if not mode:
        raise SpecError("combine: the list is empty (give {lora name: weight} mappings)")
    names = [x.name for x in loras]
    combos: list[tuple[tuple[str, Strength], ...]] = []
    seen: dict[tuple, int] = {}
    for i, item in enumerate(mode):
        at = f"combine[{i}]"
        m = as_mapping(item, at, "a mapping {lora name: weight}")
        if not m:
            raise SpecError(f"{at}: empty (give at least one lora name: weight)")
        pairs = []
        for name, weight in m.items():
            if name not in names:
                hint = suggest(name, names)
                raise SpecError(f"{at}.{name}: unknown LoRA{hint} (loras: {', '.join(names)})")
            pairs.append((name, combo_strength(weight, f"{at}.{name}")))
        key = tuple(sorted((n, json.dumps(w.key())) for n, w in pairs))
        if key in seen:
            raise SpecError(f"{at}: same as combine[{seen[key]}]")
        seen[key] = i
        combos.append(tuple(pairs))
    return tuple(combos)
