"""The sample prompts a LoRA's trainer rendered during training, read as the trainer read them.

Two formats:

`sd-scripts`: kohya sd-scripts' `--sample_prompts` text file, read as its load_prompts and
line_to_prompt_dict (library/train_util.py) read it:
- one prompt a line; a blank line, or one whose first character is '#', is skipped (an
  indented '#' is a prompt, as there);
- the line, stripped, splits on ' --'; the part before the first option is the prompt;
- each option is its name (case-insensitive, as there), a space, and a value, stripped:
  `--n` negative prompt, `--w` width, `--h` height, `--d` seed, `--s` steps, `--l` CFG
  scale, `--g` Flux.1's embedded guidance.
sd-scripts reads CFG scale from `--l` and Flux.1's embedded guidance from `--g` (its Flux.1
samples keep `--l` at 1: no true CFG). farm renders with one guidance, the family's own, so
either fills `guidance`; a line with both keeps `--g` when `--l` is 1 and is refused otherwise.

`ai-toolkit`: an ai-toolkit training config (.yaml, .yml, .json or .jsonc), read as its
SampleConfig and SampleItem (toolkit/config_modules.py) and BaseSDTrainProcess.sample read it:
- the block at config.process[0].sample: `prompts` (strings) or `samples` (mappings with
  `prompt` and their own `width`, `height`, `neg`, `seed`, `guidance_scale`,
  `sample_steps`), and the block's `width`, `height`, `neg`, `seed`, `walk_seed`,
  `guidance_scale` and `sample_steps` for every prompt;
- walk_seed: prompt i gets seed + i (seed 0, ai-toolkit's default, when the block has none);
  an item's own seed is used from that item on, until walk_seed moves on, as there;
- `[name]` anywhere is config.name (ai-toolkit's config loader), and `[trigger]` and `[name]`
  left in a prompt are config.process[0].trigger_word;
- a prompt may carry ai-toolkit's inline flags, which override the block for that prompt: the
  prompt splits on '--', each flag is a word and the rest is its value: `--n` negative,
  `--w`, `--h`, `--d`/`--seed`, `--l`/`--cfg`, `--s`/`--steps`. Flags are case-sensitive.
Block keys that only say when and how training saved its samples (sampler, sample_every,
sample_start_step, format, fps, ...) are not read: the spec's render settings apply.

None in a SamplePrompt means the file does not set it, and the spec's render settings apply;
the trainers' own defaults (512x512, 20 steps, ...) are not filled in.

Differences, on purpose: where a trainer silently ignores an option it does not know, clamps
or rounds a value (sd-scripts clamps steps to 1..1000, ai-toolkit rounds sizes down to a
multiple of 8), or renders something farm cannot (a per-prompt sampler, a control image, a
network multiplier while farm sweeps the strength), farm refuses the file with one line that
names the file, the line or entry, and what to write instead.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.limits import MAX_PROMPT_CHARS
from farm.spec.errors import SpecError, show, suggest
from farm.spec.fields import MAX_SEED, read_text_file
from farm.spec.yaml_rules import load_yaml

FORMATS = ("sd-scripts", "ai-toolkit")
FILE_FIELD = "prompts.file"
FORMAT_FIELD = "prompts.format"
MAX_STEPS = 1000
MIN_SIZE, MAX_SIZE = 8, 4096

# sd-scripts' options that farm reads, and those it knows but cannot render as asked.
SD_OPTIONS = ("n", "w", "h", "d", "s", "l", "g")
SD_REFUSED = {
    "ss": "a per-prompt sampler is not supported; remove it and set render.scheduler in the spec",
    "cn": "a ControlNet image is not supported; remove it",
    "ctr": "Lumina's CFG truncation is not supported; remove it",
    "rcfg": "Lumina's CFG renormalisation is not supported; remove it",
    "fs": "a per-prompt flow shift is not supported; remove it",
    "f": "a frame count is not supported (farm renders still images); remove it",
}
# ai-toolkit's inline flags that farm reads (aliases share a field), and those it refuses.
AIT_FLAGS = {
    "n": "negative",
    "w": "width",
    "h": "height",
    "d": "seed",
    "seed": "seed",
    "l": "guidance",
    "cfg": "guidance",
    "s": "steps",
    "steps": "steps",
}
_MULTIPLIER = "farm's sweep sets the LoRA strength; remove it"
AIT_REFUSED = {
    "p2": "a second text encoder prompt is not supported; remove it",
    "n2": "a second text encoder negative prompt is not supported; remove it",
    "m": _MULTIPLIER,
    "network_multiplier": _MULTIPLIER,
    "gr": "guidance rescale is not supported; remove it",
    "a": "an adapter conditioning scale is not supported; remove it",
    "ref": "a refiner is not supported; remove it",
    "ev": "extra values are not supported; remove them",
    "extra_values": "extra values are not supported; remove them",
    "frames": "a frame count is not supported (farm renders still images); remove it",
    "num_frames": "a frame count is not supported (farm renders still images); remove it",
    "fps": "a frame rate is not supported (farm renders still images); remove it",
    "ctrl_img": "a control image is not supported; remove it",
    "ctrl_idx": "a control image is not supported; remove it",
}
# Keys of a sample block or item that change the image and that farm cannot honour.
AIT_REFUSED_KEYS = ("ctrl_img", "ctrl_img_1", "ctrl_img_2", "ctrl_img_3")
_TRIGGERS = ("[trigger]", "[name]")


@dataclass(frozen=True)
class SamplePrompt:
    """One sample prompt as its trainer rendered it; None: the file does not set it."""

    text: str
    negative: str | None
    width: int | None
    height: int | None
    seed: int | None
    guidance: float | None
    steps: int | None
    line: int  # the line in the file (sd-scripts), or the prompt's place in the list (ai-toolkit)


def load_sample_prompts(path: str | Path, fmt: str) -> list[SamplePrompt]:
    """Read a trainer's sample prompts; `fmt` is 'sd-scripts' or 'ai-toolkit'.

    Every problem is one SpecError naming the file and the line or entry.
    """
    if fmt not in FORMATS:
        raise SpecError(
            f"{FORMAT_FIELD}: {show(fmt)} is not a sample prompt format{suggest(fmt, FORMATS)} "
            f"(known: {', '.join(FORMATS)})"
        )
    path = Path(path)
    where = f"{FILE_FIELD}: {path}"
    suffix = path.suffix.lower()
    if fmt == "sd-scripts" and suffix in (".toml", ".json"):
        raise SpecError(f"{where}: sd-scripts' {suffix} prompt files are not supported; use its "
                        ".txt form (one prompt a line, options as --w 512)")  # fmt: skip
    if fmt == "ai-toolkit" and suffix not in (".yaml", ".yml", ".json", ".jsonc"):
        raise SpecError(f"{where}: not an ai-toolkit config (use its .yaml, .yml or .json file)")
    text = _read(path, where)
    if fmt == "sd-scripts":
        return _sd_scripts(text, where)
    return _ai_toolkit(text, where, suffix in (".json", ".jsonc"))


def _read(path: Path, where: str) -> str:
    text = read_text_file(path, where, "prompt file", "a prompt file may hold",
                          "not UTF-8 text (is it a binary file?)")  # fmt: skip
    if "\0" in text:
        raise SpecError(f"{where}: has NUL bytes; not a text file")
    if not text.strip():
        raise SpecError(f"{where}: is empty")
    return text


# --- sd-scripts ---------------------------------------------------------------------------


def _sd_scripts(text: str, where: str) -> list[SamplePrompt]:
    out = []
    for number, raw in enumerate(text.split("\n"), 1):
        if not raw.strip() or raw[0] == "#":
            continue
        out.append(_sd_line(raw.strip(), f"{where} line {number}", number))
    if not out:
        raise SpecError(f"{where}: no prompts (every line is blank or a # comment)")
    return out


def _sd_line(line: str, at: str, number: int) -> SamplePrompt:
    prompt, *options = line.split(" --")
    if prompt.startswith("--"):
        raise SpecError(f"{at}: starts with an option; write the prompt first, then the options")
    values: dict[str, str] = {}
    for option in options:
        name, _, value = option.strip().partition(" ")
        name, value = name.lower(), value.strip()
        if not name:
            raise SpecError(f"{at}: ' --' with no option name after it")
        if name in SD_REFUSED:
            raise SpecError(f"{at}: --{name} {show(value)}: {SD_REFUSED[name]}")
        if name not in SD_OPTIONS:
            known = " ".join(f"--{o}" for o in SD_OPTIONS)
            hint = suggest(name, SD_OPTIONS)
            raise SpecError(f"{at}: unknown option --{name}{hint} (known: {known})")
        if name in values:
            raise SpecError(f"{at}: --{name} is given twice (give it once)")
        if not value:
            raise SpecError(f"{at}: --{name} has no value")
        values[name] = value
    guidance = _sd_guidance(values, at)
    return SamplePrompt(
        text=prompt_text(prompt.strip(), at, "the prompt"),
        negative=prompt_text(values["n"], at, "--n", empty_ok=True) if "n" in values else None,
        width=size_value(values["w"], at, "--w", "width") if "w" in values else None,
        height=size_value(values["h"], at, "--h", "height") if "h" in values else None,
        seed=seed_value(values["d"], at, "--d") if "d" in values else None,
        guidance=guidance,
        steps=steps_value(values["s"], at, "--s") if "s" in values else None,
        line=number,
    )


def _sd_guidance(values: dict[str, str], at: str) -> float | None:
    cfg = guidance_value(values["l"], at, "--l") if "l" in values else None
    embedded = guidance_value(values["g"], at, "--g") if "g" in values else None
    if cfg is None or embedded is None:
        return embedded if cfg is None else cfg
    if cfg != 1:
        raise SpecError(
            f"{at}: --l {values['l']} and --g {values['g']}: farm renders with one guidance; "
            "keep --g for Flux.1-dev (embedded guidance) or --l for a model with CFG"
        )
    return embedded  # --l 1 is sd-scripts' Flux.1 default: no true CFG on top of --g


# --- ai-toolkit ---------------------------------------------------------------------------


def _ai_toolkit(text: str, where: str, is_json: bool) -> list[SamplePrompt]:
    data = _load_json(text, where) if is_json else load_yaml(text, where)
    if data is None:
        raise SpecError(f"{where}: is empty")
    config = data.get("config") if isinstance(data, dict) else None
    process = config.get("process") if isinstance(config, dict) else None
    first = process[0] if isinstance(process, list) and process else None
    block = first.get("sample") if isinstance(first, dict) else None
    if block is None:
        raise SpecError(f"{where}: no sample block at config.process[0].sample; give an "
                        "ai-toolkit training config whose process samples prompts")  # fmt: skip
    at = f"{where}: config.process[0].sample"
    if not isinstance(block, dict):
        raise SpecError(f"{at}: expected a mapping, got {show(block)}")
    name = config.get("name")
    trigger = first.get("trigger_word")
    if trigger is not None and not isinstance(trigger, str):
        raise SpecError(f"{where}: config.process[0].trigger_word: expected a string, "
                        f"got {show(trigger)}")  # fmt: skip
    if trigger is not None and isinstance(name, str):
        trigger = trigger.replace("[name]", name)  # ai-toolkit fills [name] in the whole config
    items = _ait_items(block, at)
    _ait_refused_keys(block, at)
    walk = block.get("walk_seed", False)
    if not isinstance(walk, bool):
        raise SpecError(f"{at}.walk_seed: {show(walk)} is not true or false")
    start = seed_value(block["seed"], f"{at}.seed", "") if block.get("seed") is not None else None
    base = _ait_fields(block, at)
    out = []
    current = start
    for i, (prompt, item, item_at, prompt_at) in enumerate(items):
        if walk:
            current = (start or 0) + i
            if current > MAX_SEED:
                raise SpecError(f"{at}.seed: walk_seed takes prompt {i + 1} past the largest "
                                f"seed ({MAX_SEED}); start lower")  # fmt: skip
        fields = {**base, **_ait_fields(item, item_at)}
        if item.get("seed") is not None:
            current = seed_value(item["seed"], f"{item_at}.seed", "")
        fields["seed"] = current
        prompt = _substitute(prompt_at, prompt, name, trigger)
        out.append(_ait_prompt_flags(prompt, fields, name, trigger, prompt_at, i + 1))
    return out


def _load_json(text: str, where: str) -> Any:
    def no_repeats(pairs: list[tuple[str, Any]]) -> dict:
        out: dict = {}
        for key, value in pairs:
            if key in out:
                raise SpecError(f"{where}: invalid JSON: duplicate key {key!r}")
            out[key] = value
        return out

    try:
        return json.loads(text, object_pairs_hook=no_repeats)
    except json.JSONDecodeError as e:
        raise SpecError(f"{where}: invalid JSON at line {e.lineno}: {e.msg}") from None
    except RecursionError:
        raise SpecError(f"{where}: invalid JSON: nested too deeply") from None


def _ait_items(block: dict, at: str) -> list[tuple[str, dict, str, str]]:
    """(prompt, its own settings, where they are, where the prompt is) per prompt, from
    `samples` or else `prompts`."""
    samples, prompts = block.get("samples"), block.get("prompts")
    # ai-toolkit reads `samples` when given and `prompts` only without it.
    key, value = ("samples", samples) if samples is not None else ("prompts", prompts)
    if value is None:
        raise SpecError(f"{at}: no prompts (give prompts: a list of strings, or samples:)")
    if not isinstance(value, list):
        raise SpecError(f"{at}.{key}: expected a list, got {show(value)}")
    if not value:
        raise SpecError(f"{at}.{key}: the list is empty (give at least one prompt)")
    items: list[tuple[str, dict, str, str]] = []
    for i, entry in enumerate(value):
        item_at = prompt_at = f"{at}.{key}[{i}]"
        item = entry if key == "samples" else {}
        if key == "samples":
            if not isinstance(entry, dict):
                raise SpecError(f"{item_at}: expected a mapping with prompt:, got {show(entry)}")
            _ait_refused_keys(entry, item_at)
            if entry.get("prompt") is None:
                raise SpecError(f"{item_at}.prompt: required (the prompt to render)")
            entry, prompt_at = entry["prompt"], f"{item_at}.prompt"
        if not isinstance(entry, str):
            raise SpecError(f"{prompt_at}: expected a string, got {show(entry)}")
        items.append((entry, item, item_at, prompt_at))
    return items


def _ait_refused_keys(m: dict, at: str) -> None:
    for key in AIT_REFUSED_KEYS:
        if m.get(key) is not None:
            raise SpecError(f"{at}.{key}: a control image is not supported; remove it")
    multiplier = m.get("network_multiplier")
    if multiplier is not None and multiplier != 1:
        raise SpecError(f"{at}.network_multiplier: {show(multiplier)}: {_MULTIPLIER}")
    rescale = m.get("guidance_rescale")
    if rescale is not None and rescale != 0:
        raise SpecError(f"{at}.guidance_rescale: {show(rescale)}: {AIT_REFUSED['gr']}")
    frames = m.get("num_frames")
    if frames is not None and frames != 1:
        raise SpecError(f"{at}.num_frames: {show(frames)}: {AIT_REFUSED['num_frames']}")


def _ait_fields(m: dict, at: str) -> dict[str, Any]:
    """The render fields a block or a samples item sets: only those it gives."""
    fields: dict[str, Any] = {}
    if m.get("width") is not None:
        fields["width"] = size_value(m["width"], f"{at}.width", "", "width")
    if m.get("height") is not None:
        fields["height"] = size_value(m["height"], f"{at}.height", "", "height")
    neg = m.get("neg")
    if neg is not None and neg is not False:  # ai-toolkit's default `neg: false`: none
        if not isinstance(neg, str):
            raise SpecError(f"{at}.neg: expected a string, got {show(neg)}")
        fields["negative"] = neg
    if m.get("guidance_scale") is not None:
        fields["guidance"] = guidance_value(m["guidance_scale"], f"{at}.guidance_scale", "")
    if m.get("sample_steps") is not None:
        fields["steps"] = steps_value(m["sample_steps"], f"{at}.sample_steps", "")
    return fields


def _substitute(at: str, text: str, name: Any, trigger: str | None) -> str:
    """ai-toolkit's substitutions: `[name]` is config.name, then `[trigger]` the trigger word."""
    if "[name]" in text and isinstance(name, str):
        text = text.replace("[name]", name)
    for tag in _TRIGGERS:
        if tag in text:
            if trigger is None:
                raise SpecError(
                    f"{at}: {tag} but the config has no trigger word; set "
                    "config.process[0].trigger_word or write the word itself"
                )
            text = text.replace(tag, trigger)
    return text


