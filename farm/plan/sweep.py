"""Axes, items and units: what a spec expands into, with content-addressed ids."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Iterable, Iterator, Set
from dataclasses import dataclass, field

from farm.limits import MAX_ITEMS
from farm.loras.families import check_compatible
from farm.loras.files import LoraError, inspect_lora
from farm.plan.model_refs import model_fingerprint
from farm.spec import Spec, SpecError
from farm.spec.prompts import PromptError, lora_tag, parse_prompt
from farm.spec.strength import Strength

# Items per unit: enough to amortise a dispatch, small enough to spread over workers. A
# spec's batch N makes units of max(UNIT_SIZE, N); `batch: auto` makes units of AUTO_UNIT,
# the largest call auto takes (16 renders some 12-20% cheaper an image than 8 on a CPU).
UNIT_SIZE = 8
AUTO_UNIT = 16
ID_HEX = 20  # 80 bits: collision-free for any realistic sweep


@dataclass(frozen=True)
class Adapter:
    name: str
    path: str
    sha256: str
    shorthash: str


@dataclass(frozen=True)
class Item:
    item_id: str
    prompt: str  # as stored and shown: with its <lora:…> tags
    text: str  # what the text encoder sees: tags removed
    negative_prompt: str
    seed: int
    loras: tuple[tuple[str, Strength], ...]  # (adapter name, strength), in prompt order
    alpha: float | None  # the swept strength when exactly one LoRA is swept
    catalog: tuple[tuple[str, str], ...] = ()
    preset: str | None = None  # the preset its strengths came from
    name: str | None = None  # a catalog's friendly output name, without the extension


@dataclass(frozen=True)
class Unit:
    unit_id: str
    adapters: tuple[str, ...]  # adapter names this unit needs loaded
    items: tuple[Item, ...]


@dataclass(frozen=True)
class Source:
    """One entry of the prompt axis: a prompt, or a catalog row's filled template."""

    prompt: str
    text: str
    tags: tuple[tuple[str, Strength], ...]
    catalog: tuple[tuple[str, str], ...] = ()
    preset: str | None = None  # a catalog row's preset (preset_by), set in its tags


class Combos:
    """The sweep's LoRA combinations, made on demand: a product of axes is never a list.

    `count` is arithmetic, so a plan of 10¹² items is counted (and refused) at once.
    """

    def __init__(self, spec: Spec):
        self.explicit: tuple | None = None
        self.labels: tuple[str | None, ...] = ()  # the preset of each explicit combination
        if spec.presets and not spec.row_presets:
            names = tuple(x.name for x in spec.loras)
            self.explicit = tuple(p.bind(names) for p in spec.presets)
            self.labels = tuple(p.preset for p in spec.presets)
            self.axes = []
            self.count = len(self.explicit)
            self.names = frozenset(n for c in self.explicit for n, _ in c)
            return
        if not isinstance(spec.combine, str):
            self.explicit = tuple(tuple(c) for c in spec.combine)
            self.axes: list[list[tuple[str, Strength]]] = []
            self.count = len(self.explicit)
            self.names = frozenset(n for c in self.explicit for n, _ in c)
            return
        swept = spec.loras if spec.combine == "zip" else [x for x in spec.loras if x.alphas]
        self.axes = [[(x.name, w) for w in x.strengths()] for x in swept]
        self.zip = spec.combine == "zip"
        self.names = frozenset(x.name for x in swept)
        if self.zip:
            self.count = len(self.axes[0]) if self.axes else 1
        else:
            self.count = math.prod(len(axis) for axis in self.axes)

    def labelled(self) -> Iterator[tuple[tuple[tuple[str, Strength], ...], str | None]]:
        """Each combination with the preset it came from (None without presets)."""
        if self.labels:
            return zip(self.explicit, self.labels, strict=True)
        return ((combo, None) for combo in self)

    def __iter__(self) -> Iterator[tuple[tuple[str, Strength], ...]]:
        if self.explicit is not None:
            return iter(self.explicit)
        if self.zip and self.axes:
            return zip(*self.axes, strict=True)
        return itertools.product(*self.axes)

    def __len__(self) -> int:
        return self.count

    @property
    def uniform(self) -> bool:
        """Every combination sets the same LoRAs (product and zip)."""
        return self.explicit is None


@dataclass
class Plan:
    spec: Spec
    model_fingerprint: str
    adapters: dict[str, Adapter]
    combos: Combos
    sources: list[Source] = field(default_factory=list)

    @property
    def items(self) -> int:
        return len(self.sources) * len(self.spec.seeds) * self.combos.count

    def groups(self) -> list[tuple[tuple[str, ...], int]]:
        """Each adapter set of the sweep with its item count, in order of first use."""
        items: dict[tuple[str, ...], int] = {}
        seeds = len(self.spec.seeds)
        if self.combos.uniform:
            # Every combination sets the same LoRAs: the sets differ only by prompt tags.
            swept = tuple((n, None) for n in self.combos.names)
            for source in self.sources:
                key = adapter_key(swept + source.tags)
                items[key] = items.get(key, 0) + seeds * self.combos.count
            return list(items.items())
        for combo in self.combos:
            for source in self.sources:
                key = adapter_key(combo + source.tags)
                items[key] = items.get(key, 0) + seeds
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
            "seeds": len(self.spec.seeds),
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
    combos = Combos(spec)
    # Refuse a runaway product before reading any file or prompt.
    _check_size(combos.count * len(spec.seeds) * max(len(spec.prompts), 1), limit)
    if frozen:
        fingerprint, adapters = frozen
    else:
        fingerprint = model_fingerprint(spec.model)
        adapters = {
            lora.name: _adapter(lora.name, lora.path, f"loras[{i}].path", spec.model)
            for i, lora in enumerate(spec.loras)
        }
        # item_ids hash files, not names: one file under two names would give two items
        # one id, and the job could never account for both.
        first: dict[str, int] = {}
        for i, lora in enumerate(spec.loras):
            j = first.setdefault(adapters[lora.name].sha256, i)
            if j != i:
                raise SpecError(
                    f"loras[{i}].path: the same file as loras[{j}].path; give it one name"
                )
    sources = list(_sources(spec, adapters, combos))
    if spec.row_presets:
        # Rows of one preset share strengths, so they can share pipeline calls: keep them
        # together (the order of items never changes their ids).
        sources.sort(key=lambda s: json.dumps(sorted((n, w.key()) for n, w in s.tags)))
    plan = Plan(spec, fingerprint, adapters, combos, sources)
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


