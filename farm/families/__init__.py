"""The model families farm renders, one module each: SD1.x, SD2.x, SDXL, Flux.1 (dev and
schnell), Chroma, Qwen-Image and Z-Image. A family module says how to recognise the
family's models and LoRAs, how to render it (pipeline, denoiser, text encoders, guidance,
defaults, samplers) and how its blocks are named; nothing else in farm names a family.

Models are recognised from their diffusers configs, LoRAs from their key names and
shapes (farm/loras/families.py). A model or LoRA that fits no family here is refused
with the family it belongs to named, where farm can tell it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from farm.errors import FarmError
from farm.families import chroma, flux, qwen_image, sd1, sd2, sdxl, z_image
from farm.families.base import Family
from farm.loras.families import KNOWN_CONTEXTS, LoraKeys, Recognised, lora_family
from farm.tiny.identity import UNET_CONFIG

# In matching order: SDXL and SD2.x before the SD1.x they would otherwise look like.
FAMILIES: tuple[Family, ...] = (sdxl.FAMILY, sd2.FAMILY, sd1.FAMILY, flux.DEV, flux.SCHNELL,
                                chroma.FAMILY, qwen_image.FAMILY, z_image.FAMILY)  # fmt: skip
SHOWN = (sd1.FAMILY, sd2.FAMILY, sdxl.FAMILY, flux.DEV, flux.SCHNELL, chroma.FAMILY,
         qwen_image.FAMILY, z_image.FAMILY)  # fmt: skip
RENDERED = "SD1.x, SD2.x, SDXL, Flux.1 (dev, schnell), Chroma, Qwen-Image and Z-Image"
# Transformer pipelines farm recognises by model_index.json's _class_name, not renders.
OTHER_PIPELINES = {
    "FluxKontextPipeline": "Flux.1 Kontext", "Flux2Pipeline": "Flux.2",
    "StableDiffusion3Pipeline": "SD3", "HiDreamImagePipeline": "HiDream",
    "SanaPipeline": "Sana", "PixArtSigmaPipeline": "PixArt-Σ", "AuraFlowPipeline": "AuraFlow",
    "LuminaText2ImgPipeline": "Lumina", "Lumina2Pipeline": "Lumina 2",
    "CogView4Pipeline": "CogView4",
}  # fmt: skip
# How LoRAs name their layers, in matching order: families farm does not render first
# (their names overlap Flux.1's), then each transformer family farm renders.
LORA_KEYS: tuple[LoraKeys, ...] = (
    LoraKeys("Flux.2", re.compile(r"to_qkv_mlp_proj|double_stream_modulation"
                                  r"|single_stream_modulation")),
    LoraKeys("HiDream", re.compile(r"(double|single)_stream_blocks_")),
    LoraKeys("SD3", re.compile(r"joint_blocks_\d+_|(^|_)context_block_")),
    *{f.lora_family: LoraKeys(f.lora_family, f.lora_keys, f.lora_width, f.lora_block)
      for f in FAMILIES if f.lora_keys is not None}.values(),
)  # fmt: skip


class FamilyError(FarmError, ValueError):
    """A model or LoRA farm cannot render; str() names it, its family and what to do."""


@dataclass(frozen=True)
class Model:
    """A model as its configs describe it: its family and its denoiser's config."""

    family: Family
    config: dict  # the denoiser's config.json
    index: dict  # model_index.json
    root: str | None = None  # the local folder it was read from

    @property
    def recognised(self) -> Recognised:
        """Its family with the widths messages compare, as for a LoRA."""
        if self.family.denoiser == "transformer":
            return Recognised(self.family.name, None, transformer=True, width=self.width)
        ctx = self.context
        te2 = "text_encoder_2" in self.family.text_encoders
        if ctx in KNOWN_CONTEXTS:
            return Recognised(KNOWN_CONTEXTS[ctx], ctx, te2)
        # Small or custom models of a known family: the same tree at other widths.
        return Recognised(f"{self.family.name}-architecture", ctx, te2)

    @property
    def context(self) -> int | None:
        value = self.config.get("cross_attention_dim")
        if isinstance(value, list) and len(set(value)) == 1:
            value = value[0]
        return value if isinstance(value, int) else None

    @property
    def width(self) -> int | None:
        """A transformer's hidden width (heads × head width, or as its config says it)."""
        heads, dim = self.config.get("num_attention_heads"), self.config.get("attention_head_dim")
        if isinstance(heads, int) and isinstance(dim, int):
            return heads * dim
        return self.config.get("dim") if isinstance(self.config.get("dim"), int) else None


def by_key(key: str) -> Family:
    for family in FAMILIES:
        if family.key == key:
            return family
    raise KeyError(key)


def tiny_model() -> Model:
    """farm's own `tiny`: SD1.x's tree at small widths."""
    return Model(sd1.FAMILY, dict(UNET_CONFIG), {"_class_name": "StableDiffusionPipeline"})


