"""The strength-slider gallery: a static page and its data as plain scripts.

The page works opened from a local folder (file://), where fetch() of JSON is refused, so
the data ships as scripts the page adds with <script> elements, and it opens at any size:

    index.html, gallery.js, gallery.css   the page
    data/index.js            window.FARM_GALLERY = {...}: the axes with their values and
                             the entries per value, the chunk table, title, notes,
                             headlines, src template; never an entry
    data/entries-NNNN.js     window.farmEntries(N, start, [row, ...]): entries start,
                             start+1, ... of the gallery's order, all of one chunk key,
                             at most `chunking.page` of them; a row is [id, src (0 = the
                             template's), axis value indices (-1 = none), flags, d0]
    data/detail-NNNN.js      window.farmDetail(N, [{infotext, row}, ...]): entries
                             N*detail_chunk onwards, loaded when an image is opened

The index's "chunks" says which files hold which chunk key: {"axes": [axis positions],
"keys": [[value indices on those axes, entries, first page N, pages], ...]}, in order.
With no chunk axis (a gallery under `chunking.big_from` entries) one key holds every
entry and the page loads it all; otherwise the page loads one key at a time, the one its
chunk-axis filters select. gallery_chunks.py says how the chunk axes are chosen.

The gallery's order (chunk key, then every axis value, then the entry) depends only on
the set of entries, so a job rendered in two halves reports exactly as the whole.
"""

from __future__ import annotations

import html
import json
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from farm.report.gallery_chunks import (
    Chunking,
    EntrySpill,
    Peak,
    choose_chunk_axes,
    finite,
    sorted_records,
)

AXIS_KINDS = ("strength", "checkpoint", "prompt", "seed", "other")
_PAGE_ASSETS = ("gallery.js", "gallery.css")

# `<`, `>` and `&` escaped so no value can close the <script> or open a comment; U+2028/9
# are line terminators to older JavaScript parsers, though valid inside JSON strings.
_SCRIPT_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)

Put = Callable[[str, bytes], object]


def script_json(value: Any) -> str:
    """JSON that is safe to embed in a script: nothing in it can end the script element."""
    # default=str: a row's timestamps (created_at) are shown as their text.
    try:
        text = json.dumps(
            value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str
        )
    except ValueError:
        # NaN and infinity are not JSON; a metadata row from pandas may hold them.
        text = json.dumps(finite(value), ensure_ascii=False, separators=(",", ":"), default=str)
    return text.translate(_SCRIPT_ESCAPES)


@dataclass(frozen=True)
class GalleryWritten:
    """What write_gallery wrote."""

    count: int  # entries
    peak_held: int  # the most entries held in memory at once: at most chunking.hold
    chunk_axes: tuple[str, ...]  # shown one value at a time; () when the page loads all
    pages: int  # data/entries-NNNN.js files


def gallery_files(
    entries: Iterable[dict],
    *,
    title: str,
    axes: list[dict],
    notes: Sequence[str] = (),
    headlines: Sequence[str] = (),
    detail_chunk: int = 500,
    chunking: Chunking | None = None,
) -> dict[str, bytes]:
    """The gallery's files, keyed by path relative to the report folder.

    index.html, gallery.js, gallery.css, data/index.js, data/entries-0000.js, ... and
    data/detail-0000.js, ...
    """
    files: dict[str, bytes] = {}
    write_gallery(
        entries,
        files.__setitem__,
        title=title,
        axes=axes,
        notes=notes,
        headlines=headlines,
        detail_chunk=detail_chunk,
        chunking=chunking,
    )
    return files


