"""Which tensors of a LoRA file adapt a layer of a given model, and which it drops.

A LoRA whose keys only partly match its model silently changes strength: diffusers drops
keys it has no layer for (T5 keys, `text_projection`, norm and bias differences, layers
of another architecture), logging only at INFO level. farm counts both sides before
rendering, from the file's header and the model's own module names (its weight files'
headers, or a transformer's config), records them with every image and refuses a LoRA
of which nothing would apply.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from farm.families import Model
from farm.loras.files import LoraError, detect_layout, modules, read_header

MAX_NAMES = 100  # dropped layer names kept per LoRA; the counts are always whole
# Keys diffusers never loads into a model, whatever its family (it logs and goes on).
_NEVER = re.compile(r"(^|_)text_projection$")
_SGM = re.compile(r"^(input_blocks|output_blocks)_(\d+)_(\d+)_(.+)$|^middle_block_(\d+)_(.+)$")
_RESNET_PARTS = {"in_layers_2": "conv1", "out_layers_3": "conv2", "emb_layers_1": "time_emb_proj",
                 "skip_connection": "conv_shortcut"}  # fmt: skip


@dataclass(frozen=True)
class Placement:
    applied: int  # tensors of the file that adapt a layer of the model
    dropped: int  # tensors left out: no such layer, or a part diffusers does not load
    dropped_names: tuple[str, ...]  # their layers, as the file names them (the first 100)

    def as_dict(self) -> dict:
        return {"applied": self.applied, "dropped": self.dropped,
                "dropped_names": list(self.dropped_names)}  # fmt: skip


def place(lora_path: str | Path, model: Model, root: Path | None) -> Placement:
    """Count the LoRA's tensors that apply to the model (a local folder at `root`, or
    None for `tiny`'s shipped weights; a transformer needs only its config)."""
    header, meta = read_header(lora_path)
    if model.family.denoiser == "transformer":
        return _place_transformer(str(lora_path), header, meta, model)
    layout = detect_layout(list(header), lora_path)
    found = modules(header, layout, lora_path)
    names = model_modules(str(root) if root else "", model.family.key)
    per_block = model.config.get("layers_per_block", 2)
    per_block = int(per_block[0] if isinstance(per_block, list | tuple) else per_block)
    applied = dropped = 0
    lost: list[str] = []
    for m in found:
        allowed = m.component == "unet" or m.component in model.family.lora_text_encoders
        name = _diffusers_name(m.name, per_block) if m.component == "unet" else _te_name(m.name)
        count = len(m.parts)
        if allowed and not _NEVER.search(m.name) and name in names.get(m.component, ()):
            applied += count
        else:
            dropped += count
            lost.append(f"{m.component}.{m.name}")
    return Placement(applied, dropped, tuple(lost[:MAX_NAMES]))


def _place_transformer(path: str, header: dict, meta: dict, model: Model) -> Placement:
    from farm.loras.flux_keys import to_diffusers

    for m in modules(header, detect_layout(list(header), path), path):
        down, up = m.parts["down"]["shape"], m.parts["up"]["shape"]
        if len(down) == 2 and len(up) == 2 and down[0] != up[1]:
            raise LoraError(f"{path}: layer {m.name!r} has lora_down {down} and lora_up {up} of "
                            "different ranks; is the file damaged?")  # fmt: skip
    tensors = _header_arrays(header)
    try:
        converted = to_diffusers(tensors, model.family.lora_layers(model.config))
    except ValueError as err:
        raise LoraError(f"{path}: does not fit the model's layers ({err})") from None
    applied_groups = list(converted.applied)
    dropped_groups = list(converted.dropped)
    if "text_encoder" not in model.family.lora_text_encoders:
        te = {g for g in applied_groups if _is_text_encoder(g)}
        applied_groups = [g for g in applied_groups if g not in te]
        dropped_groups += sorted(te)
    count = _group_counts(list(header))
    applied = sum(count.get(g, 0) for g in applied_groups)
    dropped = sum(count.get(g, 1) for g in dropped_groups)
    return Placement(applied, dropped, tuple(dropped_groups[:MAX_NAMES]))


