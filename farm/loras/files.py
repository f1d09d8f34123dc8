"""LoRA files: safetensors header checks, layout detection, targeted blocks and hashes.

Only `.safetensors` is ever opened, and its JSON header is checked (size bounds, dtypes,
shapes, offsets) before any tensor is read, so a corrupt, truncated or hostile file is
a clear error here rather than a crash inside a worker. Layout, rank and targeted blocks
come from the header's key names and shapes (families.py tells the base model from
them; describe.py describes a file for `farm lora inspect`).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from farm.errors import FarmError
from farm.limits import PICKLE_SUFFIXES

MAX_HEADER_BYTES = 100 * 1024 * 1024
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
}  # fmt: skip

# Adapter kinds farm does not load as plain LoRA: (pattern in a key, what the file is).
REFUSED_KINDS = (
    (r"\.hada_", "LoHa (hada_* keys)"),
    (r"\.lokr_", "LoKr (lokr_* keys)"),
    (r"dora_scale", "DoRA (dora_scale keys)"),
    (r"lora_magnitude_vector", "DoRA (lora_magnitude_vector keys)"),
    (r"\.oft_", "OFT/BOFT (oft_* keys)"),
    (r"\.lora_mid\.", "LoCon with a Tucker mid weight (lora_mid keys)"),
    (r"\.[wb]_norm$", "a norm-layer adapter (w_norm/b_norm keys)"),
    (r"\.diff(_b)?$", "a full-weight difference (diff keys)"),
)
# The keys of one adapted module, by layout: suffix → part. PEFT and the older diffusers
# spellings are loaded by the same diffusers path, so a file may mix them.
_DIFFUSERS_PARTS = {
    ".lora_A.weight": "down", ".lora_B.weight": "up", ".lora_B.bias": "bias",
    ".lora.down.weight": "down", ".lora.up.weight": "up",
    ".lora_linear_layer.down.weight": "down", ".lora_linear_layer.up.weight": "up",
    "_lora.down.weight": "down", "_lora.up.weight": "up", ".alpha": "alpha",
}  # fmt: skip
PARTS = {
    "kohya": {".lora_down.weight": "down", ".lora_up.weight": "up", ".alpha": "alpha"},
    "peft": _DIFFUSERS_PARTS,
    "diffusers": _DIFFUSERS_PARTS,
}
# Key prefix → the pipeline component it adapts.
COMPONENTS = (
    ("lora_unet_", "unet"), ("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2"),
    ("lora_te_", "text_encoder"), ("unet.", "unet"), ("text_encoder_2.", "text_encoder_2"),
    ("text_encoder.", "text_encoder"), ("lora_transformer_", "transformer"),
    ("transformer.", "transformer"), ("diffusion_model.", "transformer"),
    # ComfyUI's names for a Flux model's CLIP-L and T5.
    ("text_encoders.clip_l.transformer.", "text_encoder"),
    ("text_encoders.t5xxl.transformer.", "text_encoder_2"),
)  # fmt: skip
# UNet modules (underscored, relative to the UNet) that belong to a ResNet or a resampler:
# adapting them is what makes a kohya file "LoCon" rather than attention-only LoRA.
_RESNET = re.compile(
    r"_(resnets|downsamplers|upsamplers)_|_(in_layers|out_layers|skip_connection|emb_layers)(_|$)"
    r"|_\d+_op$|^conv_(in|out)$|^input_blocks_0_0$|^out_2$"
)


class LoraError(FarmError, ValueError):
    """A LoRA file that cannot be used. str() names the file and what to do."""


@dataclass(frozen=True)
class LoraFile:
    path: str
    sha256: str
    shorthash: str  # A1111's: sshs_model_hash when present, else the addnet hash; 12 hex
    layout: str  # "peft", "diffusers", "kohya"
    metadata: dict[str, str]
    locon: bool = False  # also adapts ResNet/resampler convolutions (kohya "LoCon")


@dataclass
class Module:
    """One adapted layer: the header entries of its parts."""

    component: str  # "unet", "text_encoder", "text_encoder_2" or "other"
    name: str  # relative to the component, "." and "_" both spelled "_"
    parts: dict[str, dict] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return self.parts["down"]["shape"][0]


def read_header(path: str | Path) -> tuple[dict, dict[str, str]]:
    """The tensor table and the `__metadata__` of a safetensors file, validated."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise LoraError(
            f"{path}: pickle-based checkpoints ({path.suffix}) can run code when loaded and "
            "are refused; convert the file to .safetensors"
        )
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise LoraError(f"{path}: not a safetensors file (too short)")
            (n,) = struct.unpack("<Q", head)
            if n < 2 or n > MAX_HEADER_BYTES or n > size - 8:
                raise LoraError(
                    f"{path}: not a safetensors file (header length {n} does not fit a "
                    f"{size}-byte file); is it a pickle or a truncated download?"
                )
            raw = f.read(n)
    except OSError as err:
        raise LoraError(f"{path}: cannot read ({err.strerror})") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise LoraError(f"{path}: not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise LoraError(f"{path}: not a safetensors file (header is not a mapping)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise LoraError(f"{path}: not a safetensors file (__metadata__ is not a mapping)")
    data_len = size - 8 - n
    for name, entry in header.items():
        _check_entry(path, name, entry, data_len)
    if not header:
        raise LoraError(f"{path}: holds no tensors")
    return header, {str(k): str(v) for k, v in metadata.items()}


def _check_entry(path: Path, name: str, entry: object, data_len: int) -> None:
    dtype = entry.get("dtype") if isinstance(entry, dict) else None
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        raise LoraError(f"{path}: tensor {name!r} has an unknown dtype")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise LoraError(f"{path}: tensor {name!r} has a malformed shape")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
    ):
        raise LoraError(f"{path}: tensor {name!r} has malformed data offsets")
    count = 1
    for d in shape:
        count *= d
    begin, end = offsets
    if not 0 <= begin <= end <= data_len or end - begin != count * DTYPE_BYTES[entry["dtype"]]:
        raise LoraError(f"{path}: tensor {name!r} lies outside the file; is it truncated?")