def write_gallery(
    entries: Iterable[dict],
    put: Put,
    *,
    title: str,
    axes: list[dict],
    notes: Sequence[str] = (),
    headlines: Sequence[str] = (),
    detail_chunk: int = 500,
    chunking: Chunking | None = None,
) -> GalleryWritten:
    """Write the gallery into `put(path, data)`, holding at most `chunking.hold` entries.

    Entries are iterated once, in any order, and spilled to a temporary folder; the data
    files are put once they have all arrived, then data/index.js, then the page, so a
    half-written report never opens on missing data.
    """
    # 1. Check the arguments
    if detail_chunk < 1:
        raise ValueError(f"detail_chunk: must be at least 1, got {detail_chunk}")
    chunking = chunking or Chunking()
    chunking.check(detail_chunk)
    axes_out = _check_axes(axes)

    with tempfile.TemporaryDirectory(prefix="farm-gallery-") as folder:
        # 2. Spill every entry, counting values as they come
        spill = EntrySpill(Path(folder), axes_out)
        try:
            for entry in entries:
                spill.add(entry)
        finally:
            spill.close()
        remaps = spill.finish()
        chunk_axes = choose_chunk_axes(spill, chunking)

        # 3. Read them back in the gallery's order, into pages and detail files
        peak = Peak()
        pages = _Pages(put, spill.src_template(), chunk_axes, chunking.page, detail_chunk, peak)
        records = sorted_records(spill, remaps, chunk_axes, hold=chunking.hold,
                                 fan_in=chunking.fan_in(detail_chunk), peak=peak)  # fmt: skip
        for record in records:
            pages.add(record)
        pages.close()

    # 4. The index, then the page
    for axis, counts in zip(axes_out, spill.counts, strict=True):
        axis["counts"] = counts
    index = {
        "version": 2,
        "title": str(title),
        "notes": [str(note) for note in notes],
        # What the report concludes, shown above everything (which checkpoint to ship).
        "headlines": [str(line) for line in headlines],
        "axes": axes_out,
        "count": pages.n,
        "src": list(spill.src_template()),
        "detail": detail_chunk,
        "chunks": {"axes": chunk_axes, "keys": pages.keys},
    }
    put("data/index.js", f"window.FARM_GALLERY = {script_json(index)};\n".encode())
    _put_page(put, title)
    names = tuple(axes_out[k]["name"] for k in chunk_axes)
    return GalleryWritten(pages.n, peak.value, names, pages.page)


class _Pages:
    """Cuts records, in the gallery's order, into entry pages (each of one chunk key) and
    detail files (each of `detail_chunk` entries, whatever their keys)."""

    def __init__(
        self, put: Put, template: tuple[str, str], chunk_axes: list[int], size: int,
        detail_chunk: int, peak: Peak,
    ):  # fmt: skip
        self.put, self.template, self.chunk_axes = put, template, chunk_axes
        self.size, self.detail_chunk, self.peak = size, detail_chunk, peak
        self.keys: list[list] = []  # [values on the chunk axes, entries, first page, pages]
        self.rows: list[list] = []
        self.details: list[dict] = []
        self.n = 0  # entries added
        self.page = 0  # pages put

    def add(self, record: list) -> None:
        item_id, src, indices, flags, d0, infotext, row = record
        key = [indices[k] for k in self.chunk_axes]
        if not self.keys or self.keys[-1][0] != key:
            self._put_rows()
            self.keys.append([key, 0, self.page, 0])
        elif len(self.rows) == self.size:
            self._put_rows()
        short: str | int = 0 if src == item_id.join(self.template) else src
        self.rows.append([item_id, short, indices, flags, d0])
        self.details.append({"infotext": infotext, "row": row})
        self.keys[-1][1] += 1
        self.n += 1
        self.peak.note(len(self.rows) + len(self.details))
        if len(self.details) == self.detail_chunk:
            self._put_details()

    def close(self) -> None:
        self._put_rows()
        self._put_details()

    def _put_rows(self) -> None:
        if not self.rows:
            return
        start = self.n - len(self.rows)
        text = f"window.farmEntries({self.page},{start},{script_json(self.rows)});\n"
        self.put(f"data/entries-{self.page:04d}.js", text.encode())
        self.keys[-1][3] += 1
        self.page += 1
        self.rows = []

    def _put_details(self) -> None:
        if not self.details:
            return
        chunk = (self.n - len(self.details)) // self.detail_chunk
        text = f"window.farmDetail({chunk},{script_json(self.details)});\n"
        self.put(f"data/detail-{chunk:04d}.js", text.encode())
        self.details = []


def _put_page(put: Put, title: str) -> None:
    assets = resources.files("farm.report") / "assets"
    for name in _PAGE_ASSETS:
        put(name, (assets / name).read_bytes())
    page = (assets / "gallery.html").read_text(encoding="utf-8")
    put("index.html", page.replace("{{title}}", html.escape(str(title))).encode())


def _check_axes(axes: list[dict]) -> list[dict]:
    out: list[dict] = []
    seen: set[str] = set()
    for k, axis in enumerate(axes):
        name = str(axis.get("name") or "")
        if not name:
            raise ValueError(f"axes[{k}].name: every axis needs a name")
        if name in seen:
            raise ValueError(f"axes[{k}].name: {name!r} is used by two axes")
        seen.add(name)
        kind = axis.get("kind", "other")
        if kind not in AXIS_KINDS:
            raise ValueError(f"axes[{k}].kind: {kind!r} is not one of {', '.join(AXIS_KINDS)}")
        values = [str(v) for v in axis.get("values") or ()]
        label = str(axis.get("label") or name)
        out.append({"name": name, "label": label, "kind": kind, "values": values})
    return out
