"""Chroma (lodestones' Flux.1-schnell derivative): Flux's blocks without per-block
modulation (one small network makes it for all), T5 only, and true classifier-free
guidance with a negative prompt."""

from __future__ import annotations

from farm.families import dit
from farm.families.base import Defaults, Family


def _matches(index: dict, config: dict) -> bool:
    return index.get("_class_name") == "ChromaPipeline"


FAMILY = Family(
    key="chroma",
    name="Chroma",
    lora_family="Flux.1",  # Chroma LoRAs and Flux.1 LoRAs share their names
    pipelines=("ChromaPipeline",),
    denoiser="transformer",
    text_encoders=("text_encoder",),  # T5
    lora_text_encoders=(),
    guidance="true_cfg",
    defaults=Defaults(steps=26, guidance=4.0, width=1024, height=1024, scheduler="flow_euler"),
    schedulers=dit.SCHEDULERS,
    block_forms=dit.FORMS,
    block_presets=dit.PRESETS,
    layouts=dit.LAYOUTS,
    tiny="chroma",
    matches=_matches,
    block_of=dit.block_of,
    expand=dit.expand,
    block_sections=dit.SECTIONS,
    section_of=dit.section_of,
    lora_keys=dit.LORA_KEYS,
    lora_width=dit.LORA_WIDTH,
    lora_block=dit.lora_block,
    lora_layers=dit.lora_layers,
    t5="text_encoder",
    gpu_dtype="bfloat16",
)