def detect_layout(keys: list[str], path: str | Path = "") -> str:
    """Which key layout a LoRA uses; unsupported layouts raise LoraError saying why."""
    for pattern, what in REFUSED_KINDS:
        if any(re.search(pattern, k) for k in keys):
            raise LoraError(
                f"{path}: not supported: {what}; farm loads plain low-rank LoRA only "
                "(lora_down/lora_up or lora_A/lora_B); pick or extract a LoRA version"
            )
    if any(
        k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_transformer_"))
        for k in keys
    ):
        layout = "kohya"
    elif any(".lora_A." in k or ".lora_B." in k for k in keys):
        layout = "peft"
    elif any(k.endswith(".lora_down.weight") for k in keys):
        layout = "kohya"  # kohya's parts under another prefix (ComfyUI's diffusion_model.)
    elif any(".lora.down." in k or ".lora_linear_layer." in k or "_lora.down." in k for k in keys):
        layout = "diffusers"
    else:
        raise LoraError(
            f"{path}: not supported: no LoRA weights found (no lora_A/lora_B or "
            "lora_down/lora_up keys); is it a full checkpoint or another adapter kind?"
        )
    for key in keys:
        if not key.endswith(tuple(PARTS[layout])):
            expected = ", ".join(sorted({s for s in PARTS[layout] if s.startswith(".")}))
            raise LoraError(
                f"{path}: not supported: key {key!r} is not part of a {layout}-layout LoRA "
                f"(expected keys ending in {expected})"
            )
    return layout


