"""`prompts: {file, format}`: a trainer's sample prompts as the spec's prompt axis, each
line with the render settings it sets (farm/spec/sample_prompts.py reads the file).

job.json keeps the lines as read (`prompts: {file, format, resolved: [...]}`), so a job
planned again from job.json (resume, verify, rerender, a cluster's driver) never reads
the file: it may have changed, or be on another machine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.spec.errors import SpecError, show, suggest
from farm.spec.fields import URL_RE, as_local_path, as_str, check_keys, required_field
from farm.spec.sample_prompts import (
    FILE_FIELD,
    FORMAT_FIELD,
    FORMATS,
    SamplePrompt,
    guidance_value,
    load_sample_prompts,
    prompt_text,
    seed_value,
    size_value,
    steps_value,
)

KEYS = ("file", "format", "resolved")
RESOLVED_FIELD = "prompts.resolved"
LINE_KEYS = tuple(f.name for f in dataclasses.fields(SamplePrompt))
# The render settings a line may set in place of the spec's `render:` ones.
RENDER_FIELDS = ("steps", "guidance", "width", "height")
# How each format's lines are counted, and how one of them sets a seed.
_UNIT = {"sd-scripts": "line", "ai-toolkit": "entry"}
_SEED_HINT = {"sd-scripts": "--d N", "ai-toolkit": "seed: N"}


@dataclass(frozen=True)
class PromptFile:
    """A spec's prompt file as read: `lines` are the spec's prompts, in order."""

    path: str  # absolute, as read when the job was planned; "" when job.json had none
    format: str  # one of sample_prompts.FORMATS
    lines: tuple[SamplePrompt, ...]

    def place(self, i: int) -> str:
        """Line i's place in its file: `line 3` (sd-scripts) or `entry 3` (ai-toolkit)."""
        return f"{_UNIT[self.format]} {self.lines[i].line}"

    def where(self, i: int) -> str:
        """Where line i is, for messages: `prompts.file: PATH line N`."""
        place = self.place(i)
        return f"{FILE_FIELD}: {self.path} {place}" if self.path else f"{RESOLVED_FIELD} {place}"

    def settings(self, i: int) -> dict[str, int | float]:
        """The render settings line i sets (steps, guidance, width, height)."""
        line = self.lines[i]
        return {k: getattr(line, k) for k in RENDER_FIELDS if getattr(line, k) is not None}

    def unseeded(self) -> int | None:
        """The first line that sets no seed (it renders the spec's `seeds`), or None."""
        return next((i for i, line in enumerate(self.lines) if line.seed is None), None)

    def seed_hint(self) -> str:
        return _SEED_HINT[self.format]

    def to_dict(self) -> dict:
        """As job.json keeps it: the lines as read, so no plan reads the file again."""
        d: dict[str, Any] = {"file": self.path} if self.path else {}
        return d | {"format": self.format,
                    "resolved": [dataclasses.asdict(line) for line in self.lines]}  # fmt: skip


def parse_prompt_file(value: dict, base: Path) -> PromptFile:
    """`prompts: {file, format}` read (a relative file is found from `base`), or the
    `{format, resolved}` job.json keeps; repeated lines are refused."""
    check_keys(value, KEYS, "prompts")
    fmt = as_str(required_field(value, "format", f"the file's format: {' or '.join(FORMATS)}",
                                "prompts"), FORMAT_FIELD)  # fmt: skip
    if fmt not in FORMATS:
        raise SpecError(
            f"{FORMAT_FIELD}: {show(fmt)} is not a sample prompt format{suggest(fmt, FORMATS)} "
            f"(known: {', '.join(FORMATS)})"
        )
    if value.get("resolved") is not None:
        # The lines job.json recorded: the file (if named) is not read again.
        path = as_str(value["file"], FILE_FIELD) if value.get("file") is not None else ""
        lines = _resolved(value["resolved"])
    else:
        text = as_str(required_field(value, "file", "the path of a trainer's sample prompt "
                                     "file", "prompts"), FILE_FIELD)  # fmt: skip
        if URL_RE.match(text):
            raise SpecError(f"{FILE_FIELD}: {text}: a prompt file is read from this machine; "
                            "give a local path")  # fmt: skip
        path = str(as_local_path(text, base))
        lines = load_sample_prompts(path, fmt)
    prompt_file = PromptFile(path, fmt, tuple(lines))
    _check_repeats(prompt_file)
    return prompt_file


def _resolved(value: Any) -> list[SamplePrompt]:
    """job.json's lines, each value checked as the file's own reader checks it."""
    if not isinstance(value, list) or not value:
        raise SpecError(f"{RESOLVED_FIELD}: expected a non-empty list of prompt lines, "
                        f"got {show(value)}")  # fmt: skip
    out = []
    for i, entry in enumerate(value):
        at = f"{RESOLVED_FIELD}[{i}]"
        if not isinstance(entry, dict):
            raise SpecError(f"{at}: expected a mapping of {', '.join(LINE_KEYS)}, got "
                            f"{show(entry)}")  # fmt: skip
        check_keys(entry, LINE_KEYS, at)
        text = as_str(required_field(entry, "text", "the prompt", at), f"{at}.text")
        negative = entry.get("negative")
        if negative is not None:
            negative = prompt_text(as_str(negative, f"{at}.negative", empty_ok=True),
                                    f"{at}.negative", "the negative prompt", True)  # fmt: skip
        line = entry.get("line")
        if isinstance(line, bool) or not isinstance(line, int) or line < 1:
            raise SpecError(f"{at}.line: expected a line number (1 or more), got {show(line)}")
        out.append(SamplePrompt(
            text=prompt_text(text, f"{at}.text", "the prompt"),
            negative=negative,
            width=_optional(entry, "width", at, lambda v, a: size_value(v, a, "", "width")),
            height=_optional(entry, "height", at, lambda v, a: size_value(v, a, "", "height")),
            seed=_optional(entry, "seed", at, lambda v, a: seed_value(v, a, "")),
            guidance=_optional(entry, "guidance", at, lambda v, a: guidance_value(v, a, "")),
            steps=_optional(entry, "steps", at, lambda v, a: steps_value(v, a, "")),
            line=line,
        ))  # fmt: skip
    return out


def _optional(entry: dict, key: str, at: str, check: Callable[[Any, str], Any]) -> Any:
    """entry[key] checked, or None where job.json recorded none (the file set none)."""
    value = entry.get(key)
    return None if value is None else check(value, f"{at}.{key}")


def _check_repeats(prompt_file: PromptFile) -> None:
    """The same prompt with the same settings twice would plan the same images twice;
    with any setting apart (a seed, a size) the lines are prompts of their own."""
    seen: dict[SamplePrompt, int] = {}
    for i, line in enumerate(prompt_file.lines):
        key = dataclasses.replace(line, line=0)
        if key in seen:
            raise SpecError(f"{prompt_file.where(i)}: the same prompt and settings as "
                            f"{prompt_file.place(seen[key])} (give each once)")  # fmt: skip
        seen[key] = i
