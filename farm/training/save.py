"""The files training writes, as farm ships them: fp16 safetensors keyed as diffusers
names the modules, and LoRAs in their shipped layout, each with its recipe."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from farm.tiny.identity import TINY_VERSION
from farm.training.recipe import LoraRecipe, Recipe

# ---------------------------------------------------------------- the shipped files


def round_fp16(*models) -> None:
    """Round weights to what ships (fp16), so later stages train against the shipped model."""
    import torch

    with torch.no_grad():
        for model in models:
            for p in model.parameters():
                p.copy_(p.half().float())


def save_model(pipe, out: Path, recipe: Recipe,
               names: tuple[str, ...] = ("unet", "vae", "text_encoder")) -> None:  # fmt: skip
    """The pipeline's modules as fp16 safetensors, keyed as diffusers names them."""
    save_modules({name: getattr(pipe, name) for name in names}, out, recipe)


def save_modules(modules: dict, out: Path, recipe: Recipe) -> None:
    from safetensors.torch import save_file

    from farm.render.tiny import canonical_key

    meta = {"farm_recipe": json.dumps(asdict(recipe), sort_keys=True)}
    for name, module in modules.items():
        state = {canonical_key(k, module): v.detach().half().contiguous()
                 for k, v in module.state_dict().items()}  # fmt: skip
        save_file(dict(sorted(state.items())), str(out / f"{name}.safetensors"), metadata=meta)


def save_lora(tensors: dict, lora: LoraRecipe, path: Path, name: str,
              extra: dict | None = None) -> None:  # fmt: skip
    """Write a trained LoRA in its shipped layout, fp16 (`extra`: more metadata)."""
    from farm.loras.layouts import peft_to_kohya, write_lora

    arrays = {k: v.half().numpy() for k, v in tensors.items()}
    if lora.layout == "kohya":
        arrays = peft_to_kohya(arrays, alpha=lora.alpha)
    write_lora(
        arrays,
        path,
        name=f"{TINY_VERSION}/{name}",
        rank=lora.rank,
        alpha=lora.alpha,
        layout=lora.layout,
        extra=extra,
    )
