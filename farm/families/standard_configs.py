"""The released models' diffusers configs, for loading a single-file checkpoint offline.

diffusers' `from_single_file` needs a folder of the pipeline's configs beside the file;
left to itself it fetches them from the Hugging Face hub. farm writes them instead, from
the tables below: Stable Diffusion 1.5's, 2.1's (768, v-prediction) and SDXL base 1.0's,
as their diffusers repositories hold them. Their tokenizers need CLIP's BPE vocabulary
and merges, which cannot be made up: they are read from `bpe_simple_vocab_16e6.txt.gz`,
the file OpenAI's CLIP ships, which farm carries in farm/families/clip/ (with its MIT
license) as `open-clip-torch` does: that package would bring torchvision and timm along.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from farm.home import build_folder, farm_home

# Bump when a table below changes: it names the folders written.
VERSION = "v1"
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
CLIP_MERGES = 49152 - 256 - 2  # the merges CLIP uses (its SimpleTokenizer's slice)

_CLIP_L = {
    "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0,
    "dropout": 0.0, "eos_token_id": 2, "hidden_act": "quick_gelu", "hidden_size": 768,
    "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 3072,
    "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "model_type": "clip_text_model",
    "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 1,
    "projection_dim": 768, "vocab_size": 49408,
}  # fmt: skip
_OPEN_CLIP_H = _CLIP_L | {"hidden_act": "gelu", "hidden_size": 1024, "intermediate_size": 4096,
                          "num_attention_heads": 16, "num_hidden_layers": 23,
                          "projection_dim": 512}  # fmt: skip
_OPEN_CLIP_BIGG = _CLIP_L | {"architectures": ["CLIPTextModelWithProjection"],
                             "hidden_act": "gelu", "hidden_size": 1280,
                             "intermediate_size": 5120, "num_attention_heads": 20,
                             "num_hidden_layers": 32, "projection_dim": 1280}  # fmt: skip
_SD_VAE = {
    "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4,
    "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3, "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "scaling_factor": 0.18215,
}  # fmt: skip
_UNET = {
    "_class_name": "UNet2DConditionModel", "act_fn": "silu", "center_input_sample": False,
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
    "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
    "out_channels": 4,
}  # fmt: skip
_SD_UNET = _UNET | {
    "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                       "CrossAttnUpBlock2D"],
}  # fmt: skip
_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
          "num_train_timesteps": 1000, "steps_offset": 1, "clip_sample": False,
          "set_alpha_to_one": False, "skip_prk_steps": True, "trained_betas": None}  # fmt: skip
_TOKENIZER = {"add_prefix_space": False, "bos_token": "<|startoftext|>", "do_lower_case": True,
              "eos_token": "<|endoftext|>", "errors": "replace", "model_max_length": 77,
              "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer",
              "unk_token": "<|endoftext|>"}  # fmt: skip
# OpenCLIP pads with "!" (id 0), not the end token: SD2.x's and SDXL's second tokenizer.
_OPEN_CLIP_TOKENIZER = _TOKENIZER | {"pad_token": "!"}
_NO_SAFETY = {"safety_checker": [None, None], "feature_extractor": [None, None],
              "requires_safety_checker": False}  # fmt: skip

# Family key → (what it is called, {component folder: config file → contents}).
STANDARD: dict[str, tuple[str, dict[str, dict[str, dict]]]] = {
    "sd1": ("Stable Diffusion 1.5", {
        "": {"model_index.json": {
            "_class_name": "StableDiffusionPipeline", "scheduler": ["diffusers", "PNDMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
            **_NO_SAFETY}},
        "unet": {"config.json": _SD_UNET | {"attention_head_dim": 8, "cross_attention_dim": 768,
                                            "sample_size": 64}},
        "vae": {"config.json": _SD_VAE},
        "text_encoder": {"config.json": _CLIP_L},
        "tokenizer": {"tokenizer_config.json": _TOKENIZER},
        "scheduler": {"scheduler_config.json": {"_class_name": "PNDMScheduler", **_BETAS}},
    }),
    "sd2": ("Stable Diffusion 2.1 (768, v-prediction)", {
        "": {"model_index.json": {
            "_class_name": "StableDiffusionPipeline", "scheduler": ["diffusers", "DDIMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
            **_NO_SAFETY}},
        "unet": {"config.json": _SD_UNET | {"attention_head_dim": [5, 10, 20, 20],
                                            "cross_attention_dim": 1024, "sample_size": 96,
                                            "use_linear_projection": True,
                                            "upcast_attention": True}},
        "vae": {"config.json": _SD_VAE | {"sample_size": 768}},
        "text_encoder": {"config.json": _OPEN_CLIP_H},
        "tokenizer": {"tokenizer_config.json": _OPEN_CLIP_TOKENIZER},
        "scheduler": {"scheduler_config.json": {"_class_name": "DDIMScheduler", **_BETAS,
                                                "prediction_type": "v_prediction"}},
    }),
    "sdxl": ("SDXL base 1.0", {
        "": {"model_index.json": {
            "_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": True,
            "scheduler": ["diffusers", "EulerDiscreteScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}},
        "unet": {"config.json": _UNET | {
            "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
            "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
            "block_out_channels": [320, 640, 1280], "cross_attention_dim": 2048,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "projection_class_embeddings_input_dim": 2816, "sample_size": 128,
            "transformer_layers_per_block": [1, 2, 10],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "use_linear_projection": True}},
        "vae": {"config.json": _SD_VAE | {"sample_size": 1024, "scaling_factor": 0.13025,
                                          "force_upcast": True}},
        "text_encoder": {"config.json": _CLIP_L},
        "text_encoder_2": {"config.json": _OPEN_CLIP_BIGG},
        "tokenizer": {"tokenizer_config.json": _TOKENIZER},
        "tokenizer_2": {"tokenizer_config.json": _OPEN_CLIP_TOKENIZER},
        "scheduler": {"scheduler_config.json": {
            "_class_name": "EulerDiscreteScheduler", **_BETAS, "interpolation_type": "linear",
            "prediction_type": "epsilon", "timestep_spacing": "leading",
            "use_karras_sigmas": False}},
    }),
}  # fmt: skip


def standard_name(family_key: str) -> str:
    return STANDARD[family_key][0]


def standard_config(family_key: str, component: str) -> dict:
    """One component's config (`model_index` for the pipeline's)."""
    files = STANDARD[family_key][1]
    if component == "model_index":
        return dict(files[""]["model_index.json"])
    return dict(files[component]["config.json"])


def clip_bpe() -> Path:
    """CLIP's BPE vocabulary, as farm carries it."""
    return Path(__file__).parent / "clip" / BPE_FILE


