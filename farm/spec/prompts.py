"""A1111 `<lora:…>` tags in prompts: parsing them out and writing them back.

Parsing follows A1111 (modules/extra_networks.py, extensions-builtin/Lora/
extra_networks_lora.py and scripts/lora_script.py) rule for rule:
- a tag is `<(\\w+):([^>]+)>`; its type is matched case-sensitively, and `lora` and its
  registered alias `lyco` are LoRAs (`<LORA:…>` is not);
- a LoRA tag is cut out of the text and nothing else: the spaces around it stay;
- the arguments split on ':'; an item that `split('=', 2)` cuts in exactly two is named,
  anything else (a bare value, `a=b=c`) is positional;
- positional[0] is the name, as written (spaces included); te = positional[1] or 1, then
  named te; unet = positional[2] or that te, then named unet; numbers follow Python's
  float() (' 0.5 ', '+1', '1e-1', '1_0');
- without a closing '>' there is no tag, and the text stays as written.

Where A1111 logs an error and renders without the LoRA (a weight that is not a number, no
name), or silently ignores an argument, farm refuses the prompt: a sweep that quietly
renders the wrong strength is worse than one that does not start.

Differences, on purpose:
- other extra networks and anything else tag-shaped (`<hypernet:…>`, `<embedding:…>`,
  `<LORA:…>`, `<lora-xyz:…>`, `<lora neon 0.5>`, `<lora:>`, any `<word:…>`) are refused:
  farm acts on LoRA tags only, and one left in the text would be read by the model as
  words. Angle brackets that are not tag-shaped (`a <b> c`, `<3`) are plain text;
- dyn (DyLoRA's dimension, positional[3] or dyn=) is refused: farm cannot honour it;
- non-finite weights are refused;
- farm's named arguments, which A1111 ignores so a tag still loads there: `lbw=` (a LoRA
  Block Weight preset or 17 values), `start=`/`stop=` (fractions of the steps) and
  `sched=` (keyframes `value@fraction,…`); see farm/spec/strength.py. Any other named argument
  is refused, so a typo such as `unte=0.5` cannot go unnoticed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from farm.errors import FarmError
from farm.spec.strength import (
    Strength,
    StrengthError,
    finite,
    parse_blocks,
    parse_schedule,
    schedule_text,
)

# A1111's extra_networks.re_extra_net: any `<type:args>` with no '>' inside.
_RE_EXTRA = re.compile(r"<(\w+):([^>]+)>")
# A1111's Lora extension registers itself as `lora` and its alias `lyco`.
LORA_TYPES = ("lora", "lyco")
# What a user meant as a tag although A1111's pattern does not take it as a LoRA tag: a
# `<word:…>` whose type may hold '-' or spaces around it, or anything opening with
# lora/lyco in any case (`<LORA:…>`, `<lora neon>`, `<lora:>`).
_RE_TAG_SHAPED = re.compile(
    r"<\s*(?P<type>[A-Za-z][\w-]*)\s*:[^<>]*>|<\s*(?P<lora>(?i:lora|lyco))(?![A-Za-z])[^<>]*>"
)
NAMED_ARGS = ("te", "unet", "lbw", "start", "stop", "sched")


@dataclass(frozen=True)
class LoraTag:
    """One `<lora:…>` tag: the LoRA's name as written and the strength it asks for."""

    name: str
    strength: Strength

    @property
    def weight(self) -> float:
        """The UNet weight: what the tag's single number has always meant."""
        return self.strength.unet


class PromptError(FarmError, ValueError):
    """A malformed tag. str() says which tag and why (the caller adds where), on one line."""


def parse_prompt(prompt: str) -> tuple[str, list[LoraTag]]:
    """Split a prompt into the text the model sees and its LoRA tags, in order.

    Tags of the same LoRA are all returned; names are not resolved here.
    """
    tags: list[LoraTag] = []

    def take(match: re.Match) -> str:
        if match[1] not in LORA_TYPES:
            _refuse_tag(match[0], match[1])
        tags.append(_parse_tag(match[0], match[2]))
        return ""

    text = _RE_EXTRA.sub(take, prompt)
    if shaped := _RE_TAG_SHAPED.search(text):
        _refuse_tag(shaped[0], shaped["type"] or shaped["lora"])
    return text, tags


def _refuse_tag(tag: str, kind: str) -> None:
    if kind.lower() in LORA_TYPES:
        if kind in LORA_TYPES:  # `<lora:>`, `<lora neon>`: a LoRA tag gone wrong
            raise PromptError(f"{tag}: not a LoRA tag; write <lora:NAME:WEIGHT>")
        raise PromptError(f"{tag}: tag types are lower case, as in A1111; write <{kind.lower()}:…>")
    raise PromptError(f"{tag}: {kind!r} tags are not supported; farm acts only on "
                      "<lora:NAME:WEIGHT> (or its alias <lyco:…>); remove it")  # fmt: skip


