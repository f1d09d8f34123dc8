"""Qwen-Image (the Qwen team's 20B MMDiT, and its fine-tunes): 60 dual-stream blocks
(an image and a text stream meeting in joint attention), Qwen2.5-VL as its text encoder,
and true classifier-free guidance: the negative prompt is a second transformer call."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from farm.families.base import BlockForm, Defaults, Family, base_expander, edge_block
from farm.loras.flux_keys import Layers

BLOCKS = 60  # of the released model, which the block form counts
# farm's own vector form (no tool has one for Qwen-Image): BASE (every layer outside the
# blocks: the input embedders, the timestep embedding, the final layer), then each block.
IDS = ("BASE", *(f"B{i:02d}" for i in range(BLOCKS)))
FORMS = (BlockForm("Qwen-Image's 61 values (BASE, B00 … B59)", IDS),)


def _blocks(first: int, last: int) -> str:
    return ",".join(["1"] + ["1" if first <= i <= last else "0" for i in range(BLOCKS)])


PRESETS = {
    "QWEN-ALL": _blocks(0, BLOCKS - 1),
    "QWEN-FRONT20": _blocks(0, 19),
    "QWEN-MID20": _blocks(20, 39),
    "QWEN-TAIL20": _blocks(40, 59),
}
SECTIONS = ("blocks",)

_BLOCK = re.compile(r"^transformer_blocks\.(\d+)\.")
_IN = ("img_in", "txt_in", "time_text_embed.")
_OUT = ("norm_out.", "proj_out")
# LoRA module names (underscored) only Qwen-Image's have: its per-stream MLPs and
# modulations, or a block past Flux.1's 19 double blocks (their attention is named alike).
LORA_KEYS = re.compile(r"transformer_blocks_\d+_(img|txt)_(mlp|mod)_"
                       r"|transformer_blocks_(19|[2-9]\d|\d{3,})_")  # fmt: skip
LORA_WIDTH = re.compile(r"transformer_blocks_\d+_(attn_to_q|img_mlp_net_0_proj)$")
_LORA_BLOCK = re.compile(r"(^|_)transformer_blocks_(\d+)_")


def _matches(index: dict, config: dict) -> bool:
    return index.get("_class_name") == "QwenImagePipeline"


def block_of(module: str, config: dict) -> str | None:
    """The block id of a transformer module (diffusers name): B00 …, IN or OUT."""
    if match := _BLOCK.match(module):
        return f"B{int(match[1]):02d}"
    return edge_block(module, _IN, _OUT)


def section_of(block: str) -> tuple[str, int] | None:
    return ("blocks", int(block[1:])) if block[:1] == "B" and block[1:].isdigit() else None


def lora_block(name: str) -> str | None:
    match = _LORA_BLOCK.search(name.replace(".", "_"))
    return f"B{int(match[2]):02d}" if match else None


@dataclass(frozen=True)
class QwenLayers(Layers):
    """A QwenImageTransformer2DModel's linear layers, from its config. Qwen-Image's own
    code names its modules as diffusers does (nothing is fused), so every layout's names
    are diffusers' (kohya's underscored, ComfyUI's under `diffusion_model.`)."""

    num_layers: int = BLOCKS
    num_attention_heads: int = 24
    attention_head_dim: int = 128
    in_channels: int = 64
    out_channels: int = 16
    patch_size: int = 2
    joint_attention_dim: int = 3584

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> QwenLayers:
        known = {k: config[k] for k in cls.__dataclass_fields__ if config.get(k) is not None}
        return cls(**known)  # missing keys take diffusers' defaults

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        inner = self.num_attention_heads * self.attention_head_dim
        shapes = {
            "img_in": (self.in_channels, inner),
            "txt_in": (self.joint_attention_dim, inner),
            "time_text_embed.timestep_embedder.linear_1": (256, inner),
            "time_text_embed.timestep_embedder.linear_2": (inner, inner),
            "norm_out.linear": (inner, 2 * inner),
            "proj_out": (inner, self.patch_size**2 * self.out_channels),
        }
        for i in range(self.num_layers):
            p = f"transformer_blocks.{i}"
            for name in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj",
                         "add_v_proj", "to_add_out"):  # fmt: skip
                shapes[f"{p}.attn.{name}"] = (inner, inner)
            for side in ("img", "txt"):
                shapes[f"{p}.{side}_mod.1"] = (inner, 6 * inner)
                shapes[f"{p}.{side}_mlp.net.0.proj"] = (inner, 4 * inner)
                shapes[f"{p}.{side}_mlp.net.2"] = (4 * inner, inner)
        return shapes


FAMILY = Family(
    key="qwen-image",
    name="Qwen-Image",
    lora_family="Qwen-Image",
    pipelines=("QwenImagePipeline",),
    denoiser="transformer",
    text_encoders=("text_encoder",),  # Qwen2.5-VL
    lora_text_encoders=(),  # diffusers loads Qwen-Image LoRAs into the transformer only
    guidance="true_cfg",
    # The model card's: 50 steps, true_cfg_scale 4, 1328² for 1:1.
    defaults=Defaults(steps=50, guidance=4.0, width=1328, height=1328, scheduler="flow_euler"),
    schedulers=("flow_euler",),
    block_forms=FORMS,
    block_presets=PRESETS,
    layouts=("peft", "kohya", "onetrainer", "comfyui"),
    tiny="qwen-image",
    matches=_matches,
    block_of=block_of,  # its true_cfg_scale is A1111's CFG scale: the infotext's own field
    expand=base_expander(IDS),
    gpu_dtype="bfloat16",
    block_sections=SECTIONS,
    section_of=section_of,
    lora_keys=LORA_KEYS,
    lora_width=LORA_WIDTH,
    lora_block=lora_block,
    lora_layers=QwenLayers.from_config,
    # The pipeline skips its negative pass without a negative prompt; the model card
    # passes " " for none.
    guidance_arg="true_cfg_scale",
    blank_negative=" ",
    tiny_module="farm.render.tiny_qwen_image",
)
