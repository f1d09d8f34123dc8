"""FarmError: the base of every refusal farm explains in one line, with its exit code.

Each layer raises its own kind, named for what it refuses (SpecError, StoreError,
JobBusy, ...); the CLI catches this one type and prints `error: <message>`. A message is
one line and safe to print: line breaks fold into spaces, and the credentials a URL may
carry are cut out, whatever the raiser quoted.
"""

from __future__ import annotations

import re

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
