"""The gallery's entries on their way to the page: spilled, counted, sorted and keyed.

A gallery may hold millions of images, so its writer never holds them all. Each entry is
written as one JSON line to a spill file in a temporary folder as it arrives, in any
order, while the counts the index needs (entries per axis value, src templates) are kept.
At the end the chunk axes are chosen from those counts, and the spill is read back sorted
by chunk key, then by every axis value, then by the entry itself: an external merge sort
of runs of at most `hold` entries, merged at most `fan_in` runs at a time. The gallery's
order therefore depends only on the set of entries, never on the order they came in.

The chunk axes are those the page shows one value of at a time in a big gallery (one of
`big_from` entries or more): the first of the prompt, seed and other axes (in that order
of preference) whose largest value holds at most `key_limit` entries. When none does, the
two that split the job finest go together, one combination at a time. Strength and
checkpoint axes are never chunk axes: a slider moves along them and must not wait for a
file. A small gallery has no chunk axis: the page loads all of it.
"""

from __future__ import annotations

import heapq
import json
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_SRC = ("../images/", ".png")
BIG_FROM = 20_000  # from this many entries on, the page loads one chunk key at a time
KEY_LIMIT = 5_000  # the most entries one chunk key should hold
PAGE = 2_000  # the most entries in one data/entries-NNNN.js
HOLD = 4_096  # the most entries the writer holds in memory at once
MAX_FAN_IN = 64  # sorted runs merged at once: each is an open file
# Preference among chunk axes; strength and checkpoint axes are never chunked.
CHUNK_KINDS = ("prompt", "seed", "other")
_HEX = 8  # digits per value index in a run line's sort prefix


@dataclass(frozen=True)
class Chunking:
    """How a gallery's entries are cut into files, and how many the writer may hold."""

    big_from: int = BIG_FROM
    key_limit: int = KEY_LIMIT
    page: int = PAGE
    hold: int = HOLD

    def fan_in(self, detail_chunk: int) -> int:
        """Runs merged at once: what `hold` leaves beside a page and a detail file of entries."""
        return min(MAX_FAN_IN, self.hold - self.page - detail_chunk)

    def check(self, detail_chunk: int) -> None:
        for name in ("big_from", "key_limit", "page", "hold"):
            if getattr(self, name) < 1:
                raise ValueError(f"chunking.{name}: must be at least 1, got {getattr(self, name)}")
        if self.fan_in(detail_chunk) < 2:
            least = self.page + detail_chunk + 2
            raise ValueError(
                f"chunking.hold: {self.hold} leaves no room to merge beside pages of "
                f"{self.page} and detail files of {detail_chunk} entries (at least {least})"
            )


class Peak:
    """The most entries held in memory at once, as the writer counts them: `reading` held
    by the sorted reader (a line per run it merges), plus those the caller notes."""

    def __init__(self) -> None:
        self.value = 0
        self.reading = 0

    def note(self, held: int) -> None:
        self.value = max(self.value, self.reading + held)


class EntrySpill:
    """Entries as JSON lines in `folder`, with their counts per axis value kept beside.

    A record is [id, src, value indices, flags, d0, infotext, metadata row]. A value an
    axis did not list is added to it as it is met; finish() puts such values in a fixed
    order so that arrival order leaves no trace.
    """

    def __init__(self, folder: Path, axes: list[dict]):
        self.path = folder / "spill.jsonl"
        self.axes = axes
        self.count = 0
        self.counts = [[0] * len(axis["values"]) for axis in axes]
        self.missing = [0] * len(axes)  # entries with no value on the axis
        self.templates: Counter[tuple[str, str]] = Counter()
        self._listed = [len(axis["values"]) for axis in axes]
        self._lookups = [{v: i for i, v in enumerate(axis["values"])} for axis in axes]
        self._file = self.path.open("w", encoding="ascii", newline="\n")

    def add(self, entry: dict) -> None:
        item_id, src = _id_and_src(entry, self.count)
        before, found, after = src.rpartition(item_id)
        if found:
            self.templates[(before, after)] += 1
        values = entry.get("axes") or {}
        indices = [self._index(k, values) for k in range(len(self.axes))]
        flags = [str(f) for f in entry.get("flags") or ()]
        detail = entry.get("detail") or {}
        infotext = str(detail.get("infotext") or "")
        record = [item_id, src, indices, flags, _d0(entry.get("d0")), infotext, detail.get("row")]
        self._file.write(_line(record) + "\n")
        self.count += 1

    def close(self) -> None:
        self._file.close()

    def finish(self) -> list[list[int]]:
        """Close the spill; order each axis' unlisted values after its listed ones, numbers
        first. Returns, per axis, the final index of each value index the spill holds."""
        self.close()
        remaps = []
        for k, axis in enumerate(self.axes):
            listed, values = self._listed[k], axis["values"]
            extra = sorted(range(listed, len(values)), key=lambda i: _value_order(values[i]))
            remap = list(range(len(values)))
            for place, i in enumerate(extra):
                remap[i] = listed + place
            axis["values"] = values[:listed] + [values[i] for i in extra]
            self.counts[k] = self.counts[k][:listed] + [self.counts[k][i] for i in extra]
            remaps.append(remap)
        return remaps

    def src_template(self) -> tuple[str, str]:
        """The (before, after) around an id that most srcs share; the page rebuilds those."""
        if not self.templates:
            return DEFAULT_SRC
        return min(self.templates.items(), key=lambda item: (-item[1], item[0]))[0]

    def _index(self, k: int, values: dict) -> int:
        """The value's position on axis k; -1 when the entry has no value on it."""
        value = values.get(self.axes[k]["name"])
        if value is None:
            self.missing[k] += 1
            return -1
        value = str(value)
        lookup = self._lookups[k]
        index = lookup.get(value)
        if index is None:
            # A value the axis did not list still gets a place, after the listed ones.
            index = lookup[value] = len(self.axes[k]["values"])
            self.axes[k]["values"].append(value)
            self.counts[k].append(0)
        self.counts[k][index] += 1
        return index