def _check_size(items: int, limit: int) -> None:
    if items > limit:
        raise SpecError(
            f"the sweep has {items:,} items, more than the limit of {limit:,}; shrink an axis "
            "(prompts, seeds, strengths) or raise the limit with --max-items"
        )


def _adapter(name: str, path: str, field_path: str, model: str) -> Adapter:
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
        check_compatible(local, model)
    except LoraError as err:
        raise SpecError(f"{field_path}: {str(err).replace(local, path)}") from None
    return Adapter(name, path, info.sha256, info.shorthash)


def _library_adapter(spec: Spec, name: str, where: str) -> Adapter | None:
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
    return _adapter(name, str(matches[0]), where, spec.model)


def _sources(spec: Spec, adapters: dict[str, Adapter], combos: Combos) -> Iterator[Source]:
    swept = combos.names
    if spec.catalog is not None:
        from farm.spec.catalog_rows import read_catalog

        rows = ((f"catalog[{r.key}]", r.prompt, tuple(sorted(r.fields.items())))
                for r in read_catalog(spec.catalog))  # fmt: skip
    else:
        rows = ((f"prompts[{i}]", p, ()) for i, p in enumerate(spec.prompts))
    seen: set[tuple] = set()
    for where, prompt, catalog in rows:
        try:
            text, tags = parse_prompt(prompt)
        except PromptError as err:
            raise SpecError(f"{where}: {err}") from None
        row_tags, preset = _row_preset(spec, dict(catalog), where)
        for name, _ in row_tags:
            if any(t.name == name for t in tags):
                raise SpecError(f"{where}: {name} is both set by the row's preset and "
                                "tagged in the prompt; keep one")  # fmt: skip
        for tag in tags:
            if tag.name not in adapters:
                found = _library_adapter(spec, tag.name, where)
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
        if key in seen:
            raise SpecError(f"{where}: duplicate of an earlier prompt; remove it")
        seen.add(key)
        # The row's strengths are shown as tags, as a swept LoRA's are (A1111 reads them).
        shown = " ".join([prompt, *(lora_tag(n, w) for n, w in row_tags)])
        yield Source(shown, text, key[1], catalog, preset)


def _row_preset(spec: Spec, fields: dict[str, str],
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


def adapter_key(loras: Iterable[tuple[str, float]]) -> tuple[str, ...]:
    """The adapter set items share when they can go in one unit: names, sorted."""
    return tuple(sorted(n for n, _ in loras))


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
    single = len(plan.combos.names) == 1
    naming = spec.catalog.name if spec.catalog is not None else None
    for combo, label in plan.combos.labelled():
        for source in plan.sources:
            loras = combo + source.tags
            if only is not None and adapter_key(loras) != only:
                continue
            prompt = " ".join([source.prompt, *(lora_tag(n, w) for n, w in combo)])
            # A plain strength hashes as the bare number it always was.
            hashed = sorted((plan.adapters[n].sha256, w.key()) for n, w in loras)
            for seed in spec.seeds:
                payload = {**base, "text": source.text, "seed": seed, "loras": hashed,
                           "catalog": source.catalog}  # fmt: skip
                yield Item(
                    item_id=content_id(payload),
                    prompt=prompt,
                    text=source.text,
                    negative_prompt=spec.negative_prompt,
                    seed=seed,
                    loras=loras,
                    alpha=_alpha(combo, source, single),
                    catalog=source.catalog,
                    preset=label or source.preset,
                    name=friendly_name(
                        naming, source, seed, label or source.preset, spec.catalog.key
                    )
                    if naming
                    else None,
                )


def _alpha(combo: tuple, source: Source, single: bool) -> float | None:
    """The swept strength: the one swept LoRA's, or a row preset's single weight."""
    if single and combo:
        return combo[0][1].alpha
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


@dataclass
class UnitStream:
    """The units of one adapter set, made lazily; `items` is what the plan counts."""

    adapters: tuple[str, ...]
    units: Iterator[Unit]
    items: int
    size: int = UNIT_SIZE  # items per unit


def unit_streams(plan: Plan, done: Set[str] = frozenset()) -> list[UnitStream]:
    """One stream of not-yet-rendered units per adapter set, so the executor can keep
    each adapter set on few workers instead of loading every LoRA everywhere."""
    size = plan.unit_size
    return [
        UnitStream(key, group_units((i for i in expand(plan, key) if i.item_id not in done),
                                    size), n, size)
        for key, n in plan.groups()
    ]  # fmt: skip


def content_id(payload: object) -> str:
    """A short, stable hash of a JSON-able value."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:ID_HEX]
