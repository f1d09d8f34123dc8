"""The tiny model's demo LoRAs: `neon` and `ink`, trained by farm/training/tiny.py.

Both act on the UNet's transformer layers and on the text encoder. They ship in two
layouts, as real LoRAs do: `neon` in kohya layout with alpha ≠ rank, `ink` in
diffusers/PEFT layout. Their twins, `neon-peft` and `ink-kohya`, are the same deltas in
the other layout, converted with numpy on first use. In a spec, `tiny:NAME` names one of
them; the files are written under the farm home, byte-for-byte the same everywhere.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from farm.home import farm_home
from farm.loras.layouts import kohya_name, kohya_to_peft, peft_to_kohya, write_lora
from farm.tiny.identity import TEXT_CONFIG, TINY_VERSION, UNET_CONFIG, shipped_weights


@dataclass(frozen=True)
class DemoLora:
    name: str  # the trained LoRA it holds: neon or ink
    layout: str  # "peft" or "kohya"
    shipped: bool  # the trained file itself, or its twin in the other layout
    rank: int
    alpha: float
    text_encoder: bool = True


DEMO_LORAS = {
    "neon": DemoLora("neon", "kohya", shipped=True, rank=8, alpha=4.0),
    "ink": DemoLora("ink", "peft", shipped=True, rank=4, alpha=4.0),
    "neon-peft": DemoLora("neon", "peft", shipped=False, rank=8, alpha=4.0),
    "ink-kohya": DemoLora("ink", "kohya", shipped=False, rank=4, alpha=4.0),
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
    from safetensors.numpy import load_file

    source = shipped_weights() / f"{demo.name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    if demo.shipped:
        tmp = path.with_name(f".{path.name}.tmp")
        shutil.copyfile(source, tmp)
        tmp.replace(path)
        return path
    tensors = load_file(str(source))
    if demo.layout == "kohya":  # a PEFT file's twin: alpha = rank keeps B as it is
        converted = peft_to_kohya(tensors, alpha=demo.rank)
    else:  # a kohya file's twin: alpha/rank folded into B
        modules = {kohya_name(m): m for m in lora_modules(text_encoder=demo.text_encoder)}
        converted = kohya_to_peft(tensors, {k: v for k, v in modules.items()
                                            if f"{k}.lora_down.weight" in tensors})  # fmt: skip
    alpha = float(demo.rank) if demo.layout == "kohya" else demo.alpha
    return write_lora(converted, path, name=f"{TINY_VERSION}/{demo.name}", rank=demo.rank,
                      alpha=alpha, layout=demo.layout)  # fmt: skip


def lora_modules(text_encoder: bool = True) -> list[str]:
    """Every module a demo LoRA may adapt: the UNet's transformer layers and, with
    `text_encoder`, the text encoder's attention and MLP projections."""
    modules = [f"unet.{m}" for m, _, _ in unet_attention_modules()]
    for block, _ in _transformer_blocks():
        tb = f"{block}.transformer_blocks.0"
        modules += [f"unet.{block}.proj_in", f"unet.{block}.proj_out",
                    f"unet.{tb}.ff.net.0.proj", f"unet.{tb}.ff.net.2"]  # fmt: skip
    if text_encoder:
        for layer in range(TEXT_CONFIG["num_hidden_layers"]):
            base = f"text_encoder.text_model.encoder.layers.{layer}"
            modules += [f"{base}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")]
            modules += [f"{base}.mlp.fc1", f"{base}.mlp.fc2"]
    return modules


def _transformer_blocks() -> list[tuple[str, int]]:
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
    return blocks


def unet_attention_modules() -> list[tuple[str, int, int]]:
    """(module, out_features, in_features) of every attention projection in the tiny UNet."""
    cross = UNET_CONFIG["cross_attention_dim"]
    modules = []
    for block, width in _transformer_blocks():
        tb = f"{block}.transformer_blocks.0"
        for attn, kv_in in (("attn1", width), ("attn2", cross)):
            modules += [
                (f"{tb}.{attn}.to_q", width, width),
                (f"{tb}.{attn}.to_k", width, kv_in),
                (f"{tb}.{attn}.to_v", width, kv_in),
                (f"{tb}.{attn}.to_out.0", width, width),
            ]
    return modules


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
