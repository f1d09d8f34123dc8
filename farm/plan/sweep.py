"""Axes, items and units: what a spec expands into, with content-addressed ids."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Iterable, Iterator, Set
from dataclasses import dataclass, field

from farm.families import Family, Model
from farm.limits import MAX_ITEMS
from farm.plan.combos import Combos
from farm.plan.items import (
    AUTO_UNIT,
    UNIT_SIZE,
    Adapter,
    Item,
    Source,
    Unit,
    UnitStream,
    adapter_key,
    content_id,
)
from farm.plan.model_refs import model_fingerprint, read_model
from farm.plan.sources import adapter_for, prompt_sources
from farm.spec import Spec, SpecError
from farm.spec.model import DEFAULTED
from farm.spec.prompts import lora_tag
from farm.spec.samplers import SAMPLERS


@dataclass
class Plan:
    spec: Spec
    model_fingerprint: str
    adapters: dict[str, Adapter]
    combos: Combos
    sources: list[Source] = field(default_factory=list)
    model: Model | None = None  # its family and configs; None for a plan rebuilt from job.json

    def seeds_of(self, source: Source) -> tuple[int, ...]:
        """The seeds a prompt renders with: a prompt file line's own, else the spec's."""
        return (source.seed,) if source.seed is not None else self.spec.seeds

    @property
    def items(self) -> int:
        if self.spec.prompt_file is None:
            return len(self.sources) * len(self.spec.seeds) * self.combos.count
        return sum(len(self.seeds_of(s)) for s in self.sources) * self.combos.count

    @property
    def seeds(self) -> int:
        """How many seeds the sweep renders with: the spec's, and prompt file lines' own."""
        if self.spec.prompt_file is None:
            return len(self.spec.seeds)
        own = {s.seed for s in self.sources if s.seed is not None}
        if all(s.seed is not None for s in self.sources):
            return len(own)
        return len(self.spec.seeds) + len(own.difference(self.spec.seeds))

    def groups(self) -> list[tuple[tuple[str, ...], int]]:
        """Each adapter set of the sweep with its item count, in order of first use."""
        items: dict[tuple[str, ...], int] = {}
        if self.combos.uniform:
            # Every combination sets the same LoRAs: the sets differ only by prompt tags.
            swept = tuple((n, None) for n in self.combos.names)
            for source in self.sources:
                key = adapter_key(swept + source.tags)
                items[key] = items.get(key, 0) + len(self.seeds_of(source)) * self.combos.count
            return list(items.items())
        for combo in self.combos:
            for source in self.sources:
                key = adapter_key(combo + source.tags)
                items[key] = items.get(key, 0) + len(self.seeds_of(source))
        return list(items.items())

    @property
    def adapter_groups(self) -> int:
        return len(self.groups())

    @property
    def unit_size(self) -> int:
        """Items per unit: AUTO_UNIT for `batch: auto`, else UNIT_SIZE or the spec's batch
        where larger, so that no pipeline call is cut short by the unit it belongs to."""
        batch = self.spec.render.batch
        return max(UNIT_SIZE, batch) if batch else AUTO_UNIT

    @property
    def units(self) -> int:
        return sum(-(-n // self.unit_size) for _, n in self.groups())

    def counts(self) -> dict:
        return {
            "prompts": len(self.sources),
            "seeds": self.seeds,
            "combos": self.combos.count,
            "loras": len(self.spec.loras),
            "items": self.items,
            "units": self.units,
            "adapter_groups": self.adapter_groups,
        }


def make_plan(
    spec: Spec,
    *,
    frozen: tuple[str, dict[str, Adapter]] | None = None,
    max_items: int | None = None,
) -> Plan:
    """Check the spec's files and prompts and fix the axes; raises SpecError.

    `frozen` is (model fingerprint, adapters) recorded in a job.json: the plan is then
    rebuilt exactly as it was, without reading the model or LoRA files. A plan of more
    than `max_items` (default MAX_ITEMS) is refused with its item count.
    """
    limit = MAX_ITEMS if max_items is None else max_items
    model = None
    if not frozen:
        # The model's family first: its render defaults and samplers shape every item.
        model = read_model(spec.model, spec.model_folder, spec.model_folder_key)
        spec = with_family_defaults(spec, model.family)
        check_prompt_lines(spec, model.family)
    combos = Combos(spec)
    # Refuse a runaway product before reading any file or prompt.
    _check_size(combos.count * _prompt_seeds(spec), limit)
    if frozen:
        fingerprint, adapters = frozen
    else:
        fingerprint = model_fingerprint(spec.model, spec.model_folder)
        adapters = {}
        for i, lora in enumerate(spec.loras):
            if not lora.checkpoints:
                adapters[lora.name] = adapter_for(lora.name, lora.path, f"loras[{i}].path",
                                                  model, spec.model)  # fmt: skip
            for j, c in enumerate(lora.checkpoints):
                name = lora.checkpoint_name(c)
                found = adapter_for(name, c.path, f"loras[{i}].checkpoints[{j}]", model,
                                    spec.model)  # fmt: skip
                adapters[name] = dataclasses.replace(found, run=lora.name, step=c.step,
                                                     epoch=c.epoch)  # fmt: skip
        # item_ids hash files, not names: one file under two names would give two items
        # one id, and the job could never account for both.
        first: dict[str, str] = {}
        for i, lora in enumerate(spec.loras):
            fields = ([f"loras[{i}].checkpoints[{j}]" for j in range(len(lora.checkpoints))]
                      or [f"loras[{i}].path"])  # fmt: skip
            for name, field in zip(lora.names, fields, strict=True):
                other = first.setdefault(adapters[name].sha256, field)
                if other != field:
                    raise SpecError(f"{field}: the same file as {other}; give it one name")
    sources = list(prompt_sources(spec, adapters, combos, model))
    if model is not None:
        _check_blocks(combos, sources, model.family)
    if spec.row_presets:
        # Rows of one preset share strengths, so they can share pipeline calls: keep them
        # together (the order of items never changes their ids).
        sources.sort(key=lambda s: json.dumps(sorted((n, w.key()) for n, w in s.tags)))
    plan = Plan(spec, fingerprint, adapters, combos, sources, model)
    _check_size(plan.items, limit)
    if spec.catalog is not None and spec.catalog.name:
        _check_names(plan)
    return plan


def _check_names(plan: Plan) -> None:
    """Two images with one friendly name would overwrite each other: refused."""
    first: dict[str, Item] = {}
    for item in expand(plan):
        other = first.setdefault(item.name, item)
        if other is not item:
            key = plan.spec.catalog.key
            a, b = dict(other.catalog).get(key), dict(item.catalog).get(key)
            raise SpecError(f"catalog.name: rows {a!r} and {b!r} (seed {item.seed}) both get "
                            f"the name {item.name!r}; add fields that tell them apart, such "
                            "as {key}, {seed} or {preset}")  # fmt: skip


def with_family_defaults(spec: Spec, family: Family) -> Spec:
    """The spec with the render settings it left out taken from the model's family, and
    its sampler checked against what the family can use."""
    render = spec.render
    defaults = family.defaults
    filled = {k: getattr(defaults, k) for k in DEFAULTED if k not in render.given}
    render = dataclasses.replace(render, **filled, given=frozenset(DEFAULTED))
    if render.scheduler not in family.schedulers:
        raise SpecError(f"render.scheduler: {render.scheduler} does not fit {family.name} "
                        f"models (use {', '.join(family.schedulers)})")  # fmt: skip
    # A negative prompt the pipeline never runs would be recorded with every image and
    # change none of them: its guidance is distilled, or too low for a negative pass.
    if spec.negative_prompt and (problem := family.negative_problem(render.guidance)):
        raise SpecError(f"negative_prompt: {problem}; remove it"
                        + ("" if family.guidance in ("embedded", "none")
                           else " or raise render.guidance"))  # fmt: skip
    least = SAMPLERS[render.scheduler].min_steps
    if render.steps < least:
        raise SpecError(f"render.steps: {render.steps} is too few for the {render.scheduler} "
                        f"scheduler (use {least} or more)")  # fmt: skip
    return dataclasses.replace(spec, render=render)


def check_prompt_lines(spec: Spec, family: Family) -> None:
    """A prompt file's own settings, checked against the model family as the spec's
    render and negative prompt are (with_family_defaults); sizes, guidance and the
    steps' range are the file reader's to check."""
    lines = spec.prompt_file
    if lines is None:
        return
    scheduler = spec.render.scheduler
    least = SAMPLERS[scheduler].min_steps
    for i, line in enumerate(lines.lines):
        if line.steps is not None and line.steps < least:
            raise SpecError(f"{lines.where(i)}: {line.steps} steps are too few for the "
                            f"{scheduler} scheduler (give the line {least} or more, or "
                            "another render.scheduler)")  # fmt: skip
        guidance = line.guidance if line.guidance is not None else spec.render.guidance
        if line.negative and (problem := family.negative_problem(guidance)):
            raise SpecError(f"{lines.where(i)}: a negative prompt, but {problem}; remove it")


def _prompt_seeds(spec: Spec) -> int:
    """(prompt, seed) pairs the spec plans, a catalog's rows counted as one prompt."""
    if spec.prompt_file is None:
        return len(spec.seeds) * max(len(spec.prompts), 1)
    return sum(1 if line.seed is not None else len(spec.seeds) for line in spec.prompt_file.lines)


