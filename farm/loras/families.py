"""What a LoRA's key names and tensor shapes say about the model it was trained for: the
family its keys belong to and, for UNet LoRAs, the cross-attention context width
(768 SD1.x, 1024 SD2.x, 2048 SDXL). farm/families holds the families themselves (and how
each one's LoRAs name their layers) and compares a LoRA with a model."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from farm.loras.files import Module, detect_layout, modules, read_header

KNOWN_CONTEXTS = {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL"}
_CROSS_KV = re.compile(r"attn2_(processor_)?to_[kv]$")
# A transformer's layers whose names no UNet has: MMDiT joint attention (Flux.1's and
# Qwen-Image's double blocks name it alike), under any prefix.
_DIT = re.compile(r"(^|_)transformer_blocks_\d+_attn_(to_[qkv]|to_out|add_[qkv]_proj|to_add_out)")


@dataclass(frozen=True)
class LoraKeys:
    """How one transformer family's LoRA files name their layers (the registry,
    farm/families, says it for each family it knows)."""

    family: str  # "Flux.1", "Qwen-Image", …
    keys: re.Pattern  # module names (underscored) only this family's LoRAs have
    width: re.Pattern | None = None  # layers whose in-features are the hidden width
    block: Callable[[str], str | None] = field(default=lambda name: None, compare=False)


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


def lora_family(path: str | Path, known: Sequence[LoraKeys] = ()) -> Recognised:
    """The base-model family a LoRA was trained for, from its header alone; `known`: the
    transformer families to tell apart, in matching order (farm.families.LORA_KEYS)."""
    header, _ = read_header(path)
    mods = modules(header, detect_layout(list(header), path), path)
    return transformer_family(mods, known) or family_of(mods)


def underscored(name: str) -> str:
    return name.replace(".", "_")


def transformer_family(mods: list[Module], known: Sequence[LoraKeys] = ()) -> Recognised | None:
    """The transformer (DiT) family a LoRA's modules belong to, the first of `known`
    whose names they have; "transformer (DiT)" for one that names none of them (or
    without `known`); None for a UNet LoRA."""
    names = [underscored(m.name) for m in mods]
    for family in known:
        if any(family.keys.search(n) for n in names):
            widths = {m.parts["down"]["shape"][1] for m, n in zip(mods, names, strict=True)
                      if family.width and family.width.search(n)}  # fmt: skip
            return Recognised(family.family, None, transformer=True,
                              width=widths.pop() if len(widths) == 1 else None)  # fmt: skip
    pairs = zip(mods, names, strict=True)
    if any(m.component == "transformer" or _DIT.search(n) for m, n in pairs):
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
