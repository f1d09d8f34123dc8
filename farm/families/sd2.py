"""SD2.x (Stable Diffusion 2.0/2.1, 512 and 768 v-prediction): the SD1.x tree with an
OpenCLIP text encoder of width 1024 and linear attention projections."""

from __future__ import annotations

from farm.families import sd1, unet
from farm.families.base import Defaults, Family

CONTEXT = 1024


def _matches(index: dict, config: dict) -> bool:
    if not unet.is_sd_pipeline(index) or unet.has_second_text_encoder(index):
        return False
    # SD1.x projects attention in and out with 1×1 convolutions, SD2.x with linears.
    return unet.context(config) == CONTEXT or config.get("use_linear_projection") is True


FAMILY = Family(
    key="sd2",
    name="SD2.x",
    lora_family="SD2.x",
    pipelines=("StableDiffusionPipeline",),
    denoiser="unet",
    text_encoders=("text_encoder",),
    lora_text_encoders=("text_encoder",),
    guidance="cfg",
    defaults=Defaults(steps=25, guidance=7.5, width=768, height=768, scheduler="euler"),
    schedulers=unet.SCHEDULERS,
    block_forms=sd1.FORMS,  # LoRA Block Weight spells SD2.x as SD1.x ("17(1.X/2.X)")
    block_presets=sd1.PRESETS,
    layouts=unet.LAYOUTS,
    tiny="sd2",
    matches=_matches,
    block_of=unet.a1111_block,
)
