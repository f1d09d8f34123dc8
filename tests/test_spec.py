"""Job spec loading and validation: one-line errors for bad specs, exact values for good ones."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from farm.spec import (
    Catalog,
    LoraAxis,
    Render,
    SpecError,
    load_spec,
    parse_spec,
    parse_strengths,
)
from farm.spec.catalog_rows import CatalogRow, read_catalog, validate_catalog
from farm.spec.strength import Strength

DROP = object()  # an override value that removes the key
BASE = {"job": "t", "prompts": ["a cat"], "seeds": [0]}
NEON = {"name": "neon", "path": "neon.safetensors", "alpha": 0.5}
INK = {"name": "ink", "path": "ink.safetensors", "alpha": [0.4, 0.6]}


def spec(**over) -> dict:
    """BASE with keys replaced (or removed with DROP)."""
    data = dict(BASE)
    for key, value in over.items():
        if value is DROP:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def lora(base: dict = NEON, **over) -> dict:
    out = dict(base)
    for key, value in over.items():
        if value is DROP:
            out.pop(key, None)
        else:
            out[key] = value
    return out


@pytest.fixture
def farmdir(tmp_path: Path) -> Path:
    """A folder with fake LoRAs, a model folder and catalogs, good and bad."""
    d = tmp_path.resolve()
    for name in ("neon", "ink"):
        (d / f"{name}.safetensors").write_bytes(b"fake")  # contents are not read by the spec
    (d / "model").mkdir()
    (d / "model" / "model_index.json").write_text("{}")
    (d / "notmodel").mkdir()
    (d / "products.csv").write_text("sku, name, color\nA1,mug,red\nA2,cap,blue\n")
    rows = [
        {"sku": "A1", "name": "mug", "color": "red", "price": 3.5, "new": True},
        {"sku": "A2", "name": "cap", "color": "blue", "price": 4, "new": False},
    ]
    (d / "products.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    (d / "nocolor.jsonl").write_text('{"sku": "A1", "color": "red"}\n{"sku": "A2"}\n')
    (d / "nullkey.jsonl").write_text('{"sku": "A1", "color": "red"}\n{"sku": null, "color": "x"}\n')
    (d / "dup.csv").write_text("sku,color\nA1,red\nA2,blue\nA1,green\n")
    (d / "headonly.csv").write_text("sku,color\n")
    (d / "wide.csv").write_text("sku,color\nA1,red,extra\n")
    (d / "badjson.jsonl").write_text('{"sku": "A1", "color": "red"}\n{"sku": \n')
    (d / "products.xlsx").write_text("x")
    return d


def cat(path: str = "products.csv", template: str = "{name}, {color}", key: str = "sku") -> dict:
    return {"path": path, "template": template, "key": key}


def catspec(*args, **kw) -> dict:
    """A catalog spec (no prompts)."""
    return spec(prompts=DROP, catalog=cat(*args, **kw))


# (id, spec, expected message or a distinctive part of it; {tmp} is the fixture folder)
BAD = [
    # top level
    ("unknown-key", spec(promts=["x"]), "promts: unknown key (did you mean 'prompts'?)"),
    ("unknown-key-far", spec(zzz=1), "zzz: unknown key (known: job, model, prompts"),
    (
        "preset",
        spec(preset="bold"),
        "preset: presets are defined in a tenants file: give --tenants",
    ),
    ("presets", spec(presets=["a"]), "presets: presets are defined in a tenants file"),
    # job
    ("job-missing", spec(job=DROP), "job: required (a job name such as 'neon-sweep')"),
    ("job-bad-name", spec(job="Neon City"), "job: 'Neon City' is not a valid job name"),
    ("job-too-long", spec(job="a" * 129), "at most 128 characters"),
    ("job-not-string", spec(job=7), "job: expected a string, got 7"),
    # model
    (
        "model-no-index",
        spec(model="notmodel"),
        "model: {tmp}/notmodel is not a diffusers model folder (no model_index.json)",
    ),
    ("model-a-file", spec(model="products.csv"), "is not a diffusers model folder"),
    (
        "model-unknown",
        spec(model="./nowhere"),
        "model: './nowhere' not found; expected 'tiny', a local diffusers folder",
    ),
    ("model-deep-path", spec(model="a/b/c"), "or a hub id 'org/name'"),
    ("model-type", spec(model=["tiny"]), "model: expected a string, got a list"),
    ("model-bad-s3", spec(model="s3://"), "model: 's3://' is not an s3:// URL"),
    # prompts
    ("prompts-missing", spec(prompts=DROP), "prompts: required (a list of prompts, or a catalog"),
    ("prompts-and-catalog", spec(catalog=cat()), "prompts: give either prompts or catalog"),
    ("prompts-empty-list", spec(prompts=[]), "prompts: the list is empty"),
    ("prompt-empty", spec(prompts=["ok", "  "]), "prompts[1]: the prompt is empty"),
    ("prompt-not-str", spec(prompts=["ok", 3]), "prompts[1]: expected a string, got 3"),
    ("prompt-repeated", spec(prompts=["a", "b", "a"]), "prompts[2]: same as prompts[0]"),
    (
        "prompts-mapping",
        spec(prompts={"a": 1}),
        "prompts.a: unknown key (known: file, format, resolved)",
    ),
    (
        "prompts-number",
        spec(prompts=3),
        "prompts: expected a list of strings or {file, format}, got 3",
    ),
    (
        "negative-type",
        spec(negative_prompt=["x"]),
        "negative_prompt: expected a string, got a list",
    ),
    # seeds
    ("seeds-missing", spec(seeds=DROP), "seeds: required"),
    ("seed-bool", spec(seeds=[True]), "seeds[0]: expected an integer seed, got true"),
    ("seeds-bool", spec(seeds=True), "seeds: expected a seed, a list of seeds or {start, count}"),
    ("seed-float", spec(seeds=[1.5]), "seeds[0]: expected an integer seed, got 1.5"),
    ("seed-negative", spec(seeds=[-1]), "seeds[0]: -1 is out of range (0..4294967295)"),
    ("seed-too-big", spec(seeds=2**32), "seeds: 4294967296 is out of range"),
    ("seed-repeated", spec(seeds=[4, 5, 4]), "seeds[2]: 4 is listed twice (also seeds[0])"),
    ("seeds-empty", spec(seeds=[]), "seeds: the list is empty"),
    (
        "seeds-count-0",
        spec(seeds={"start": 0, "count": 0}),
        "seeds.count: 0 is out of range (1..1000000)",
    ),
    ("seeds-count-big", spec(seeds={"count": 1_000_001}), "seeds.count: 1000001 is out of range"),
    ("seeds-no-count", spec(seeds={"start": 3}), "seeds.count: required (how many seeds)"),
    (
        "seeds-typo",
        spec(seeds={"start": 0, "cnt": 4}),
        "seeds.cnt: unknown key (did you mean 'count'?)",
    ),
    ("seeds-past-end", spec(seeds={"start": 2**32 - 1, "count": 2}), "past the largest seed"),
    # loras: alpha
    ("alpha-not-number", spec(loras=[lora(alpha="abc")]), "loras[0].alpha: 'abc' is not a number"),
    (
        "alpha-list-item",
        spec(loras=[lora(alpha=[0.1, "x"])]),
        "loras[0].alpha[1]: 'x' is not a number",
    ),
    ("alpha-nan", spec(loras=[lora(alpha=math.nan)]), "loras[0].alpha: nan is not a finite number"),
    (
        "alpha-inf-str",
        spec(loras=[lora(alpha="inf")]),
        "loras[0].alpha: 'inf' is not a finite number",
    ),
    ("alpha-range-nan", spec(loras=[lora(alpha="0:nan:0.1")]), "'nan' is not a finite number"),
    ("alpha-step-0", spec(loras=[lora(alpha="0:1:0")]), "loras[0].alpha: the step of '0:1:0' is 0"),
    (
        "alpha-step-away",
        spec(loras=[lora(alpha="1:0:0.1")]),
        "loras[0].alpha: the step 0.1 of '1:0:0.1' points away from the stop 0 (use -0.1)",
    ),
    (
        "alpha-two-parts",
        spec(loras=[lora(alpha="0:1")]),
        "'0:1' is not a range (write 'start:stop:step'",
    ),
    ("alpha-too-many", spec(loras=[lora(alpha="0:100000:1")]), "gives more than 10000 values"),
    ("alpha-list-too-long", spec(loras=[lora(alpha=list(range(10_001)))]), "more than 10000"),
    ("alpha-empty", spec(loras=[lora(alpha=[])]), "loras[0].alpha: the list is empty"),
    ("alpha-repeated", spec(loras=[lora(alpha=[0.5, "0.5"])]), "strength 0.5 is listed twice"),
    ("alpha-bool", spec(loras=[lora(alpha=True)]), "loras[0].alpha: expected a number, a list"),
    (
        "alpha-missing-zip",
        spec(loras=[lora(alpha=DROP), INK], combine="zip"),
        "loras[0].alpha: required",
    ),
    # loras: name, path, keys
    (
        "lora-repeated-name",
        spec(loras=[NEON, lora(INK, name="neon")]),
        "loras[1].name: 'neon' is already used by loras[0]",
    ),
    ("lora-bad-name", spec(loras=[lora(name="my lora")]), "loras[0].name: 'my lora' may only use"),
    ("lora-no-name", spec(loras=[lora(name=DROP)]), "loras[0].name: required"),
    ("lora-no-path", spec(loras=[lora(path=DROP)]), "loras[0].path: required"),
    (
        "lora-missing-file",
        spec(loras=[lora(path="gone.safetensors")]),
        "loras[0].path: {tmp}/gone.safetensors not found",
    ),
    ("lora-folder", spec(loras=[lora(path="model")]), "loras[0].path: model is not a .safetensors"),
    ("lora-txt", spec(loras=[lora(path="notes.txt")]), "is not a .safetensors file"),
    (
        "lora-unknown-demo",
        spec(loras=[lora(path="tiny:nope")]),
        "loras[0].path: unknown demo LoRA 'tiny:nope' (known: tiny:ink, tiny:ink-kohya, tiny:neon, "
        "tiny:neon-peft)",
    ),
    ("lora-http", spec(loras=[lora(path="https://x/y.safetensors")]), "only local files, s3://"),
    ("lora-typo", spec(loras=[lora(pth="x")]), "loras[0].pth: unknown key (did you mean 'path'?)"),
    (
        "lora-preset",
        spec(loras=[lora(preset="bold")]),
        "loras[0].preset: presets are defined in a tenants file",
    ),
    ("lora-not-mapping", spec(loras=["neon"]), "loras[0]: expected a mapping, got 'neon'"),
    ("loras-not-list", spec(loras={"neon": 1}), "loras: expected a list of {name, path, alpha}"),
    # combine
    (
        "zip-lengths",
        spec(loras=[lora(alpha="0:1:0.2"), INK], combine="zip"),
        "combine: zip needs alpha lists of one length; got neon: 6, ink: 2",
    ),
    (
        "combine-unknown-mode",
        spec(loras=[NEON], combine="prodcut"),
        "combine: 'prodcut' is not a combine mode (did you mean 'product'?)",
    ),
    ("combine-type", spec(loras=[NEON], combine=3), "combine: expected 'product', 'zip' or a list"),
    (
        "combine-unknown-lora",
        spec(loras=[NEON, INK], combine=[{"neon": 1}, {"nein": 0.5}]),
        "combine[1].nein: unknown LoRA (did you mean 'neon'?) (loras: neon, ink)",
    ),
    (
        "combine-bad-weight",
        spec(loras=[NEON], combine=[{"neon": "lots"}]),
        "combine[0].neon: 'lots' is not a number",
    ),
    ("combine-nan-weight", spec(loras=[NEON], combine=[{"neon": math.inf}]), "not a finite number"),
    ("combine-empty-list", spec(loras=[NEON], combine=[]), "combine: the list is empty"),
    ("combine-empty-combo", spec(loras=[NEON], combine=[{}]), "combine[0]: empty"),
    (
        "combine-repeated",
        spec(loras=[NEON, INK], combine=[{"neon": 1, "ink": 0}, {"ink": 0, "neon": 1}]),
        "combine[1]: same as combine[0]",
    ),
    ("combine-item-type", spec(loras=[NEON], combine=["neon"]), "combine[0]: expected a mapping"),
    ("zip-without-loras", spec(combine="zip"), "combine: there are no loras to combine"),
    # render
    (
        "render-typo",
        spec(render={"stpes": 10}),
        "render.stpes: unknown key (did you mean 'steps'?)",
    ),
    (
        "render-steps-type",
        spec(render={"steps": "ten"}),
        "render.steps: expected an integer, got 'ten'",
    ),
    ("render-steps-range", spec(render={"steps": 0}), "render.steps: 0 is out of range (1..1000)"),
    (
        "render-width-8",
        spec(render={"width": 500}),
        "render.width: 500 is not a multiple of 8 (try 496 or 504)",
    ),
    ("render-height-range", spec(render={"height": 8192}), "render.height: 8192 is out of range"),
    (
        "render-scheduler",
        spec(render={"scheduler": "eulr"}),
        "render.scheduler: unknown scheduler 'eulr' (did you mean 'euler'?) (known: euler,",
    ),
    ("render-guidance-neg", spec(render={"guidance": -1}), "render.guidance: -1 is negative"),
    (
        "render-guidance-nan",
        spec(render={"guidance": math.nan}),
        "render.guidance: nan is not a finite",
    ),
    (
        "render-guidance-str",
        spec(render={"guidance": "high"}),
        "render.guidance: expected a number, got 'high'",
    ),
    ("render-format", spec(render={"format": "gif"}), "render.format: 'gif' is not supported"),
    ("render-batch", spec(render={"batch": 65}), "render.batch: 65 is out of range (1..64)"),
    (
        "render-batch-word",
        spec(render={"batch": "max"}),
        "render.batch: expected an integer or 'auto'",
    ),
    ("render-type", spec(render="fast"), "render: expected a mapping, got 'fast'"),
    # output
    ("output-type", spec(output=5), "output: expected a string, got 5"),
    ("output-scheme", spec(output="gs://bucket/x"), "use a local folder or s3://bucket/prefix"),
    # catalog
    ("catalog-missing-file", catspec("nope.csv"), "catalog.path: {tmp}/nope.csv not found"),
    ("catalog-suffix", catspec("products.xlsx"), "is not a .csv, .jsonl or .parquet"),
    (
        "catalog-typo",
        spec(prompts=DROP, catalog=cat() | {"tempate": "x"}),
        "catalog.tempate: unknown key (did you mean 'template'?)",
    ),
    ("catalog-no-key", catspec(key=None), "catalog.key: required"),
    (
        "catalog-column",
        catspec(template="{name} in {colour}"),
        "catalog.template: {colour} is not a column of products.csv (did you mean 'color'?)",
    ),
    ("catalog-key-column", catspec(key="id"), "catalog.key: 'id' is not a column of products.csv"),
    (
        "catalog-row-field",
        catspec("nocolor.jsonl", "{color}"),
        "catalog: nocolor.jsonl row 2: template field {color} missing",
    ),
    (
        "catalog-null-key",
        catspec("nullkey.jsonl", "{color}"),
        "catalog: nullkey.jsonl row 2: key column 'sku' missing",
    ),
    (
        "catalog-dup-key",
        catspec("dup.csv", "{color}"),
        "catalog: dup.csv row 3: key column 'sku' value 'A1' repeats row 1",
    ),
    ("catalog-empty", catspec("headonly.csv", "{color}"), "catalog: headonly.csv has no rows"),
    ("catalog-wide-row", catspec("wide.csv", "{color}"), "wide.csv line 2: 3 values but 2 columns"),
    ("catalog-bad-json", catspec("badjson.jsonl", "{color}"), "badjson.jsonl line 2: invalid JSON"),
    ("catalog-positional", catspec(template="{} photo"), "must name a column"),
    ("catalog-no-fields", catspec(template="a photo"), "uses no column"),
    ("catalog-brace", catspec(template="{name"), "catalog.template: expected '}'"),
    (
        "catalog-format-spec",
        catspec(template="{name:.2f}"),
        "catalog.template: {name:.2f}: formats and conversions are not supported; write {name}",
    ),
]


@pytest.mark.parametrize(("data", "expected"), [pytest.param(d, e, id=i) for i, d, e in BAD])
def test_bad_spec(farmdir: Path, data: dict, expected: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(data, base_dir=farmdir)
    message = str(info.value)
    assert "\n" not in message
    assert expected.replace("{tmp}", str(farmdir)) in message


# (file name, contents or None for no file, expected message)
BAD_FILES = [
    ("spec.yaml", None, "spec.yaml: file not found"),
    ("spec.yaml", "job: a\nprompts: [a, b\nseeds: 1\n", "spec.yaml: invalid YAML at line 3: "),
    ("spec.json", '{"job": "a",\n "seeds": [1,}', "spec.json: invalid JSON at line 2: "),
    (
        "spec.yaml",
        "- a\n- b\n",
        "spec.yaml: the top level must be a mapping of keys (job, model, prompts, …)",
    ),
    ("spec.yml", "", "spec.yml: the top level must be a mapping of keys"),
    ("spec.json", "[1]", "spec.json: the top level must be a mapping of keys"),
    (
        "spec.yaml",
        "job: a\nseeds: 1\njob: b\n",
        "spec.yaml: invalid YAML at line 3: duplicate key 'job'",
    ),
    ("spec.json", '{"job": "a", "job": "b"}', "spec.json: invalid JSON: duplicate key 'job'"),
    ("spec.toml", "job = 'a'", "spec.toml: unknown spec format (use a .yaml, .yml or .json file)"),
    ("spec.yaml", b"job: \xff\xfe\n", "spec.yaml: not UTF-8 text"),
    (
        "spec.yaml",
        "job: a\nprompts: [x]\nseeds: [1]\nrender: {stpes: 3}\n",
        "render.stpes: unknown key (did you mean 'steps'?)",
    ),
]


@pytest.mark.parametrize(("name", "text", "expected"), BAD_FILES)
def test_bad_file(tmp_path: Path, monkeypatch, name: str, text, expected: str) -> None:
    monkeypatch.chdir(tmp_path)  # so the file is named as given: 'spec.yaml: …'
    if isinstance(text, bytes):
        (tmp_path / name).write_bytes(text)
    elif text is not None:
        (tmp_path / name).write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(name)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(expected)


def test_spec_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").mkdir()
    with pytest.raises(SpecError, match="is a folder, not a spec file"):
        load_spec(tmp_path / "spec.yaml")


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin", ".CKPT"])
def test_pickled_lora_is_refused(farmdir: Path, suffix: str) -> None:
    (farmdir / f"old{suffix}").write_bytes(b"pickle")
    data = spec(loras=[lora(path=f"old{suffix}")])
    with pytest.raises(SpecError) as info:
        parse_spec(data, base_dir=farmdir)
    message = str(info.value)
    assert message.startswith(f"loras[0].path: old{suffix} is a pickle-based")
    assert "arbitrary code" in message and "Convert it to .safetensors" in message


def test_spec_error_is_one_line() -> None:
    assert str(SpecError("a: first\n  second")) == "a: first second"
    assert isinstance(SpecError("x"), ValueError)


# ---------------------------------------------------------------- good specs


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0:1:0.2", (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)),
        ("-1:1:0.5", (-1.0, -0.5, 0.0, 0.5, 1.0)),
        ("0.1:0.35:0.1", (0.1, 0.2, 0.3)),
        ("0:1:0.1", (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)),
        ("-1:2:0.5", (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0)),
        ("1:0:-0.25", (1.0, 0.75, 0.5, 0.25, 0.0)),
        (" 0 : 0.3 : 0.1 ", (0.0, 0.1, 0.2, 0.3)),
        ("0.5:0.5:0.1", (0.5,)),
        (0.5, (0.5,)),
        (-2, (-2.0,)),
        ("0.75", (0.75,)),
        ([0, "0.3", 1.5], (0.0, 0.3, 1.5)),
    ],
)
def test_strengths(value, expected: tuple[float, ...]) -> None:
    got = parse_strengths(value, "loras[0].alpha")
    assert got == expected  # exact: no 0.30000000000000004
    assert all(type(x) is float for x in got)


def test_range_of_10000_values_is_allowed() -> None:
    assert len(parse_strengths("0:9999:1", "a")) == 10_000


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (7, (7,)),
        (0, (0,)),
        ([3, 1, 2], (3, 1, 2)),
        ({"start": 10, "count": 3}, (10, 11, 12)),
        ({"count": 2}, (0, 1)),
        ({"start": 2**32 - 2, "count": 2}, (2**32 - 2, 2**32 - 1)),
    ],
)
def test_seed_forms(value, expected: tuple[int, ...]) -> None:
    assert parse_spec(spec(seeds=value)).seeds == expected


def test_defaults() -> None:
    s = parse_spec({"job": "j", "prompts": "one prompt <lora:ink:0.4>", "seeds": 1})
    assert s.model == "tiny"
    assert s.prompts == ("one prompt <lora:ink:0.4>",)  # A1111 tags kept verbatim
    assert s.negative_prompt == ""
    assert s.loras == ()
    assert s.combine == "product"
    assert s.render == Render(25, 7.5, 512, 512, "euler", "png", None)
    assert s.output == "./renders"
    assert s.catalog is None
    assert s.source == "<spec>"


def test_yaml_nulls_mean_defaults() -> None:
    s = parse_spec(spec(loras=None, render=None, negative_prompt=None, combine=None))
    assert (s.loras, s.render, s.negative_prompt, s.combine) == ((), Render(), "", "product")


def test_render_values() -> None:
    render = {
        "steps": 4,
        "guidance": 0,
        "width": 64,
        "height": 1024,
        "scheduler": "dpmpp_2m",
        "format": "JPG",
        "batch": 8,
    }
    assert parse_spec(spec(render=render)).render == Render(4, 0.0, 64, 1024, "dpmpp_2m", "jpeg", 8)
    assert parse_spec(spec(render={"batch": "auto"})).render.batch is None


def test_models(farmdir: Path) -> None:
    assert parse_spec(spec(model="model"), base_dir=farmdir).model == str(farmdir / "model")
    hub = "runwayml/stable-diffusion-v1-5"
    assert parse_spec(spec(model=hub), base_dir=farmdir).model == hub
    assert parse_spec(spec(model="s3://models/sd15"), base_dir=farmdir).model == "s3://models/sd15"


def test_loras_and_combine_modes(farmdir: Path) -> None:
    s3 = {"name": "far", "path": "s3://models/far.safetensors", "alpha": "0:1:0.5"}
    demo = {"name": "demo", "path": "tiny:neon", "alpha": [1, 2, 3]}
    s = parse_spec(spec(loras=[NEON, s3, demo]), base_dir=farmdir)
    assert s.loras == (
        LoraAxis("neon", str(farmdir / "neon.safetensors"), (0.5,)),
        LoraAxis("far", "s3://models/far.safetensors", (0.0, 0.5, 1.0)),
        LoraAxis("demo", "tiny:neon", (1.0, 2.0, 3.0)),
    )
    z = parse_spec(spec(loras=[lora(alpha=[0, 1]), INK], combine="zip"), base_dir=farmdir)
    assert z.combine == "zip"
    # Explicit combos: each lora's own alpha is optional and ignored; order is kept.
    combos = [{"ink": 0.4, "neon": "1"}, {"neon": -0.5}]
    e = parse_spec(spec(loras=[lora(alpha=DROP), INK], combine=combos), base_dir=farmdir)
    P = Strength.plain
    assert e.combine == ((("ink", P(0.4)), ("neon", P(1.0))), (("neon", P(-0.5)),))
    assert [x.alphas for x in e.loras] == [(), ()]


def test_to_dict_is_canonical_and_round_trips(farmdir: Path) -> None:
    data = spec(loras=[NEON, INK], seeds=[0, 1, 2], render={"batch": 2}, output="s3://b/p")
    a, b = parse_spec(data, base_dir=farmdir), parse_spec(dict(data), base_dir=farmdir)
    assert a.to_dict() == b.to_dict()
    d = a.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert list(d) == [
        "job",
        "model",
        "prompts",
        "negative_prompt",
        "seeds",
        "loras",
        "combine",
        "render",
        "output",
    ]
    assert d["seeds"] == {"start": 0, "count": 3}  # a contiguous run is kept compact
    assert (
        parse_spec(
            spec(seeds={"count": 3}, loras=[NEON, INK], render={"batch": 2}, output="s3://b/p"),
            base_dir=farmdir,
        ).to_dict()
        == d
    )
    assert parse_spec(d, base_dir=Path("/")) == a  # absolute paths: no base needed
    assert parse_spec(spec(seeds=[5, 3])).to_dict()["seeds"] == [5, 3]
    combos = spec(loras=[lora(alpha=DROP), INK], combine=[{"ink": 1, "neon": 0.5}])
    e = parse_spec(combos, base_dir=farmdir)
    assert e.to_dict()["combine"] == [{"ink": 1.0, "neon": 0.5}]
    assert parse_spec(json.loads(json.dumps(e.to_dict()))) == e


def test_relative_paths_follow_the_spec_file(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "neon.safetensors").write_bytes(b"fake")
    (tmp_path / "models" / "sd").mkdir(parents=True)
    (tmp_path / "models" / "sd" / "model_index.json").write_text("{}")
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "s.yaml").write_text(
        "job: rel\nmodel: ../models/sd\nprompts: [a]\nseeds: [1]\noutput: out\n"
        "loras:\n  - {name: neon, path: ../loras/neon.safetensors, alpha: 0:1:0.5}\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    s = load_spec(tmp_path / "jobs" / "s.yaml")
    assert s.model == str((tmp_path / "models" / "sd").resolve())
    assert s.loras[0].path == str((tmp_path / "loras" / "neon.safetensors").resolve())
    assert s.output == "out"  # kept as written
    assert s.source == str(tmp_path / "jobs" / "s.yaml")


def test_yaml_numbers(tmp_path: Path) -> None:
    # YAML 1.1 would read these unquoted ranges as base-60 numbers (60.2 and 4201).
    (tmp_path / "loras.safetensors").write_bytes(b"x")
    (tmp_path / "s.yml").write_text(
        "job: n\nprompts: [a]\nseeds: [1]\nrender: {guidance: 1e1}\nloras:\n"
        "  - {name: a, path: loras.safetensors, alpha: 0:1:0.2}\n"
        "  - {name: b, path: loras.safetensors, alpha: 1:10:1}\n"
    )
    s = load_spec(tmp_path / "s.yml")
    assert s.loras[0].alphas == (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    assert s.loras[1].alphas == tuple(float(x) for x in range(1, 11))
    assert s.render.guidance == 10.0


def test_json_spec(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text(json.dumps(spec(seeds={"start": 5, "count": 2})))
    assert load_spec(tmp_path / "s.json").seeds == (5, 6)


def test_csv_catalog(farmdir: Path) -> None:
    s = parse_spec(catspec(), base_dir=farmdir)
    assert s.prompts == ()
    assert s.catalog == Catalog(str(farmdir / "products.csv"), "{name}, {color}", "sku")
    assert s.to_dict()["catalog"]["path"] == str(farmdir / "products.csv")
    assert "prompts" not in s.to_dict()
    rows = list(read_catalog(s.catalog))
    assert rows == [
        CatalogRow("A1", "mug, red", {"sku": "A1", "name": "mug", "color": "red"}),
        CatalogRow("A2", "cap, blue", {"sku": "A2", "name": "cap", "color": "blue"}),
    ]
    assert validate_catalog(s.catalog) == 2


def test_jsonl_catalog(farmdir: Path) -> None:
    c = cat("products.jsonl", "{name} ({color}), {price} usd")
    s = parse_spec(spec(prompts=DROP, catalog=c), base_dir=farmdir)
    rows = list(read_catalog(s.catalog))
    assert [r.prompt for r in rows] == ["mug (red), 3.5 usd", "cap (blue), 4 usd"]
    assert rows[0].fields == {
        "sku": "A1",
        "name": "mug",
        "color": "red",
        "price": "3.5",
        "new": "true",
    }
    assert validate_catalog(s.catalog) == 2


def test_parquet_catalog(farmdir: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"sku": ["p1", "p2"], "name": ["lamp", "vase"], "size": [1, 2]})
    pq.write_table(table, farmdir / "items.parquet")
    s = parse_spec(catspec("items.parquet", "{name} size {size}"), base_dir=farmdir)
    assert [r.prompt for r in read_catalog(s.catalog)] == ["lamp size 1", "vase size 2"]
    (farmdir / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(SpecError, match="cannot read junk.parquet as Parquet"):
        parse_spec(catspec("junk.parquet", "{name}"), base_dir=farmdir)


# The packages that must stay light (docs/architecture.md), with every module in them;
# and the CLI's face, so that `farm --help` stays instant.
LIGHT = ("report", "tenancy", "plan", "spec", "loras", "records", "storage", "tiny")


def test_no_heavy_imports() -> None:
    code = (
        "import importlib, pkgutil, sys\n"
        "import farm.cli, farm.audit.verify, farm.errors, farm.faults, farm.home, farm.limits\n"
        f"for name in {LIGHT!r}:\n"
        "    package = importlib.import_module('farm.' + name)\n"
        "    for module in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
        "        importlib.import_module(module.name)\n"
        "heavy = sorted(m for m in sys.modules\n"
        "               if m.split('.')[0] in {'torch', 'ray', 'diffusers', 'transformers'})\n"
        "assert not heavy, heavy[:5]\n"
        "print(len([m for m in sys.modules if m.startswith('farm.')]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) > 50  # the walk reached the packages' modules
