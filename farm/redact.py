"""Credentials written into URLs (`http://KEY:SECRET@host`) kept out of what farm prints
or stores: every message and record that can hold a URL passes through `redact`."""

from __future__ import annotations

import re

HIDDEN = "***"
# The userinfo of a URL with a scheme: everything up to the last '@' of the authority.
_WITH_SCHEME = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s?#@]*(?:@[^/\s?#@]*)*@")
# `user:password@host` without a scheme, as Ray and Jobs API addresses are often written.
# The host must look like one (a name, an IPv4 address or [IPv6], then an optional port):
# a LoRA tag's schedule, `<lora:x:1:sched=0.5@0,3@0.5>`, has `:` and `@` but no host.
_HOST = r"(?:[A-Za-z][\w-]*(?:\.[\w-]+)*|\d{1,3}(?:\.\d{1,3}){3}|\[[0-9A-Fa-f:.]+\])"
_BARE = re.compile(rf"(?<![\w.:/@%+<=-])[\w.%+-]+:[^\s/@]*@(?={_HOST}(?::\d+)?(?![\w.@,=]))")


def redact(text: str) -> str:
    """`text` with the userinfo of every URL in it replaced by ***."""
    text = _WITH_SCHEME.sub(lambda m: f"{m['scheme']}{HIDDEN}@", text)
    return _BARE.sub(f"{HIDDEN}@", text)
