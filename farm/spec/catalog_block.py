"""A spec's `catalog:` block: the file, its template and key, and what picks rows and
settings (filter, preset_by, lora_by) and names the outputs (name)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from farm.spec.catalog_rows import (
    cell_text,  # values spelled as the reader spells cells
    name_fields,
    validate_catalog,
)
from farm.spec.errors import SpecError, show
from farm.spec.model import ByColumn, Catalog

CATALOG_SUFFIXES = (".csv", ".jsonl", ".parquet")
CATALOG_KEYS = ("path", "template", "key", "filter", "name", "preset_by", "lora_by")
BY_KEYS = ("column", "map", "default")


def parse_catalog(value: Any, base: Path) -> Catalog:
    from farm.spec.fields import (
        URL_RE,
        as_local_path,
        as_mapping,
        as_str,
        check_keys,
        required_field,
    )

    m = as_mapping(value, "catalog", "a mapping {path, template, key}")
    check_keys(m, CATALOG_KEYS, "catalog")
    text = as_str(
        required_field(m, "path", "a .csv, .jsonl or .parquet file", "catalog"), "catalog.path"
    )
    template = as_str(required_field(m, "template", "e.g. '{name}, studio photo'", "catalog"),
                    "catalog.template")  # fmt: skip
    key = as_str(
        required_field(m, "key", "the column that identifies a row", "catalog"), "catalog.key"
    )
    if URL_RE.match(text):
        raise SpecError(f"catalog.path: {text} — a catalog must be a local file")
    local = as_local_path(text, base)
    if local.suffix.lower() not in CATALOG_SUFFIXES:
        raise SpecError(f"catalog.path: {local.name} is not a .csv, .jsonl or .parquet file")
    if not local.is_file():
        raise SpecError(f"catalog.path: {local} not found")
    name = None
    if m.get("name") is not None:
        name = as_str(m["name"], "catalog.name")
        name_fields(name)  # a bad template is refused before any row is read
    catalog = Catalog(str(local), template, key, _filter(m.get("filter")), name,
                      _by(m.get("preset_by"), "catalog.preset_by", "preset"),
                      _by(m.get("lora_by"), "catalog.lora_by", "LoRA"))  # fmt: skip
    validate_catalog(catalog)
    return catalog


def _filter(value: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    from farm.spec.fields import as_mapping

    if value is None:
        return ()
    m = as_mapping(value, "catalog.filter", "a mapping {column: value or [values]}")
    out = []
    for column, wanted in m.items():
        at = f"catalog.filter.{column}"
        values = wanted if isinstance(wanted, list) else [wanted]
        if not values:
            raise SpecError(f"{at}: the list is empty (give the values a row may have)")
        texts = []
        for v in values:
            if isinstance(v, dict | list) or v is None:
                raise SpecError(f"{at}: expected a value or a list of values, got {show(v)}")
            texts.append(cell_text(v))
        out.append((str(column), tuple(texts)))
    return tuple(out)


def _by(value: Any, at: str, what: str) -> ByColumn | None:
    from farm.spec.fields import NAME_RE, as_mapping, as_str, check_keys, required_field

    if value is None:
        return None
    m = as_mapping(value, at, f"a mapping {{column, map: {{value: {what}}}, default}}")
    check_keys(m, BY_KEYS, at)
    column = as_str(required_field(m, "column", "the catalog column whose value decides", at),
                  f"{at}.column")  # fmt: skip
    table = as_mapping(required_field(m, "map", f"{{column value: {what}}}", at), f"{at}.map")
    if not table:
        raise SpecError(f"{at}.map: is empty (map column values to a {what})")
    pairs = []
    for v, target in table.items():
        name = as_str(target, f"{at}.map.{v}")
        if not NAME_RE.fullmatch(name):
            raise SpecError(f"{at}.map.{v}: {show(name)} is not a {what} name")
        pairs.append((cell_text(v), name))
    default = m.get("default")
    if default is not None:
        default = as_str(default, f"{at}.default")
    return ByColumn(column, tuple(pairs), default)
