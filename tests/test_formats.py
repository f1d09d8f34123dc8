"""A finished job reads with the tools people point at it: Hugging Face `datasets`
(`imagefolder`), duckdb, polars and pandas, catalog fields included."""

from __future__ import annotations

import os

import pytest

# Read by `datasets` when it is imported: never reach for the Hub.
os.environ["HF_DATASETS_OFFLINE"] = "1"

from farm.plan.sweep import expand, group_units, make_plan  # noqa: E402
from farm.records.parts import METADATA, compact, completed_items  # noqa: E402
from farm.run.job import job_context, open_job  # noqa: E402
from farm.spec import parse_spec  # noqa: E402
from farm.storage.store import LocalStore  # noqa: E402

PRODUCTS = {"A1": {"name": "mug", "color": "red"}, "A2": {"name": "cap", "color": "blue"}}


@pytest.fixture(scope="module")
def job(cpu_worker, tmp_path_factory):
    """A finished catalog job: 2 rows, 1 seed, 2 steps at 64x64, compacted."""
    folder = tmp_path_factory.mktemp("formats")
    lines = ["sku,name,color"] + [f"{k},{v['name']},{v['color']}" for k, v in PRODUCTS.items()]
    (folder / "products.csv").write_text("\n".join(lines) + "\n")
    data = {"job": "catalog", "seeds": [1],
            "catalog": {"path": "products.csv", "template": "{name}, {color}", "key": "sku"},
            "render": {"steps": 2, "width": 64, "height": 64}}  # fmt: skip
    plan = make_plan(parse_spec(data, base_dir=folder))
    store = LocalStore(folder / "out" / "catalog")
    open_job(plan, store, echo=lambda _: None)
    for unit in group_units(expand(plan)):
        cpu_worker.render(unit, job_context(plan, store))
    assert len(completed_items(store)) == 2
    assert compact(store) == 2
    return store.root


def by_sku(catalogs) -> dict[str, dict[str, str]]:
    """{sku: fields} from each row's catalog, given as lists of {key, value} pairs."""
    rows = [{p["key"]: p["value"] for p in pairs} for pairs in catalogs]
    return {r.pop("sku"): r for r in rows}


def test_datasets_loads_the_job_as_an_imagefolder(job, tmp_path):
    import datasets

    ds = datasets.load_dataset("imagefolder", data_dir=str(job), split="train",
                               cache_dir=str(tmp_path / "hf"))  # fmt: skip
    assert ds.num_rows == 2
    assert by_sku(ds["catalog"]) == PRODUCTS
    first = ds[0]
    assert first["image"].size == (64, 64)
    assert first["item_id"] and first["threads"] >= 1


def test_duckdb_reads_catalog_fields(job):
    import duckdb

    path = str(job / METADATA)
    rows = duckdb.sql(
        "SELECT map_from_entries(catalog)['sku'] AS sku, map_from_entries(catalog)['color'] "
        f"FROM read_parquet('{path}') ORDER BY sku"
    ).fetchall()
    assert rows == [("A1", "red"), ("A2", "blue")]


def test_polars_reads_catalog_fields(job):
    import polars as pl

    table = pl.read_parquet(job / METADATA)
    assert by_sku(table["catalog"].to_list()) == PRODUCTS
    pairs = table.select("item_id", "catalog").explode("catalog").unnest("catalog")
    colors = pairs.filter(pl.col("key") == "color")["value"]
    assert sorted(colors.to_list()) == ["blue", "red"]


def test_pandas_reads_catalog_fields(job):
    import pandas as pd

    frame = pd.read_parquet(job / METADATA)
    assert by_sku(list(frame["catalog"])) == PRODUCTS
    assert set(frame["file_name"]) == {f"images/{i}.png" for i in frame["item_id"]}
