"""Validating a spec mapping into a Spec: defaults filled, paths resolved, one error each.

Every problem becomes one SpecError whose text starts with the field path
(`loras[1].alpha: …`), so the CLI can print it as is and exit 2.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from farm.families.single_file import is_checkpoint_ref
from farm.limits import MAX_PROMPT_CHARS
from farm.spec.catalog_block import parse_catalog
from farm.spec.errors import SpecError, show, suggest
from farm.spec.fields import (
    MAX_SEED,
    NAME_RE,
    URL_RE,
    as_int,
    as_local_path,
    as_mapping,
    as_number,
    as_str,
    check_keys,
    get_field,
    required_field,
    s3_url,
)
from farm.spec.lora_axes import combine_mode, parse_combine, parse_loras
from farm.spec.model import DEFAULTED, Render, Spec
from farm.spec.preset_weights import parse_preset_weights
from farm.spec.prompt_file import PromptFile, parse_prompt_file
from farm.spec.samplers import SAMPLERS

JOB_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")
HUB_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_SEED_COUNT = 1_000_000
FORMATS = ("png", "jpeg", "webp")
TOP_KEYS = ("job", "model", "prompts", "catalog", "negative_prompt", "seeds", "loras",
            "combine", "render", "output", "lora_dir", "tenant", "preset_weights")  # fmt: skip
RENDER_KEYS = ("steps", "guidance", "width", "height", "scheduler", "format", "batch",
               "compile")  # fmt: skip


def parse_spec(data: dict, *, source: str = "<spec>", base_dir: Path | None = None) -> Spec:
    """Validate a spec mapping; relative paths are resolved against base_dir (default cwd)."""
    if not isinstance(data, dict):
        raise SpecError(
            f"{source}: the top level must be a mapping of keys (job, model, prompts, …)"
        )
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    check_keys(data, TOP_KEYS, "")
    job = as_str(required_field(data, "job", "a job name such as 'neon-sweep'"), "job")
    if len(job) > 128 or not JOB_RE.fullmatch(job):
        raise SpecError(
            f"job: {show(job)} is not a valid job name (use lowercase letters, digits, '.', "
            "'_' and '-', starting with a letter or digit; at most 128 characters)"
        )
    model, model_config, model_base = parse_model(get_field(data, "model", "tiny"), base)
    has_prompts, has_catalog = (
        get_field(data, "prompts") is not None,
        get_field(data, "catalog") is not None,
    )
    if has_prompts and has_catalog:
        raise SpecError("prompts: give either prompts or catalog, not both")
    if not has_prompts and not has_catalog:
        raise SpecError(
            "prompts: required (a list of prompts, or a catalog: {path, template, key})"
        )
    prompt_file = None
    if has_prompts and isinstance(data["prompts"], dict):
        prompt_file = parse_prompt_file(data["prompts"], base)
        prompts = tuple(line.text for line in prompt_file.lines)
    else:
        prompts = _prompts(data["prompts"]) if has_prompts else ()
    negative = as_str(get_field(data, "negative_prompt", ""), "negative_prompt", empty_ok=True)
    seeds = _spec_seeds(get_field(data, "seeds"), prompt_file)
    mode = combine_mode(get_field(data, "combine", "product"))
    loras = parse_loras(get_field(data, "loras", []), base, mode)
    combine = parse_combine(mode, loras)
    render = _render(get_field(data, "render", {}))
    output = output_field(get_field(data, "output", "./renders"))
    catalog = parse_catalog(data["catalog"], base) if has_catalog else None
    lora_dir = _lora_dir(get_field(data, "lora_dir"), base)
    tenant = get_field(data, "tenant")
    if tenant is not None and not NAME_RE.fullmatch(as_str(tenant, "tenant")):
        raise SpecError(f"tenant: {show(tenant)} is not a tenant name")
    presets = parse_preset_weights(get_field(data, "preset_weights"), loras, catalog, combine)
    return Spec(job, model, prompts, negative, seeds, loras, combine, render, output,
                catalog, source, lora_dir, tenant, presets, prompt_file,
                model_config=model_config, model_base=model_base)  # fmt: skip


def _lora_dir(value: Any, base: Path) -> str | None:
    if value is None:
        return None
    folder = as_local_path(as_str(value, "lora_dir"), base)
    if not folder.is_dir():
        raise SpecError(f"lora_dir: {folder} is not a folder (a LoRA library of .safetensors)")
    return str(folder)


def model_field(value: Any, base: Path) -> str:
    """`model:` as a single reference (what parse_model returns first)."""
    return parse_model(value, base)[0]


def parse_model(value: Any, base: Path) -> tuple[str, str | None, str | None]:
    """`model:` as (model, config folder, base folder): 'tiny', a diffusers folder, an
    s3:// folder, a hub id or a .safetensors checkpoint; or {file, config} (a checkpoint
    and the folder of its configs) or {transformer, base} (a Flux.1/Chroma transformer
    file and the diffusers folder that gives the rest of its pipeline)."""
    if isinstance(value, dict):
        if "transformer" in value or "base" in value:
            check_keys(value, ("transformer", "base"), "model")
            file = _checkpoint(required_field(value, "transformer", "a .safetensors "
                                              "transformer file", "model"), base,
                               "model.transformer")  # fmt: skip
            folder = _folder(required_field(value, "base", "the diffusers folder that gives "
                                            "the VAE and text encoders", "model"), base,
                             "model.base")  # fmt: skip
            return file, None, folder
        check_keys(value, ("file", "config"), "model")
        file = _checkpoint(required_field(value, "file", "a .safetensors checkpoint", "model"),
                           base, "model.file")  # fmt: skip
        config = get_field(value, "config")
        return file, None if config is None else _folder(config, base, "model.config"), None
    text = as_str(value, "model")
    if text == "tiny":
        return text, None, None
    if is_checkpoint_ref(text):
        return _checkpoint(text, base, "model"), None, None
    if text.startswith("s3://"):
        return s3_url(text, "model"), None, None
    if URL_RE.match(text):
        scheme = text.split("://", 1)[0]
        raise SpecError(
            f"model: {scheme}:// URLs are not a model source; download the model into a "
            "local diffusers folder, or give 'tiny', an s3:// folder or a hub id 'org/name'"
        )
    local = as_local_path(text, base)
    if local.exists():
        if local.is_dir() and (local / "model_index.json").is_file():
            return str(local), None, None
        raise SpecError(f"model: {local} is not a diffusers model folder (no model_index.json) "
                        "nor a .safetensors checkpoint")  # fmt: skip
    if HUB_RE.fullmatch(text):
        return text, None, None  # a hub id; whether it is reachable is checked when it loads
    raise SpecError(
        f"model: {show(text)} not found; expected 'tiny', a local diffusers folder (with "
        "model_index.json), a .safetensors checkpoint, an s3:// folder or a hub id 'org/name'"
    )


def _checkpoint(value: Any, base: Path, field: str) -> str:
    """A checkpoint file: local (made absolute, and it must exist) or s3://."""
    text = as_str(value, field)
    if not is_checkpoint_ref(text):
        raise SpecError(f"{field}: {show(text)} is not a .safetensors file; give the "
                        "checkpoint's .safetensors file")  # fmt: skip
    if not text.lower().endswith(".safetensors"):
        raise SpecError(f"{field}: {text} is a pickle checkpoint, which can run code when "
                        "loaded; convert it to .safetensors")  # fmt: skip
    if text.startswith("s3://"):
        return s3_url(text, field)
    if URL_RE.match(text):
        raise SpecError(f"{field}: {text}: download the file, or give a local path or s3:// URL")
    local = as_local_path(text, base)
    if not local.is_file():
        raise SpecError(f"{field}: {local} not found; give the checkpoint's path")
    return str(local)


