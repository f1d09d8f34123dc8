"""SpecError, and (from farm.errors, which every layer shares) how spec messages show a
value and suggest a near miss.

Shared by the spec's validation and by catalog validation, which checks a spec's catalog
file with the same one-line errors.
"""

from __future__ import annotations

from farm.errors import FarmError, show, suggest

__all__ = ["SpecError", "show", "suggest"]


class SpecError(FarmError, ValueError):
    """A bad spec. str(err) is one line: '<field path>: <what is wrong and what to do>'."""
