"""Z-Image (Tongyi-MAI's 6B single-stream DiT): Turbo, distilled to 8 steps without
guidance, and Base, the undistilled model with classifier-free guidance. Qwen3 is the
text encoder; text and image tokens run as one sequence through 30 layers, after two
noise-refiner layers (image tokens) and two context-refiner layers (text tokens).

Turbo and Base ship the same configs (pipeline, transformer, scheduler): a folder does
not say which it holds, so they are one family. Its render defaults are Turbo's; a Base
model wants `render: {steps: 50, guidance: 4}` (docs/families.md)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from farm.families.base import BlockForm, Defaults, Family, base_expander, edge_block
from farm.loras.flux_keys import Layers

LAYERS, REFINERS = 30, 2  # of the released models, which the block form counts
# farm's own vector form: BASE (the embedders and the final layer), the noise and
# context refiners, then the main layers.
IDS = ("BASE", *(f"NR{i:02d}" for i in range(REFINERS)), *(f"CR{i:02d}" for i in range(REFINERS)),
       *(f"L{i:02d}" for i in range(LAYERS)))  # fmt: skip
FORMS = (BlockForm("Z-Image's 35 values (BASE, NR00, NR01, CR00, CR01, L00 … L29)", IDS),)


def _preset(refiners: int, first: int, last: int) -> str:
    values = [1] + [refiners] * (2 * REFINERS) + [int(first <= i <= last) for i in range(LAYERS)]
    return ",".join(map(str, values))


PRESETS = {
    "ZIMAGE-ALL": _preset(1, 0, LAYERS - 1),
    "ZIMAGE-REFINERS": _preset(1, LAYERS, LAYERS),
    "ZIMAGE-FRONT10": _preset(0, 0, 9),
    "ZIMAGE-MID10": _preset(0, 10, 19),
    "ZIMAGE-TAIL10": _preset(0, 20, 29),
}
SECTIONS = ("layers", "noise_refiner", "context_refiner")
_PREFIX = {"layers": "L", "noise_refiner": "NR", "context_refiner": "CR"}
_SECTION = {v: k for k, v in _PREFIX.items()}

_BLOCK = re.compile(r"^(layers|noise_refiner|context_refiner)\.(\d+)\.")
_IN = ("all_x_embedder.", "cap_embedder.", "t_embedder.", "siglip_embedder.")
_OUT = ("all_final_layer.",)
# LoRA module names (underscored) only Z-Image's have: its blocks' attention (to_q … or
# the original fused qkv), SwiGLU feed-forward and modulation.
LORA_KEYS = re.compile(r"(^|_)(layers|noise_refiner|context_refiner)_\d+_"
                       r"(attention|feed_forward|adaLN_modulation)_")  # fmt: skip
LORA_WIDTH = re.compile(r"(layers|noise_refiner|context_refiner)_\d+_attention_(to_q|qkv)$")
_LORA_BLOCK = re.compile(r"(^|_)(layers|noise_refiner|context_refiner)_(\d+)_")
# Its input embedders take every sample's tokens end to end (no batch dimension).
UNBATCHED = re.compile(r"^(all_x_embedder|cap_embedder|siglip_embedder)\.")


def _matches(index: dict, config: dict) -> bool:
    return index.get("_class_name") == "ZImagePipeline"


def block_of(module: str, config: dict) -> str | None:
    """The block id of a transformer module (diffusers name): L00 …, NR00 …, CR00 …, IN
    or OUT."""
    if match := _BLOCK.match(module):
        return f"{_PREFIX[match[1]]}{int(match[2]):02d}"
    return edge_block(module, _IN, _OUT)


def section_of(block: str) -> tuple[str, int] | None:
    match = re.fullmatch(r"(L|NR|CR)(\d+)", block)
    return (_SECTION[match[1]], int(match[2])) if match else None


def lora_block(name: str) -> str | None:
    match = _LORA_BLOCK.search(name.replace(".", "_"))
    return f"{_PREFIX[match[2]]}{int(match[3]):02d}" if match else None


@dataclass(frozen=True)
class ZImageLayers(Layers):
    """A ZImageTransformer2DModel's linear layers, from its config, and the names of
    Z-Image's own code (which ComfyUI and kohya-style files use): each block's q, k and
    v fused as `attention.qkv`, its output projection `attention.out`, the patch embedder
    `x_embedder` and `final_layer`."""

    dim: int = 3840
    n_layers: int = LAYERS
    n_refiner_layers: int = REFINERS
    n_heads: int = 30
    n_kv_heads: int = 30
    in_channels: int = 16
    cap_feat_dim: int = 2560
    siglip_feat_dim: int | None = None
    all_patch_size: tuple[int, ...] = (2,)
    all_f_patch_size: tuple[int, ...] = (1,)

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> ZImageLayers:
        known = {k: config[k] for k in cls.__dataclass_fields__ if config.get(k) is not None}
        for key in ("all_patch_size", "all_f_patch_size"):
            if key in known:
                known[key] = tuple(known[key])  # a list in config.json
        return cls(**known)  # missing keys take diffusers' defaults

    @property
    def patches(self) -> list[str]:
        return [f"{p}-{f}" for p, f in zip(self.all_patch_size, self.all_f_patch_size,
                                             strict=True)]  # fmt: skip

    def _blocks(self) -> list[tuple[str, bool]]:
        """(block, whether it has modulation) for every block."""
        out = [(f"noise_refiner.{i}", True) for i in range(self.n_refiner_layers)]
        out += [(f"context_refiner.{i}", False) for i in range(self.n_refiner_layers)]
        if self.siglip_feat_dim is not None:
            out += [(f"siglip_refiner.{i}", False) for i in range(self.n_refiner_layers)]
        return out + [(f"layers.{i}", True) for i in range(self.n_layers)]

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        dim, adaln = self.dim, min(self.dim, 256)
        kv = self.n_kv_heads * (dim // self.n_heads)
        hidden = int(dim / 3 * 8)  # SwiGLU's width, as the model computes it
        shapes = {
            "t_embedder.mlp.0": (256, 1024),
            "t_embedder.mlp.2": (1024, adaln),
            "cap_embedder.1": (self.cap_feat_dim, dim),
        }
        if self.siglip_feat_dim is not None:
            shapes["siglip_embedder.1"] = (self.siglip_feat_dim, dim)
        for patch, (p, f) in zip(self.patches, zip(self.all_patch_size, self.all_f_patch_size,
                                                   strict=True), strict=True):  # fmt: skip
            shapes[f"all_x_embedder.{patch}"] = (f * p * p * self.in_channels, dim)
            shapes[f"all_final_layer.{patch}.linear"] = (dim, p * p * f * self.in_channels)
            shapes[f"all_final_layer.{patch}.adaLN_modulation.1"] = (adaln, dim)
        for block, modulation in self._blocks():
            shapes[f"{block}.attention.to_q"] = (dim, dim)
            shapes[f"{block}.attention.to_k"] = (dim, kv)
            shapes[f"{block}.attention.to_v"] = (dim, kv)
            shapes[f"{block}.attention.to_out.0"] = (dim, dim)
            shapes[f"{block}.feed_forward.w1"] = (dim, hidden)
            shapes[f"{block}.feed_forward.w3"] = (dim, hidden)
            shapes[f"{block}.feed_forward.w2"] = (hidden, dim)
            if modulation:
                shapes[f"{block}.adaLN_modulation.0"] = (adaln, 4 * dim)
        return shapes

    def native_table(self) -> dict[str, tuple[tuple[str, ...], bool]]:
        table: dict[str, tuple[tuple[str, ...], bool]] = {}
        for block, _ in self._blocks():
            attn = f"{block}.attention"
            table[f"{attn}.qkv"] = ((f"{attn}.to_q", f"{attn}.to_k", f"{attn}.to_v"), False)
            table[f"{attn}.out"] = ((f"{attn}.to_out.0",), False)
        patch = self.patches[0]  # the original model has one patch size
        table["x_embedder"] = ((f"all_x_embedder.{patch}",), False)
        table["final_layer.linear"] = ((f"all_final_layer.{patch}.linear",), False)
        table["final_layer.adaLN_modulation.1"] = (
            (f"all_final_layer.{patch}.adaLN_modulation.1",), False)  # fmt: skip
        return table


def _cfg(guidance: float) -> list[tuple[str, str]]:
    # diffusers' Z-Image guides as cond + g × (cond − uncond), A1111 (and ComfyUI, where
    # Turbo runs at CFG 1) as uncond + s × (cond − uncond): s = g + 1.
    return [("CFG scale", f"{guidance + 1:g}")]


FAMILY = Family(
    key="z-image",
    name="Z-Image",
    lora_family="Z-Image",
    pipelines=("ZImagePipeline",),
    denoiser="transformer",
    text_encoders=("text_encoder",),  # Qwen3
    lora_text_encoders=(),  # diffusers loads Z-Image LoRAs into the transformer only
    # Guidance above 0 runs the denoiser on [cond; uncond], twice the items; Turbo's 0
    # runs it once (the per-sample table learns either from the batch it sees).
    guidance="cfg",
    negative_above=0.0,  # the unconditional pass runs at any guidance above 0
    # Turbo's, from its model card: 9 steps (8 transformer calls), guidance 0, 1024².
    defaults=Defaults(steps=9, guidance=0.0, width=1024, height=1024, scheduler="flow_euler"),
    schedulers=("flow_euler",),
    block_forms=FORMS,
    block_presets=PRESETS,
    layouts=("peft", "kohya", "onetrainer", "comfyui"),
    tiny="z-image",
    matches=_matches,
    block_of=block_of,
    infotext=_cfg,
    expand=base_expander(IDS),
    gpu_dtype="bfloat16",
    block_sections=SECTIONS,
    section_of=section_of,
    lora_keys=LORA_KEYS,
    lora_width=LORA_WIDTH,
    lora_block=lora_block,
    lora_layers=ZImageLayers.from_config,
    unbatched=UNBATCHED,
    tiny_module="farm.render.tiny_z_image",
)
