"""The embedded `tiny` model's identity: its version, configs, vocabulary and fingerprint.

Planning needs these (item ids, model families, demo LoRAs shaped for the model) without
torch; the builder in farm/render/tiny.py makes the weights from them. This module is the
one place that says which tiny model farm renders: retraining or resizing it starts here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from farm.home import farm_home

# Bump when anything below, or the builder's seeds in farm/render/tiny.py, changes the
# weights: the fingerprint is part of every item_id, and the version names the caches.
TINY_VERSION = "tiny-v3"
TINY_FINGERPRINT = hashlib.sha256(TINY_VERSION.encode()).hexdigest()

UNET_CONFIG = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 1,
    # Three levels (16, 8 and 4 latent pixels): the coarsest sees the whole picture, so a
    # background comes out one colour. Cross-attention only at the two coarser ones, where
    # colour and shape are decided; the finest level draws edges, and attention over its
    # 256 positions would cost a third of every step.
    "block_out_channels": [32, 64, 96],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "cross_attention_dim": 64,
    "attention_head_dim": 4,  # diffusers reads this as the number of heads
    "norm_num_groups": 16,
}
VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    # Four blocks, as in SD 1.5: latents are 1/8 of the image size.
    "block_out_channels": [16, 16, 32, 32],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 1,
    "norm_num_groups": 16,
    "sample_size": 128,
    # SD 1.5's: training folds the latent scale into the VAE so this gives unit variance.
    "scaling_factor": 0.18215,
}
TEXT_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "projection_dim": 64,
}
# SD 1.5's own scheduler settings, so samplers behave as they do on the real model.
SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}
# The words of the prompts the tiny model was trained on:
# `a {colour} {shape} on a {background} background`.
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SHAPES = ("circle", "square", "triangle", "star", "ring", "cross")
BACKGROUNDS = ("white", "black", "gray", "blue", "green")

# Words that get whole-word tokens; anything else is spelled out one character at a time.
WORDS = [
    "a",
    "an",
    "the",
    "of",
    "in",
    "on",
    "with",
    "and",
    "at",
    "by",
    "for",
    "to",
    "from",
    "photo",
    "portrait",
    "painting",
    "studio",
    "light",
    "lights",
    "neon",
    "city",
    "cityscape",
    "cyberpunk",
    "night",
    "street",
    "knight",
    "castle",
    "forest",
    "mountain",
    "lake",
    "cat",
    "dog",
    "robot",
    "mecha",
    "car",
    "shoe",
    "bag",
    "chair",
    "lamp",
    "watch",
    "red",
    "blue",
    "green",
    "black",
    "white",
    "gold",
    "silver",
    "leather",
    "wood",
    "glass",
    "metal",
    "cotton",
    "style",
    "ink",
    "sketch",
    "watercolor",
    "oil",
    "low",
    "quality",
    "blurry",
    "bright",
    "dark",
    "sunset",
    "rain",
    "fog",
    "product",
    "catalog",
    "house",
    "yellow",
    "purple",
    "orange",
    "gray",
    *SHAPES,
    "background",
]


def shipped_weights() -> Path:
    """The trained weights that ship with farm: unet, vae, text_encoder, neon and ink, as
    fp16 .safetensors (written by `farm model train-tiny`)."""
    return Path(__file__).parent / "weights" / TINY_VERSION


def default_tiny_dir() -> Path:
    """Where the tiny pipeline of this version is cached: FARM_HOME/models/{TINY_VERSION}."""
    return farm_home() / "models" / TINY_VERSION
