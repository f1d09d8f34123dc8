"""A set of store keys held as 8-byte hashes.

A report of a million images writes and keeps hundreds of thousands of files (an
animation and a kept result per series); a Python set of their names would take over a
hundred bytes a key, this takes eight. A lookup can err only by a 64-bit hash collision
(about one in a billion at a million keys), and the report's uses are safe either way: a
stale file kept a while longer, or a kept result read, found unreadable and measured again.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable


class KeySet:
    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._hashes = array("Q")
        self._sorted = True
        for key in keys:
            self.add(key)

    def add(self, key: str) -> None:
        self._hashes.append(_hash(key))
        self._sorted = False

    def __contains__(self, key: object) -> bool:
        import numpy as np

        if not isinstance(key, str):
            return False
        values = np.frombuffer(self._hashes, dtype=np.uint64) if self._hashes else np.empty(0)
        if not self._sorted:
            values = np.unique(values)
            self._hashes = array("Q", values.tobytes())
            self._sorted = True
        h = np.uint64(_hash(key))
        i = int(np.searchsorted(values, h))
        return i < len(values) and values[i] == h


def _hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
