"""A1111 `<lora:name:weight>` tags in prompts: parsing them out and writing them back."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from farm.infotext import format_number

# A1111's extra_networks.re_extra_net: any `<type:args>` with no '>' inside.
_RE_EXTRA = re.compile(r"<(\w+):([^>]+)>")


@dataclass(frozen=True)
class LoraTag:
    name: str
    weight: float


class PromptError(ValueError):
    """A malformed tag. str() says which tag and why."""


def parse_prompt(prompt: str) -> tuple[str, list[LoraTag]]:
    """Split a prompt into the text the model sees and its `<lora:…>` tags.

    Like A1111, tags are removed from the conditioning text and other extra-network tags
    (`<hypernet:…>`) are left alone; the first positional argument after the name is the
    weight (default 1).
    """
    tags: list[LoraTag] = []

    def take(match: re.Match) -> str:
        kind, args = match[1], match[2].split(":")
        if kind != "lora":
            return match[0]
        name = args[0]
        weight = 1.0
        if len(args) > 1:
            try:
                weight = float(args[1])
            except ValueError:
                raise PromptError(f"{match[0]}: weight {args[1]!r} is not a number") from None
            if not math.isfinite(weight):
                raise PromptError(f"{match[0]}: weight must be finite")
        tags.append(LoraTag(name, weight))
        return ""

    text = _RE_EXTRA.sub(take, prompt)
    return text, tags


def lora_tag(name: str, weight: float) -> str:
    """The tag A1111 writes for a LoRA at a weight: `<lora:neon:0.2>`."""
    return f"<lora:{name}:{format_number(weight)}>"
