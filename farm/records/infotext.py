"""The A1111 "parameters" infotext: written into every image, parsed back for checks.

Format and quoting follow A1111's modules/processing.py (create_infotext) and
modules/infotext_utils.py (quote, parse_generation_parameters), so A1111's PNG Info tab
and Civitai read farm images as their own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

# A1111's re_param: `key: value` pairs, values quoted when they hold ',' ':' or newlines.
_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_RE_SIZE = re.compile(r"^(\d+)x(\d+)$")


def quote(value: object) -> str:
    """A1111's quoting: JSON-quote a value that would break the comma-separated list."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def format_number(value: float) -> str:
    """Shortest exact text for a weight or CFG scale: 1.0 -> '1', 0.2 -> '0.2'."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def build_infotext(
    *,
    prompt: str,
    negative_prompt: str,
    steps: int,
    sampler: str,
    cfg_scale: float,
    seed: int,
    width: int,
    height: int,
    model_hash: str,
    model: str,
    lora_hashes: Sequence[tuple[str, str]] = (),
    version: str = "",
    guidance: Sequence[tuple[str, str]] = (),
) -> str:
    """The parameters string: prompt, 'Negative prompt:' line, then A1111's key order.

    `guidance` replaces the CFG scale field with what the model family takes instead, in
    the words Forge writes: a Flux.1-dev image says `CFG scale: 1, Distilled CFG Scale: 3.5`.
    """
    params: list[tuple[str, object]] = [
        ("Steps", steps),
        ("Sampler", sampler),
        *(guidance or [("CFG scale", format_number(cfg_scale))]),
        ("Seed", seed),
        ("Size", f"{width}x{height}"),
        ("Model hash", model_hash),
        ("Model", model),
    ]
    if lora_hashes:
        params.append(("Lora hashes", ", ".join(f"{n}: {h}" for n, h in lora_hashes)))
    if version:
        params.append(("Version", version))
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{k}: {quote(v)}" for k, v in params))
    return "\n".join(lines)


def parse_infotext(text: str) -> dict:
    """Parse a parameters string back: prompt, negative prompt and every `key: value`.

    Size becomes width/height ints; Lora hashes becomes a {name: hash} dict.
    """
    *lines, last = text.strip().split("\n")
    if len(_RE_PARAM.findall(last)) < 3:
        # No parameter line: the whole text is prompt.
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].lstrip()
        (negative if in_negative else prompt).append(line)
    result: dict = {"prompt": "\n".join(prompt), "negative_prompt": "\n".join(negative)}
    for key, value in _RE_PARAM.findall(last):
        value = value.strip()
        if value.startswith('"') and value.endswith('"'):
            value = json.loads(value)
        result[key] = value
    if size := _RE_SIZE.match(result.get("Size", "")):
        result["width"], result["height"] = int(size[1]), int(size[2])
    if "Lora hashes" in result:
        pairs = (p.split(":", 1) for p in result["Lora hashes"].split(","))
        result["Lora hashes"] = {k.strip(): v.strip() for k, v in pairs}
    return result
