"""SD1.x (Stable Diffusion 1.4/1.5 and their fine-tunes, and farm's own `tiny`)."""

from __future__ import annotations

from farm.families import unet
from farm.families.base import BlockForm, Defaults, Family

# LoRA Block Weight's (hako-mikan/sd-webui-lora-block-weight) ids: BASE is the text
# encoder; 17 values for attention LoRAs, 26 for LyCORIS/LoCon.
LBW17 = ("BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00", "OUT03", "OUT04",
         "OUT05", "OUT06", "OUT07", "OUT08", "OUT09", "OUT10", "OUT11")  # fmt: skip
LBW26 = ("BASE", *(f"IN{i:02d}" for i in range(12)), "M00", *(f"OUT{i:02d}" for i in range(12)))
FORMS = (BlockForm("LoRA Block Weight, 17 values (BASE, IN01 … OUT11)", LBW17),
         BlockForm("LoRA Block Weight, 26 values (BASE, IN00 … OUT11)", LBW26))  # fmt: skip
# LoRA Block Weight's built-in presets, value for value.
PRESETS = {
    "NONE": "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "ALL": "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1",
    "INS": "1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "IND": "1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "INALL": "1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "MIDD": "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0",
    "OUTD": "1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0",
    "OUTS": "1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1",
    "OUTALL": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1",
    "ALL0.5": "0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5",
}
CONTEXT = 768


def _matches(index: dict, config: dict) -> bool:
    # SD2.x and SDXL claim theirs first; any other StableDiffusion UNet is SD1.x-shaped.
    return unet.is_sd_pipeline(index) and not unet.has_second_text_encoder(index)


FAMILY = Family(
    key="sd1",
    name="SD1.x",
    lora_family="SD1.x",
    pipelines=("StableDiffusionPipeline",),
    denoiser="unet",
    text_encoders=("text_encoder",),
    lora_text_encoders=("text_encoder",),
    guidance="cfg",
    defaults=Defaults(steps=25, guidance=7.5, width=512, height=512, scheduler="euler"),
    schedulers=unet.SCHEDULERS,
    block_forms=FORMS,
    block_presets=PRESETS,
    layouts=unet.LAYOUTS,
    tiny="sd1",
    matches=_matches,
    block_of=unet.a1111_block,
)
