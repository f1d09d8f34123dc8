"""The job spec as data: what a validated spec holds, and its canonical dict for job.json.

Validation (farm/spec/parse.py) builds these; planning, the worker and job.json read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from farm.loras.checkpoints import Checkpoint
from farm.spec.prompt_file import PromptFile
from farm.spec.strength import Blocks, Strength, schedule_text


@dataclass(frozen=True)
class LoraAxis:
    name: str
    path: str  # absolute local path, 'tiny:NAME' or 's3://bucket/key.safetensors'
    alphas: tuple[float, ...]  # () only when combine is an explicit list
    te: float | None = None  # a fixed text-encoder weight: alpha then sets the UNet's
    unet: float | None = None  # a fixed UNet weight: alpha then sets the text encoder's
    blocks: tuple[Blocks, ...] = ()  # per-block multipliers, an axis of its own
    schedule: tuple[tuple[float, float], ...] | None = None
    # A training run's checkpoints in training order: each image uses one of them.
    checkpoints: tuple[Checkpoint, ...] = ()

    def checkpoint_name(self, checkpoint: Checkpoint) -> str:
        """The name a checkpoint goes by in rows and tags: its file's stem."""
        return checkpoint.name.removesuffix(".safetensors")

    @property
    def names(self) -> tuple[str, ...]:
        """The adapter names this entry brings: its own, or one per checkpoint."""
        if self.checkpoints:
            return tuple(self.checkpoint_name(c) for c in self.checkpoints)
        return (self.name,)

    def strengths(self) -> list[Strength]:
        """This LoRA's axis: every alpha, times every block setting."""
        out = []
        for alpha in self.alphas:
            te = self.te if self.te is not None else alpha
            unet = self.unet if self.unet is not None else alpha
            for blocks in self.blocks or (None,):
                out.append(Strength(te, unet, blocks, self.schedule, alpha=alpha))
        return out

    def extras(self) -> dict:
        """The strength keys beyond alpha, as written back to job.json."""
        d: dict[str, Any] = {}
        if self.te is not None:
            d["te"] = self.te
        if self.unet is not None:
            d["unet"] = self.unet
        if self.blocks:
            sources = [b.source for b in self.blocks]
            d["blocks"] = sources if len(sources) > 1 else sources[0]
        if self.schedule is not None:
            d["schedule"] = schedule_text(self.schedule)
        return d


DEFAULTED = ("steps", "guidance", "width", "height", "scheduler")  # each family has its own


@dataclass(frozen=True)
class Render:
    steps: int = 25
    guidance: float = 7.5
    width: int = 512
    height: int = 512
    scheduler: str = "euler"
    format: str = "png"
    batch: int | None = None  # None means "auto"
    # torch.compile the denoiser: strengths then travel as tensors, calls padded to `batch`.
    compile: bool = False
    # The settings the spec wrote; the others take the model family's defaults at plan time.
    given: frozenset[str] = field(default=frozenset(DEFAULTED), compare=False)


@dataclass(frozen=True)
class ByColumn:
    """A catalog column's value picks a setting: `{column, map: {value: name}, default}`."""

    column: str
    map: tuple[tuple[str, str], ...]
    default: str | None = None

    def pick(self, fields: dict[str, str]) -> str | None:
        """The setting a row's value maps to (or the default); None when neither."""
        value = fields.get(self.column)
        return dict(self.map).get(value, self.default) if value is not None else self.default

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"column": self.column, "map": dict(self.map)}
        if self.default is not None:
            d["default"] = self.default
        return d


@dataclass(frozen=True)
class Catalog:
    path: str  # absolute path of a .csv, .jsonl or .parquet file
    template: str  # str.format-style, over the row's columns
    key: str  # the column that identifies a row
    filter: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (column, values it may have)
    name: str | None = None  # a friendly output name, e.g. "{sku}/{preset}-{seed}"
    preset_by: ByColumn | None = None  # column value -> preset label
    lora_by: ByColumn | None = None  # column value -> LoRA name

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"path": self.path, "template": self.template, "key": self.key}
        if self.filter:
            d["filter"] = {c: list(v) if len(v) > 1 else v[0] for c, v in self.filter}
        if self.name is not None:
            d["name"] = self.name
        if self.preset_by is not None:
            d["preset_by"] = self.preset_by.to_dict()
        if self.lora_by is not None:
            d["lora_by"] = self.lora_by.to_dict()
        return d


@dataclass(frozen=True)
class PresetWeights:
    """A preset as resolved for one job: its label and the weights it sets. `weight` goes
    to each LoRA the job names (or `lora`, or a catalog row's LoRA); `loras` names them."""

    preset: str
    weight: Strength | None = None
    loras: tuple[tuple[str, Strength], ...] = ()
    lora: str | None = None
    at: float | None = None  # the slider position it was set at

    def bind(self, names: tuple[str, ...]) -> tuple[tuple[str, Strength], ...]:
        """The (LoRA, strength) pairs for a job (or a row) whose LoRAs are `names`."""
        if self.loras:
            return self.loras
        return tuple((n, self.weight) for n in ((self.lora,) if self.lora else names))

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"preset": self.preset}
        if self.loras:
            d["loras"] = {n: strength_to_spec(w) for n, w in self.loras}
        else:
            d["weight"] = strength_to_spec(self.weight)
        if self.lora is not None:
            d["lora"] = self.lora
        if self.at is not None:
            d["at"] = self.at
        return d


