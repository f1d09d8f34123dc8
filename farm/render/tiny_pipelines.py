"""Tiny random-weight pipelines of the model families besides SD1.x: SD2.x, SDXL,
Flux.1 dev and schnell, and Chroma here, and those of families whose own render module
builds theirs (the family's `tiny_module`: Qwen-Image, Z-Image).

Each has its family's pipeline class, module tree and scheduler settings (v-prediction for
SD2.x, added time ids for SDXL, packed 16-channel latents and dynamic shifting for Flux and
Chroma) at a size that renders a 32×32 image in a tenth of a second or less on one CPU
core. The weights are random, drawn from a seed, so the images are noise; what they give is
a real pipeline of the family to load, sweep LoRAs on and render through every code path,
offline. Tokenizers are made in code: CLIP's from farm.render.tiny, T5's as a word-level
vocabulary.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from farm.families import FAMILIES
from farm.home import build_folder, farm_home
from farm.tiny.identity import VAE_CONFIG, WORDS

# Bump when anything below changes the weights or configs: it names the cached folders.
VERSION = "v1"

# Kinds whose builder is the family's own render module (`build(seed)`, `RENDER`).
_MODULES = {f.tiny: f.tiny_module for f in FAMILIES if f.tiny_module}
KINDS = ("sd2", "sdxl", "flux-dev", "flux-schnell", "chroma", *_MODULES)

# Test-sized render settings that work for each kind. Flux schnell has no guidance input
# (the value is ignored); Chroma runs true classifier-free guidance, so a guidance above 1
# also renders the negative prompt's branch.
RENDER: dict[str, dict[str, Any]] = {
    "sd2": {"steps": 2, "width": 32, "height": 32, "guidance": 5.0},
    "sdxl": {"steps": 2, "width": 32, "height": 32, "guidance": 5.0},
    "flux-dev": {"steps": 2, "width": 32, "height": 32, "guidance": 3.5},
    "flux-schnell": {"steps": 2, "width": 32, "height": 32, "guidance": 0.0},
    "chroma": {"steps": 2, "width": 32, "height": 32, "guidance": 4.0},
    **{kind: importlib.import_module(module).RENDER for kind, module in _MODULES.items()},
}

# ------------------------------------------------------------------ configs
# Diffusers reads a UNet's `attention_head_dim` as the number of heads per level (SD2.x
# and SDXL configs spell it per level, as here).

# The tiny SD1.x model's KL VAE (four blocks, so latents are 1/8 of the image, as every
# family's are), sized for the test images.
_SD_VAE = {**VAE_CONFIG, "sample_size": 32}
# Flux.1's VAE (Chroma uses it too): 16 latent channels, no quant convs, a shift and a
# scale that the pipelines apply before decoding.
_FLUX_VAE = {
    **_SD_VAE,
    "latent_channels": 16,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "shift_factor": 0.1159,
    "scaling_factor": 0.3611,
}

# SD2.x: attention on every level but the coarsest, linear projections in the transformers, and
# an OpenCLIP text encoder (plain gelu). Its context width (48) differs from the SD1.x tiny
# model's 64, so a LoRA made for one does not fit the other.
_SD2_TEXT = {
    "hidden_size": 48,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "projection_dim": 48,
    "hidden_act": "gelu",
}
_SD2_UNET = {
    "sample_size": 4,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 1,
    "block_out_channels": [16, 32, 32],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "cross_attention_dim": 48,
    "attention_head_dim": [2, 4, 4],
    "use_linear_projection": True,
    "norm_num_groups": 16,
}
# stabilityai/stable-diffusion-2's scheduler (the 768 v-prediction model), less the
# fields EulerDiscreteScheduler does not take.
_SD2_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "prediction_type": "v_prediction",
}

# SDXL: CLIP ViT-L and OpenCLIP bigG, both read at their penultimate layer; the UNet's
# context is the two widths side by side, and its added embedding takes the second
# encoder's pooled projection plus six time ids (original size, crop, target size).
_SDXL_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "projection_dim": 32,
}
_SDXL_TEXT_2 = {**_SDXL_TEXT, "hidden_size": 48, "intermediate_size": 96, "hidden_act": "gelu"}
_SDXL_TIME_DIM = 8
_SDXL_UNET = {
    "sample_size": 4,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 1,
    # SDXL's three levels: none, one and several transformer layers per attention block.
    "block_out_channels": [16, 32, 64],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "transformer_layers_per_block": [1, 1, 2],
    "attention_head_dim": [2, 4, 8],
    "use_linear_projection": True,
    "cross_attention_dim": _SDXL_TEXT["hidden_size"] + _SDXL_TEXT_2["hidden_size"],
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": _SDXL_TIME_DIM,
    "projection_class_embeddings_input_dim": _SDXL_TEXT_2["projection_dim"] + 6 * _SDXL_TIME_DIM,
    "norm_num_groups": 16,
}
# stabilityai/stable-diffusion-xl-base-1.0's scheduler.
_SDXL_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}
_SDXL_VAE = {**_SD_VAE, "scaling_factor": 0.13025}

# Flux.1 and Chroma: a T5 v1.1 encoder (gated gelu), and for Flux a CLIP ViT-L whose
# pooled output conditions the transformer.
_T5 = {
    "d_model": 32,
    "d_kv": 8,
    "d_ff": 64,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 32,
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": False,
}
_FLUX_CLIP = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "projection_dim": 32,
}
# Two heads of 16: the rotary axes (text/index, row, column) must sum to the head width.
# Two blocks of each kind, so block indices past 0 exist for LoRA keys to name.
_FLUX_TRANSFORMER = {
    "patch_size": 1,
    "in_channels": 4 * _FLUX_VAE["latent_channels"],  # 2×2 latent patches, packed
    "num_layers": 2,
    "num_single_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": _T5["d_model"],
    "pooled_projection_dim": _FLUX_CLIP["hidden_size"],
    "axes_dims_rope": [4, 6, 6],
}
_CHROMA_TRANSFORMER = {
    **{k: v for k, v in _FLUX_TRANSFORMER.items() if k != "pooled_projection_dim"},
    "approximator_num_channels": 16,
    "approximator_hidden_dim": 32,
    "approximator_layers": 1,
}
# black-forest-labs/FLUX.1-dev's scheduler; Chroma ships the same settings.
FLUX_SCHEDULER = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
# FLUX.1-schnell's: a fixed shift of 1 (its few steps are distilled without shifting).
_SCHNELL_SCHEDULER = {**FLUX_SCHEDULER, "shift": 1.0, "use_dynamic_shifting": False}

# Flux and Chroma pad T5 prompts to max_sequence_length, 512 unless a caller says less.
_T5_MAX_LENGTH = 512
# Words of the T5 vocabulary besides farm's prompt words (farm.tiny.identity.WORDS).
_T5_EXTRA = ["is", "very", "detailed", "high", "best", "masterpiece", "ugly", "bad", "image"]
_T5_PUNCTUATION = [",", ".", "(", ")", ":", "!", "?", "-", "'"]


# ------------------------------------------------------------------ building


def default_dir(kind: str) -> Path:
    """Where the tiny pipeline of this kind and version is cached:
    FARM_HOME/models/tiny-{kind}-{VERSION}."""
    _check(kind)
    return farm_home() / "models" / f"tiny-{kind}-{VERSION}"


def ensure(kind: str, path: Path | None = None) -> Path:
    """Return a folder holding the tiny pipeline of this kind, building it once if missing."""
    _check(kind)

    def save(tmp: Path) -> None:
        build(kind).save_pretrained(tmp, safe_serialization=True)

    return build_folder(Path(path) if path else default_dir(kind), save)


def build(kind: str, seed: int = 0) -> Any:
    """Build the tiny pipeline of this kind in memory, fp32 on the CPU, its random weights
    drawn from `seed` (the same seed gives the same weights)."""
    _check(kind)
    if kind in _MODULES:
        pipe = importlib.import_module(_MODULES[kind]).build(seed)
    elif kind == "sd2":
        pipe = _build_sd2(seed)
    elif kind == "sdxl":
        pipe = _build_sdxl(seed)
    elif kind == "chroma":
        pipe = _build_chroma(seed)
    else:
        pipe = _build_flux(seed, guidance=kind == "flux-dev")
    # Modules are built in training mode, where T5's dropout draws from torch's global
    # random state on every prompt; from_pretrained gives eval mode, and so does this.
    for component in pipe.components.values():
        if hasattr(component, "eval"):
            component.eval()
    return pipe


def _check(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown tiny pipeline kind {kind!r}; the kinds are {', '.join(KINDS)}")


def _build_sd2(seed: int):
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )

    from farm.render.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**_SD2_UNET)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**_SD_VAE)
    torch.manual_seed(seed + 2)
    text_encoder = _clip(tokenizer, _SD2_TEXT, projection=False)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**_SD2_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _build_sdxl(seed: int):
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    from farm.render.tiny import build_tokenizer

    tokenizer, tokenizer_2 = build_tokenizer(), build_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**_SDXL_UNET)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**_SDXL_VAE)
    torch.manual_seed(seed + 2)
    text_encoder = _clip(tokenizer, _SDXL_TEXT, projection=False)
    torch.manual_seed(seed + 3)
    text_encoder_2 = _clip(tokenizer_2, _SDXL_TEXT_2, projection=True)
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**_SDXL_SCHEDULER),
        # No invisible watermark: it needs an extra package and alters the pixels.
        add_watermarker=False,
    )


def _build_flux(seed: int, guidance: bool):
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )

    from farm.render.tiny import build_tokenizer

    tokenizer, tokenizer_2 = build_tokenizer(), build_t5_tokenizer()
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(**_FLUX_TRANSFORMER, guidance_embeds=guidance)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**_FLUX_VAE)
    torch.manual_seed(seed + 2)
    text_encoder = _clip(tokenizer, _FLUX_CLIP, projection=False)
    torch.manual_seed(seed + 3)
    text_encoder_2 = _t5(tokenizer_2)
    scheduler = FLUX_SCHEDULER if guidance else _SCHNELL_SCHEDULER
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**scheduler),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


def _build_chroma(seed: int):
    import torch
    from diffusers import (
        AutoencoderKL,
        ChromaPipeline,
        ChromaTransformer2DModel,
        FlowMatchEulerDiscreteScheduler,
    )

    tokenizer = build_t5_tokenizer()
    torch.manual_seed(seed)
    transformer = ChromaTransformer2DModel(**_CHROMA_TRANSFORMER)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**_FLUX_VAE)
    torch.manual_seed(seed + 2)
    text_encoder = _t5(tokenizer)
    return ChromaPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )


def _clip(tokenizer, config: dict, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(
        CLIPTextConfig(
            vocab_size=len(tokenizer.get_vocab()),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **config,
        )
    )


def _t5(tokenizer):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer.get_vocab()),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
            **_T5,
        )
    )


def build_t5_tokenizer():
    """A word-level T5-style tokenizer, made without any download: farm's prompt words,
    lower-cased and split on whitespace and punctuation, each prompt ending in </s>; any
    other word is <unk>. Its model_max_length is 512, the max_sequence_length Flux and
    Chroma pad prompts to unless told less."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    # T5's special ids: <pad> 0, </s> 1, <unk> 2.
    words = ["<pad>", "</s>", "<unk>"]
    for word in [*WORDS, *_T5_EXTRA, *_T5_PUNCTUATION]:
        if word not in words:
            words.append(word)
    vocab = {word: i for i, word in enumerate(words)}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", vocab["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=_T5_MAX_LENGTH,
    )
