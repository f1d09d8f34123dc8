"""The strength-slider gallery: a static page and its data as plain scripts.

The page works opened from a local folder (file://), where fetch() of JSON is refused, so
the data ships as scripts: `data/index.js` sets `window.FARM_GALLERY` (one compact row
per image) and `data/detail-NNNN.js` call `window.farmDetail(k, [...])` with the infotext
and metadata row of up to `detail_chunk` images each, loaded when an image is opened.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from typing import Any

AXIS_KINDS = ("strength", "checkpoint", "prompt", "seed", "other")
DEFAULT_SRC = ("../images/", ".png")
_PAGE_ASSETS = ("gallery.js", "gallery.css")

# `<`, `>` and `&` escaped so no value can close the <script> or open a comment; U+2028/9
# are line terminators to older JavaScript parsers, though valid inside JSON strings.
_SCRIPT_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def script_json(value: Any) -> str:
    """JSON that is safe to embed in a script: nothing in it can end the script element."""
    # default=str: a row's timestamps (created_at) are shown as their text.
    try:
        text = json.dumps(
            value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str
        )
    except ValueError:
        # NaN and infinity are not JSON; a metadata row from pandas may hold them.
        text = json.dumps(_finite(value), ensure_ascii=False, separators=(",", ":"), default=str)
    return text.translate(_SCRIPT_ESCAPES)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def gallery_files(
    entries: Iterable[dict],
    *,
    title: str,
    axes: list[dict],
    notes: Sequence[str] = (),
    headlines: Sequence[str] = (),
    detail_chunk: int = 500,
) -> dict[str, bytes]:
    """The gallery's files, keyed by path relative to the report folder.

    index.html, gallery.js, gallery.css, data/index.js and data/detail-0000.js, ...
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
    )
    return files


def write_gallery(
    entries: Iterable[dict],
    put: Callable[[str, bytes], object],
    *,
    title: str,
    axes: list[dict],
    notes: Sequence[str] = (),
    headlines: Sequence[str] = (),
    detail_chunk: int = 500,
) -> int:
    """Stream the gallery into `put(path, data)`, each detail chunk as soon as it is full.

    Entries are iterated once; only the compact index rows stay in memory. The page itself
    is put last, so a half-written report never opens on missing data. Returns the number
    of entries.
    """
    # 1. Check the axes
    if detail_chunk < 1:
        raise ValueError(f"detail_chunk: must be at least 1, got {detail_chunk}")
    axes_out = _check_axes(axes)
    lookups = [{v: i for i, v in enumerate(a["values"])} for a in axes_out]

    # 2. Stream the entries: an index row each, details flushed chunk by chunk
    rows: list[list] = []
    details: list[dict] = []
    src_template: tuple[str, str] | None = None
    for n, entry in enumerate(entries):
        item_id, src = _id_and_src(entry, n)
        if src_template is None:
            before, found, after = src.rpartition(item_id)
            src_template = (before, after) if found else DEFAULT_SRC
        short_src: str | int = 0 if src == src_template[0] + item_id + src_template[1] else src
        values = entry.get("axes") or {}
        indices = [
            _value_index(axis, lookup, values)
            for axis, lookup in zip(axes_out, lookups, strict=True)
        ]
        flags = [str(f) for f in entry.get("flags") or ()]
        rows.append([item_id, short_src, indices, flags, _d0(entry.get("d0"))])

        detail = entry.get("detail") or {}
        details.append({"infotext": str(detail.get("infotext") or ""), "row": detail.get("row")})
        if len(details) == detail_chunk:
            _put_detail(put, n // detail_chunk, details)
            details = []
    if details:
        _put_detail(put, len(rows) // detail_chunk, details)

    # 3. The index, then the page
    index = {
        "version": 1,
        "title": str(title),
        "notes": [str(note) for note in notes],
        # What the report concludes, shown above everything (which checkpoint to ship).
        "headlines": [str(line) for line in headlines],
        "axes": axes_out,
        "chunk": detail_chunk,
        "count": len(rows),
        "src": list(src_template or DEFAULT_SRC),
        "entries": rows,
    }
    put("data/index.js", f"window.FARM_GALLERY = {script_json(index)};\n".encode())
    assets = resources.files("farm.report") / "assets"
    for name in _PAGE_ASSETS:
        put(name, (assets / name).read_bytes())
    page = (assets / "gallery.html").read_text(encoding="utf-8")
    put("index.html", page.replace("{{title}}", html.escape(str(title))).encode())
    return len(rows)


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


def _id_and_src(entry: dict, n: int) -> tuple[str, str]:
    item_id = entry.get("id")
    if not item_id:
        raise ValueError(f"gallery entry {n}: it has no 'id'")
    item_id = str(item_id)
    src = str(entry.get("src") or f"{DEFAULT_SRC[0]}{item_id}{DEFAULT_SRC[1]}")
    return item_id, src


def _value_index(axis: dict, lookup: dict[str, int], values: dict) -> int:
    """The value's position on its axis; -1 when the entry has no value on that axis."""
    value = values.get(axis["name"])
    if value is None:
        return -1
    value = str(value)
    index = lookup.get(value)
    if index is None:
        # A value the axis list did not name still gets a place, after the listed ones.
        index = lookup[value] = len(axis["values"])
        axis["values"].append(value)
    return index


def _d0(value: object) -> float | None:
    if value is None:
        return None
    number = float(value)  # type: ignore[arg-type]
    return round(number, 4) if math.isfinite(number) else None


def _put_detail(put: Callable[[str, bytes], object], chunk: int, details: list[dict]) -> None:
    put(
        f"data/detail-{chunk:04d}.js",
        f"window.farmDetail({chunk},{script_json(details)});\n".encode(),
    )