def _folder(value: Any, base: Path, field: str) -> str:
    """The local diffusers folder a checkpoint loads with."""
    text = as_str(value, field)
    if URL_RE.match(text):
        raise SpecError(f"{field}: {text}: give a local diffusers folder (copy it to every "
                        "node; an s3:// folder is not read here)")  # fmt: skip
    local = as_local_path(text, base)
    if not (local / "model_index.json").is_file():
        raise SpecError(f"{field}: {local} is not a diffusers model folder (no "
                        "model_index.json)")  # fmt: skip
    return str(local)


def _prompts(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        raise SpecError(f"prompts: expected a list of strings or {{file, format}}, got "
                        f"{show(value)}")  # fmt: skip
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


def _spec_seeds(value: Any, prompt_file: PromptFile | None) -> tuple[int, ...]:
    """`seeds`: required unless every line of the prompt file sets its own seed."""
    if value is not None or prompt_file is None:
        return _seeds(required_field({"seeds": value}, "seeds",
                                     "a list of seeds or {start, count}"))  # fmt: skip
    i = prompt_file.unseeded()
    if i is None:
        return ()
    raise SpecError(f"{prompt_file.where(i)}: sets no seed and the spec has no seeds; "
                    f"give the line one ({prompt_file.seed_hint()}) or add seeds: to the "
                    "spec")  # fmt: skip


def _seeds(value: Any) -> tuple[int, ...]:
    if isinstance(value, dict):
        check_keys(value, ("start", "count"), "seeds")
        start = as_int(get_field(value, "start", 0), "seeds.start", 0, MAX_SEED)
        count = as_int(required_field(value, "count", "how many seeds", "seeds"), "seeds.count",
                     1, MAX_SEED_COUNT)  # fmt: skip
        if start + count - 1 > MAX_SEED:
            raise SpecError(f"seeds: start + count - 1 is past the largest seed ({MAX_SEED})")
        return tuple(range(start, start + count))
    if isinstance(value, list | tuple):
        if not value:
            raise SpecError("seeds: the list is empty (give at least one seed)")
        seen: dict[int, int] = {}
        for i, v in enumerate(value):
            seed = as_int(v, f"seeds[{i}]", 0, MAX_SEED, "an integer seed")
            if seed in seen:
                raise SpecError(f"seeds[{i}]: {seed} is listed twice (also seeds[{seen[seed]}])")
            seen[seed] = i
        return tuple(value)
    return (as_int(value, "seeds", 0, MAX_SEED, "a seed, a list of seeds or {start, count}"),)


def _render(value: Any) -> Render:
    m = as_mapping(value, "render")
    check_keys(m, RENDER_KEYS, "render")
    d = Render()
    steps = as_int(get_field(m, "steps", d.steps), "render.steps", 1, 1000)
    guidance = as_number(get_field(m, "guidance", d.guidance), "render.guidance")
    if guidance < 0:
        raise SpecError(f"render.guidance: {guidance:g} is negative (use 0 or more)")
    size = {}
    for key in ("width", "height"):
        v = size[key] = as_int(get_field(m, key, getattr(d, key)), f"render.{key}", 8, 4096)
        if v % 8:
            raise SpecError(
                f"render.{key}: {v} is not a multiple of 8 (try {v - v % 8} or {v - v % 8 + 8})"
            )
    scheduler = as_str(get_field(m, "scheduler", d.scheduler), "render.scheduler")
    if scheduler not in SAMPLERS:
        hint = suggest(scheduler, SAMPLERS)
        known = ", ".join(SAMPLERS)
        raise SpecError(f"render.scheduler: unknown scheduler {scheduler!r}{hint} (known: {known})")
    if steps < SAMPLERS[scheduler].min_steps:
        raise SpecError(f"render.steps: {steps} is too few for the {scheduler} scheduler "
                        f"(use {SAMPLERS[scheduler].min_steps} or more)")  # fmt: skip
    fmt = as_str(get_field(m, "format", d.format), "render.format").lower()
    fmt = "jpeg" if fmt == "jpg" else fmt
    if fmt not in FORMATS:
        raise SpecError(f"render.format: {fmt!r} is not supported (use png, jpeg or webp)")
    batch = get_field(m, "batch", "auto")
    if batch != "auto":
        batch = as_int(batch, "render.batch", 1, 64, "an integer or 'auto'")
    compile_ = get_field(m, "compile", False)
    if not isinstance(compile_, bool):
        raise SpecError(f"render.compile: {compile_!r} is not true or false")
    return Render(steps, guidance, size["width"], size["height"], scheduler, fmt,
                  None if batch == "auto" else batch, compile_,
                  frozenset(k for k in DEFAULTED if k in m))  # fmt: skip


def with_output(spec: Spec, output: str, field: str = "output") -> Spec:
    """The spec with its output replaced, checked like the spec's own `output:`."""
    return dataclasses.replace(spec, output=output_field(output, field))


def output_field(value: Any, field: str = "output") -> str:
    text = as_str(value, field, empty_ok=True)
    if not text.strip():
        raise SpecError(f"{field}: is empty; give a local folder or s3://bucket/prefix")
    if text.startswith("s3://"):
        return s3_url(text, field)
    if URL_RE.match(text):
        raise SpecError(f"{field}: {text} — use a local folder or s3://bucket/prefix")
    return text  # kept as written: a local output is relative to where farm runs
