"""What the UNet families (SD1.x, SD2.x, SDXL) share: A1111's block ids, the samplers
that fit an epsilon/v-prediction UNet, and how their pipelines are told apart."""

from __future__ import annotations

import re

SCHEDULERS = ("euler", "euler_a", "heun", "lms", "ddim", "pndm", "unipc", "dpmpp_2m",
              "dpmpp_2m_karras")  # fmt: skip
LAYOUTS = ("peft", "diffusers", "kohya")
_MODULE = re.compile(r"(down_blocks|up_blocks)\.(\d+)\.(attentions|resnets|downsamplers|upsamplers)"
                     r"\.(\d+)|(mid_block)")  # fmt: skip


def a1111_block(module: str, config: dict) -> str | None:
    """A1111's block id (IN00…, M00, OUT00…) of a UNet module (diffusers name), from the
    UNet's layers per block: A1111's input_blocks count conv_in as 0, then each down
    block's layers and its downsampler; output_blocks count each up block's layers (one
    more than down) with the upsampler inside the last one."""
    where = unet_section(module)
    if where is None:
        return "IN00" if module.startswith("conv_in") else None
    section, i, j = where
    if section == "mid":
        return "M00"
    per = config.get("layers_per_block", 2)
    per = int(per[0] if isinstance(per, list | tuple) else per)
    stride = per + 1
    if section == "down":
        return f"IN{i * stride + (per if j < 0 else j) + 1:02d}"
    return f"OUT{i * stride + (per if j < 0 else j):02d}"


def unet_section(module: str) -> tuple[str, int, int] | None:
    """(down | up, block, layer) of a UNet module, (mid, 0, 0), or None; a block's
    down/upsampler is layer -1."""
    match = _MODULE.search(module)
    if match is None:
        return None
    if match[5]:
        return "mid", 0, 0
    section = "down" if match[1] == "down_blocks" else "up"
    i, j = int(match[2]), int(match[4])
    if match[3] in ("downsamplers", "upsamplers"):
        j = -1
    return section, i, j


def is_sd_pipeline(index: dict) -> bool:
    cls = str(index.get("_class_name", ""))
    return cls.startswith("StableDiffusion") and not cls.startswith("StableDiffusion3")


def has_second_text_encoder(index: dict) -> bool:
    te2 = index.get("text_encoder_2")
    return isinstance(te2, list) and bool(te2) and te2[0] is not None


def context(config: dict) -> int | None:
    value = config.get("cross_attention_dim")
    if isinstance(value, list) and len(set(value)) == 1:
        value = value[0]  # some configs spell it per block
    return value if isinstance(value, int) else None
