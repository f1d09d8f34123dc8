"""The embedded `tiny` model: an SD-1.5-architecture pipeline built in code from fixed seeds.

It has the same module tree as Stable Diffusion 1.5 (CLIP text encoder, cross-attention
UNet, KL VAE, Euler scheduler) at a size that renders in well under a second on a CPU, so
every code path that a real model takes is exercised without downloading weights.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from farm.tiny_identity import (
    SCHEDULER_CONFIG,
    TEXT_CONFIG,
    UNET_CONFIG,
    VAE_CONFIG,
    WORDS,
    default_tiny_dir,
)


def ensure_tiny(path: Path | None = None) -> Path:
    """Return a directory holding the tiny pipeline, building it once if it is missing."""
    path = Path(path) if path else default_tiny_dir()
    if (path / "model_index.json").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so concurrent builders never see half a model.
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=path.parent))
    try:
        build_tiny_pipeline().save_pretrained(tmp, safe_serialization=True)
        try:
            os.rename(tmp, path)
        except OSError:
            if not (path / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def build_tiny_pipeline():
    """Build the tiny StableDiffusionPipeline in memory from fixed seeds."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    torch.manual_seed(1)
    vae = AutoencoderKL(**VAE_CONFIG)
    torch.manual_seed(2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer.get_vocab()),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **TEXT_CONFIG,
        )
    )
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


def build_tokenizer():
    """A CLIP BPE tokenizer over bytes plus a few whole words, made without any download."""
    from transformers import CLIPTokenizer

    vocab, merges = _vocab_and_merges()
    # The default model_max_length (about 1e30) breaks padding to the CLIP context.
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    symbols = list(_bytes_to_unicode().values())
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


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP byte-level alphabet: every byte maps to a printable character.
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))
