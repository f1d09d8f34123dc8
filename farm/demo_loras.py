"""Demo LoRAs for the tiny model, made deterministically with numpy (no torch needed).

Each demo LoRA targets every attention projection of the tiny UNet and, optionally, of
its text encoder. It can be written in the diffusers/PEFT key layout or in the kohya
(`lora_unet_…`) layout; both layouts of one LoRA hold the same deltas. In a spec, a
LoRA path `tiny:NAME` names one of them, written on first use under the farm home.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from farm.home import farm_home
from farm.tiny_identity import TEXT_CONFIG, TINY_VERSION, UNET_CONFIG


@dataclass(frozen=True)
class DemoLora:
    name: str
    layout: str  # "peft" or "kohya"
    rank: int = 4
    strength: float = 1.0  # scales B so the effect is clearly visible at weight 1
    text_encoder: bool = False


DEMO_LORAS = {
    "neon": DemoLora("neon", "peft", strength=0.9),
    "ink": DemoLora("ink", "kohya", strength=0.9, text_encoder=True),
    "ink-peft": DemoLora("ink", "peft", strength=0.9, text_encoder=True),
    "neon-kohya": DemoLora("neon", "kohya", strength=0.9),
}
PREFIX = "tiny:"


def demo_lora_path(ref: str) -> Path:
    """Resolve `tiny:NAME` to a file under the farm home, writing it if missing."""
    name = ref.removeprefix(PREFIX)
    if name not in DEMO_LORAS:
        known = ", ".join(sorted(DEMO_LORAS))
        raise KeyError(f"unknown demo LoRA {ref!r}; known: {known}")
    path = farm_home() / "loras" / TINY_VERSION / f"{name}.safetensors"
    if not path.exists():
        write_demo_lora(DEMO_LORAS[name], path)
    return path


def write_demo_lora(demo: DemoLora, path: Path) -> Path:
    """Write one demo LoRA as .safetensors, atomically."""
    from safetensors.numpy import save

    tensors = _tensors(demo)
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(demo.rank),
        "ss_network_alpha": str(demo.rank),
        "ss_output_name": demo.name,
        "farm_demo": f"{TINY_VERSION}/{demo.name}",
    }
    if demo.layout == "peft":
        meta = {"farm_demo": meta["farm_demo"]}
    data = _stable_header(save(tensors, metadata=meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".lora-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


def _stable_header(data: bytes) -> bytes:
    # safetensors writes __metadata__ in hash-map order; sort it so that every farm home
    # writes the same bytes, and so the same sha256 and item_ids.
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # tensor data stays 8-byte aligned
    return len(raw).to_bytes(8, "little") + raw + data[8 + n :]


def _tensors(demo: DemoLora) -> dict[str, np.ndarray]:
    seed = int.from_bytes(hashlib.sha256(f"{TINY_VERSION}/{demo.name}".encode()).digest()[:8])
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    targets = [("unet", m, o, i) for m, o, i in unet_attention_modules()]
    if demo.text_encoder:
        targets += [("text_encoder", m, o, i) for m, o, i in text_attention_modules()]
    for component, module, out_dim, in_dim in targets:
        down = rng.standard_normal((demo.rank, in_dim)).astype(np.float32) / np.sqrt(in_dim)
        up = rng.standard_normal((out_dim, demo.rank)).astype(np.float32)
        up *= demo.strength / np.sqrt(demo.rank)
        if demo.layout == "peft":
            out[f"{component}.{module}.lora_A.weight"] = down
            out[f"{component}.{module}.lora_B.weight"] = up
        else:
            prefix = "lora_unet_" if component == "unet" else "lora_te_"
            key = prefix + module.replace(".", "_")
            out[f"{key}.lora_down.weight"] = down
            out[f"{key}.lora_up.weight"] = up
            # alpha == rank makes kohya's alpha/rank scale exactly 1, as in the PEFT layout.
            out[f"{key}.alpha"] = np.array(float(demo.rank), dtype=np.float32)
    return out


def unet_attention_modules() -> list[tuple[str, int, int]]:
    """(module, out_features, in_features) of every attention projection in the tiny UNet."""
    channels = UNET_CONFIG["block_out_channels"]
    per_block = UNET_CONFIG["layers_per_block"]
    blocks: list[tuple[str, int]] = []
    for i, kind in enumerate(UNET_CONFIG["down_block_types"]):
        if kind.startswith("CrossAttn"):
            blocks += [(f"down_blocks.{i}.attentions.{j}", channels[i]) for j in range(per_block)]
    blocks.append(("mid_block.attentions.0", channels[-1]))
    for i, kind in enumerate(UNET_CONFIG["up_block_types"]):
        if kind.startswith("CrossAttn"):
            width = list(reversed(channels))[i]
            blocks += [(f"up_blocks.{i}.attentions.{j}", width) for j in range(per_block + 1)]
    cross = UNET_CONFIG["cross_attention_dim"]
    modules = []
    for block, width in blocks:
        tb = f"{block}.transformer_blocks.0"
        for attn, kv_in in (("attn1", width), ("attn2", cross)):
            modules += [
                (f"{tb}.{attn}.to_q", width, width),
                (f"{tb}.{attn}.to_k", width, kv_in),
                (f"{tb}.{attn}.to_v", width, kv_in),
                (f"{tb}.{attn}.to_out.0", width, width),
            ]
    return modules


def text_attention_modules() -> list[tuple[str, int, int]]:
    """(module, out_features, in_features) of the tiny text encoder's attention projections."""
    hidden = TEXT_CONFIG["hidden_size"]
    return [
        (f"text_model.encoder.layers.{layer}.self_attn.{proj}", hidden, hidden)
        for layer in range(TEXT_CONFIG["num_hidden_layers"])
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj")
    ]


def unet_resnet_convs() -> list[tuple[str, int, int, int]]:
    """(module, out_channels, in_channels, kernel) of the tiny UNet's down and mid ResNet convs.

    These are the layers a kohya LoCon adapts beyond attention; tests build LoCon files
    against the tiny model from them.
    """
    channels = UNET_CONFIG["block_out_channels"]
    convs = []
    width = channels[0]  # conv_in's output
    for i, out in enumerate(channels):
        for j in range(UNET_CONFIG["layers_per_block"]):
            block = f"down_blocks.{i}.resnets.{j}"
            convs += [(f"{block}.conv1", out, width, 3), (f"{block}.conv2", out, out, 3)]
            if width != out:
                convs.append((f"{block}.conv_shortcut", out, width, 1))
            width = out
    for j in range(2):  # the cross-attention mid block has two ResNets
        block = f"mid_block.resnets.{j}"
        convs += [(f"{block}.conv1", width, width, 3), (f"{block}.conv2", width, width, 3)]
    return convs
