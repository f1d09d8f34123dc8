"""LoRA files: safetensors header checks, layout detection and hashes.

Only `.safetensors` is ever opened, and its JSON header is checked (size bounds, dtypes,
shapes, offsets) before any tensor is read, so a corrupt, truncated or hostile file is
a clear error here rather than a crash inside a worker.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl"}
MAX_HEADER_BYTES = 100 * 1024 * 1024
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
}  # fmt: skip


class LoraError(ValueError):
    """A LoRA file that cannot be used. str() names the file and what to do."""


@dataclass(frozen=True)
class LoraFile:
    path: str
    sha256: str
    shorthash: str  # A1111's: sshs_model_hash when present, else the addnet hash; 12 hex
    layout: str  # "peft", "diffusers", "kohya"
    metadata: dict[str, str]


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
    if any(".hada_" in k for k in keys):
        raise LoraError(f"{path}: LoHa (hada_*) LoRAs are not supported: only low-rank LoRA")
    if any(".lokr_" in k for k in keys):
        raise LoraError(f"{path}: LoKr (lokr_*) LoRAs are not supported: only low-rank LoRA")
    if any(k.endswith("dora_scale") or "lora_magnitude_vector" in k for k in keys):
        raise LoraError(f"{path}: DoRA LoRAs are not supported: only low-rank LoRA")
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in keys):
        return "kohya"
    if any(".lora_A." in k or ".lora_B." in k for k in keys):
        return "peft"
    if any(".lora.down." in k or ".lora_linear_layer." in k for k in keys):
        return "diffusers"
    raise LoraError(f"{path}: no LoRA weights found (no lora_A/lora_B or lora_down/lora_up keys)")


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
    return LoraFile(path, full.hexdigest(), short[:12], layout, metadata)