def _check_blocks(combos: Combos, sources: list[Source], family: Family) -> None:
    """Every per-block setting of the sweep, read in the model family's block names."""
    settings = [w for axis in combos.axes for _, w in axis]
    settings += [w for combo in combos.explicit or () for _, w in combo]
    settings += [w for source in sources for _, w in source.tags]
    for blocks in dict.fromkeys(w.blocks for w in settings if w.blocks is not None):
        if problem := blocks.problem(family):
            raise SpecError(f"blocks {blocks.name}: {problem}")


def _check_size(items: int, limit: int) -> None:
    if items > limit:
        raise SpecError(
            f"the sweep has {items:,} items, more than the limit of {limit:,}; shrink an axis "
            "(prompts, seeds, strengths) or raise the limit with --max-items"
        )


def expand(plan: Plan, only: tuple[str, ...] | None = None) -> Iterator[Item]:
    """All items (or those of one adapter set), combination-major.

    Streams: a million-item sweep is never held in memory.
    """
    spec, render = plan.spec, plan.spec.render
    base = {
        "model": plan.model_fingerprint,
        "negative": spec.negative_prompt,
        "steps": render.steps,
        "guidance": render.guidance,
        "size": [render.width, render.height],
        "scheduler": render.scheduler,
        "format": render.format,
    }
    swept = plan.combos.swept
    naming = spec.catalog.name if spec.catalog is not None else None
    for combo, label in plan.combos.labelled():
        for source in plan.sources:
            loras = combo + source.tags
            if only is not None and adapter_key(loras) != only:
                continue
            prompt = " ".join([source.prompt, *(lora_tag(n, w) for n, w in combo)])
            # A plain strength hashes as the bare number it always was.
            hashed = sorted((plan.adapters[n].sha256, w.key()) for n, w in loras)
            own = _own_settings(source, base)
            negative = spec.negative_prompt if source.negative is None else source.negative
            for seed in plan.seeds_of(source):
                payload = {**base, **own, "text": source.text, "seed": seed, "loras": hashed,
                           "catalog": source.catalog}  # fmt: skip
                yield Item(
                    item_id=content_id(payload),
                    prompt=prompt,
                    text=source.text,
                    negative_prompt=negative,
                    seed=seed,
                    loras=loras,
                    alpha=_alpha(combo, source, swept),
                    catalog=source.catalog,
                    preset=label or source.preset,
                    name=friendly_name(
                        naming, source, seed, label or source.preset, spec.catalog.key
                    )
                    if naming
                    else None,
                    settings=source.settings,
                )


