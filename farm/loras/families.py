"""What a LoRA's key names and tensor shapes say about the model it was trained for: the
family its keys belong to and, for UNet LoRAs, the cross-attention context width
(768 SD1.x, 1024 SD2.x, 2048 SDXL). farm/families holds the families themselves and
compares a LoRA with a model."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from farm.loras.files import Module, detect_layout, modules, read_header

KNOWN_CONTEXTS = {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL"}
# Transformer LoRAs by their module names, with every separator spelled "_" (kohya's
# and OneTrainer's underscores, ComfyUI's and diffusers' dots alike). Families farm does
# not render come first: their names overlap Flux.1's.
_DIT_FAMILIES = (
    ("Qwen-Image", re.compile(r"transformer_blocks_\d+_(img|txt)_(mlp|mod)_")),
    ("Z-Image", re.compile(r"(^|_)(noise_refiner|context_refiner)_|(^|_)layers_\d+_attention_")),
    ("Flux.2", re.compile(r"to_qkv_mlp_proj|double_stream_modulation|single_stream_modulation")),
    ("HiDream", re.compile(r"(double|single)_stream_blocks_")),
    ("SD3", re.compile(r"joint_blocks_\d+_|(^|_)context_block_")),
    # Flux.1 (and Chroma, made from it): BFL's names (kohya, ComfyUI) or diffusers'.
    ("Flux.1", re.compile(r"(^|_)(double_blocks|single_blocks)_\d+_|single_transformer_blocks_\d+_"
                          r"|transformer_blocks_\d+_(ff_context|norm1_context|attn_to_add_out)")),
)  # fmt: skip
_DIT_PREFIXES = ("transformer.", "lora_transformer_", "diffusion_model.")
_CROSS_KV = re.compile(r"attn2_(processor_)?to_[kv]$")
# Layers whose in-features are the transformer's hidden width.
_FLUX_WIDTH = re.compile(r"(double_blocks_\d+_img_attn_qkv|single_blocks_\d+_linear1"
                         r"|transformer_blocks_\d+_attn_to_q)$")  # fmt: skip


@dataclass(frozen=True)
class Recognised:
    """A LoRA's (or a model's) family as far as its names and shapes tell it."""

    name: str  # "SD1.x", "SDXL", "SD1.x-architecture", "Flux.1", "Qwen-Image", "unknown", …
    context: int | None  # cross-attention context width; None: no cross-attention layers
    second_text_encoder: bool = False
    transformer: bool = False  # a transformer (DiT) family
    width: int | None = None  # a transformer's hidden width, where its keys show it

    @property
    def detail(self) -> str:
        if self.transformer:
            return f"width {self.width}" if self.width else "a transformer (DiT) model"
        return f"context {self.context}" if self.context else "no cross-attention layers"

    def __str__(self) -> str:
        return f"{self.name} ({self.detail})"


def lora_family(path: str | Path) -> Recognised:
    """The base-model family a LoRA was trained for, from its header alone."""
    header, _ = read_header(path)
    mods = modules(header, detect_layout(list(header), path), path)
    return transformer_family(mods) or family_of(mods)


def underscored(name: str) -> str:
    return name.replace(".", "_")


def transformer_family(mods: list[Module]) -> Recognised | None:
    """The transformer (DiT) family a LoRA's modules belong to; None for a UNet LoRA."""
    names = [underscored(m.name) for m in mods]
    for family, pattern in _DIT_FAMILIES:
        if any(pattern.search(n) for n in names):
            widths = {m.parts["down"]["shape"][1] for m, n in zip(mods, names, strict=True)
                      if _FLUX_WIDTH.search(n)} if family == "Flux.1" else set()  # fmt: skip
            return Recognised(family, None, transformer=True,
                              width=widths.pop() if len(widths) == 1 else None)  # fmt: skip
    if any(m.component == "transformer" for m in mods):
        return Recognised("transformer (DiT)", None, transformer=True)
    return None


def family_of(mods: list[Module]) -> Recognised:
    # The in-features of cross-attention's to_k/to_v are the text encoder's context width.
    contexts = {
        m.parts["down"]["shape"][1]
        for m in mods
        if m.component == "unet" and _CROSS_KV.search(m.name) and len(m.parts["down"]["shape"]) == 2
    }
    te2 = any(m.component == "text_encoder_2" for m in mods)
    context = max(contexts) if contexts else None
    if len(contexts) == 1 and context in KNOWN_CONTEXTS:
        return Recognised(KNOWN_CONTEXTS[context], context, te2)
    return Recognised("SDXL" if te2 else "unknown", context, te2)