def lora_tag(name: str, strength: Strength | float) -> str:
    """The tag for a LoRA at a strength: `<lora:neon:0.2>`, `<lora:neon:0.5:1:lbw=MIDD>`."""
    if not name.strip() or any(c in name for c in ":>="):
        raise PromptError(f"LoRA name {name!r} cannot be written in a tag (empty, or has : > =)")
    if not isinstance(strength, Strength):
        strength = Strength.plain(float(strength))
    return f"<lora:{name}:{':'.join(strength.tag_args())}>"


def _parse_tag(tag: str, args: str) -> LoraTag:
    # 1. Split the arguments exactly as A1111's ExtraNetworkParams does.
    positional: list[str] = []
    named: dict[str, str] = {}
    for item in args.split(":"):
        parts = item.split("=", 2)
        if len(parts) == 2:
            named[parts[0]] = parts[1]
        else:
            positional.append(item)
    # 2. Refuse what farm cannot render as written.
    if not positional or not positional[0].strip():
        raise PromptError(f"{tag}: no LoRA name; write <lora:NAME:WEIGHT>")
    _check_named(tag, named)
    # 3. Weights in A1111's order: te, then unet defaulting to te, then dyn.
    te = _weight(tag, "te", positional[1]) if len(positional) > 1 else 1.0
    te = _weight(tag, "te", named["te"]) if "te" in named else te
    unet = _weight(tag, "unet", positional[2]) if len(positional) > 2 else te
    unet = _weight(tag, "unet", named["unet"]) if "unet" in named else unet
    if len(positional) > 3 or "dyn" in named:
        dyn = named.get("dyn", positional[3] if len(positional) > 3 else "")
        raise PromptError(
            f"{tag}: dyn {dyn!r} (DyLoRA's dimension, the 4th argument) is not supported; remove it"
        )
    # 4. farm's extensions: blocks and a schedule.
    blocks = None
    if "lbw" in named:
        try:
            blocks = parse_blocks(named["lbw"])
        except StrengthError as err:
            raise PromptError(f"{tag}: lbw: {err}") from None
    return LoraTag(positional[0], Strength(te, unet, blocks, _schedule(tag, named)))


def _check_named(tag: str, named: dict[str, str]) -> None:
    if "blocks" in named:
        raise PromptError(
            f"{tag}: blocks= cannot be written in a tag; give per-block dicts as `blocks` "
            "on the LoRA in the spec, or use lbw=PRESET or lbw= with 17 values"
        )
    for key in named:
        if key in (*NAMED_ARGS, "dyn"):
            continue
        hint = f" (write {key.strip()}= without spaces)" if key.strip() in NAMED_ARGS else ""
        raise PromptError(
            f"{tag}: unknown argument {key!r}{hint}; supported: {', '.join(NAMED_ARGS)}"
        )
    if "sched" in named and ("start" in named or "stop" in named):
        raise PromptError(f"{tag}: give either sched= or start=/stop=, not both")


def _weight(tag: str, what: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise PromptError(f"{tag}: {what} weight {text!r} is not a number") from None
    if not math.isfinite(value):
        raise PromptError(f"{tag}: {what} weight {text!r} must be a finite number")
    return value


def _schedule(tag: str, named: dict[str, str]) -> tuple[tuple[float, float], ...] | None:
    if "sched" in named:
        try:
            return parse_schedule(named["sched"])
        except StrengthError as err:
            raise PromptError(f"{tag}: sched: {err}") from None
    if "start" not in named and "stop" not in named:
        return None
    start = _fraction(tag, "start", named.get("start", "0"))
    stop = _fraction(tag, "stop", named.get("stop", "1"))
    if start >= stop:
        raise PromptError(f"{tag}: start={start:g} must come before stop={stop:g}")
    if start == 0 and stop == 1:
        return None  # the whole run: no schedule, so the item id stays the plain one
    # The keyframes parse_schedule({start, stop}) stands for, written out so that a
    # window opening at 0 has one keyframe there, not an off one and an on one.
    frames = ([(0.0, 0.0), (start, 1.0)] if start > 0 else [(0.0, 1.0)]) + (
        [(stop, 0.0)] if stop < 1 else []
    )
    return parse_schedule(schedule_text(tuple(frames)))


def _fraction(tag: str, what: str, text: str) -> float:
    try:
        value = finite(text, what)
    except StrengthError:
        raise PromptError(f"{tag}: {what}={text} is not a finite number") from None
    if not 0 <= value <= 1:
        raise PromptError(
            f"{tag}: {what}={text} must be a fraction of the steps in [0, 1] (0.5 = halfway); "
            "LoRA Block Weight's step numbers are not supported"
        )
    return value