def identify(index: dict, config: dict, where: str = "model") -> Model:
    """The family of a model from model_index.json and its denoiser's config; a model of
    another family, or of none farm can tell, raises FamilyError."""
    cls = str(index.get("_class_name", ""))
    if cls in OTHER_PIPELINES:
        raise FamilyError(f"{where} is a {OTHER_PIPELINES[cls]} model ({cls}); farm renders "
                          f"{RENDERED} models")  # fmt: skip
    for family in FAMILIES:
        if family.matches(index, config):
            return Model(family, config, index)
    kind = "a transformer (DiT)" if "transformer" in index else "a"
    raise FamilyError(f"{where} is {kind} model of a family farm does not render "
                      f"({cls or 'no _class_name'}); farm renders {RENDERED} models")  # fmt: skip


def read_folder(root: Path, where: str = "model") -> Model:
    """The family of a local diffusers folder; FamilyError when it is not one."""
    try:
        index = json.loads((root / "model_index.json").read_text())
    except OSError:
        raise FamilyError(f"{where} has no model_index.json: give a diffusers model folder "
                          "(the layout save_pretrained writes)") from None  # fmt: skip
    except ValueError:
        raise FamilyError(f"{where}: model_index.json is not JSON") from None
    if not isinstance(index, dict):
        raise FamilyError(f"{where}: model_index.json is not a mapping")
    model = identify(index, read_config(root, index, where), where)
    return Model(model.family, model.config, model.index, str(root))


def denoiser_of(index: dict) -> str:
    return "unet" if "unet" in index else "transformer"


def read_config(root: Path, index: dict, where: str = "model") -> dict:
    name = denoiser_of(index)
    if name not in index and not (root / name / "config.json").exists():
        if not (root / "unet" / "config.json").exists():
            return {}  # identify() names the pipeline class farm cannot render
        name = "unet"
    try:
        config = json.loads((root / name / "config.json").read_text())
    except (OSError, ValueError):
        raise FamilyError(f"{where}: {name}/config.json is missing or not JSON") from None
    if not isinstance(config, dict):
        raise FamilyError(f"{where}: {name}/config.json is not a mapping")
    return config


def lora_families() -> str:
    names = dict.fromkeys(f.lora_family for f in SHOWN)
    return ", ".join(names)


def check_compatible(lora_path: str | Path, model: Model | None, name: str = "") -> Recognised:
    """The LoRA's family; FamilyError if it cannot be used on the model (None: a model
    whose configs are not at hand, checked for the LoRA alone)."""
    # First, so a refused file is refused for every model.
    ours = lora_family(lora_path, LORA_KEYS)
    on = f" on {model.family.name} model {name!r}" if model is not None else ""
    rendered = {f.lora_family for f in SHOWN if f.denoiser == "transformer"}
    if ours.transformer and ours.name not in (*rendered, "transformer (DiT)"):
        raise FamilyError(
            f"{lora_path}: a {ours.name} LoRA cannot be used{on}: farm renders "
            f"{lora_families()} LoRAs; pick one made for the model"
        )
    if model is None:
        return ours
    theirs = model.recognised
    lora_kind = "a transformer" if ours.transformer else "a UNet"
    if ours.transformer != (model.family.denoiser == "transformer"):
        raise FamilyError(
            f"{lora_path}: {_a(ours.name)} LoRA ({ours.detail}) cannot be used on "
            f"{theirs.name} model {name!r} ({theirs.detail}): it adapts {lora_kind}'s "
            "layers the model does not have; pick a LoRA trained for the model"
        )
    if ours.transformer and ours.name in rendered and ours.name != model.family.lora_family:
        raise FamilyError(
            f"{lora_path}: {_a(ours.name)} LoRA cannot be used on {theirs.name} model "
            f"{name!r}: it adapts another transformer's layers; pick a LoRA trained for "
            "the model"
        )
    problems = []
    if ours.transformer:
        if ours.width and theirs.width and ours.width != theirs.width:
            problems.append(f"its blocks take width {ours.width}, the model's {theirs.width}")
    else:
        if ours.context and theirs.context and ours.context != theirs.context:
            problems.append(f"its cross-attention layers take context {ours.context}, the "
                            f"model's {theirs.context}")  # fmt: skip
        if ours.second_text_encoder and not theirs.second_text_encoder:
            problems.append("it adapts a second text encoder (text_encoder_2) that the model lacks")
    if problems:
        raise FamilyError(
            f"{lora_path}: {_a(ours.name)} LoRA ({ours.detail}) cannot be used on {theirs.name} "
            f"model {name!r} ({theirs.detail}): {' and '.join(problems)}; "
            "pick a LoRA trained for this model"
        )
    return ours


def _a(name: str) -> str:
    # Said as letters (an SDXL) or as a word (a Flux.1, an unknown).
    return f"an {name}" if name.startswith(("SD", "a", "e", "i", "o", "u")) else f"a {name}"