def standard_dir(family_key: str, bpe: Path | None = None) -> Path:
    """A folder of the family's standard configs and tokenizers, written once per farm
    home, its vocabulary from `bpe` (default: CLIP's, as farm carries it)."""

    def write(tmp: Path) -> None:
        vocab, merges = clip_vocabulary(bpe or clip_bpe())
        for sub, files in STANDARD[family_key][1].items():
            (tmp / sub).mkdir(parents=True, exist_ok=True)
            for name, content in files.items():
                (tmp / sub / name).write_text(json.dumps(content, indent=2, sort_keys=True))
            if sub.startswith("tokenizer"):
                (tmp / sub / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
                (tmp / sub / "merges.txt").write_text(
                    "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
                )

    return build_folder(farm_home() / "models" / f"configs-{family_key}-{VERSION}", write)


def clip_vocabulary(bpe: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary and merges from its BPE file, in the order CLIP numbers them:
    the 256 byte symbols, the same with `</w>`, one token per merge, then the start and
    end tokens (49408 in all, as in openai/clip-vit-large-patch14's vocab.json)."""
    lines = gzip.decompress(bpe.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : CLIP_MERGES + 1]]
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}, merges  # type: ignore[return-value]


def byte_symbols() -> list[str]:
    """GPT-2/CLIP's byte alphabet, in CLIP's order: every byte as a printable character."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))  # fmt: skip
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return list(dict(zip(bs, map(chr, cs), strict=True)).values())