def choose_chunk_axes(spill: EntrySpill, chunking: Chunking) -> list[int]:
    """The axes (by position) the page shows one value of at a time; [] loads everything."""
    if spill.count < chunking.big_from:
        return []
    largest: dict[int, int] = {}
    for k, axis in enumerate(spill.axes):
        # Entries with no value on the axis are a group too: they load together.
        groups = [c for c in [*spill.counts[k], spill.missing[k]] if c]
        if axis["kind"] in CHUNK_KINDS and len(groups) > 1:
            largest[k] = max(groups)
    candidates = sorted(largest, key=lambda k: CHUNK_KINDS.index(spill.axes[k]["kind"]))
    for k in candidates:
        if largest[k] <= chunking.key_limit:
            return [k]
    # No axis alone splits the job finely enough: the two that split it finest, together.
    return sorted(sorted(candidates, key=lambda k: largest[k])[:2])


def sorted_records(
    spill: EntrySpill, remaps: list[list[int]], chunk_axes: list[int], *, hold: int, fan_in: int,
    peak: Peak,
) -> Iterator[list]:  # fmt: skip
    """The spilled records, value indices final, in the gallery's order: by chunk key, then
    every axis value, then the record's own text, so equal sets give equal sequences.

    Each run line starts with its indices in fixed-width hex: runs merge by comparing
    lines as text, with no parsing. The final merge holds one line per run.
    """
    runs = _sorted_runs(spill, remaps, chunk_axes, hold, peak)
    level = 0
    while len(runs) > fan_in:
        level += 1
        peak.note(fan_in)
        groups = [runs[i : i + fan_in] for i in range(0, len(runs), fan_in)]
        runs = [_merge_into(group, spill.path.with_name(f"merge-{level}-{n:05d}.txt"))
                for n, group in enumerate(groups)]  # fmt: skip
    prefix = _HEX * (len(chunk_axes) + len(spill.axes))
    files = [run.open(encoding="ascii", newline="\n") for run in runs]
    peak.reading = len(files)
    try:
        for line in heapq.merge(*files):
            yield json.loads(line[prefix:])
    finally:
        peak.reading = 0
        for file in files:
            file.close()


def _sorted_runs(
    spill: EntrySpill, remaps: list[list[int]], chunk_axes: list[int], hold: int, peak: Peak
) -> list[Path]:
    runs: list[Path] = []
    with spill.path.open(encoding="ascii", newline="\n") as source:
        batch: list[str] = []
        for line in source:
            record = json.loads(line)
            record[2] = [remaps[k][i] if i >= 0 else -1 for k, i in enumerate(record[2])]
            keys = [record[2][k] for k in chunk_axes] + record[2]
            batch.append("".join(f"{i + 1:0{_HEX}x}" for i in keys) + _line(record) + "\n")
            if len(batch) == hold:
                runs.append(_write_run(batch, spill.path.with_name(f"run-{len(runs):05d}.txt")))
                peak.note(len(batch))
                batch = []
        if batch or not runs:
            runs.append(_write_run(batch, spill.path.with_name(f"run-{len(runs):05d}.txt")))
            peak.note(len(batch))
    spill.path.unlink()
    return runs


def _write_run(lines: list[str], path: Path) -> Path:
    lines.sort()
    with path.open("w", encoding="ascii", newline="\n") as out:
        out.writelines(lines)
    return path


def _merge_into(runs: list[Path], path: Path) -> Path:
    files = [run.open(encoding="ascii", newline="\n") for run in runs]
    try:
        with path.open("w", encoding="ascii", newline="\n") as out:
            out.writelines(heapq.merge(*files))
    finally:
        for file in files:
            file.close()
    for run in runs:
        run.unlink()
    return path


def _line(value: Any) -> str:
    """One JSON line, ASCII only: a record's text keeps no raw newline or separator."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False, default=str)
    except ValueError:
        # NaN and infinity are not JSON; a metadata row from pandas may hold them.
        return json.dumps(finite(value), separators=(",", ":"), default=str)


def finite(value: Any) -> Any:
    """The value with every NaN and infinity, however deep, made None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def _value_order(value: str) -> tuple[int, float, str]:
    try:
        number = float(value)
    except ValueError:
        return (1, 0.0, value)
    return (0, number, value) if math.isfinite(number) else (1, 0.0, value)


def _id_and_src(entry: dict, n: int) -> tuple[str, str]:
    item_id = entry.get("id")
    if not item_id:
        raise ValueError(f"gallery entry {n}: it has no 'id'")
    item_id = str(item_id)
    src = str(entry.get("src") or f"{DEFAULT_SRC[0]}{item_id}{DEFAULT_SRC[1]}")
    return item_id, src


def _d0(value: object) -> float | None:
    if value is None:
        return None
    number = float(value)  # type: ignore[arg-type]
    return round(number, 4) if math.isfinite(number) else None