def _own_settings(source: Source, base: dict) -> dict:
    """A prompt file line's values in the id payload, in place of the spec's: an item is
    hashed with what it renders with, so a line that sets the spec's own values (and so
    none here) gets the id of the same prompt written in a list."""
    own: dict = {}
    if source.negative is not None:
        own["negative"] = source.negative
    settings = dict(source.settings)
    for key in ("steps", "guidance"):
        if key in settings:
            own[key] = settings[key]
    if "width" in settings or "height" in settings:
        width, height = base["size"]
        own["size"] = [settings.get("width", width), settings.get("height", height)]
    return own


def _alpha(combo: tuple, source: Source, swept: int | None) -> float | None:
    """The swept strength: the one swept LoRA's, or a row preset's single weight."""
    if swept is not None and combo:
        return combo[swept][1].alpha
    if not combo and source.preset is not None and len(source.tags) == 1:
        return source.tags[0][1].unet
    return None


def friendly_name(template: str, source: Source, seed: int, preset: str | None,
                  key_column: str) -> str:  # fmt: skip
    """A catalog image's friendly key (below `named/`): the template filled from the row,
    its seed and preset, then checked to stay a plain relative path."""
    fields = dict(source.catalog)
    values = {
        **fields,
        "seed": str(seed),
        "preset": preset or "",
        "key": fields.get(key_column, ""),
    } | fields  # a column named seed or key wins
    name = template.format_map(values)
    for part in name.split("/"):
        if part in ("", ".", "..") or "\\" in part or any(ord(ch) < 32 for ch in part):
            raise SpecError(f"catalog.name: {name!r} is not a plain relative name (from "
                            f"{template!r}); keep each part non-empty, without '..'")  # fmt: skip
    return name


def group_units(items: Iterable[Item], size: int = UNIT_SIZE) -> Iterator[Unit]:
    """Cut contiguous items that share an adapter set into units of at most `size`."""
    for adapters, run in itertools.groupby(items, key=lambda it: adapter_key(it.loras)):
        while chunk := tuple(itertools.islice(run, size)):
            yield Unit(content_id(sorted(i.item_id for i in chunk)), adapters, chunk)


def unit_streams(plan: Plan, done: Set[str] = frozenset()) -> list[UnitStream]:
    """One stream of not-yet-rendered units per adapter set, so the executor can keep
    each adapter set on few workers instead of loading every LoRA everywhere."""
    size = plan.unit_size
    return [
        UnitStream(key, group_units((i for i in expand(plan, key) if i.item_id not in done),
                                    size), n, size)
        for key, n in plan.groups()
    ]  # fmt: skip
