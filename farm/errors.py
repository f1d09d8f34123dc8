"""FarmError: the base of every refusal farm explains in one line, with its exit code;
and how a message shows a value and suggests a near miss.

Each layer raises its own kind, named for what it refuses (SpecError, StoreError,
JobBusy, ...); the CLI catches this one type and prints `error: <message>`. A message is
one line and safe to print: line breaks fold into spaces, and the credentials a URL may
carry are cut out, whatever the raiser quoted.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Any

from farm.redact import redact

EXIT_BAD_INPUT = 2

# Every character str.splitlines() breaks at: a value quoted in a message (a key "\r")
# must not start a new line on the terminal.
_BREAKS = re.compile(r"\s*[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]\s*")


def one_line(message: object) -> str:
    """The message with its line breaks, and the space around them, turned into one space."""
    return _BREAKS.sub(" ", str(message)).strip()


class FarmError(Exception):
    """Input or a store that farm refuses: str() is one line naming what and what to do."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: object) -> None:
        super().__init__(redact(one_line(message)))


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
