"""Catalog jobs: prompts made from the rows of a CSV, JSONL or Parquet file.

Rows are streamed, so a catalog of millions of products is never held in memory at once;
only validate_catalog keeps the set of keys, to prove that they are unique. Every value
becomes a string (the row lands in the metadata's `catalog` as {key, value} pairs); a
null value counts as missing.
"""

from __future__ import annotations

import csv
import json
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.limits import MAX_PROMPT_CHARS
from farm.spec.errors import SpecError, show, suggest
from farm.spec.model import Catalog

BATCH_ROWS = 4096  # Parquet rows decoded at a time


@dataclass(frozen=True)
class CatalogRow:
    key: str
    prompt: str  # the template filled from the row
    fields: dict[str, str]  # every non-null column, as a string


SAME_PROMPT = "every row would get the same prompt"


def template_fields(template: str, field: str = "catalog.template",
                    makes: str = SAME_PROMPT) -> tuple[str, ...]:  # fmt: skip
    """The column names a template uses, in order of first use; SpecError naming `field`
    when it is bad (`makes`: what a template of no column would do)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise SpecError(f"{field}: {e} (write {{{{ or }}}} for a literal brace)") from None
    names: list[str] = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name == "" or name.isdigit():
            raise SpecError(f"{field}: fields must name a column, like {{name}}, not {{}}")
        if "." in name or "[" in name or (spec and "{" in spec):
            # Attribute, index and nested fields mean nothing on string values.
            raise SpecError(f"{field}: {{{name}}}: use a plain column name")
        if spec or conversion:
            # A width pads without bound ({name:>50000000}): a row's text is used as it is.
            shown = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise SpecError(f"{field}: {{{shown}}}: formats and conversions are not "
                            f"supported; write {{{name}}}")  # fmt: skip
        if name not in names:
            names.append(name)
    if not names:
        raise SpecError(f"{field}: uses no column, so {makes} (add fields like {{name}})")
    return tuple(names)


# Fields a friendly name may use beside the row's columns.
NAME_EXTRAS = ("seed", "preset", "key")


def name_fields(template: str) -> tuple[str, ...]:
    """The fields of a friendly-name template (`{sku}/{preset}-{seed}`); SpecError if bad."""
    return template_fields(template, "catalog.name", "every image would get the same name")


def read_catalog(catalog: Catalog) -> Iterator[CatalogRow]:
    """Stream the rows that pass the catalog's filter, with their prompts; SpecError at
    the first bad row (numbered as in the file, filtered rows included)."""
    names = template_fields(catalog.template)
    label = Path(catalog.path).name
    wanted = dict(catalog.filter)
    for n, fields in enumerate(_rows(catalog, names), 1):
        where = f"catalog: {label} row {n}"
        for column in wanted:
            if column not in fields:
                raise SpecError(f"{where}: column {column!r} (catalog.filter) missing")
        if all(fields[c] in v for c, v in wanted.items()):
            yield _make_row(catalog, where, fields, names)


def validate_catalog(catalog: Catalog) -> int:
    """Read the catalog once, check every row and the keys' uniqueness; the row count."""
    label = Path(catalog.path).name
    first_row: dict[str, int] = {}
    count = 0
    for count, row in enumerate(read_catalog(catalog), 1):
        first = first_row.setdefault(row.key, count)
        if first != count:
            raise SpecError(f"catalog: {label} row {count}: key column {catalog.key!r} value "
                            f"{row.key!r} repeats row {first} (keys must be unique)")  # fmt: skip
    if count == 0:
        if catalog.filter:
            raise SpecError(f"catalog.filter: no row of {label} passes the filter")
        raise SpecError(f"catalog: {label} has no rows")
    return count


def _make_row(catalog: Catalog, where: str, fields: dict[str, str], names: tuple) -> CatalogRow:
    key = fields.get(catalog.key)
    if key is None:
        raise SpecError(f"{where}: key column {catalog.key!r} missing")
    if not key.strip():
        raise SpecError(f"{where}: key column {catalog.key!r} is empty")
    for name in names:
        if name not in fields:
            raise SpecError(f"{where}: template field {{{name}}} missing")
    for by, what in ((catalog.preset_by, "preset_by"), (catalog.lora_by, "lora_by")):
        if by is None:
            continue
        if by.column not in fields and by.default is None:
            raise SpecError(f"{where}: column {by.column!r} (catalog.{what}) missing")
        if by.pick(fields) is None:
            raise SpecError(f"{where}: column {by.column!r} is {fields[by.column]!r}, which "
                            f"catalog.{what}.map does not list (add it, or a default)")  # fmt: skip
    if catalog.name is not None:
        for name in name_fields(catalog.name):
            if name not in fields and name not in NAME_EXTRAS:
                raise SpecError(f"{where}: catalog.name field {{{name}}} missing")
    try:
        prompt = catalog.template.format_map(fields)
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise SpecError(f"{where}: cannot fill the template: {e}") from None
    if not prompt.strip():
        raise SpecError(f"{where}: the prompt is empty")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise SpecError(f"{where}: the prompt is {len(prompt):,} characters, more than "
                        f"{MAX_PROMPT_CHARS:,}; shorten the row's text")  # fmt: skip
    return CatalogRow(key, prompt, fields)


