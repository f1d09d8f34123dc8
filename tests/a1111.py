"""AUTOMATIC1111's own parsing, re-implemented as an oracle for farm's infotext and tags.

Each function follows the named A1111 source, not farm's code: tests compare what farm
writes and parses with what A1111 would read from the same text.
"""

from __future__ import annotations

import json
import re

# modules/infotext_utils.py (formerly generation_parameters_copypaste.py)
RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
RE_IMAGESIZE = re.compile(r"^(\d+)x(\d+)$")
# modules/extra_networks.py
RE_EXTRA_NET = re.compile(r"<(\w+):([^>]+)>")


def unquote(text: str) -> str:
    """infotext_utils.unquote: a double-quoted value is JSON."""
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def parse_generation_parameters(x: str) -> dict[str, str]:
    """infotext_utils.parse_generation_parameters, up to the point where it fills in
    defaults for missing keys: prompt, negative prompt and every `key: value` of the last
    line as written, `Size` split into Size-1 and Size-2."""
    res: dict[str, str] = {}
    prompt = ""
    negative_prompt = ""
    done_with_prompt = False
    *lines, lastline = x.strip().split("\n")
    if len(RE_PARAM.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    res["Prompt"] = prompt
    res["Negative prompt"] = negative_prompt
    for k, v in RE_PARAM.findall(lastline):
        if not v:
            continue  # A1111's v[0] raises; it prints "Error parsing" and skips the key
        if v[0] == '"' and v[-1] == '"':
            v = unquote(v)
        m = RE_IMAGESIZE.match(v)
        if m is not None:
            res[f"{k}-1"] = m.group(1)
            res[f"{k}-2"] = m.group(2)
        else:
            res[k] = v
    return res


def lora_hashes(value: str) -> dict[str, str]:
    """extensions-builtin/Lora/scripts/lora_script.py, infotext_pasted: `Lora hashes`."""
    pairs = [x.strip().split(":", 1) for x in value.split(",")]
    return {x[0].strip().replace(",", ""): x[1].strip() for x in pairs}


def parse_prompt(prompt: str) -> tuple[str, list[tuple[str, list[str]]]]:
    """extra_networks.parse_prompt: the prompt without its <type:args> tags, and each tag's
    type and `:`-separated items, in order."""
    found: list[tuple[str, list[str]]] = []

    def cut(m: re.Match) -> str:
        found.append((m.group(1), m.group(2).split(":")))
        return ""

    return re.sub(RE_EXTRA_NET, cut, prompt), found


def lora_weights(items: list[str]) -> tuple[str, float, float]:
    """extra_networks.ExtraNetworkParams splits the items into positional and named;
    extensions-builtin/Lora/extra_networks_lora.py, activate, reads name, te and unet."""
    positional: list[str] = []
    named: dict[str, str] = {}
    for item in items:
        parts = item.split("=", 2)
        if len(parts) == 2:
            named[parts[0]] = parts[1]
        else:
            positional.append(item)
    te = float(positional[1]) if len(positional) > 1 else 1.0
    te = float(named.get("te", te))
    unet = float(positional[2]) if len(positional) > 2 else te
    unet = float(named.get("unet", unet))
    return positional[0], te, unet
