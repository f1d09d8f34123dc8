"""Random LoRAs for the tiny pipelines of every family, written in each layout people
share them in: what the family tests sweep."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

# Layers a test LoRA adapts: attention and MLP projections of the denoiser (both streams
# and the single blocks of a transformer, with their modulation; Qwen-Image's per-stream
# MLPs and modulations; Z-Image's blocks' attention, feed-forward and modulation), and
# the text encoders' attention.
_DENOISER = re.compile(
    r"(attn[12]?\.(to_[qkv]|to_out\.0|add_[qkv]_proj|to_add_out)|ff(_context)?\.net\.(0\.proj|2)"
    r"|proj_mlp|single_transformer_blocks\.\d+\.proj_out|norm1(_context)?\.linear"
    r"|single_transformer_blocks\.\d+\.norm\.linear|(img|txt)_mlp\.net\.(0\.proj|2)"
    r"|(img|txt)_mod\.1|attention\.(to_[qkv]|to_out\.0)|feed_forward\.w[123]"
    r"|refiner\.\d+\.adaLN_modulation\.0|layers\.\d+\.adaLN_modulation\.0)\.weight$"
)
_TEXT = re.compile(r"self_attn\.(q|k|v|out)_proj\.weight$")


def weight_shapes(root: Path, component: str) -> dict[str, list[int]]:
    """Every weight of a saved component (its safetensors header): name → shape."""
    shapes: dict[str, list[int]] = {}
    for file in sorted((root / component).glob("*.safetensors")):
        with file.open("rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        shapes |= {k: v["shape"] for k, v in header.items() if k != "__metadata__"}
    return shapes


def random_lora(root: Path, text_encoders: tuple[str, ...] = (), rank: int = 4, seed: int = 0,
                scale: float = 0.3) -> dict[str, np.ndarray]:  # fmt: skip
    """A PEFT-layout LoRA (diffusers names, alpha = rank) for the model saved at `root`."""
    rng = np.random.default_rng(seed)
    index = json.loads((root / "model_index.json").read_text())
    denoiser = "unet" if "unet" in index else "transformer"
    out: dict[str, np.ndarray] = {}
    targets = [(denoiser, k) for k in sorted(weight_shapes(root, denoiser)) if _DENOISER.search(k)]
    for te in text_encoders:
        targets += [(te, k) for k in sorted(weight_shapes(root, te)) if _TEXT.search(k)]
    for component, key in targets:
        out_features, in_features = weight_shapes(root, component)[key]
        module = key.removesuffix(".weight")
        if component.startswith("text_encoder"):
            module = "text_model." + module.removeprefix("text_model.")
        a = rng.normal(0, scale, (rank, in_features)).astype(np.float32)
        b = rng.normal(0, scale, (out_features, rank)).astype(np.float32)
        out[f"{component}.{module}.lora_A.weight"] = a
        out[f"{component}.{module}.lora_B.weight"] = b
    return out


def save(tensors: dict[str, np.ndarray], path: Path) -> Path:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(dict(sorted(tensors.items())), str(path))
    return path
