"""What the Flux.1-shaped transformer families (Flux.1-dev, Flux.1-schnell, Chroma)
share: their block ids for per-block strength, their sampler, and their LoRA layouts."""

from __future__ import annotations

import re

from farm.families.base import BlockForm, edge_block
from farm.loras.flux_keys import Widths

SCHEDULERS = ("flow_euler",)  # the flow-matching Euler with the model's dynamic shift
# diffusers/PEFT (ai-toolkit, diffusers' trainers), kohya sd-scripts, OneTrainer and
# ComfyUI's `diffusion_model.` names: farm converts all of them (farm/loras/flux_keys.py).
LAYOUTS = ("peft", "kohya", "onetrainer", "comfyui")
DOUBLE, SINGLE = 19, 38  # blocks of the released Flux.1 models, which block forms count

# LoRA Block Weight's Flux form (hako-mikan/sd-webui-lora-block-weight): CLIP, T5, the
# input layers, 19 double blocks, 38 single blocks, the final layer: 61 values.
LBW_FLUX = ("CLIP", "T5", "IN", *(f"D{i:02d}" for i in range(DOUBLE)),
            *(f"S{i:02d}" for i in range(SINGLE)), "OUT")  # fmt: skip
# ComfyUI Inspire Pack's Lora Block Weight loader: BASE (every layer outside the
# blocks), then the double blocks, then the single blocks. A shorter vector carries its
# last value on to the blocks after it, as that loader does.
INSPIRE_FLUX = ("BASE", *(f"D{i:02d}" for i in range(DOUBLE)),
                *(f"S{i:02d}" for i in range(SINGLE)))  # fmt: skip
FORMS = (
    BlockForm("LoRA Block Weight's Flux form, 61 values (CLIP, T5, IN, D00 … D18, S00 … S37, "
              "OUT)", LBW_FLUX),
    BlockForm("Inspire Pack's Flux form, up to 58 values (BASE, D00 … D18, S00 … S37)",
              INSPIRE_FLUX, carries=True),
)  # fmt: skip


def _inspire(values: list[int]) -> str:
    return ",".join(str(v) for v in values)


_Z19, _Z38 = [0] * DOUBLE, [0] * SINGLE
PRESETS = {
    "FLUXALL": ",".join(["1"] * len(LBW_FLUX)),  # LoRA Block Weight's
    # Inspire Pack's, as its preset file writes them (20-value ones carry their last).
    "FLUX-ALL": _inspire([1] * len(INSPIRE_FLUX)),
    "FLUX-DBL-ALL": _inspire([1] * (1 + DOUBLE)),
    "FLUX-DBL-FRONT7": _inspire([1] + [1] * 7 + [0] * 12),
    "FLUX-DBL-MID6": _inspire([1] + [0] * 7 + [1] * 6 + [0] * 6),
    "FLUX-DBL-TAIL6": _inspire([1] + [0] * 13 + [1] * 6),
    "FLUX-SINGLE-ALL": _inspire([1, *_Z19] + [1] * SINGLE),
    "FLUX-SINGLE-1to10": _inspire([1, *_Z19] + [1] * 10 + [0] * 28),
    "FLUX-SINGLE-11to20": _inspire([1, *_Z19] + [0] * 10 + [1] * 10 + [0] * 18),
    "FLUX-SINGLE-21to30": _inspire([1, *_Z19] + [0] * 20 + [1] * 10 + [0] * 8),
    "FLUX-SINGLE-31to37": _inspire([1, *_Z19] + [0] * 30 + [1] * 8),
}

_DOUBLE = re.compile(r"^transformer_blocks\.(\d+)\.")
_SINGLE = re.compile(r"^single_transformer_blocks\.(\d+)\.")
_IN = ("x_embedder", "context_embedder", "time_text_embed.", "distilled_guidance_layer.")
_OUT = ("norm_out.", "proj_out")


def block_of(module: str, config: dict) -> str | None:
    """The block id of a transformer module (diffusers name): D00…, S00…, IN or OUT."""
    if match := _DOUBLE.match(module):
        return f"D{int(match[1]):02d}"
    if match := _SINGLE.match(module):
        return f"S{int(match[1]):02d}"
    return edge_block(module, _IN, _OUT)


def expand(values: tuple[float, ...]) -> dict[str, float] | None:
    """A Flux block vector as {block id: multiplier} (text encoders as te and t5), or None
    when its length is neither form's."""
    if len(values) == len(LBW_FLUX):
        table = dict(zip(LBW_FLUX, values, strict=True))
        table["te"], table["t5"] = table.pop("CLIP"), table.pop("T5")
        return table
    if 1 <= len(values) <= len(INSPIRE_FLUX):
        padded = list(values) + [values[-1]] * (len(INSPIRE_FLUX) - len(values))
        table = dict(zip(INSPIRE_FLUX, padded, strict=True))
        base = table.pop("BASE")
        return {"te": base, "t5": base, "IN": base, "OUT": base, **table}
    return None


SECTIONS = ("double", "single")


def section_of(block: str) -> tuple[str, int] | None:
    """A block id's part of the dict form: D03 → (double, 3), S07 → (single, 7)."""
    if block[:1] in ("D", "S") and block[1:].isdigit():
        return ("double" if block[0] == "D" else "single"), int(block[1:])
    return None


# LoRA module names (underscored) only Flux.1 and Chroma have: BFL's block names (kohya,
# ComfyUI) or diffusers' single blocks and double blocks' context stream (a UNet's
# transformer blocks have an `ff` and a `norm1` too).
LORA_KEYS = re.compile(r"(^|_)(double_blocks|single_blocks)_\d+_|single_transformer_blocks_\d+_"
                       r"|transformer_blocks_\d+_(ff_context|norm1_context)")  # fmt: skip
# Layers whose in-features are the transformer's hidden width.
LORA_WIDTH = re.compile(r"(double_blocks_\d+_img_attn_qkv|single_blocks_\d+_linear1"
                        r"|transformer_blocks_\d+_attn_to_q)$")  # fmt: skip
_LORA_DOUBLE = re.compile(r"(^|_)(double_blocks|transformer_blocks)_(\d+)_")
_LORA_SINGLE = re.compile(r"(^|_)(single_blocks|single_transformer_blocks)_(\d+)_")


def lora_block(name: str) -> str | None:
    """A Flux-shaped LoRA layer's block (any layout's name): D00 … (double), S00 …
    (single), the ids LoRA Block Weight's Flux form uses; None outside the blocks."""
    flat = name.replace(".", "_")
    if match := _LORA_SINGLE.search(flat):
        return f"S{int(match[3]):02d}"
    if match := _LORA_DOUBLE.search(flat):
        return f"D{int(match[3]):02d}"
    return None


def lora_layers(config: dict) -> Widths:
    return Widths.from_config(config)


def is_flux_transformer(config: dict) -> bool:
    return "num_single_layers" in config and "joint_attention_dim" in config
