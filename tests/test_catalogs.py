"""Catalog jobs in a house style: rows filtered, a preset per category, friendly names,
and one-line errors that name the row and the column."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from jobrun import farm, farm_here

from farm.spec import SpecError, parse_spec
from farm.tenancy.policy import resolver

RENDER = {"steps": 4, "width": 64, "height": 64, "batch": 8}
CATEGORIES = {"jewellery": "subtle", "sneakers": "bold", "bags": "standard"}


ROWS = 48


def write_catalog(path: Path, rows: int) -> list[dict]:
    shapes = ["circle", "square", "triangle", "star", "ring", "cross"]
    out = [{"sku": f"S{i:04d}", "category": list(CATEGORIES)[i % 3], "shape": shapes[i % 6],
            "colour": ["red", "blue", "green", "purple"][i % 4]} for i in range(rows)]  # fmt: skip
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(out[0]))
        writer.writeheader()
        writer.writerows(out)
    return out


def tenants_file(folder: Path) -> Path:
    path = folder / "tenants.yaml"
    path.write_text(yaml.safe_dump({
        "presets": {"subtle": {"weight": 0.3}, "standard": {"weight": 0.6},
                    "bold": {"weight": 1.0}},
        "tenants": {"shop": {"output": str(folder / "renders" / "shop"),
                             "loras": {"house": "tiny:neon"}, "catalogs": [str(folder)]}},
    }))  # fmt: skip
    return path


def catalog_spec(folder: Path, job: str, **catalog) -> Path:
    spec = {"job": job, "tenant": "shop", "loras": ["house"], "seeds": [0], "render": RENDER,
            "catalog": {"path": "products.csv", "key": "sku",
                        "template": "a {colour} {shape} on a white background",
                        "preset_by": {"column": "category", "map": CATEGORIES}}
            | catalog}  # fmt: skip
    path = folder / f"{job}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.slow
def test_a_catalog_renders_each_row_in_its_categorys_preset(tmp_path, tiny_dir):
    # 48 rows: every category, shape and colour together, four times over.
    products = write_catalog(tmp_path / "products.csv", ROWS)
    tenants = tenants_file(tmp_path)
    spec = catalog_spec(tmp_path, "catalog", name="{sku}/{preset}-{seed}")
    farm_here("run", str(spec), "--tenants", str(tenants), "--local")
    job = tmp_path / "renders" / "shop" / "catalog"
    table = pq.read_table(job / "metadata.parquet").to_pylist()
    assert len(table) == ROWS
    weights = {"subtle": 0.3, "standard": 0.6, "bold": 1.0}
    category = {p["sku"]: p["category"] for p in products}
    for row in table:
        sku = dict((p["key"], p["value"]) for p in row["catalog"])["sku"]
        preset = CATEGORIES[category[sku]]
        assert row["preset"] == preset and row["loras"][0]["weight"] == weights[preset]
        assert row["named_key"] == f"named/{sku}/{preset}-0.png"
        assert (job / row["named_key"]).read_bytes() == (job / row["image_key"]).read_bytes()
    assert len(list((job / "named").rglob("*.png"))) == ROWS
    assert (
        f"ok: {ROWS} planned items, {ROWS} rows, {ROWS} images" in farm("verify", str(job)).stdout
    )
    # A friendly copy that went missing is a problem verify names.
    (job / table[0]["named_key"]).unlink()
    proc = farm("verify", str(job), check=False)
    assert proc.returncode == 1 and f"{table[0]['named_key']}: missing" in proc.stdout
    (job / table[0]["named_key"]).write_bytes((job / table[0]["image_key"]).read_bytes())
    # Run again: nothing renders, nothing is rewritten.
    again = farm_here("run", str(spec), "--tenants", str(tenants), "--local").stdout
    assert f"{ROWS} already rendered" in again and "nothing to render" in again


def test_friendly_names_that_collide_are_refused_at_plan_time(tmp_path):
    write_catalog(tmp_path / "products.csv", 12)
    spec = catalog_spec(tmp_path, "clash", name="{category}/{preset}-{seed}")
    proc = farm("run", str(spec), "--tenants", str(tenants_file(tmp_path)), check=False)
    assert proc.returncode == 2
    assert "catalog.name: rows 'S0000' and 'S0003' (seed 0) both get the name " \
        "'jewellery/subtle-0'" in proc.stderr  # fmt: skip
    assert not (tmp_path / "renders").exists()


def test_a_filter_keeps_matching_rows(tmp_path):
    write_catalog(tmp_path / "products.csv", 30)
    spec = catalog_spec(tmp_path, "filtered", filter={"category": ["bags", "sneakers"],
                                                      "colour": "red"})  # fmt: skip
    out = farm("plan", str(spec), "--tenants", str(tenants_file(tmp_path)), "--json").stdout
    import json

    # Red is every 4th row, bags and sneakers two rows in three: rows 4, 8, 16, 20, 28.
    assert json.loads(out)["items"] == 5


def catalog(folder: Path, text: bytes | str, file: str = "p.csv", **extra) -> dict:
    path = folder / file
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return {"job": "c", "seeds": [0], "catalog": {"path": str(path), "key": "sku",
            "template": "a {colour} box"} | extra}  # fmt: skip


BAD = [
    ("missing-field", "sku,colour\nA,red\nB\n", {}, "p.csv row 2: template field {colour} missing"),
    ("encoding", b"sku,colour\nA,red\nB,r\xe9d\n", {}, "p.csv line 3: not UTF-8 text"),
    ("empty", "", {}, "p.csv is empty (expected a header row)"),
    ("duplicate-key", "sku,colour\nA,red\nA,blue\n", {},
     "p.csv row 2: key column 'sku' value 'A' repeats row 1"),
    ("filter-column", "sku,colour\nA,red\n", {"filter": {"color": "red"}},
     "catalog.filter.color: 'color' is not a column of p.csv (did you mean 'colour'?)"),
    ("filter-none", "sku,colour\nA,red\n", {"filter": {"colour": "blue"}},
     "catalog.filter: no row of p.csv passes the filter"),
    ("preset-by-column", "sku,colour\nA,red\n",
     {"preset_by": {"column": "kind", "map": {"x": "bold"}}},
     "catalog.preset_by.column: 'kind' is not a column of p.csv"),
    ("preset-by-unmapped", "sku,colour,kind\nA,red,x\nB,blue,y\n",
     {"preset_by": {"column": "kind", "map": {"x": "bold"}}},
     "p.csv row 2: column 'kind' is 'y', which catalog.preset_by.map does not list"),
    ("name-column", "sku,colour\nA,red\n", {"name": "{sku}/{size}"},
     "catalog.name: 'size' is not a column of p.csv"),
    ("name-constant", "sku,colour\nA,red\n", {"name": "all"},
     "catalog.name: uses no column, so every image would get the same name"),
    ("jsonl-missing", '{"sku": "A", "colour": "red"}\n{"sku": "B"}\n', {},
     "p.jsonl row 2: template field {colour} missing"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "extra", "expected"),
                         [pytest.param(t, x, e, id=i) for i, t, x, e in BAD])  # fmt: skip
def test_catalog_errors_name_the_row_and_column(tmp_path, text, extra, expected):
    name = "p.jsonl" if "jsonl" in expected else "p.csv"
    with pytest.raises(SpecError) as info:
        parse_spec(catalog(tmp_path, text, name, **extra), base_dir=tmp_path)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_preset_by_without_a_tenants_file_says_what_to_give(tmp_path):
    data = catalog(tmp_path, "sku,colour,kind\nA,red,x\n",
                   preset_by={"column": "kind", "map": {"x": "bold"}})  # fmt: skip
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    proc = farm("plan", str(path), check=False, env={**__import__("os").environ,
                                                     "FARM_TENANTS": ""})  # fmt: skip
    assert proc.returncode == 2 and "give --tenants" in proc.stderr


def test_lora_by_gives_each_row_its_lora_at_the_preset_weight(tmp_path):
    from farm.plan.sweep import expand, make_plan
    from farm.spec import load_spec
    from farm.tenancy.tenants import load_tenants

    (tmp_path / "p.csv").write_text("sku,colour,brand\nA,red,neon\nB,blue,ink\nC,green,other\n")
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(yaml.safe_dump({
        "presets": {"subtle": {"weight": 0.3}, "wide": {"loras": {"elsewhere": 1}}},
        "tenants": {"shop": {"output": str(tmp_path / "out"), "catalogs": [str(tmp_path)],
                             "loras": {"n": "tiny:neon", "i": "tiny:ink"}}}}))  # fmt: skip
    spec_path = tmp_path / "s.yaml"
    spec_path.write_text(yaml.safe_dump({
        "job": "by-brand", "tenant": "shop", "seeds": [0], "preset": "subtle",
        "catalog": {"path": "p.csv", "key": "sku", "template": "a {colour} box",
                    "lora_by": {"column": "brand", "map": {"neon": "n", "ink": "i"},
                                "default": "n"}}}))  # fmt: skip
    plan = make_plan(load_spec(spec_path, resolver(load_tenants(str(tenants)))))
    got = {dict(i.catalog)["sku"]: [(n, w.unet) for n, w in i.loras] for i in expand(plan)}
    assert got == {"A": [("n", 0.3)], "B": [("i", 0.3)], "C": [("n", 0.3)]}
    assert {i.preset for i in expand(plan)} == {"subtle"}
    # A global preset naming a LoRA this tenant lacks is refused where it is picked.
    data = yaml.safe_load(spec_path.read_text())
    data.pop("catalog")
    spec_path.write_text(yaml.safe_dump(data | {"prompts": ["a box"], "preset": "wide"}))
    proc = farm("plan", str(spec_path), "--tenants", str(tenants), check=False)
    assert proc.returncode == 2
    assert "preset 'wide': LoRA 'elsewhere' is not a LoRA of tenant shop" in proc.stderr


@pytest.mark.parametrize("sku", ["../evil", "/etc/x", "a//b", "a/./b"])
def test_a_friendly_name_never_climbs_out_of_named(tmp_path, sku):
    (tmp_path / "products.csv").write_text(f"sku,colour,shape,category\n{sku},red,ring,bags\n")
    spec = catalog_spec(tmp_path, "climb", name="{sku}-{seed}")
    proc = farm("plan", str(spec), "--tenants", str(tenants_file(tmp_path)), check=False)
    assert proc.returncode == 2
    assert "is not a plain relative name" in proc.stderr and "Traceback" not in proc.stderr
