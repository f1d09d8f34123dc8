"""`farm lora inspect`: everything a LoRA file says about itself, from its header (and
its kohya `.alpha` scalars)."""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from farm.loras.families import LoraKeys, Recognised, family_of, transformer_family
from farm.loras.files import (
    DTYPE_BYTES,
    LoraFile,
    a1111_block,
    block_order,
    inspect_lora,
    modules,
    read_header,
)


@dataclass(frozen=True)
class LoraReport:
    """What `farm lora inspect` shows."""

    file: LoraFile
    modules: dict[str, int]  # component → adapted layers
    # A1111 UNet block ids in UNet order, or a transformer family's own (Flux.1's D00 …
    # S00 …); "other" for the rest
    blocks: tuple[str, ...]
    rank: tuple[int, int]  # min, max over layers
    # min, max of stored `.alpha` (or of the metadata's lora_alpha); None: none stored
    alpha: tuple[float, float] | None
    alpha_missing: bool  # some layers store no alpha (they behave as alpha = rank)
    family: Recognised
    dtypes: tuple[str, ...]

    @property
    def layout(self) -> str:
        return f"{self.file.layout} LoCon" if self.file.locon else self.file.layout

    def as_dict(self) -> dict:
        f = self.file
        return {
            "file": f.path, "format": "safetensors", "layout": f.layout,
            "kind": "LoCon" if f.locon else "LoRA", "modules": sum(self.modules.values()),
            "modules_by_component": self.modules,
            "text_encoders": [c for c in self.modules if c.startswith("text_encoder")],
            "blocks": list(self.blocks), "rank": {"min": self.rank[0], "max": self.rank[1]},
            "alpha": None if self.alpha is None else {"min": self.alpha[0], "max": self.alpha[1]},
            "family": str(self.family), "family_name": self.family.name,
            "context": self.family.context, "dtypes": list(self.dtypes),
            "sha256": f.sha256, "shorthash": f.shorthash,
            "metadata": {k: v for k, v in sorted(f.metadata.items()) if k.startswith("ss_")},
        }  # fmt: skip

    def rows(self, width: int = 120) -> list[tuple[str, str]]:
        """(key, value) lines for people; long metadata values are cut to `width`."""
        counts = ", ".join(f"{c} {n}" for c, n in self.modules.items())
        encoders = [c for c in self.modules if c.startswith("text_encoder")]
        rows = [
            ("file", self.file.path),
            ("format", "safetensors"),
            ("layout", self.layout),
            ("modules", f"{sum(self.modules.values())} ({counts})"),
            ("text encoders", ", ".join(encoders) or "none"),
            ("blocks", " ".join(self.blocks) or "none"),
            ("rank", _span(self.rank)),
            ("alpha", self._alpha_text()),
            ("family", str(self.family)),
            ("dtype", ", ".join(self.dtypes)),
            ("sha256", self.file.sha256),
            ("shorthash", self.file.shorthash),
        ]
        for key, value in sorted(self.file.metadata.items()):
            if key.startswith("ss_"):
                cut = value if len(value) <= width else f"{value[:width]}… ({len(value)} chars)"
                rows.append((key, cut))
        return rows

    def _alpha_text(self) -> str:
        if self.alpha is None:
            return "rank (not stored)"
        return _span(self.alpha) + (" (rank where not stored)" if self.alpha_missing else "")


def _span(pair: tuple[float, float]) -> str:
    low, high = (f"{x:g}" for x in pair)
    return low if low == high else f"{low}–{high}"


def describe_lora(path: str | Path, known: Sequence[LoraKeys] = ()) -> LoraReport:
    """Everything `farm lora inspect` reports; raises LoraError for files farm refuses.
    `known`: the transformer families to tell apart (farm.families.LORA_KEYS)."""
    info = inspect_lora(path)
    header, meta = read_header(info.path)
    mods = modules(header, info.layout, info.path)
    counts: dict[str, int] = {}
    for m in mods:
        counts[m.component] = counts.get(m.component, 0) + 1
    family = transformer_family(mods, known) or family_of(mods)
    if family.transformer:
        keys = next((k for k in known if k.family == family.name), None)
        block = keys.block if keys else lambda name: None
        blocks = {block(m.name) for m in mods if m.component != "text_encoder"}
        ordered = sorted((b for b in blocks if b), key=_block_order)
    else:
        blocks = {a1111_block(m.name) for m in mods if m.component == "unet"}
        ordered = sorted((b for b in blocks if b), key=block_order)
    ranks = [m.rank for m in mods]
    stored = _read_scalars(info.path, [m.parts["alpha"] for m in mods if "alpha" in m.parts])
    alphas = stored or metadata_alphas(meta)
    return LoraReport(
        file=info,
        modules=dict(sorted(counts.items(), key=lambda kv: kv[0] != "unet")),
        blocks=tuple(ordered + (["other"] if None in blocks else [])),
        rank=(min(ranks), max(ranks)),
        alpha=(min(alphas), max(alphas)) if alphas else None,
        alpha_missing=bool(stored) and len(stored) < len(mods),
        family=family,
        dtypes=tuple(sorted({e["dtype"] for e in header.values()})),
    )


def _block_order(block: str) -> tuple[str, int]:
    # A transformer's block ids are a kind (D, S, L, NR, …) and a number.
    match = re.fullmatch(r"(\D*)(\d*)", block)
    return match[1], int(match[2] or 0)


def metadata_alphas(meta: dict[str, str]) -> list[float]:
    """The alphas a diffusers-written LoRA keeps in its metadata instead of `.alpha`
    tensors: `lora_adapter_metadata` holds each component's peft config, its keys
    prefixed (`unet.lora_alpha`, `transformer.alpha_pattern`, …), which diffusers'
    loader reads when it loads the file."""
    try:
        config = json.loads(meta.get("lora_adapter_metadata") or "{}")
    except ValueError:
        return []
    if not isinstance(config, dict):
        return []

    def number(v: object) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    values = [float(v) for k, v in config.items() if k.endswith("lora_alpha") and number(v)]
    for key, pattern in config.items():
        if key.endswith("alpha_pattern") and isinstance(pattern, dict):
            values += [float(v) for v in pattern.values() if number(v)]
    return values


SCALAR_FORMATS = {"F64": "<d", "F32": "<f", "F16": "<e", "I64": "<q", "I32": "<i"}


def _read_scalars(path: str, entries: list[dict]) -> list[float]:
    """The values of one-element tensors (kohya alphas), read at their header offsets."""
    values = []
    with open(path, "rb") as f:
        start = 8 + struct.unpack("<Q", f.read(8))[0]
        for entry in entries:
            begin, end = entry["data_offsets"]
            f.seek(start + begin)
            raw = f.read(end - begin)
            if entry["dtype"] == "BF16" and len(raw) == 2:
                values.append(struct.unpack("<f", b"\0\0" + raw)[0])  # bf16: top half of f32
            elif entry["dtype"] in SCALAR_FORMATS and len(raw) == DTYPE_BYTES[entry["dtype"]]:
                values.append(float(struct.unpack(SCALAR_FORMATS[entry["dtype"]], raw)[0]))
    return values
