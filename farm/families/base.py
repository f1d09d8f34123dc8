"""What farm knows about one model family: how to recognise its models and LoRAs, how
to render it, and how its blocks are named for per-block strength."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from farm.loras.flux_keys import Layers

# How guidance shapes one denoiser call, and so the per-sample strength table:
# - "cfg": classifier-free guidance runs the denoiser on [uncond; cond], twice the items;
# - "embedded": guidance is an input embedding (Flux.1-dev), one pass, the items once;
# - "none": no guidance at all (Flux.1-schnell);
# - "true_cfg": the unconditional pass is a second call of the items (Chroma).
GUIDANCE_KINDS = ("cfg", "embedded", "none", "true_cfg")


@dataclass(frozen=True)
class Defaults:
    """The render settings a spec leaves out, as the family's authors recommend them."""

    steps: int
    guidance: float
    width: int
    height: int
    scheduler: str


@dataclass(frozen=True)
class BlockForm:
    """One way users write per-block multipliers: a vector of values, one per id."""

    name: str  # "LoRA Block Weight, 17 values (SD1.x/SD2.x)"
    ids: tuple[str, ...]
    carries: bool = False  # a shorter vector carries its last value on (Inspire Pack's)


@dataclass(frozen=True)
class Family:
    """A model family farm renders. Everything farm needs about it lives here, so that
    adding a family is one module of farm/families and its tests."""

    key: str  # "sd1", "sdxl", "flux-dev", …: the name docs and messages use in specs
    name: str  # "SD1.x", "Flux.1-dev"
    lora_family: str  # the family name a LoRA for it is recognised as ("Flux.1")
    pipelines: tuple[str, ...]  # model_index.json `_class_name`s
    denoiser: str  # "unet" | "transformer"
    text_encoders: tuple[str, ...]  # pipeline components
    lora_text_encoders: tuple[str, ...]  # those a LoRA may adapt; keys for others drop
    guidance: str  # one of GUIDANCE_KINDS
    defaults: Defaults
    schedulers: tuple[str, ...]  # the spec's `render.scheduler` names it can use
    block_forms: tuple[BlockForm, ...]
    block_presets: dict[str, str]  # preset name → comma-separated values of one form
    layouts: tuple[str, ...]  # LoRA key layouts farm loads for it
    tiny: str  # the kind of its tiny pipeline (farm/render/tiny_pipelines.py)
    # Whether a model folder is this family: (model_index.json, denoiser config) → bool.
    matches: Callable[[dict, dict], bool] = field(repr=False, default=lambda i, c: False)
    # A denoiser module (diffusers name, dotted) → its block id, or None outside blocks.
    block_of: Callable[[str, dict], str | None] = field(repr=False, default=lambda m, c: None)
    # Extra infotext fields, after A1111's own: (guidance) → [(name, value)].
    infotext: Callable[[float], list[tuple[str, str]]] = field(repr=False,
                                                              default=lambda g: [])  # fmt: skip
    # A block vector → {block id: multiplier}, or None when no form has its length;
    # None here: the form of that length, its BASE read as the text encoder's (te).
    expand: Callable[[tuple[float, ...]], dict[str, float] | None] | None = field(
        repr=False, default=None)  # fmt: skip
    t5: str | None = None  # the component holding T5, which LoRA Block Weight names apart
    gpu_dtype: str = "float16"  # its weights' dtype on a GPU unless `--dtype` says otherwise
    # The dict form's parts of a transformer, `{transformer: {double: …, single: …}}`, and
    # a block id → (its part, its index in that part); None for ids outside the parts.
    block_sections: tuple[str, ...] = ()
    section_of: Callable[[str], tuple[str, int] | None] = field(
        repr=False, default=lambda b: None)  # fmt: skip
    # LoRA files, read without torch (farm/loras): module names (underscored, any layout)
    # that only this family's LoRAs have; those whose in-features are the transformer's
    # width; and a file's module name → its block id, for `farm lora inspect`.
    lora_keys: re.Pattern | None = None
    lora_width: re.Pattern | None = None
    lora_block: Callable[[str], str | None] = field(repr=False, default=lambda m: None)
    # The denoiser config → its layers a LoRA may adapt, with their widths and the names
    # other tools give them (farm/loras/flux_keys.py converts every shared layout to
    # diffusers' names with it); None: diffusers reads the file as it is (UNet families).
    lora_layers: Callable[[dict], Layers] | None = field(repr=False, default=None)
    # Denoiser modules whose input is every sample's tokens run end to end, without a
    # batch dimension: per-sample strengths cannot reach them, so a LoRA that adapts one
    # renders a call per strength.
    unbatched: re.Pattern | None = None
    # The pipeline argument guidance goes in, and the negative prompt its true-CFG pass
    # needs when the spec gives none (None: no negative prompt, no negative pass).
    guidance_arg: str = "guidance_scale"
    blank_negative: str | None = None
    # The guidance a negative prompt needs to matter: the pipeline runs its unconditional
    # pass only above it (diffusers: `guidance_scale > 1` for SD, SDXL and Chroma,
    # `true_cfg_scale > 1` for Qwen-Image, `> 0` for Z-Image).
    negative_above: float = 1.0
    # The render module (farm/render) that builds its tiny pipeline: `build(seed)` and its
    # test-sized `RENDER` settings. Named, not imported: the registry imports no torch.
    # None: farm/render/tiny_pipelines.py builds it itself.
    tiny_module: str | None = None

    def __str__(self) -> str:
        return self.name

    @property
    def doubles_batch(self) -> bool:
        """Whether one denoiser call sees each item twice ([uncond; cond])."""
        return self.guidance == "cfg"

    def pipeline_kwargs(self, guidance: float, negative: list[str] | None,
                        count: int = 1) -> dict:  # fmt: skip
        """The guidance arguments of one pipeline call of `count` prompts, in the
        family's own terms."""
        if self.guidance == "none":
            return {"guidance_scale": 0.0}
        if self.guidance == "embedded":
            return {"guidance_scale": guidance}  # distilled: no negative prompt pass
        if negative is None and self.blank_negative is not None:
            negative = [self.blank_negative] * count
        return {self.guidance_arg: guidance, "negative_prompt": negative}

    def negative_problem(self, guidance: float) -> str | None:
        """Why a negative prompt would change nothing at this guidance, or None."""
        if self.guidance in ("embedded", "none"):
            return f"{self.name} models take no negative prompt (their guidance is distilled)"
        if guidance <= self.negative_above:
            return (
                f"at guidance {guidance:g}, {self.name} models run no unconditional pass, "
                f"so it changes nothing (it needs guidance above {self.negative_above:g})"
            )
        return None

    def form_of(self, count: int) -> BlockForm | None:
        return next((f for f in self.block_forms if len(f.ids) == count), None)

    def expand_blocks(self, values: tuple[float, ...]) -> dict[str, float] | None:
        if self.expand is not None:
            return self.expand(values)
        form = self.form_of(len(values))
        if form is None:
            return None
        table = dict(zip(form.ids, values, strict=True))
        table["te"] = table.pop("BASE")
        return table


