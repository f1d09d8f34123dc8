"""The tiny Z-Image pipeline: ZImagePipeline with a transformer of two main layers and
one noise- and one context-refiner layer, a two-layer Qwen3 text encoder and Flux.1's
VAE design, random weights drawn from a seed, built offline. A 32×32 image in two steps
takes a few tens of milliseconds on one CPU core."""

from __future__ import annotations

from typing import Any

from farm.tiny.identity import VAE_CONFIG

# Test-sized settings: guidance above 0 runs the [cond; uncond] pass (Base's way), so
# the tests see the doubled batch; Turbo's 0 is the single pass.
RENDER: dict[str, Any] = {"steps": 2, "width": 32, "height": 32, "guidance": 3.0}

_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "max_position_embeddings": 1024,
}
# Two heads of 16: the rotary axes (caption/frame, row, column) sum to the head width.
_TRANSFORMER = {
    "all_patch_size": [2],
    "all_f_patch_size": [1],
    "in_channels": 16,
    "dim": 32,
    "n_layers": 2,
    "n_refiner_layers": 1,
    "n_heads": 2,
    "n_kv_heads": 2,
    "cap_feat_dim": _TEXT["hidden_size"],
    "axes_dims": [4, 6, 6],
    "axes_lens": [1536, 512, 512],
}
# Flux.1's VAE design, which Z-Image's is (16 latent channels, a shift and a scale).
_VAE = {**VAE_CONFIG, "sample_size": 32, "latent_channels": 16, "use_quant_conv": False,
        "use_post_quant_conv": False, "shift_factor": 0.1159, "scaling_factor": 0.3611}  # fmt: skip
# Tongyi-MAI/Z-Image-Turbo's scheduler: a fixed shift of 3.
SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False}


def build(seed: int = 0) -> Any:
    """The pipeline in memory, fp32 on the CPU; the same seed gives the same weights."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3Model

    from farm.render.tiny_qwen import CHAT_TEMPLATE, build_qwen_tokenizer

    tokenizer = build_qwen_tokenizer(CHAT_TEMPLATE)
    torch.manual_seed(seed)
    transformer = ZImageTransformer2DModel(**_TRANSFORMER)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**_VAE)
    torch.manual_seed(seed + 2)
    ids = {"bos_token_id": tokenizer.pad_token_id, "pad_token_id": tokenizer.pad_token_id,
           "eos_token_id": tokenizer.eos_token_id}  # fmt: skip
    text_encoder = Qwen3Model(Qwen3Config(vocab_size=len(tokenizer.get_vocab()), **ids, **_TEXT))
    return ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
