"""Credentials written into URLs (`http://KEY:SECRET@host`) kept out of what farm prints
or stores: every message and record that can hold a URL passes through `redact`."""

from __future__ import annotations

import re

HIDDEN = "***"
# The userinfo of a URL with a scheme: everything up to the last '@' of the authority.
_WITH_SCHEME = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s?#@]*(?:@[^/\s?#@]*)*@")
# `user:password@host` without a scheme, as Ray and Jobs API addresses are often written.
_BARE = re.compile(r"(?<![\w.:/@%+-])[\w.%+-]+:[^\s/@]*@(?=[\w\[])")


def redact(text: str) -> str:
    """`text` with the userinfo of every URL in it replaced by ***."""
    text = _WITH_SCHEME.sub(lambda m: f"{m['scheme']}{HIDDEN}@", text)
    return _BARE.sub(f"{HIDDEN}@", text)