def _ait_prompt_flags(
    prompt: str, fields: dict[str, Any], name: Any, trigger: str | None, at: str, number: int
) -> SamplePrompt:
    head, *flags = prompt.strip().split("--")
    given: set[str] = set()
    for flag_text in flags:
        flag = flag_text.split(" ")[0]
        value = flag_text[len(flag) :].strip()
        flag = flag.strip()
        if not flag:
            raise SpecError(f"{at}: '--' with no flag name after it")
        if flag in AIT_REFUSED:
            raise SpecError(f"{at}: --{flag} {show(value)}: {AIT_REFUSED[flag]}")
        if flag not in AIT_FLAGS:
            hint = suggest(flag, AIT_FLAGS)
            if flag.lower() in AIT_FLAGS:  # ai-toolkit compares flags as written
                hint = f" (flags are lower case: write --{flag.lower()})"
            known = " ".join(f"--{f}" for f in AIT_FLAGS)
            raise SpecError(f"{at}: unknown flag --{flag}{hint} (known: {known})")
        field = AIT_FLAGS[flag]
        if field in given:
            raise SpecError(f"{at}: --{flag} sets the {field} a second time (give it once)")
        given.add(field)
        if not value and field != "negative":
            raise SpecError(f"{at}: --{flag} has no value")
        label = f"--{flag}"
        if field == "negative":
            fields[field] = value
        elif field in ("width", "height"):
            fields[field] = size_value(value, at, label, field)
        elif field == "seed":
            fields[field] = seed_value(value, at, label)
        elif field == "guidance":
            fields[field] = guidance_value(value, at, label)
        else:
            fields[field] = steps_value(value, at, label)
    negative = fields.get("negative")
    if negative is not None:
        negative = prompt_text(_substitute(at, negative, name, trigger), at, "neg", True)
    return SamplePrompt(
        text=prompt_text(head.strip(), at, "the prompt"),
        negative=negative,
        width=fields.get("width"),
        height=fields.get("height"),
        seed=fields.get("seed"),
        guidance=fields.get("guidance"),
        steps=fields.get("steps"),
        line=number,
    )