def modules(header: dict, layout: str, path: str | Path = "") -> list[Module]:
    """The adapted layers of a checked header, each with a down and an up weight."""
    found: dict[str, Module] = {}
    for key, entry in header.items():
        suffix = next(s for s in PARTS[layout] if key.endswith(s))
        base = key.removesuffix(suffix)
        if base not in found:
            found[base] = Module(*_component(base))
        found[base].parts[PARTS[layout][suffix]] = entry
    for base, module in found.items():
        missing = [p for p in ("down", "up") if p not in module.parts]
        if missing:
            raise LoraError(f"{path}: layer {base!r} has no {missing[0]} weight; is it incomplete?")
        if len(module.parts["down"]["shape"]) < 2 or len(module.parts["up"]["shape"]) < 2:
            raise LoraError(f"{path}: layer {base!r} has weights of malformed shapes")
    return list(found.values())


def _component(base: str) -> tuple[str, str]:
    for prefix, component in COMPONENTS:
        if base.startswith(prefix):
            return component, base.removeprefix(prefix).replace(".", "_")
    name = base.replace(".", "_")
    # Old diffusers files name UNet layers without a prefix.
    return ("unet" if a1111_block(name) else "other"), name


def is_locon(mods: list[Module]) -> bool:
    """Whether any ResNet/resampler layer, or any convolution wider than 1×1, is adapted."""
    for m in mods:
        shape = m.parts["down"]["shape"]
        if (m.component == "unet" and _RESNET.search(m.name)) or shape[2:] not in ([], [1, 1]):
            return True
    return False


# ---------------------------------------------------------------- base-model family


def inspect_lora(path: str | Path) -> LoraFile:
    """Check a LoRA file and compute its hashes (cached by path, size and mtime)."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as err:
        raise LoraError(f"{path}: cannot read ({err.strerror})") from None
    return _inspect(str(path.resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=256)
def _inspect(path: str, size: int, mtime_ns: int) -> LoraFile:
    header, metadata = read_header(path)
    layout = detect_layout(list(header), path)
    locon = is_locon(modules(header, layout, path))
    full, tail = hashlib.sha256(), hashlib.sha256()
    with open(path, "rb") as f:
        head = f.read(8)
        full.update(head)
        full.update(f.read(struct.unpack("<Q", head)[0]))
        # The addnet hash covers the tensor bytes only, so editing metadata keeps it.
        while chunk := f.read(1 << 20):
            full.update(chunk)
            tail.update(chunk)
    short = metadata.get("sshs_model_hash") or tail.hexdigest()
    return LoraFile(path, full.hexdigest(), short[:12], layout, metadata, locon)


def a1111_block(unet_name: str) -> str | None:
    """A1111's block id (IN00…IN11, M00, OUT00…OUT11) of an underscored UNet layer name."""
    # diffusers names: three slots per down block (layers, then the downsampler), as in
    # SD's input_blocks; up blocks have three layers, the upsampler in the last slot.
    if m := re.match(r"down_blocks_(\d+)_(attentions|resnets)_(\d+)_", unet_name):
        return f"IN{int(m[1]) * 3 + int(m[3]) + 1:02d}"
    if m := re.match(r"down_blocks_(\d+)_downsamplers_", unet_name):
        return f"IN{int(m[1]) * 3 + 3:02d}"
    if m := re.match(r"up_blocks_(\d+)_(attentions|resnets)_(\d+)_", unet_name):
        return f"OUT{int(m[1]) * 3 + int(m[3]):02d}"
    if m := re.match(r"up_blocks_(\d+)_upsamplers_", unet_name):
        return f"OUT{int(m[1]) * 3 + 2:02d}"
    if m := re.match(r"(input|output)_blocks_(\d+)_", unet_name):
        return f"{'IN' if m[1] == 'input' else 'OUT'}{int(m[2]):02d}"
    if unet_name.startswith(("mid_block_", "middle_block_")):
        return "M00"
    if unet_name == "conv_in":
        return "IN00"
    return None


def block_order(block: str) -> tuple[int, int]:
    group = {"IN": 0, "M": 1, "OUT": 2}[block.rstrip("0123456789")]
    return group, int(block.lstrip("INMOUT"))