def _rows(catalog: Catalog, names: tuple[str, ...]) -> Iterator[dict[str, str]]:
    """Rows as {column: text}, whatever the file format; file problems become SpecErrors."""
    path = Path(catalog.path)
    suffix = path.suffix.lower()
    readers = {".csv": _csv_rows, ".jsonl": _jsonl_rows, ".parquet": _parquet_rows}
    if suffix not in readers:
        raise SpecError(f"catalog.path: {path.name} is not a .csv, .jsonl or .parquet file")
    try:
        yield from readers[suffix](path, lambda cols: _check_columns(cols, catalog, names))
    except FileNotFoundError:
        raise SpecError(f"catalog.path: {path} not found") from None
    except UnicodeDecodeError:
        raise SpecError(f"catalog: {path.name} line {_bad_line(path)}: not UTF-8 text "
                        "(save the file as UTF-8)") from None  # fmt: skip
    except (OSError, csv.Error) as e:
        raise SpecError(f"catalog: cannot read {path.name}: {e}") from None


def _bad_line(path: Path) -> int:
    """The first line of a file that is not UTF-8."""
    with path.open("rb") as f:
        for n, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return n
    return 1


def _check_columns(columns: list[str], catalog: Catalog, names: tuple[str, ...]) -> None:
    """For formats with a header: name a missing column once, not on every row."""
    label = Path(catalog.path).name
    shown = ", ".join(columns[:20]) + (", …" if len(columns) > 20 else "")
    for name in names:
        if name not in columns:
            hint = suggest(name, columns)
            raise SpecError(
                f"catalog.template: {{{name}}} is not a column of {label}{hint} (columns: {shown})"
            )
    if catalog.key not in columns:
        hint = suggest(catalog.key, columns)
        raise SpecError(
            f"catalog.key: {catalog.key!r} is not a column of {label}{hint} (columns: {shown})"
        )
    used = [(f"catalog.filter.{c}", c) for c, _ in catalog.filter]
    used += [(f"catalog.{w}.column", by.column)
             for w, by in (("preset_by", catalog.preset_by), ("lora_by", catalog.lora_by))
             if by is not None]  # fmt: skip
    if catalog.name is not None:
        used += [("catalog.name", f) for f in name_fields(catalog.name) if f not in NAME_EXTRAS]
    for field, column in used:
        if column not in columns:
            hint = suggest(column, columns)
            raise SpecError(f"{field}: {column!r} is not a column of {label}{hint} "
                            f"(columns: {shown})")  # fmt: skip


def _csv_rows(path: Path, check) -> Iterator[dict[str, str]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise SpecError(f"catalog: {path.name} is empty (expected a header row)")
        header = [h.strip() for h in header]  # "name, color" is a common way to write one
        for i, column in enumerate(header):
            if column in header[:i]:
                raise SpecError(f"catalog: {path.name}: column {column!r} appears twice")
        check(header)
        for values in reader:
            if not values:  # a blank line
                continue
            if len(values) > len(header):
                raise SpecError(
                    f"catalog: {path.name} line {reader.line_num}: {len(values)} values "
                    f"but {len(header)} columns"
                )
            # A short row leaves its last columns missing, which the row checks report.
            yield dict(zip(header, values, strict=False))


def _jsonl_rows(path: Path, check) -> Iterator[dict[str, str]]:
    with path.open(encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise SpecError(
                    f"catalog: {path.name} line {line_no}: invalid JSON: {e.msg}"
                ) from None
            if not isinstance(obj, dict):
                raise SpecError(
                    f"catalog: {path.name} line {line_no}: expected a JSON object, got {show(obj)}"
                )
            yield {str(k): cell_text(v) for k, v in obj.items() if v is not None}


def _parquet_rows(path: Path, check) -> Iterator[dict[str, str]]:
    import pyarrow as pa  # lazily: only Parquet catalogs need it
    import pyarrow.parquet as pq

    try:
        # No reader threads: they can outlive the interpreter and abort it at exit (as
        # records.decode_part explains).
        parquet = pq.ParquetFile(path, pre_buffer=False)
        check(parquet.schema_arrow.names)
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, use_threads=False):
            for row in batch.to_pylist():
                yield {str(k): cell_text(v) for k, v in row.items() if v is not None}
    except pa.ArrowException as e:
        raise SpecError(f"catalog: cannot read {path.name} as Parquet: {e}") from None


def cell_text(value: Any) -> str:
    """A cell as text: JSON spelling for bools and containers, str() for the rest."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)
