"""LoRA key layouts, converted with numpy: diffusers/PEFT and kohya.

PEFT layout: `unet.{module}.lora_A.weight` / `lora_B.weight`, with the alpha/rank scale
already in B. kohya layout: `lora_unet_{module_with_underscores}.lora_down.weight` /
`lora_up.weight` / `alpha`, with the scale applied at load time. A kohya file whose
alpha/rank is a power of two converts to PEFT with exactly the same deltas.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

COMPONENTS = {"unet": "lora_unet_", "text_encoder": "lora_te_", "text_encoder_2": "lora_te2_"}


def peft_to_kohya(tensors: dict[str, np.ndarray], alpha: float) -> dict[str, np.ndarray]:
    """PEFT keys to kohya keys, with `alpha` stored per module (B is not rescaled)."""
    out: dict[str, np.ndarray] = {}
    for key, value in tensors.items():
        component, rest = key.split(".", 1)
        module, kind = rest.rsplit(".lora_", 1)
        name = COMPONENTS[component] + module.replace(".", "_")
        out[f"{name}.lora_down.weight" if kind.startswith("A") else f"{name}.lora_up.weight"] = (
            value
        )
        out[f"{name}.alpha"] = np.array(alpha, dtype=value.dtype)
    return out


def kohya_to_peft(tensors: dict[str, np.ndarray],
                  modules: dict[str, str]) -> dict[str, np.ndarray]:  # fmt: skip
    """kohya keys to PEFT keys, folding alpha/rank into B.

    `modules` maps each kohya name (`lora_unet_down_blocks_0_…`) to its dotted module
    path (`unet.down_blocks.0.…`): underscores alone cannot say where a dot was.
    """
    out: dict[str, np.ndarray] = {}
    for name, module in modules.items():
        down = tensors[f"{name}.lora_down.weight"]
        up = tensors[f"{name}.lora_up.weight"]
        alpha = float(tensors.get(f"{name}.alpha", down.shape[0]))
        # In float32: an fp16 value halved can fall below fp16's normal range and lose a
        # bit, while every fp16 value times a power of two is exact in float32.
        scale = np.float32(alpha / down.shape[0])
        out[f"{module}.lora_A.weight"] = down.astype(np.float32)
        out[f"{module}.lora_B.weight"] = up.astype(np.float32) * scale
    return out


def kohya_name(module: str) -> str:
    """`unet.down_blocks.0.proj_in` → `lora_unet_down_blocks_0_proj_in`."""
    component, rest = module.split(".", 1)
    return COMPONENTS[component] + rest.replace(".", "_")


def peft_modules(tensors: dict[str, np.ndarray]) -> list[str]:
    """The dotted module paths of a PEFT-layout LoRA, sorted."""
    return sorted({k.rsplit(".lora_", 1)[0] for k in tensors if ".lora_A." in k})


def write_lora(tensors: dict[str, np.ndarray], path: Path, name: str, rank: int,
               alpha: float, layout: str, extra: dict | None = None) -> Path:  # fmt: skip
    """Write a LoRA as .safetensors, atomically and byte-for-byte reproducibly.

    kohya files carry kohya's ss_* metadata; PEFT files only farm's own `farm_demo`.
    """
    from safetensors.numpy import save

    meta = {"farm_demo": name, **(extra or {})}
    if layout == "kohya":
        meta |= {
            "ss_network_module": "networks.lora",
            "ss_network_dim": str(rank),
            "ss_network_alpha": f"{alpha:g}",
            "ss_output_name": name.rsplit("/", 1)[-1],
        }
    data = stable_header(save(dict(sorted(tensors.items())), metadata=meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".lora-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


def stable_header(data: bytes) -> bytes:
    """safetensors bytes with `__metadata__` sorted: the same tensors always give the same
    bytes, and so the same sha256 and item_ids."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # tensor data stays 8-byte aligned
    return len(raw).to_bytes(8, "little") + raw + data[8 + n :]
