"""Flux.1 (dev and schnell, and fine-tunes of either) by Black Forest Labs: a rectified-flow
transformer of double (text and image streams) and single blocks, CLIP-L and T5-XXL."""

from __future__ import annotations

from farm.families import dit
from farm.families.base import Defaults, Family


def _dev(index: dict, config: dict) -> bool:
    return index.get("_class_name") == "FluxPipeline" and config.get("guidance_embeds") is True


def _schnell(index: dict, config: dict) -> bool:
    # diffusers builds a Flux transformer without guidance embeddings unless told.
    return index.get("_class_name") == "FluxPipeline" and not config.get("guidance_embeds")


def _distilled_cfg(guidance: float) -> list[tuple[str, str]]:
    # Forge writes dev's embedded guidance beside a CFG scale of 1 (no negative pass).
    return [("CFG scale", "1"), ("Distilled CFG Scale", f"{guidance:g}")]


_COMMON = dict(
    lora_family="Flux.1",
    pipelines=("FluxPipeline",),
    denoiser="transformer",
    text_encoders=("text_encoder", "text_encoder_2"),
    lora_text_encoders=("text_encoder",),  # CLIP-L; diffusers drops T5 keys
    schedulers=dit.SCHEDULERS,
    block_forms=dit.FORMS,
    block_presets=dit.PRESETS,
    layouts=dit.LAYOUTS,
    block_of=dit.block_of,
    expand=dit.expand,
    block_sections=dit.SECTIONS,
    section_of=dit.section_of,
    lora_keys=dit.LORA_KEYS,
    lora_width=dit.LORA_WIDTH,
    lora_block=dit.lora_block,
    lora_layers=dit.lora_layers,
    t5="text_encoder_2",
    gpu_dtype="bfloat16",
)
DEV = Family(
    key="flux-dev", name="Flux.1-dev", guidance="embedded", tiny="flux-dev", matches=_dev,
    defaults=Defaults(steps=28, guidance=3.5, width=1024, height=1024, scheduler="flow_euler"),
    infotext=_distilled_cfg, **_COMMON,
)  # fmt: skip
SCHNELL = Family(
    key="flux-schnell", name="Flux.1-schnell", guidance="none", tiny="flux-schnell",
    matches=_schnell,
    defaults=Defaults(steps=4, guidance=0.0, width=1024, height=1024, scheduler="flow_euler"),
    infotext=lambda guidance: [("CFG scale", "1")], **_COMMON,
)  # fmt: skip
