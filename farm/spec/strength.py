"""How strongly one LoRA acts: text-encoder and UNet weights, per-block multipliers and a
per-step schedule.

The effective scale of a LoRA layer is its part's weight (te or unet) times the
multiplier of the block it sits in, times (UNet only) the schedule's value at the
current denoising step. A plain strength `w` is te = unet = w with no blocks and no
schedule, and renders exactly like diffusers' `set_adapters([name], [w])`.

Blocks come in two spellings, both multipliers:
- LoRA Block Weight's 17 values for SD1.x (BASE is the text encoder, then IN01 … OUT11),
  or one of its presets (ALL, INS, IND, INALL, MIDD, OUTD, OUTS, OUTALL, NONE, ALL0.5);
- diffusers' dict: {text_encoder: x, unet: {down: x | {block_i: x | [per layer]},
  mid: x, up: …}}.
Unlike diffusers' own block-wise set_adapters (attention layers only), a multiplier
here applies to every LoRA layer in its block: attentions, ResNets (LoCon) and the
block's down/upsampler.

A schedule is a list of keyframes `value@fraction`: the value holds from that fraction
of the steps until the next keyframe (`0.2@0,1@0.5` is 0.2 for the first half, then 1).
`{start: a, stop: b}` is `0@0,1@a,0@b`. The text encoder runs once before denoising,
so schedules act on the UNet only.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

from farm.errors import FarmError
from farm.families import FAMILIES, sd1
from farm.families.base import BlockMap, Family
from farm.families.unet import unet_section
from farm.records.infotext import format_number

# Block vocabularies and presets are each family's (farm/families); a spec names them
# before its model is read, so every family's presets are known here by name.
LBW_IDS = sd1.LBW17
LBW_PRESETS = sd1.PRESETS
PRESETS = {name: values for f in FAMILIES for name, values in f.block_presets.items()}
# Vector lengths some family takes (SD1.x/SD2.x 17 and 26, SDXL 12 and 20, Flux.1 and
# Chroma 61 or, carrying the last value on, up to 58, …).
_FORMS = {form for f in FAMILIES for form in f.block_forms}
LENGTHS = frozenset(len(form.ids) for form in _FORMS) | {
    n for form in _FORMS if form.carries for n in range(2, len(form.ids) + 1)}  # fmt: skip
# The parts of a transformer's dict form, for any family, and the families that have one.
SECTIONS = tuple(dict.fromkeys(s for f in FAMILIES for s in f.block_sections))
_TRANSFORMERS = ", ".join(f.name for f in FAMILIES if f.block_sections)


class StrengthError(FarmError, ValueError):
    """A strength setting that cannot be used; str() says why (the caller adds where)."""


@dataclass(frozen=True)
class Blocks:
    """Per-block multipliers: `name` as written (a preset, values or a dict's JSON) and
    the canonical (key, multiplier) pairs. Keys: te, IN01…OUT11, M00 for LoRA Block
    Weight's 17 values; #0, #1, … for a vector of another length, which the model's
    family reads (SDXL's 12 or 20, Flux's 61 or up to 58); down, down.i, down.i.j, mid,
    up, up.i, up.i.j for a UNet's dict, double, double.i, single, single.i for a
    transformer's."""

    name: str
    pairs: tuple[tuple[str, float], ...]
    source: object = field(default=None, compare=False)  # as the spec wrote it

    @property
    def lbw(self) -> bool:
        return any(k.startswith(("IN", "OUT", "M0", "#")) for k, _ in self.pairs)

    @property
    def vector(self) -> tuple[float, ...] | None:
        """The values of a vector of family-read length (None for 17 values or a dict)."""
        if not self.pairs or not self.pairs[0][0].startswith("#"):
            return None
        return tuple(v for _, v in self.pairs)

    def te(self) -> float:
        return dict(self.pairs).get("te", 1.0)

    def problem(self, family: Family) -> str | None:
        """Why these blocks cannot be read on a family's models; None when they can."""
        forms = " or ".join(f.name for f in family.block_forms)
        if self.name in PRESETS and self.name not in family.block_presets:
            return (f"{self.name} is not a {family.name} preset (its presets: "
                    f"{', '.join(family.block_presets)})")  # fmt: skip
        if self.vector is not None:
            if family.expand_blocks(self.vector) is None:
                return f"{len(self.vector)} block values do not fit {family.name}: use {forms}"
            return None
        keys = {k for k, _ in self.pairs}
        if self.lbw and family.form_of(len(LBW_IDS)) is None:
            return f"17 block values are SD1.x/SD2.x's form; {family.name} takes {forms}"
        transformer = family.denoiser == "transformer"
        if not self.lbw and keys - {"te"}:
            unet_keys = any(k.startswith(("down", "up", "mid")) for k in keys)
            parts = {k.split(".")[0] for k in keys - {"te"}}
            if unet_keys == transformer or (transformer and parts - set(family.block_sections)):
                want = (f"transformer: {{{', '.join(family.block_sections)}}}" if transformer
                        else "unet: {down, mid, up}")  # fmt: skip
                return f"{family.name} names its blocks as {want}"
        return None

    def multiplier(self, where: BlockMap, part: str, module: str) -> float:
        """The multiplier of one LoRA layer: te for text encoders (t5 for a Flux model's
        T5), else the block its module sits in; 1 outside the named blocks."""
        table = self._table(where.family)
        if part == "te":
            if not self.lbw:
                return table.get("te", 1.0)
            return table.get(where.text_block(module), 1.0)
        if self.lbw:
            return table.get(where.block_id(module) or "", 1.0)
        section = unet_section(module) if where.family.denoiser == "unet" else None
        block = where.block_id(module) or ""
        if section is not None:
            s, i, j = section
            keys = ["mid"] if s == "mid" else [f"{s}.{i}.{j}", f"{s}.{i}", s]
        elif (part := where.family.section_of(block)) is not None:
            kind, i = part
            keys = [f"{kind}.{i}", kind]
        else:
            return 1.0
        return next((table[k] for k in keys if k in table), 1.0)

    def _table(self, family: Family) -> dict[str, float]:
        if (vector := self.vector) is not None:
            return family.expand_blocks(vector) or {}
        return dict(self.pairs)


@dataclass(frozen=True)
class Strength:
    te: float
    unet: float
    blocks: Blocks | None = None
    schedule: tuple[tuple[float, float], ...] | None = None  # (fraction, value), sorted
    # The swept value this strength came from (an axis's alpha); not part of identity.
    alpha: float | None = field(default=None, compare=False)

    @classmethod
    def plain(cls, weight: float) -> Strength:
        return cls(weight, weight, alpha=weight)

    @property
    def is_plain(self) -> bool:
        return self.te == self.unet and self.blocks is None and self.schedule is None

    @property
    def weight(self) -> float:
        """The headline number: the UNet weight (the text encoder's when it is all)."""
        return self.unet

    def key(self) -> object:
        """What item ids hash: a bare number for a plain strength, as ids always were."""
        if self.is_plain:
            return self.unet
        blocks = [list(p) for p in self.blocks.pairs] if self.blocks else None
        schedule = [list(k) for k in self.schedule] if self.schedule else None
        return {"te": self.te, "unet": self.unet, "blocks": blocks, "schedule": schedule}

    def tag_args(self) -> list[str]:
        """The `<lora:name:…>` arguments that give this strength back (A1111 order)."""
        args = [format_number(self.te)]
        if self.unet != self.te:
            args.append(format_number(self.unet))
        if self.blocks is not None:
            args.append(f"lbw={self.blocks.name}" if self.blocks.lbw else "blocks=dict")
        if self.schedule is not None:
            args.append(f"sched={schedule_text(self.schedule)}")
        return args

    def layer_scale(self, part: str, module: str, where: BlockMap) -> float:
        """A LoRA layer's scale before any schedule: its part's weight (te or unet: the
        denoiser, UNet or transformer) times the multiplier of the block the module sits
        in, read in the model's block names (`where`)."""
        weight = self.te if part == "te" else self.unet
        return weight * (self.blocks.multiplier(where, part, module) if self.blocks else 1.0)

    def scales(self) -> list[tuple[float, str]]:
        """Every scale the render may give a LoRA layer, each with the factors that make
        it: the weights themselves, te times the text encoder's block multiplier, and
        unet times each block multiplier (1 outside named blocks) times each schedule
        value. A cap on strength bounds all of them, since the render multiplies."""
        out = [(self.te, f"te {format_number(self.te)}"),
               (self.unet, f"unet {format_number(self.unet)}")]  # fmt: skip
        blocks = [(1.0, "")]
        if self.blocks is not None:
            te_block = self.blocks.te()
            te_text = f"te {format_number(self.te)} × block te {format_number(te_block)}"
            out.append((self.te * te_block, te_text))
            blocks += [(v, f" × block {k} {format_number(v)}") for k, v in self.blocks.pairs
                       if k != "te"]  # fmt: skip
        steps = [(1.0, "")]
        if self.schedule is not None:
            steps = [(v, f" × schedule {format_number(v)}@{format_number(at)}")
                     for at, v in self.schedule]  # fmt: skip
        for b, b_text in blocks:
            for s, s_text in steps:
                out.append((self.unet * b * s, f"unet {format_number(self.unet)}{b_text}{s_text}"))
        return out

    def unet_at(self, step: int, steps: int) -> float:
        """The schedule's multiplier at a denoising step (1 without a schedule)."""
        if not self.schedule:
            return 1.0
        fraction = step / max(steps, 1)
        value = self.schedule[0][1]
        for at, v in self.schedule:
            if at <= fraction + 1e-9:
                value = v
        return value


def finite(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise StrengthError(f"{what}: {value!r} is not a number")
    try:
        number = float(value)
    except ValueError:
        raise StrengthError(f"{what}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise StrengthError(f"{what}: {value!r} must be a finite number")
    return number


def parse_blocks(value: object) -> Blocks:
    """A preset name, a vector of values (list or comma string) or a dict of parts."""
    if isinstance(value, str) and value.strip().upper() in PRESETS:
        name = value.strip().upper()
        return Blocks(name, _vector_pairs(PRESETS[name].split(",")), name)
    if isinstance(value, str):
        values = [v for v in value.replace(" ", "").split(",") if v]
        if len(values) == 1 and not _is_number(values[0]):
            raise StrengthError(_unknown_preset(value))
        pairs = _vector_pairs(values)
        name = ",".join(format_number(v) for _, v in pairs)
        return Blocks(name, pairs, name)
    if isinstance(value, list | tuple):
        pairs = _vector_pairs(list(value))
        name = ",".join(format_number(v) for _, v in pairs)
        return Blocks(name, pairs, name)
    if isinstance(value, dict):
        return _dict_blocks(value)
    raise StrengthError(
        f"{value!r}: use a block preset ({', '.join(PRESETS)}), a LoRA Block Weight vector "
        "(17 values for SD1.x), or a dict {text_encoder, unet: {down, mid, up}} "
        f"(transformer: {{{', '.join(SECTIONS)}}} for a transformer's, docs/families.md)"
    )


def _is_number(value: object) -> bool:
    try:
        finite(value, "")
    except StrengthError:
        return False
    return True


def _unknown_preset(value: object) -> str:
    import difflib

    close = difflib.get_close_matches(str(value).strip().upper(), PRESETS, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return (f"{value!r} is not a block preset ({hint}presets: {', '.join(LBW_PRESETS)}; "
            "SDXL-… and FLUX-… ones for those families, in docs/families.md); or give "
            "values (17 for SD1.x)")  # fmt: skip


def is_lbw_preset(value: object) -> bool:
    return isinstance(value, str) and value.strip().upper() in PRESETS


def _vector_pairs(values: list) -> tuple[tuple[str, float], ...]:
    """17 values as LoRA Block Weight's SD1.x ids; another length family-read (#i)."""
    if len(values) not in LENGTHS:
        raise StrengthError(
            f"{len(values)} block values; LoRA Block Weight takes 17 (SD1.x, SD2.x: BASE, "
            "IN01, IN02, IN04, IN05, IN07, IN08, M00, OUT03 … OUT11) or 26, 12 or 20 for "
            "SDXL, 61 (or Inspire Pack's up to 58) for Flux.1 and Chroma, the other "
            "families' in docs/families.md, or a preset"
        )
    if len(values) != len(LBW_IDS):
        return tuple((f"#{i}", finite(v, f"block value {i + 1}")) for i, v in enumerate(values))
    numbers = [finite(v, f"block {block}") for block, v in zip(LBW_IDS, values, strict=True)]
    return tuple(("te" if b == "BASE" else b, v) for b, v in zip(LBW_IDS, numbers, strict=True))


def _dict_blocks(value: dict) -> Blocks:
    pairs: dict[str, float] = {}
    for top, item in value.items():
        if top == "text_encoder":
            pairs["te"] = finite(item, "blocks.text_encoder")
        elif top == "unet":
            if not isinstance(item, dict):
                number = finite(item, "blocks.unet")
                pairs.update(down=number, mid=number, up=number)
                continue
            for section, sub in item.items():
                where = f"blocks.unet.{section}"
                if section == "mid":
                    pairs["mid"] = finite(sub, where)
                elif section not in ("down", "up"):
                    raise StrengthError(f"{where}: unknown part; use down, mid or up")
                elif isinstance(sub, dict):
                    for block, per in sub.items():
                        match = re.fullmatch(r"block_(\d+)", str(block))
                        if not match:
                            raise StrengthError(f"{where}.{block}: write block_0, block_1, …")
                        key = f"{section}.{match[1]}"
                        if isinstance(per, list):
                            for j, v in enumerate(per):
                                pairs[f"{key}.{j}"] = finite(v, f"{where}.{block}[{j}]")
                        else:
                            pairs[key] = finite(per, f"{where}.{block}")
                else:
                    pairs[section] = finite(sub, where)
        elif top == "transformer":
            _transformer_blocks(item, pairs)
        else:
            raise StrengthError(
                f"blocks.{top}: unknown part; use text_encoder, unet (SD1.x, SD2.x, SDXL) "
                f"or transformer ({_TRANSFORMERS})"
            )
    if not pairs:
        raise StrengthError("blocks: empty; give text_encoder and/or unet multipliers")
    canonical = tuple(sorted(pairs.items()))
    return Blocks(json.dumps(dict(canonical), separators=(",", ":")), canonical, value)


def _transformer_blocks(item: object, pairs: dict[str, float]) -> None:
    """{double: x | {block_i: x}, single: …} (or the parts of another transformer's
    blocks), or one number for every block of Flux.1's two parts."""
    if not isinstance(item, dict):
        number = finite(item, "blocks.transformer")
        pairs.update(double=number, single=number)
        return
    for section, sub in item.items():
        where = f"blocks.transformer.{section}"
        if section not in SECTIONS:
            raise StrengthError(f"{where}: unknown part; use {', '.join(SECTIONS)} (the "
                                "family's own parts, docs/families.md)")  # fmt: skip
        if isinstance(sub, dict):
            for block, per in sub.items():
                match = re.fullmatch(r"block_(\d+)", str(block))
                if not match:
                    raise StrengthError(f"{where}.{block}: write block_0, block_1, …")
                pairs[f"{section}.{int(match[1])}"] = finite(per, f"{where}.{block}")
        else:
            pairs[section] = finite(sub, where)


def parse_schedule(value: object) -> tuple[tuple[float, float], ...]:
    """`value@fraction,…` keyframes, or {start, stop} as fractions of the steps."""
    if isinstance(value, dict):
        unknown = set(value) - {"start", "stop"}
        if unknown:
            # Keys of any type (YAML allows numbers): sorted by their text.
            raise StrengthError(f"unknown keys {sorted(unknown, key=str)}; use start and stop")
        start = finite(value.get("start", 0.0), "start")
        stop = finite(value.get("stop", 1.0), "stop")
        if not 0 <= start < stop <= 1:
            raise StrengthError(f"start {start} and stop {stop} must be fractions, start < stop")
        frames = [(0.0, 0.0), (start, 1.0)] if start > 0 else [(0.0, 1.0)]
        if stop < 1:
            frames.append((stop, 0.0))
        return _frames(frames)
    if isinstance(value, str):
        frames = []
        for part in value.replace(" ", "").split(","):
            if part.count("@") != 1:
                raise StrengthError(f"{part!r}: write keyframes as value@fraction: 0.2@0,1@0.5")
            v, at = part.split("@")
            frames.append((finite(at, f"{part!r} fraction"), finite(v, f"{part!r} value")))
        return _frames(frames)
    raise StrengthError(f"{value!r}: use keyframes 'value@fraction,…' or {{start, stop}}")


def _frames(frames: list[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    frames = sorted(frames)
    fractions = [at for at, _ in frames]
    if any(not 0 <= at <= 1 for at in fractions):
        raise StrengthError("keyframe fractions must lie in [0, 1]")
    if len(set(fractions)) != len(fractions):
        raise StrengthError("two keyframes at the same fraction")
    if fractions[0] != 0:
        frames.insert(0, (0.0, frames[0][1]))
    return tuple(frames)


def schedule_text(schedule: tuple[tuple[float, float], ...]) -> str:
    return ",".join(f"{format_number(v)}@{format_number(at)}" for at, v in schedule)
