"""Base-model families: which model a LoRA was trained for, told from tensor shapes, and
which a model is, told from its diffusers configs. An SDXL LoRA on an SD1.5 model is
refused at plan time, naming both.

farm renders UNet families (SD1.x, SD2.x, SDXL). Transformer (DiT) models and their
LoRAs (Flux.1, Chroma, Qwen-Image, …) are recognised by their pipeline class and key
names, and refused at plan time with their family named, instead of being planned as
"unknown" and failing in every unit."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from farm.loras.files import LoraError, Module, detect_layout, modules, read_header
from farm.tiny.identity import UNET_CONFIG

KNOWN_CONTEXTS = {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL"}
RENDERED = "SD1.x, SD2.x and SDXL"  # the families farm renders, as messages name them
# Transformer pipelines by model_index.json's _class_name: what their family is called.
TRANSFORMER_PIPELINES = {
    "FluxPipeline": "Flux.1", "FluxKontextPipeline": "Flux.1 Kontext", "Flux2Pipeline": "Flux.2",
    "ChromaPipeline": "Chroma", "QwenImagePipeline": "Qwen-Image", "ZImagePipeline": "Z-Image",
    "StableDiffusion3Pipeline": "SD3", "HiDreamImagePipeline": "HiDream",
    "SanaPipeline": "Sana", "PixArtSigmaPipeline": "PixArt-Σ", "AuraFlowPipeline": "AuraFlow",
    "LuminaText2ImgPipeline": "Lumina", "Lumina2Pipeline": "Lumina 2",
    "CogView4Pipeline": "CogView4",
}  # fmt: skip
# Key names of transformer LoRAs, in the layouts they are shared in: Flux.1/Chroma's
# double and single blocks (kohya, ComfyUI), diffusers/PEFT's `transformer.` prefix
# (ai-toolkit), OneTrainer's `lora_transformer_` and ComfyUI's `diffusion_model.`.
_FLUX_BLOCKS = re.compile(r"(^|[._])(double_blocks|single_blocks|single_transformer_blocks)[._]\d")
_DIT_PREFIXES = ("transformer.", "lora_transformer_", "diffusion_model.")
_CROSS_KV = re.compile(r"attn2_(processor_)?to_[kv]$")


@dataclass(frozen=True)
class Family:
    """A base-model family, as far as tensor shapes and configs tell it."""

    name: str  # "SD1.x", "SD2.x", "SDXL", "SD1.x-architecture", "unknown", "Flux.1", …
    context: int | None  # cross-attention context width; None: no cross-attention layers
    second_text_encoder: bool = False
    rendered: bool = True  # False: a transformer family farm recognises, not renders

    @property
    def detail(self) -> str:
        if not self.rendered:
            return "a transformer (DiT) model"
        return f"context {self.context}" if self.context else "no cross-attention layers"

    def __str__(self) -> str:
        return f"{self.name} ({self.detail})"


def lora_family(path: str | Path) -> Family:
    """The base-model family a LoRA was trained for, from its header alone."""
    header, _ = read_header(path)
    keys = list(header)
    return transformer_family(keys) or family_of(modules(header, detect_layout(keys, path), path))


def transformer_family(keys: list[str]) -> Family | None:
    """The transformer (DiT) family a LoRA's key names belong to; None for a UNet LoRA."""
    if any(_FLUX_BLOCKS.search(k) for k in keys):
        return Family("Flux.1 or Chroma", None, rendered=False)
    if any(k.startswith(_DIT_PREFIXES) for k in keys):
        return Family("transformer (DiT)", None, rendered=False)
    return None


def family_of(mods: list[Module]) -> Family:
    # The in-features of cross-attention's to_k/to_v are the text encoder's context width.
    contexts = {
        m.parts["down"]["shape"][1]
        for m in mods
        if m.component == "unet" and _CROSS_KV.search(m.name) and len(m.parts["down"]["shape"]) == 2
    }
    te2 = any(m.component == "text_encoder_2" for m in mods)
    context = max(contexts) if contexts else None
    if len(contexts) == 1 and context in KNOWN_CONTEXTS:
        return Family(KNOWN_CONTEXTS[context], context, te2)
    return Family("SDXL" if te2 else "unknown", context, te2)


def model_family(model: str) -> Family | None:
    """A model's family from its diffusers configs; None when the folder is not local."""
    if model == "tiny":
        return _model_family(UNET_CONFIG["cross_attention_dim"], "StableDiffusionPipeline", False)
    root = Path(model)
    try:
        index = json.loads((root / "model_index.json").read_text())
    except (OSError, ValueError):
        return None  # s3://, a hub id, or no diffusers folder: nothing to compare against
    if not isinstance(index, dict):
        return None
    cls = str(index.get("_class_name", ""))
    if cls in TRANSFORMER_PIPELINES or ("transformer" in index and "unet" not in index):
        return Family(TRANSFORMER_PIPELINES.get(cls, cls or "transformer (DiT)"), None,
                      rendered=False)  # fmt: skip
    try:
        unet = json.loads((root / "unet" / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(unet, dict):
        return None
    context = unet.get("cross_attention_dim")
    if isinstance(context, list) and len(set(context)) == 1:
        context = context[0]  # some configs spell it per block
    te2 = index.get("text_encoder_2")
    te2 = isinstance(te2, list) and bool(te2) and te2[0] is not None
    return _model_family(context if isinstance(context, int) else None, cls, te2)


def _model_family(context: int | None, pipeline_class: str, te2: bool) -> Family:
    if context in KNOWN_CONTEXTS:
        return Family(KNOWN_CONTEXTS[context], context, te2)
    # Small or custom models of a known pipeline class: same tree, other widths.
    if te2 or pipeline_class.startswith("StableDiffusionXL"):
        return Family("SDXL-architecture", context, te2)
    if pipeline_class == "StableDiffusionPipeline":
        return Family("SD1.x-architecture", context, te2)
    return Family("unknown", context, te2)


def check_compatible(lora_path: str | Path, model: str) -> None:
    """Raise LoraError if the LoRA was trained for another family than the model's."""
    ours = lora_family(lora_path)  # first, so a refused file is refused for every model
    theirs = model_family(model)
    if not ours.rendered:
        on = f" on {theirs.name} model {model!r}" if theirs is not None else ""
        raise LoraError(
            f"{lora_path}: a {ours.name} LoRA (its keys adapt a transformer's blocks) cannot "
            f"be used{on}: farm renders {RENDERED} LoRAs; pick a LoRA trained for the model"
        )
    if theirs is None:
        return
    if not theirs.rendered:
        raise LoraError(
            f"{lora_path}: an {ours.name} LoRA ({ours.detail}) cannot be used on {theirs.name} "
            f"model {model!r} ({theirs.detail}): farm renders {RENDERED} models"
        )
    problems = []
    if ours.context and theirs.context and ours.context != theirs.context:
        problems.append(
            f"its cross-attention layers take context {ours.context}, the model's {theirs.context}"
        )
    if ours.second_text_encoder and not theirs.second_text_encoder:
        problems.append("it adapts a second text encoder (text_encoder_2) that the model lacks")
    if problems:
        raise LoraError(
            f"{lora_path}: an {ours.name} LoRA ({ours.detail}) cannot be used on {theirs.name} "
            f"model {model!r} ({theirs.detail}): {' and '.join(problems)}; "
            "pick a LoRA trained for this model"
        )
