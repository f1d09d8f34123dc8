"""The tiny Qwen-Image pipeline: QwenImagePipeline with a two-block transformer, a
two-layer Qwen2.5-VL text encoder (its vision tower one small layer, never run) and a
small Qwen-Image VAE, random weights drawn from a seed, built offline. A 32×32 image in
two steps takes a few tens of milliseconds on one CPU core."""

from __future__ import annotations

from typing import Any

# Test-sized settings: true CFG at 4 renders the negative prompt's pass too.
RENDER: dict[str, Any] = {"steps": 2, "width": 32, "height": 32, "guidance": 4.0}

_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 2048,
    # Multimodal rotary sections (temporal, height, width) sum to half the head width.
    "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
}
_VISION = {
    "depth": 1,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_heads": 2,
    "out_hidden_size": _TEXT["hidden_size"],
    "fullatt_block_indexes": [0],
}
# Two heads of 16: the rotary axes (frame, row, column) sum to the head width.
_TRANSFORMER = {
    "patch_size": 2,
    "in_channels": 64,  # 16 latent channels in 2×2 patches, packed
    "out_channels": 16,
    "num_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": _TEXT["hidden_size"],
    "axes_dims_rope": [4, 6, 6],
}
# Qwen-Image's VAE (a causal 3D VAE of Wan's design), narrow: latents are 1/8 of the
# image, as the released model's.
_VAE = {"base_dim": 8, "z_dim": 16, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1}
# Qwen/Qwen-Image's scheduler: shifted by the image's size, sigmas ending at 0.02.
SCHEDULER = {
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 0.9,
    "base_image_seq_len": 256,
    "max_image_seq_len": 8192,
    "shift_terminal": 0.02,
    "time_shift_type": "exponential",
}


def build(seed: int = 0) -> Any:
    """The pipeline in memory, fp32 on the CPU; the same seed gives the same weights."""
    import torch
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from farm.render.tiny_qwen import build_qwen_tokenizer

    tokenizer = build_qwen_tokenizer()
    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(**_TRANSFORMER)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLQwenImage(**_VAE)
    torch.manual_seed(seed + 2)
    config = Qwen2_5_VLConfig(
        # Qwen's <|endoftext|> begins and pads, <|im_end|> ends.
        text_config={
            **_TEXT,
            "vocab_size": len(tokenizer.get_vocab()),
            "bos_token_id": tokenizer.pad_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        vision_config=_VISION,
    )
    text_encoder = Qwen2_5_VLForConditionalGeneration(config)
    return QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
