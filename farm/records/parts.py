"""Metadata rows: the Arrow schema, parts, compaction and reading a job's rows."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from farm.storage.store import Store

LORA_TYPE = pa.struct(
    [
        ("name", pa.string()),
        ("sha256", pa.string()),
        ("shorthash", pa.string()),
        ("weight", pa.float64()),
        ("te_weight", pa.float64()),
        ("unet_weight", pa.float64()),
        ("blocks", pa.string()),  # LBW preset or 17 values, or the dict form as JSON
        ("schedule", pa.string()),  # keyframes value@fraction,…
        # The file's tensors that adapt a layer of the model, and those it drops.
        ("applied", pa.int64()),
        ("dropped", pa.int64()),
        # A checkpoint of a training run: the run's name in the spec, the file, and the
        # steps and epochs it was trained for (where its metadata or name says).
        (
            "checkpoint",
            pa.struct(
                [
                    ("run", pa.string()),
                    ("file", pa.string()),
                    ("step", pa.int64()),
                    ("epoch", pa.int64()),
                ]
            ),
        ),
    ]
)
CATALOG_TYPE = pa.list_(pa.struct([("key", pa.string()), ("value", pa.string())]))
SCHEMA = pa.schema(
    [
        ("job_id", pa.string()),
        ("tenant", pa.string()),
        ("item_id", pa.string()),
        ("unit_id", pa.string()),
        ("prompt", pa.string()),
        ("negative_prompt", pa.string()),
        ("seed", pa.int64()),
        ("rng", pa.string()),
        ("model", pa.string()),
        ("model_hash", pa.string()),
        ("loras", pa.list_(LORA_TYPE)),
        ("alpha", pa.float64()),
        ("preset", pa.string()),
        ("steps", pa.int32()),
        ("guidance", pa.float64()),
        ("scheduler", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        # A catalog row's fields as {key, value} pairs: Hugging Face datasets has no type for
        # an Arrow map, and pairs read the same in datasets, duckdb, polars and pandas.
        ("catalog", CATALOG_TYPE),
        ("image_key", pa.string()),
        ("file_name", pa.string()),
        ("image_sha256", pa.string()),
        ("image_bytes", pa.int64()),
        ("format", pa.string()),
        ("render_seconds", pa.float64()),
        ("batch_size", pa.int32()),
        ("worker", pa.string()),
        ("node", pa.string()),
        ("gpu", pa.string()),
        ("threads", pa.int32()),  # torch threads: CPU images are bit-exact only at one count
        ("attempt", pa.int32()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("infotext", pa.string()),
        ("flags", pa.list_(pa.string())),  # nonfinite, saturated, flat
        ("named_key", pa.string()),  # a catalog's friendly copy: named/{catalog.name}.{ext}
        ("batch_items", pa.list_(pa.string())),  # the item_ids of its pipeline call, in order
    ]
)
# Added after the first release: parts written before them are read with nulls there.
LATER_COLUMNS = {"flags", "threads", "named_key", "batch_items"}
PARTS = "parts/"
METADATA = "metadata.parquet"
# Rows per row group of metadata.parquet: a reader takes the table a group at a time, so
# a million rows never have to be in memory at once.
ROW_GROUP_ROWS = 8192


class CorruptPart(ValueError):
    """A part that is not readable Parquet with farm's schema."""


def part_key(unit_id: str) -> str:
    return f"{PARTS}{unit_id}.parquet"


def encode_rows(rows: list[dict]) -> bytes:
    """Rows (dicts keyed by SCHEMA's names) as one Parquet file's bytes."""
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def decode_part(data: bytes, columns: list[str] | None = None) -> pa.Table:
    try:
        # No reader threads (pre-buffering I/O, column decoding): they can still be alive
        # when the interpreter exits and abort it after the work is done ("terminate
        # called without an active exception", apache/arrow#34314). Parts are small.
        parquet = pq.ParquetFile(pa.BufferReader(data), pre_buffer=False)
        table = parquet.read(columns=columns, use_threads=False)
    except (pa.ArrowException, OSError) as err:
        raise CorruptPart(str(err).splitlines()[0]) from None
    return _conform(table, columns)


def iter_compacted(store: Store, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """metadata.parquet a row group at a time (ROW_GROUP_ROWS rows, as `compact` writes
    it), read from a file rather than from its bytes in memory."""
    with store.reading(METADATA) as f:
        try:
            parquet = pq.ParquetFile(f, pre_buffer=False)
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group, columns=columns, use_threads=False)
                yield _conform(table, columns)
        except (pa.ArrowException, OSError) as err:
            raise CorruptPart(f"{METADATA}: {str(err).splitlines()[0]}") from None


def _conform(table: pa.Table, columns: list[str] | None) -> pa.Table:
    missing = set(columns or SCHEMA.names) - set(table.column_names)
    if missing - LATER_COLUMNS:
        raise CorruptPart(f"missing columns {sorted(missing)}")
    schema = pa.schema([SCHEMA.field(c) for c in columns or SCHEMA.names])
    if table.schema != schema or missing:
        # A part from an earlier farm: the columns (and LoRA fields) added since are null,
        # and a catalog written as an Arrow map reads as its list of {key, value} pairs.
        table = pa.Table.from_pylist(table.to_pylist(), schema=schema)
    return table


def catalog_pairs(fields) -> list[dict] | None:
    """A catalog row's (name, value) fields as the `catalog` column holds them."""
    return [{"key": k, "value": v} for k, v in fields] or None


def iter_parts(
    store: Store, columns: list[str] | None = None
) -> Iterator[tuple[str, pa.Table | CorruptPart]]:
    """(key, table) for every part of a job; a corrupt part yields its error instead."""
    for key in store.list(PARTS):
        if not key.endswith(".parquet"):
            continue
        try:
            yield key, decode_part(store.get(key), columns)
        except CorruptPart as err:
            yield key, err


def scan_parts(store: Store) -> tuple[set[str], list[str]]:
    """Completion truth: item_ids with a row in a readable part, and the corrupt parts."""
    done: set[str] = set()
    corrupt: list[str] = []
    for key, table in iter_parts(store, ["item_id"]):
        if isinstance(table, pa.Table):
            done.update(table.column("item_id").to_pylist())
        else:
            corrupt.append(key)
    return done, corrupt


def completed_items(store: Store) -> set[str]:
    return scan_parts(store)[0]


def read_rows(store: Store) -> pa.Table:
    """Every row of every readable part, one row per item (first part wins)."""
    tables = [t for _, t in iter_parts(store) if isinstance(t, pa.Table)]
    if not tables:
        return SCHEMA.empty_table()
    table = pa.concat_tables([t.cast(SCHEMA) for t in tables])
    ids = table.column("item_id").to_pylist()
    first: dict[str, int] = {}
    for i, item_id in enumerate(ids):
        first.setdefault(item_id, i)
    if len(first) != len(ids):
        table = table.take(sorted(first.values()))
    return table


def compact(store: Store) -> int:
    """Write metadata.parquet from the parts, sorted by item_id; safe to rerun."""
    table = read_rows(store)
    table = table.sort_by("item_id")
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    store.put(METADATA, buf.getvalue())
    return table.num_rows