# --- values -------------------------------------------------------------------------------


def _whole(value: Any) -> int | None:
    """A whole number written as digits, or given as a YAML/JSON integer; None otherwise."""
    if isinstance(value, str):
        return int(value) if re.fullmatch(r"[0-9]+", value) else None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def _fail(at: str, label: str, value: Any, why: str) -> SpecError:
    shown = str(value) if isinstance(value, int) and not isinstance(value, bool) else show(value)
    return SpecError(f"{at}: {label + ' ' if label else ''}{shown} {why}")


def _whole_in(value: Any, low: int, high: int, at: str, label: str, why: str) -> int:
    """A whole number from low to high, or the refusal `why` naming the value."""
    n = _whole(value)
    if n is None or not low <= n <= high:
        raise _fail(at, label, value if n is None else n, why)
    return n


def size_value(value: Any, at: str, label: str, what: str) -> int:
    n = _whole_in(value, MIN_SIZE, MAX_SIZE, at, label,
                  f"is not a {what} (use a multiple of 8, {MIN_SIZE} to {MAX_SIZE})")  # fmt: skip
    if n % 8:
        low = max(n - n % 8, MIN_SIZE)
        raise _fail(at, label, n, f"is not a multiple of 8 (try {low} or {low + 8})")
    return n


def seed_value(value: Any, at: str, label: str) -> int:
    return _whole_in(value, 0, MAX_SEED, at, label,
                     f"is not a seed (use a whole number, 0 to {MAX_SEED})")  # fmt: skip


def steps_value(value: Any, at: str, label: str) -> int:
    return _whole_in(value, 1, MAX_STEPS, at, label, f"is not a step count (use 1 to {MAX_STEPS})")


def guidance_value(value: Any, at: str, label: str) -> float:
    x: float | None = None
    if isinstance(value, str):
        try:
            x = float(value)
        except ValueError:
            x = None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            x = float(value)
        except OverflowError:
            x = None
    if x is None or not math.isfinite(x) or x < 0:
        raise _fail(at, label, value, "is not a guidance scale (use a finite number, 0 or more)")
    return x + 0.0


def prompt_text(text: str, at: str, what: str, empty_ok: bool = False) -> str:
    if not empty_ok and not text:
        raise SpecError(f"{at}: {what} is empty")
    if len(text) > MAX_PROMPT_CHARS:
        raise SpecError(f"{at}: {what} has {len(text):,} characters, more than "
                        f"{MAX_PROMPT_CHARS:,}; shorten it")  # fmt: skip
    return text
