"""Validating a spec mapping into a Spec: defaults filled, paths resolved, one error each.

Every problem becomes one SpecError whose text starts with the field path
(`loras[1].alpha: …`), so the CLI can print it as is and exit 2.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path, PurePosixPath
from typing import Any

from farm.limits import MAX_PROMPT_CHARS, PICKLE_SUFFIXES
from farm.loras.demo import DEMO_LORAS
from farm.loras.demo import PREFIX as DEMO_PREFIX
from farm.spec.catalog_block import parse_catalog
from farm.spec.errors import SpecError, show, suggest
from farm.spec.fields import (
    NAME_RE,
    URL_RE,
    _blocks,
    _check_keys,
    _combo_strength,
    _get,
    _int,
    _local,
    _mapping,
    _number,
    _required,
    _schedule,
    _str,
)
from farm.spec.model import Combos, LoraAxis, Render, Spec
from farm.spec.preset_weights import parse_preset_weights
from farm.spec.samplers import SAMPLERS
from farm.spec.strength import (
    Strength,
    is_lbw_preset,
)

JOB_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")
HUB_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
S3_RE = re.compile(r"s3://[^/\s]+(/.*)?")
MAX_SEED = 2**32 - 1
MAX_SEED_COUNT = 1_000_000
MAX_STRENGTHS = 10_000
FORMATS = ("png", "jpeg", "webp")
TOP_KEYS = ("job", "model", "prompts", "catalog", "negative_prompt", "seeds", "loras",
            "combine", "render", "output", "lora_dir", "tenant", "preset_weights")  # fmt: skip
RENDER_KEYS = ("steps", "guidance", "width", "height", "scheduler", "format", "batch",
               "compile")  # fmt: skip
LORA_KEYS = ("name", "path", "alpha", "te", "unet", "blocks", "schedule")
STRENGTHS_HELP = "a number, a list of numbers or a range 'start:stop:step'"


def parse_spec(data: dict, *, source: str = "<spec>", base_dir: Path | None = None) -> Spec:
    """Validate a spec mapping; relative paths are resolved against base_dir (default cwd)."""
    if not isinstance(data, dict):
        raise SpecError(
            f"{source}: the top level must be a mapping of keys (job, model, prompts, …)"
        )
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    _check_keys(data, TOP_KEYS, "")
    job = _str(_required(data, "job", "a job name such as 'neon-sweep'"), "job")
    if len(job) > 128 or not JOB_RE.fullmatch(job):
        raise SpecError(
            f"job: {show(job)} is not a valid job name (use lowercase letters, digits, '.', "
            "'_' and '-', starting with a letter or digit; at most 128 characters)"
        )
    model = _model(_get(data, "model", "tiny"), base)
    has_prompts, has_catalog = _get(data, "prompts") is not None, _get(data, "catalog") is not None
    if has_prompts and has_catalog:
        raise SpecError("prompts: give either prompts or catalog, not both")
    if not has_prompts and not has_catalog:
        raise SpecError(
            "prompts: required (a list of prompts, or a catalog: {path, template, key})"
        )
    prompts = _prompts(data["prompts"]) if has_prompts else ()
    negative = _str(_get(data, "negative_prompt", ""), "negative_prompt", empty_ok=True)
    seeds = _seeds(_required(data, "seeds", "a list of seeds or {start, count}"))
    mode = _combine_mode(_get(data, "combine", "product"))
    loras = _loras(_get(data, "loras", []), base, mode)
    combine = _combine(mode, loras)
    render = _render(_get(data, "render", {}))
    output = _output(_get(data, "output", "./renders"))
    catalog = parse_catalog(data["catalog"], base) if has_catalog else None
    lora_dir = _lora_dir(_get(data, "lora_dir"), base)
    tenant = _get(data, "tenant")
    if tenant is not None and not NAME_RE.fullmatch(_str(tenant, "tenant")):
        raise SpecError(f"tenant: {show(tenant)} is not a tenant name")
    presets = parse_preset_weights(_get(data, "preset_weights"), loras, catalog, combine)
    return Spec(job, model, prompts, negative, seeds, loras, combine, render, output,
                catalog, source, lora_dir, tenant, presets)  # fmt: skip


def _lora_dir(value: Any, base: Path) -> str | None:
    if value is None:
        return None
    folder = _local(_str(value, "lora_dir"), base)
    if not folder.is_dir():
        raise SpecError(f"lora_dir: {folder} is not a folder (a LoRA library of .safetensors)")
    return str(folder)


def parse_strengths(value: Any, field: str) -> tuple[float, ...]:
    """Strengths from a number, a numeric string, a list, or a 'start:stop:step' range."""
    if isinstance(value, str) and ":" in value:
        values = _range(value, field)
    elif isinstance(value, list | tuple):
        if not value:
            raise SpecError(f"{field}: the list is empty (give at least one strength)")
        if len(value) > MAX_STRENGTHS:
            raise SpecError(f"{field}: {len(value)} values, more than {MAX_STRENGTHS}")
        values = [_number(v, f"{field}[{i}]", strings=True) for i, v in enumerate(value)]
    elif isinstance(value, int | float | str) and not isinstance(value, bool):
        values = [_number(value, field, strings=True)]
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
    start, stop, step = (_number(p, field, strings=True) for p in parts)
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


def _model(value: Any, base: Path) -> str:
    text = _str(value, "model")
    if text == "tiny":
        return text
    if text.startswith("s3://"):
        return _s3(text, "model")
    if URL_RE.match(text):
        scheme = text.split("://", 1)[0]
        raise SpecError(
            f"model: {scheme}:// URLs are not a model source; download the model into a "
            "local diffusers folder, or give 'tiny', an s3:// folder or a hub id 'org/name'"
        )
    if not URL_RE.match(text):
        local = _local(text, base)
        if local.exists():
            if local.is_dir() and (local / "model_index.json").is_file():
                return str(local)
            raise SpecError(f"model: {local} is not a diffusers model folder (no model_index.json)")
        if HUB_RE.fullmatch(text):
            return text  # a hub id; whether it is reachable is checked when the model loads
    raise SpecError(
        f"model: {show(text)} not found; expected 'tiny', a local diffusers folder (with "
        "model_index.json), an s3:// folder or a hub id 'org/name'"
    )


def _prompts(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        raise SpecError(f"prompts: expected a list of strings, got {show(value)}")
    if not value:
        raise SpecError("prompts: the list is empty (give at least one prompt)")
    seen: dict[str, int] = {}
    for i, prompt in enumerate(value):
        if not isinstance(prompt, str):
            raise SpecError(f"prompts[{i}]: expected a string, got {show(prompt)}")
        if not prompt.strip():
            raise SpecError(f"prompts[{i}]: the prompt is empty")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise SpecError(f"prompts[{i}]: {len(prompt):,} characters, more than "
                            f"{MAX_PROMPT_CHARS:,}; shorten it")  # fmt: skip
        if prompt in seen:  # the same prompt twice would plan the same images twice
            raise SpecError(f"prompts[{i}]: same as prompts[{seen[prompt]}] (give each once)")
        seen[prompt] = i
    return tuple(value)


def _seeds(value: Any) -> tuple[int, ...]:
    if isinstance(value, dict):
        _check_keys(value, ("start", "count"), "seeds")
        start = _int(_get(value, "start", 0), "seeds.start", 0, MAX_SEED)
        count = _int(_required(value, "count", "how many seeds", "seeds"), "seeds.count",
                     1, MAX_SEED_COUNT)  # fmt: skip
        if start + count - 1 > MAX_SEED:
            raise SpecError(f"seeds: start + count - 1 is past the largest seed ({MAX_SEED})")
        return tuple(range(start, start + count))
    if isinstance(value, list | tuple):
        if not value:
            raise SpecError("seeds: the list is empty (give at least one seed)")
        seen: dict[int, int] = {}
        for i, v in enumerate(value):
            seed = _int(v, f"seeds[{i}]", 0, MAX_SEED, "an integer seed")
            if seed in seen:
                raise SpecError(f"seeds[{i}]: {seed} is listed twice (also seeds[{seen[seed]}])")
            seen[seed] = i
        return tuple(value)
    return (_int(value, "seeds", 0, MAX_SEED, "a seed, a list of seeds or {start, count}"),)


def _loras(value: Any, base: Path, mode: Any) -> tuple[LoraAxis, ...]:
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
        m = _mapping(item, at)
        _check_keys(m, LORA_KEYS, at)
        name = _str(_required(m, "name", "a short name such as 'neon'", at), f"{at}.name")
        if not NAME_RE.fullmatch(name):
            raise SpecError(f"{at}.name: {show(name)} may only use letters, digits, '_', '.', '-'")
        if name in names:
            raise SpecError(f"{at}.name: {name!r} is already used by loras[{names[name]}]")
        names[name] = i
        path = _lora_path(_str(_required(m, "path", "a .safetensors file", at), f"{at}.path"),
                          f"{at}.path", base)  # fmt: skip
        alpha = _get(m, "alpha")
        if alpha is None and alpha_required:
            raise SpecError(f"{at}.alpha: required ({STRENGTHS_HELP}, e.g. '0:1:0.2')")
        alphas = parse_strengths(alpha, f"{at}.alpha") if alpha is not None else ()
        extras = _strength_extras(m, at, has_alpha=bool(alphas), zip_mode=alpha_required)
        # With explicit combos every weight comes from `combine`; a lora's own alpha is unused.
        out.append(LoraAxis(name, path, () if explicit else alphas, **extras))
    return tuple(out)


def _strength_extras(m: dict, at: str, *, has_alpha: bool, zip_mode: bool) -> dict:
    te, unet = _get(m, "te"), _get(m, "unet")
    blocks, schedule = _get(m, "blocks"), _get(m, "schedule")
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
        extras["te"] = _number(te, f"{at}.te", strings=True)
    if unet is not None:
        extras["unet"] = _number(unet, f"{at}.unet", strings=True)
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
        parsed = [_blocks(b, f"{at}.blocks[{i}]" if axis else f"{at}.blocks")
                  for i, b in enumerate(values)]  # fmt: skip
        if len({b.pairs for b in parsed}) != len(parsed):
            raise SpecError(f"{at}.blocks: a block setting is listed twice")
        extras["blocks"] = tuple(parsed)
    if schedule is not None:
        extras["schedule"] = _schedule(schedule, f"{at}.schedule")
    return extras


def _lora_path(text: str, at: str, base: Path) -> str:
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
        return _s3(text, at)
    if URL_RE.match(text):
        raise SpecError(f"{at}: {text} — only local files, s3:// and tiny:NAME are supported")
    local = _local(text, base)
    if not local.exists():
        raise SpecError(f"{at}: {local} not found")
    if not local.is_file():
        raise SpecError(f"{at}: {local} is not a file")
    return str(local)


def _combine_mode(mode: Any) -> str | list | tuple:
    choices = "'product', 'zip' or a list of {lora name: weight} mappings"
    if isinstance(mode, str) and mode not in ("product", "zip"):
        hint = suggest(mode, ("product", "zip"))
        raise SpecError(f"combine: {mode!r} is not a combine mode{hint} (use {choices})")
    if not isinstance(mode, str | list | tuple):
        raise SpecError(f"combine: expected {choices}, got {show(mode)}")
    return mode


def _combine(mode: str | list | tuple, loras: tuple[LoraAxis, ...]) -> str | Combos:
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
        m = _mapping(item, at, "a mapping {lora name: weight}")
        if not m:
            raise SpecError(f"{at}: empty (give at least one lora name: weight)")
        pairs = []
        for name, weight in m.items():
            if name not in names:
                hint = suggest(name, names)
                raise SpecError(f"{at}.{name}: unknown LoRA{hint} (loras: {', '.join(names)})")
            pairs.append((name, _combo_strength(weight, f"{at}.{name}")))
        key = tuple(sorted((n, json.dumps(w.key())) for n, w in pairs))
        if key in seen:
            raise SpecError(f"{at}: same as combine[{seen[key]}]")
        seen[key] = i
        combos.append(tuple(pairs))
    return tuple(combos)


def _render(value: Any) -> Render:
    m = _mapping(value, "render")
    _check_keys(m, RENDER_KEYS, "render")
    d = Render()
    steps = _int(_get(m, "steps", d.steps), "render.steps", 1, 1000)
    guidance = _number(_get(m, "guidance", d.guidance), "render.guidance")
    if guidance < 0:
        raise SpecError(f"render.guidance: {guidance:g} is negative (use 0 or more)")
    size = {}
    for key in ("width", "height"):
        v = size[key] = _int(_get(m, key, getattr(d, key)), f"render.{key}", 8, 4096)
        if v % 8:
            raise SpecError(
                f"render.{key}: {v} is not a multiple of 8 (try {v - v % 8} or {v - v % 8 + 8})"
            )
    scheduler = _str(_get(m, "scheduler", d.scheduler), "render.scheduler")
    if scheduler not in SAMPLERS:
        hint = suggest(scheduler, SAMPLERS)
        known = ", ".join(SAMPLERS)
        raise SpecError(f"render.scheduler: unknown scheduler {scheduler!r}{hint} (known: {known})")
    if steps < SAMPLERS[scheduler].min_steps:
        raise SpecError(f"render.steps: {steps} is too few for the {scheduler} scheduler "
                        f"(use {SAMPLERS[scheduler].min_steps} or more)")  # fmt: skip
    fmt = _str(_get(m, "format", d.format), "render.format").lower()
    fmt = "jpeg" if fmt == "jpg" else fmt
    if fmt not in FORMATS:
        raise SpecError(f"render.format: {fmt!r} is not supported (use png, jpeg or webp)")
    batch = _get(m, "batch", "auto")
    if batch != "auto":
        batch = _int(batch, "render.batch", 1, 64, "an integer or 'auto'")
    compile_ = _get(m, "compile", False)
    if not isinstance(compile_, bool):
        raise SpecError(f"render.compile: {compile_!r} is not true or false")
    return Render(steps, guidance, size["width"], size["height"], scheduler, fmt,
                  None if batch == "auto" else batch, compile_)  # fmt: skip


def with_output(spec: Spec, output: str, field: str = "output") -> Spec:
    """The spec with its output replaced, checked like the spec's own `output:`."""
    return dataclasses.replace(spec, output=_output(output, field))


def _output(value: Any, field: str = "output") -> str:
    text = _str(value, field, empty_ok=True)
    if not text.strip():
        raise SpecError(f"{field}: is empty; give a local folder or s3://bucket/prefix")
    if text.startswith("s3://"):
        return _s3(text, field)
    if URL_RE.match(text):
        raise SpecError(f"{field}: {text} — use a local folder or s3://bucket/prefix")
    return text  # kept as written: a local output is relative to where farm runs


def _s3(text: str, at: str) -> str:
    if not S3_RE.fullmatch(text):
        raise SpecError(f"{at}: {text!r} is not an s3:// URL (write s3://bucket/key)")
    if "//" in text[len("s3://") :].rstrip("/"):
        # S3 keeps an empty segment as part of the key: `a//b` is not `a/b`.
        raise SpecError(f"{at}: {text!r} has an empty segment ('//'); write each once")
    return text
