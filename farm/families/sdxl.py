"""SDXL (base 1.0 and its fine-tunes: Pony, Illustrious, …): two text encoders (CLIP-L
and OpenCLIP-bigG), a UNet of three levels, and size/crop conditioning."""

from __future__ import annotations

from farm.families import unet
from farm.families.base import BlockForm, Defaults, Family

CONTEXT = 2048
# LoRA Block Weight's SDXL ids: 12 values for attention LoRAs (the blocks that hold
# attention), 20 for LyCORIS/LoCon. BASE covers both text encoders.
LBW12 = ("BASE", "IN04", "IN05", "IN07", "IN08", "M00", "OUT00", "OUT01", "OUT02", "OUT03",
         "OUT04", "OUT05")  # fmt: skip
LBW20 = ("BASE", *(f"IN{i:02d}" for i in range(9)), "M00", *(f"OUT{i:02d}" for i in range(9)))
FORMS = (BlockForm("LoRA Block Weight's 12 values (BASE, IN04 … OUT05)", LBW12),
         BlockForm("LoRA Block Weight's 20 values (BASE, IN00 … OUT08)", LBW20))  # fmt: skip
# The SDXL presets of ComfyUI Inspire Pack's Lora Block Weight loader.
PRESETS = {
    "SDXL-NONE": "0,0,0,0,0,0,0,0,0,0,0,0",
    "SDXL-ALL": "1,1,1,1,1,1,1,1,1,1,1,1",
    "SDXL-INALL": "1,1,1,1,1,0,0,0,0,0,0,0",
    "SDXL-MIDALL": "1,0,0,0,0,1,0,0,0,0,0,0",
    "SDXL-OUTALL": "1,0,0,0,0,0,1,1,1,1,1,1",
}


def _matches(index: dict, config: dict) -> bool:
    return unet.is_sd_pipeline(index) and (
        unet.has_second_text_encoder(index)
        or str(index.get("_class_name", "")).startswith("StableDiffusionXL")
    )


FAMILY = Family(
    key="sdxl",
    name="SDXL",
    lora_family="SDXL",
    pipelines=("StableDiffusionXLPipeline",),
    denoiser="unet",
    text_encoders=("text_encoder", "text_encoder_2"),
    lora_text_encoders=("text_encoder", "text_encoder_2"),
    guidance="cfg",
    defaults=Defaults(steps=30, guidance=7.0, width=1024, height=1024, scheduler="euler"),
    schedulers=unet.SCHEDULERS,
    block_forms=FORMS,
    block_presets=PRESETS,
    layouts=unet.LAYOUTS,
    tiny="sdxl",
    matches=_matches,
    block_of=unet.a1111_block,
)
