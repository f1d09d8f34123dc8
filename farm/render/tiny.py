"""The embedded `tiny` model: an SD-1.5-architecture pipeline with weights farm ships.

It has the same module tree as Stable Diffusion 1.5 (CLIP text encoder, cross-attention
UNet, KL VAE, Euler scheduler) at a size that renders a 128×128 image in about half a
second on one CPU core. It was trained by farm/training/tiny.py to draw one coloured
shape on a plain background (docs/tiny-model.md); the fp16 weights ship in the package
and are written out as a plain diffusers folder in fp32.
"""

from __future__ import annotations

from pathlib import Path

from farm.families.standard_configs import byte_symbols
from farm.home import build_folder
from farm.tiny.identity import (
    SCHEDULER_CONFIG,
    TEXT_CONFIG,
    UNET_CONFIG,
    VAE_CONFIG,
    WORDS,
    default_tiny_dir,
    shipped_weights,
)

CLIP_PREFIX = "text_model."


def ensure_tiny(path: Path | None = None) -> Path:
    """Return a directory holding the tiny pipeline, building it once if it is missing."""

    def save(tmp: Path) -> None:
        build_tiny_pipeline(shipped_weights()).save_pretrained(tmp, safe_serialization=True)

    return build_folder(Path(path) if path else default_tiny_dir(), save)


def build_tiny_pipeline(weights: Path | None = None, seed: int = 0):
    """Build the tiny StableDiffusionPipeline in memory, fp32.

    With `weights` (a folder of unet, vae and text_encoder .safetensors, such as
    farm.tiny.identity.shipped_weights()) the modules take those weights; without, they start
    from random weights drawn from `seed`, as training does.
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**VAE_CONFIG)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer.get_vocab()),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **TEXT_CONFIG,
        )
    )
    if weights is not None:
        load_weights(weights, unet=unet, vae=vae, text_encoder=text_encoder)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def load_weights(folder: Path, **modules) -> None:
    """Load `{name}.safetensors` from `folder` into each module, as fp32; every key must
    match (a mismatch means the weights are not this version's)."""
    from safetensors.torch import load_file

    for name, module in modules.items():
        state = load_file(str(Path(folder) / f"{name}.safetensors"))
        state = {_module_key(k, module): v.float() for k, v in state.items()}
        module.load_state_dict(state, strict=True)


def _module_key(key: str, module) -> str:
    # The text encoder ships with SD 1.5's key names (`text_model.encoder…`); transformers
    # 5 builds CLIPTextModel without the `text_model` level.
    if key.startswith(CLIP_PREFIX) and not hasattr(module, "text_model"):
        return key.removeprefix(CLIP_PREFIX)
    return key


def canonical_key(key: str, module) -> str:
    """A module's state-dict key as SD 1.5's files spell it."""
    from transformers import CLIPTextModel

    if isinstance(module, CLIPTextModel) and not hasattr(module, "text_model"):
        return CLIP_PREFIX + key
    return key


def build_tokenizer():
    """A CLIP BPE tokenizer over bytes plus a few whole words, made without any download."""
    from transformers import CLIPTokenizer

    vocab, merges = _vocab_and_merges()
    # The default model_max_length (about 1e30) breaks padding to the CLIP context.
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    symbols = byte_symbols()
    vocab_list = symbols + [s + "</w>" for s in symbols]
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        # Add merges until BPE (lowest rank first) turns the word into one token; a new
        # merge ranks last, so it applies only where the existing merges stop.
        while len(parts := _bpe(word, merges)) > 1:
            merges.append((parts[0], parts[1]))
            if parts[0] + parts[1] not in vocab_list:
                vocab_list.append(parts[0] + parts[1])
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab_list)}, merges


def _bpe(word: str, merges: list[tuple[str, str]]) -> list[str]:
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    ranks = {pair: i for i, pair in enumerate(merges)}
    while len(parts) > 1:
        rank, i = min(
            (ranks.get((a, b), len(ranks)), i)
            for i, (a, b) in enumerate(zip(parts, parts[1:], strict=False))
        )
        if rank == len(ranks):
            break
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts
