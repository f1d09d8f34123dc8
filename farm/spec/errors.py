"""SpecError, and how spec messages show a value and suggest a near miss.

Shared by the spec's validation and by catalog validation, which checks a spec's catalog
file with the same one-line errors.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from farm.errors import FarmError


class SpecError(FarmError, ValueError):
    """A bad spec. str(err) is one line: '<field path>: <what is wrong and what to do>'."""


def suggest(word: Any, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def show(value: Any) -> str:
    """A value as a message shows it: short, one line, YAML-ish words for null and bools."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return str(value)
