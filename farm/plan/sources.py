"""The prompt axis and the LoRA files it names: prompts or catalog rows with their
<lora:…> tags, each LoRA file read and checked (family, hashes) once, and tags resolved
from the spec's lora_dir by file stem."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from farm.families import FamilyError, Model, check_compatible
from farm.families.placement import Placement, place
from farm.loras.files import LoraError, inspect_lora
from farm.plan.combos import Combos
from farm.plan.items import Adapter, Source
from farm.spec import Spec, SpecError
from farm.spec.prompts import PromptError, lora_tag, parse_prompt
from farm.spec.strength import Strength


def adapter_for(name: str, path: str, field_path: str, model: Model | None,
                model_ref: str = "") -> Adapter:  # fmt: skip
    # The driver checks a local copy; the adapter keeps the reference (tiny:NAME, s3://),
    # so workers on other nodes make their own (checked against this sha256).
    local = path
    if path.startswith("tiny:"):
        from farm.loras.demo import demo_lora_path

        local = str(demo_lora_path(path))
    if path.startswith("s3://"):
        from farm.storage.fetch import fetch_file
        from farm.storage.store import StoreError

        try:
            local = str(fetch_file(path))
        except StoreError as err:
            raise SpecError(f"{field_path}: {err}") from None
    try:
        info = inspect_lora(local)
        # An SDXL LoRA on an SD1.5 model (or the reverse) is refused here, not mid-job.
        check_compatible(local, model, model_ref)
        placed = _placement(local, model, model_ref)
    except (LoraError, FamilyError) as err:
        raise SpecError(f"{field_path}: {str(err).replace(local, path)}") from None
    if placed is None:
        return Adapter(name, path, info.sha256, info.shorthash)
    if placed.applied == 0:
        names = ", ".join(placed.dropped_names[:3])
        raise SpecError(f"{field_path}: {path}: none of its {placed.dropped} tensors adapts a "
                        f"layer of model {model_ref} (its layers: {names}, …); pick a LoRA "
                        "trained for this model")  # fmt: skip
    return Adapter(name, path, info.sha256, info.shorthash, placed.applied, placed.dropped,
                   placed.dropped_names)  # fmt: skip


def _placement(local: str, model: Model | None, model_ref: str) -> Placement | None:
    """What of the file applies to the model, where its layers are at hand: a local
    folder, `tiny`, or any transformer (its config alone says its layers)."""
    from pathlib import Path

    if model is None:
        return None
    if model.family.denoiser == "unet" and model.root is None and model_ref != "tiny":
        return None
    return place(local, model, Path(model.root) if model.root else None)


def _libraryadapter_for(spec: Spec, name: str, where: str,
                        model: Model | None) -> Adapter | None:  # fmt: skip
    """A prompt tag's LoRA from the spec's lora_dir, found by file stem like A1111."""
    if not spec.lora_dir:
        return None
    from pathlib import Path

    # A tag's name is a file stem, compared literally: never a glob pattern (`*` would
    # pick any file) nor a path (`../x` would reach outside the library).
    if "/" in name or "\\" in name:
        raise SpecError(f"{where}: <lora:{name}:…>: a tag names a LoRA file in lora_dir by "
                        "its stem, not a path; write <lora:STEM:…>")  # fmt: skip
    library = Path(spec.lora_dir).resolve()
    target = f"{name}.safetensors"
    matches = sorted(p for p in library.rglob("*.safetensors") if p.name == target)
    if len(matches) > 1:
        found = ", ".join(str(m) for m in matches[:3])
        raise SpecError(f"{where}: <lora:{name}:…> matches several files in lora_dir ({found})")
    if not matches:
        return None
    # A link in the library may point anywhere; only files inside it are the library's.
    if not matches[0].resolve().is_relative_to(library):
        raise SpecError(f"{where}: <lora:{name}:…>: {matches[0]} links to a file outside "
                        "lora_dir; copy the file into lora_dir")  # fmt: skip
    return adapter_for(name, str(matches[0]), where, model, spec.model)


def prompt_sources(spec: Spec, adapters: dict[str, Adapter], combos: Combos,
                   model: Model | None = None) -> Iterator[Source]:  # fmt: skip
    swept = combos.names
    if spec.catalog is not None:
        from farm.spec.catalog_rows import read_catalog

        rows = ((f"catalog[{r.key}]", r.prompt, tuple(sorted(r.fields.items())))
                for r in read_catalog(spec.catalog))  # fmt: skip
    elif spec.prompt_file is not None:
        rows = ((spec.prompt_file.where(i), p, ()) for i, p in enumerate(spec.prompts))
    else:
        rows = ((f"prompts[{i}]", p, ()) for i, p in enumerate(spec.prompts))
    seen: set[tuple] = set()
    repeats = _Repeats(spec)
    for i, (where, prompt, catalog) in enumerate(rows):
        try:
            text, tags = parse_prompt(prompt)
        except PromptError as err:
            raise SpecError(f"{where}: {err}") from None
        row_tags, preset = row_preset(spec, dict(catalog), where)
        for name, _ in row_tags:
            if any(t.name == name for t in tags):
                raise SpecError(f"{where}: {name} is both set by the row's preset and "
                                "tagged in the prompt; keep one")  # fmt: skip
        for tag in tags:
            if tag.name not in adapters:
                found = _libraryadapter_for(spec, tag.name, where, model)
                if found is None:
                    raise SpecError(
                        f"{where}: <lora:{tag.name}:…> names no LoRA in `loras`"
                        + (" or lora_dir" if spec.lora_dir else "")
                        + "; add it there"
                    )
                adapters[tag.name] = found
            if tag.name in swept:
                raise SpecError(
                    f"{where}: {tag.name} is both swept in `loras` and tagged in the prompt; "
                    "keep one"
                )
        if len({t.name for t in tags}) != len(tags):
            raise SpecError(f"{where}: a LoRA is tagged twice; merge the tags")
        key = (text, tuple((t.name, t.strength) for t in tags) + row_tags, catalog)
        # The row's strengths are shown as tags, as a swept LoRA's are (A1111 reads them).
        shown = " ".join([prompt, *(lora_tag(n, w) for n, w in row_tags)])
        if spec.prompt_file is not None:
            source = line_source(spec, i, Source(shown, text, key[1], catalog, preset))
            repeats.check(key, source, i)
            yield source
            continue
        if key in seen:
            raise SpecError(f"{where}: duplicate of an earlier prompt; remove it")
        seen.add(key)
        yield Source(shown, text, key[1], catalog, preset)


def line_source(spec: Spec, i: int, source: Source) -> Source:
    """Prompt file line i's source: its seed, and its negative prompt and render settings
    where they differ from the spec's (so a line that sets the spec's own values gives the
    items, and ids, of the same prompt in a list)."""
    line = spec.prompt_file.lines[i]
    render = spec.render
    settings = tuple(sorted((k, v) for k, v in spec.prompt_file.settings(i).items()
                            if v != getattr(render, k)))  # fmt: skip
    negative = line.negative if line.negative != spec.negative_prompt else None
    return dataclasses.replace(source, settings=settings, negative=negative, seed=line.seed)


class _Repeats:
    """Prompt file lines that would render an image twice: the same prompt, tags, negative
    prompt and settings as the spec fills them in, and a seed in common (a line's own, or
    any of the spec's `seeds` for a line without one)."""

    def __init__(self, spec: Spec):
        self.spec = spec
        self.seen: dict[tuple, list[tuple[int | None, int]]] = {}
        self._seeds: frozenset[int] | None = None

    def spec_seeds(self) -> frozenset[int]:
        if self._seeds is None:
            self._seeds = frozenset(self.spec.seeds)
        return self._seeds

    def check(self, key: tuple, source: Source, i: int) -> None:
        """Refuse line i if an earlier line renders one of its images."""
        key = (*key, source.settings, source.negative)
        earlier = self.seen.setdefault(key, [])
        for seed, j in earlier:
            if seed == source.seed or (seed is None and source.seed in self.spec_seeds()) or \
                    (source.seed is None and seed in self.spec_seeds()):  # fmt: skip
                lines = self.spec.prompt_file
                raise SpecError(f"{lines.where(i)}: renders the same images as {lines.place(j)} "
                                "(the same prompt, settings and seed once the spec's settings "
                                "fill in what a line leaves out); remove one")  # fmt: skip
        earlier.append((source.seed, i))


def row_preset(spec: Spec, fields: dict[str, str],
                where: str) -> tuple[tuple[tuple[str, Strength], ...], str | None]:  # fmt: skip
    """A catalog row's own strengths and preset label (preset_by, lora_by); none without."""
    if not spec.row_presets:
        return (), None
    c = spec.catalog
    by_label = {p.preset: p for p in spec.presets}
    label = c.preset_by.pick(fields) if c.preset_by is not None else spec.presets[0].preset
    preset = by_label.get(label)
    if preset is None:
        raise SpecError(f"{where}: preset {label!r} has no weights")
    names = (c.lora_by.pick(fields),) if c.lora_by is not None else \
        tuple(x.name for x in spec.loras)  # fmt: skip
    return preset.bind(names), label