@dataclass(frozen=True)
class BlockMap:
    """Where a model's LoRA layers sit, for per-block strength: its family and its
    denoiser's config (UNet block ids depend on its layers per block)."""

    family: Family
    config: dict = field(default_factory=dict)

    def block_id(self, module: str) -> str | None:
        return self.family.block_of(module, self.config)

    def text_block(self, module: str) -> str:
        """te, or t5 for a layer of the family's T5 (`component.module`)."""
        return "t5" if self.family.t5 and module.split(".", 1)[0] == self.family.t5 else "te"


def block_number(pattern: str, module: str) -> int | None:
    match = re.search(pattern, module)
    return int(match[1]) if match else None


def edge_block(module: str, into: tuple[str, ...], out: tuple[str, ...]) -> str | None:
    """IN for a transformer's layers before its blocks, OUT for those after, else None."""
    if module.startswith(into):
        return "IN"
    return "OUT" if module.startswith(out) else None


def base_expander(ids: tuple[str, ...]) -> Callable[[tuple[float, ...]], dict[str, float] | None]:
    """How a transformer family's block vector of `ids` reads: its BASE value is the text
    encoder's and the layers' before and after the blocks (IN, OUT); None for a vector of
    another length."""

    def expand(values: tuple[float, ...]) -> dict[str, float] | None:
        if len(values) != len(ids):
            return None
        table = dict(zip(ids, values, strict=True))
        base = table.pop("BASE")
        return {"te": base, "IN": base, "OUT": base, **table}

    return expand