def _is_text_encoder(group: str) -> bool:
    return group.startswith(("lora_te", "text_encoder", "text_encoders."))


def _group_counts(keys: list[str]) -> dict[str, int]:
    from farm.loras.flux_keys import group_of

    counts: dict[str, int] = {}
    for key in keys:
        group = group_of(key)
        counts[group] = counts.get(group, 0) + 1
    return counts


_DOWN = (".lora_down.weight", ".lora_A.weight")
_UP = (".lora_up.weight", ".lora_B.weight")


def _header_arrays(header: dict):
    """Stand-ins for the file's tensors, enough to route every key and check its widths:
    each LoRA pair at rank 1 (a real file's ranks would cost its whole size in memory)."""
    import numpy as np

    out = {}
    for key, entry in header.items():
        shape = tuple(entry["shape"])
        if key.endswith(_DOWN) and len(shape) == 2:
            shape = (1, shape[1])
        elif key.endswith(_UP) and len(shape) == 2:
            shape = (shape[0], 1)
        elif np.prod(shape, dtype=np.int64) > 1 << 16:
            shape = (1,) * len(shape)  # not a pair: never converted, only routed
        out[key] = np.ones(shape, np.float32)
    return out


def _te_name(name: str) -> str:
    # transformers 5 builds CLIP without the `text_model` level that files name.
    return name.removeprefix("text_model_")


def _diffusers_name(name: str, per_block: int) -> str:
    """A UNet module in diffusers' names (underscored): SGM/LDM names (input_blocks_4_1_…,
    as sd-scripts writes SDXL LoRAs) mapped to down_blocks/mid_block/up_blocks."""
    match = _SGM.match(name)
    if match is None:
        return name
    if match[5] is not None:
        which, i, j, rest = "middle_block", 0, int(match[5]), match[6]
    else:
        which, i, j, rest = match[1], int(match[2]), int(match[3]), match[4]
    stride = per_block + 1
    if which == "middle_block":
        part = {0: "resnets_0", 1: "attentions_0", 2: "resnets_1"}.get(j, f"x{j}")
        return f"mid_block_{part}_{_resnet(rest) if 'resnets' in part else rest}"
    if which == "input_blocks":
        if i == 0:
            return "conv_in"
        block, layer = divmod(i - 1, stride)
        if layer == per_block:
            return f"down_blocks_{block}_downsamplers_0_conv"
        kind = "resnets" if j == 0 else "attentions"
        return f"down_blocks_{block}_{kind}_{layer}_{_resnet(rest) if j == 0 else rest}"
    block, layer = divmod(i, stride)
    if j == 0:
        return f"up_blocks_{block}_resnets_{layer}_{_resnet(rest)}"
    if rest.startswith("conv"):
        return f"up_blocks_{block}_upsamplers_0_conv"
    return f"up_blocks_{block}_attentions_{layer}_{rest}"


def _resnet(rest: str) -> str:
    return _RESNET_PARTS.get(rest, rest)


@lru_cache(maxsize=8)
def model_modules(root: str, family: str) -> dict[str, frozenset[str]]:
    """A UNet model's module names per component (underscored, text encoders without
    `text_model_`), from its weight files' headers: nothing is loaded."""
    from farm.tiny.identity import shipped_weights

    out: dict[str, frozenset[str]] = {}
    for component in ("unet", "text_encoder", "text_encoder_2"):
        if root:
            files = sorted((Path(root) / component).glob("*.safetensors"))
        else:
            files = [shipped_weights() / f"{component}.safetensors"]
        keys: set[str] = set()
        for file in files:
            if file.exists():
                keys |= set(_weight_keys(file))
        names = {k.rsplit(".", 1)[0].replace(".", "_") for k in keys}
        out[component] = frozenset(_te_name(n) if component != "unet" else n for n in names)
    return out


def _weight_keys(file: Path) -> list[str]:
    with file.open("rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    return [k for k in header if k != "__metadata__"]