ComboList = tuple[tuple[tuple[str, Strength], ...], ...]


@dataclass(frozen=True)
class Spec:
    job: str
    model: str
    prompts: tuple[str, ...]  # () when catalog is given; a prompt file's lines' texts
    negative_prompt: str
    seeds: tuple[int, ...]  # () only when every line of prompt_file sets its own seed
    loras: tuple[LoraAxis, ...]
    combine: str | ComboList  # 'product' | 'zip' | explicit combos of (lora name, weight)
    render: Render
    output: str
    catalog: Catalog | None = None
    source: str = ""
    lora_dir: str | None = None  # a LoRA library: prompt tags name its files by stem
    tenant: str | None = None  # whose job: its caps and prefix apply (farm/tenancy/tenants.py)
    # Presets as resolved: the preset axis, or (with catalog.preset_by) the rows' choices.
    presets: tuple[PresetWeights, ...] = ()
    # `prompts: {file, format}`: the lines behind `prompts` (one each, in order), with the
    # seed, negative prompt and render settings each sets in place of the spec's.
    prompt_file: PromptFile | None = None
    # With a checkpoint file as `model`: the folder of its configs (`model: {file, config}`)
    # or, for a transformer file, of the rest of its pipeline (`{transformer, base}`).
    model_config: str | None = None
    model_base: str | None = None

    @property
    def model_folder(self) -> str | None:
        """The folder the model loads with, besides `model` itself."""
        return self.model_config or self.model_base

    @property
    def model_folder_key(self) -> str | None:
        """`config` or `base`: how the spec named model_folder."""
        return "config" if self.model_config else "base" if self.model_base else None

    @property
    def row_presets(self) -> bool:
        """Presets are chosen per catalog row (preset_by or lora_by), not an axis."""
        c = self.catalog
        return c is not None and (c.preset_by is not None or c.lora_by is not None)

    def to_dict(self) -> dict:
        """Canonical JSON-able form; parse_spec(spec.to_dict()) gives the spec back."""
        d: dict[str, Any] = {"job": self.job, "model": self.model}
        if self.model_config is not None:
            d["model"] = {"file": self.model, "config": self.model_config}
        elif self.model_base is not None:
            d["model"] = {"transformer": self.model, "base": self.model_base}
        if self.tenant is not None:
            d["tenant"] = self.tenant
        if self.catalog is not None:
            d["catalog"] = self.catalog.to_dict()
        elif self.prompt_file is not None:
            d["prompts"] = self.prompt_file.to_dict()
        else:
            d["prompts"] = list(self.prompts)
        d["negative_prompt"] = self.negative_prompt
        s = self.seeds
        # A contiguous run is written compactly: a million seeds stay one line in job.json.
        if len(s) > 1 and all(b == a + 1 for a, b in zip(s, s[1:], strict=False)):
            d["seeds"] = {"start": s[0], "count": len(s)}
        elif s:  # none: every prompt file line sets its own
            d["seeds"] = list(s)
        d["loras"] = [
            {"name": x.name}
            | ({"checkpoints": {"resolved": [c.as_dict() for c in x.checkpoints]}}
               if x.checkpoints else {"path": x.path})
            | ({"alpha": list(x.alphas)} if x.alphas else {})
            | x.extras()
            for x in self.loras
        ]  # fmt: skip
        if isinstance(self.combine, str):
            d["combine"] = self.combine
        else:
            d["combine"] = [{n: strength_to_spec(w) for n, w in c} for c in self.combine]
        r = self.render
        d["render"] = {"steps": r.steps, "guidance": r.guidance, "width": r.width,
                       "height": r.height, "scheduler": r.scheduler, "format": r.format,
                       "batch": "auto" if r.batch is None else r.batch}  # fmt: skip
        if r.compile:
            d["render"]["compile"] = True
        d["output"] = self.output
        if self.lora_dir is not None:
            d["lora_dir"] = self.lora_dir
        if self.presets:
            d["preset_weights"] = [p.to_dict() for p in self.presets]
        return d


def strength_to_spec(strength: Strength) -> Any:
    """A combine entry's value as written back to job.json (parse gives it back)."""
    return strength.unet if strength.is_plain else strength_fields(strength)


def strength_fields(strength: Strength) -> dict:
    """A strength as {te, unet[, blocks][, schedule]}, as a spec writes it."""
    d: dict[str, Any] = {"te": strength.te, "unet": strength.unet}
    if strength.blocks is not None:
        d["blocks"] = strength.blocks.source
    if strength.schedule is not None:
        d["schedule"] = schedule_text(strength.schedule)
    return d
