"""The tiny model's training recipe: stage lengths, batch sizes and learning rates, the
LoRAs' ranks and targets, and the smoke run CI makes. Recorded in every file it writes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out",
                "ff.net.0.proj", "ff.net.2"]  # fmt: skip
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
SCALING_FACTOR = 0.18215  # SD 1.5's: latents times this have unit variance
MIN_SNR = 5.0


@dataclass(frozen=True)
class LoraRecipe:
    rank: int
    alpha: float
    layout: str  # how farm ships it: "kohya" or "peft"


@dataclass(frozen=True)
class Recipe:
    seed: int = 0
    threads: int = 2
    images: int = 6144
    vae_steps: int = 1500
    vae_batch: int = 16
    vae_crop: int = 64
    vae_lr: float = 1e-3
    unet_steps: int = 4500
    unet_batch: int = 64
    unet_lr: float = 1e-3
    text_lr: float = 5e-4
    ema: float = 0.999
    lora_images: int = 2048
    lora_steps: int = 600
    lora_batch: int = 32
    lora_lr: float = 2e-3
    lora_full_share: float = 0.25  # LoRA steps at strength 1; the rest draw s in [0, 1]
    # neon: kohya layout with alpha ≠ rank (alpha/rank = 1/2, a power of two, so its
    # PEFT twin holds exactly the same deltas); ink: PEFT layout.
    loras: tuple[tuple[str, LoraRecipe], ...] = (
        ("neon", LoraRecipe(rank=8, alpha=4.0, layout="kohya")),
        ("ink", LoraRecipe(rank=4, alpha=4.0, layout="peft")),
    )


# The recipe the shipped weights were trained with.
DEFAULT = Recipe()
# The smoke run CI makes: every stage, a few steps each.
SMOKE = Recipe(images=24, vae_steps=2, vae_batch=4, unet_steps=2, unet_batch=8,
               lora_images=8, lora_steps=2, lora_batch=4)  # fmt: skip


Log = Callable[[str], None]
