"""Tenants of one shared farm: tenants.yaml, presets, caps, prefixes and isolation.

The shared fixture is two tenants on one moto S3 server (its own process): each renders a
small preset sweep into its own prefix, and everything one tenant may not do to the other
is tried through the CLI, with the bucket listed before and after.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO
from jobrun import farm, farm_here

from farm.spec.errors import SpecError
from farm.tenancy.tenants import inside, parse_tenants

pytestmark = pytest.mark.slow
RENDER = {"steps": 4, "width": 64, "height": 64, "batch": 8}


def tenants_doc(acme: str, globex: str, **acme_caps) -> dict:
    return {
        "presets": {"subtle": {"weight": 0.3}, "bold": {"weight": 1.0},
                    "style": {"slider": {"min": 0.2, "max": 1.0, "step": 0.2, "default": 0.6}}},
        "tenants": {
            "acme": {"output": acme, "models": ["tiny"], "loras": {"house": "tiny:neon"},
                     "presets": {"bold": {"weight": 0.9}},
                     "caps": {"strength": [0, 1.2], "images": 40, "workers": 1, "jobs": 1}
                     | acme_caps},
            "globex": {"output": globex, "loras": {"ink": "tiny:ink"},
                       "presets": {"sketch": {"loras": {"ink": {"te": 0.6, "unet": 0.8}}}},
                       "caps": {"strength": [0, 1], "images": 10}},
        },
    }  # fmt: skip


def spec_file(folder: Path, name: str, **over) -> Path:
    spec = {"job": name, "prompts": ["a red circle on a white background",
                                     "a blue star on a gray background"],
            "seeds": [0], "render": RENDER} | over  # fmt: skip
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def keys(s3) -> list[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=s3.bucket)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


@pytest.fixture(scope="module")
def shared(s3, tmp_path_factory, tiny_dir):
    """acme and globex on one bucket, each with one finished preset sweep."""
    folder = tmp_path_factory.mktemp("tenants")
    tenants = folder / "tenants.yaml"
    tenants.write_text(yaml.safe_dump(tenants_doc(s3.url("tenants/acme"),
                                                  s3.url("tenants/globex"))))  # fmt: skip
    acme = spec_file(folder, "acme-sweep", tenant="acme", loras=["house"],
                     presets=["subtle", "bold", {"name": "style", "at": 0.4}])  # fmt: skip
    globex = spec_file(folder, "globex-sweep", tenant="globex", loras=[{"name": "ink"}],
                       presets=["bold", "sketch"])  # fmt: skip
    # In the driver's process: where they render is not what these tests are about (the
    # worker cap on a cluster is test_scale's).
    farm_here("run", str(acme), "--tenants", str(tenants), "--local")
    farm_here("run", str(globex), "--tenants", str(tenants), "--local")
    return folder, tenants


def test_each_job_lands_under_its_tenants_prefix(shared, s3):
    found = keys(s3)
    assert any(k.startswith("tenants/acme/acme-sweep/images/") for k in found)
    assert any(k.startswith("tenants/globex/globex-sweep/images/") for k in found)
    outside = [
        k
        for k in found
        if k.startswith("tenants/")
        and not k.startswith(("tenants/acme/acme-sweep/", "tenants/globex/globex-sweep/"))
    ]
    assert outside == []  # fmt: skip
    # Leases are gone once the jobs end.
    assert not [k for k in found if "/.running/" in k]


def rows(s3, job: str) -> list[dict]:
    import io

    body = s3.client().get_object(Bucket=s3.bucket, Key=f"{job}/metadata.parquet")["Body"]
    return pq.read_table(io.BytesIO(body.read())).to_pylist()


def test_rows_carry_the_tenants_preset_weights(shared, s3):
    acme = rows(s3, "tenants/acme/acme-sweep")
    got = {(r["preset"], r["loras"][0]["te_weight"], r["loras"][0]["unet_weight"]) for r in acme}
    # acme's own bold (0.9) overrides the global one (1.0); the slider sits where it was set.
    assert got == {("subtle", 0.3, 0.3), ("bold", 0.9, 0.9), ("style", 0.4, 0.4)}
    assert {r["tenant"] for r in acme} == {"acme"} and len(acme) == 6
    assert all("<lora:house:" in r["prompt"] for r in acme)
    globex = rows(s3, "tenants/globex/globex-sweep")
    got = {(r["preset"], r["loras"][0]["te_weight"], r["loras"][0]["unet_weight"]) for r in globex}
    assert got == {("bold", 1.0, 1.0), ("sketch", 0.6, 0.8)}


REFUSED = [
    ("output-outside", {"tenant": "acme", "loras": ["house"], "preset": "bold",
                        "output": "{globex}"}, "is outside tenant acme's prefix"),
    ("output-sibling", {"tenant": "acme", "loras": ["house"], "preset": "bold",
                        "output": "{acme}2"}, "is outside tenant acme's prefix"),
    ("model", {"tenant": "globex", "loras": ["ink"], "preset": "bold", "model": "{model}"},
     "is not allowed for tenant globex"),
    ("lora-not-allowed", {"tenant": "globex", "loras": ["house"], "preset": "bold"},
     "loras[0].name: 'house' is not a LoRA of tenant globex"),
    ("lora-absolute", {"tenant": "acme", "loras": [{"name": "x", "path": "/etc/x.safetensors"}],
                       "preset": "bold"}, "is a file path; a job of tenant acme"),
    ("lora-climbs", {"tenant": "acme", "loras": [{"name": "x", "path": "../x.safetensors"}],
                     "preset": "bold"}, "is a file path; a job of tenant acme"),
    ("strength-alpha", {"tenant": "globex", "loras": [{"name": "ink", "alpha": [0.5, 1.5]}]},
     "strength 1.5 is outside the tenant's cap 0..1"),
    ("strength-tag", {"tenant": "globex", "loras": ["ink"],
                      "prompts": ["a red circle <lora:ink:2>"]}, "outside the tenant's cap"),
    ("slider-off", {"tenant": "acme", "loras": ["house"], "preset": {"name": "style", "at": 1.4}},
     "1.4 is outside the slider's 0.2..1"),
    ("slider-grid", {"tenant": "acme", "loras": ["house"], "preset": {"name": "style", "at": 0.5}},
     "0.5 is not a slider position"),
    ("quota", {"tenant": "globex", "loras": ["ink"], "preset": "bold",
               "seeds": {"start": 0, "count": 6}}, "more than tenant globex's quota of 10"),
    ("unknown-tenant", {"tenant": "acne", "loras": ["house"], "preset": "bold"},
     "unknown tenant 'acne' (did you mean 'acme'?)"),
    ("unknown-preset", {"tenant": "acme", "loras": ["house"], "preset": "bld"},
     "unknown preset 'bld' for tenant acme (did you mean 'bold'?)"),
    ("other-tenants-preset", {"tenant": "acme", "loras": ["house"], "preset": "sketch"},
     "unknown preset 'sketch' for tenant acme"),
    ("no-tenant-in-prefix", {"loras": [{"name": "n", "path": "tiny:neon", "alpha": 1}],
                             "output": "{acme}"}, "is inside tenant acme's prefix"),
]  # fmt: skip


@pytest.mark.parametrize(("over", "expected"), [pytest.param(o, e, id=i) for i, o, e in REFUSED])
def test_violations_are_refused_and_leave_the_bucket_unchanged(shared, s3, tiny_dir, over,
                                                              expected):  # fmt: skip
    folder, tenants = shared
    fill = {"{acme}": s3.url("tenants/acme"), "{globex}": s3.url("tenants/globex"),
            "{model}": str(tiny_dir)}  # fmt: skip
    over = json.loads(json.dumps(over), object_hook=lambda d: {
        k: next((v.replace(a, b) for a, b in fill.items() if isinstance(v, str) and a in v), v)
        for k, v in d.items()})  # fmt: skip
    if "output" in over:
        over["output"] = next((over["output"].replace(a, b) for a, b in fill.items()
                               if a in over["output"]), over["output"])  # fmt: skip
    before = keys(s3)
    spec = spec_file(folder, "refused", **over)
    proc = farm("run", str(spec), "--tenants", str(tenants), check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert expected in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert keys(s3) == before


def test_another_tenants_jobs_are_out_of_reach(shared, s3):
    folder, tenants = shared
    acme_job = s3.url("tenants/acme/acme-sweep")
    before = keys(s3)
    item = rows(s3, "tenants/acme/acme-sweep")[0]["item_id"]
    for args in (["status", acme_job], ["verify", acme_job], ["report", acme_job],
                 ["rerender", acme_job, item], ["resume", acme_job],
                 ["presets", "suggest", acme_job]):  # fmt: skip
        proc = farm(*args, "--tenants", str(tenants), "--tenant", "globex", check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "outside tenant globex's output prefix" in proc.stderr, (args, proc.stderr)
    # A URL that climbs out of the tenant's prefix is refused, not normalised.
    sneaky = s3.url("tenants/globex/../acme/acme-sweep")
    proc = farm("status", sneaky, "--tenants", str(tenants), "--tenant", "globex", check=False)
    assert proc.returncode == 2 and "'..' are not allowed" in proc.stderr
    # A tenant's own job it reaches.
    assert "6/6 items" in farm("status", acme_job, "--tenants", str(tenants),
                               "--tenant", "acme").stdout  # fmt: skip
    assert keys(s3) == before
    # --tenant and a spec of another tenant disagree: refused.
    spec = spec_file(folder, "mismatch", tenant="acme", loras=["house"], preset="bold")
    proc = farm("run", str(spec), "--tenants", str(tenants), "--tenant", "globex", check=False)
    assert proc.returncode == 2 and "a tenant runs only its own jobs" in proc.stderr


def test_the_job_and_worker_caps_hold(shared, s3):
    from farm.run.tenant_leases import running_jobs
    from farm.tenancy.tenants import load_tenants

    folder, tenants = shared
    acme = load_tenants(str(tenants)).tenants["acme"]
    spec = spec_file(folder, "second", tenant="acme", loras=["house"], preset="subtle")
    proc = farm("run", str(spec), "--tenants", str(tenants), "--workers", "2", check=False)
    assert proc.returncode == 2 and "tenant acme may use at most 1 workers" in proc.stderr
    # acme may run one job at a time: a live lease (another driver) turns the next away.
    client, lease = s3.client(), "tenants/acme/.running/other-job.json"
    import time

    now = time.time()
    client.put_object(Bucket=s3.bucket, Key=lease, Body=json.dumps(
        {"job_id": "other-job", "started": now, "heartbeat": now}).encode())  # fmt: skip
    try:
        assert set(running_jobs(acme)) == {"other-job"}
        proc = farm("run", str(spec), "--tenants", str(tenants), check=False)
        assert proc.returncode == 2 and "already runs 1 jobs, its cap (other-job)" in proc.stderr
        assert not any(k.startswith("tenants/acme/second/") for k in keys(s3))
        # A lease nobody renewed for 120 s (docs/tenants.md) is a killed driver's: it no
        # longer counts. Until then it holds.
        assert set(running_jobs(acme, now=now + 119)) == {"other-job"}
        assert running_jobs(acme, now=now + 121) == {}
    finally:
        client.delete_object(Bucket=s3.bucket, Key=lease)


def test_presets_list_and_show(shared):
    _, tenants = shared
    shown = json.loads(farm("presets", "show", "bold", "--tenant", "acme", "--tenants",
                            str(tenants), "--json").stdout)  # fmt: skip
    assert shown["origin"] == "acme" and shown["weight"] == {"te": 0.9, "unet": 0.9}
    assert json.loads(farm("presets", "show", "bold", "--tenants", str(tenants),
                           "--json").stdout)["weight"]["unet"] == 1.0  # fmt: skip
    slider = json.loads(farm("presets", "show", "style", "--tenants", str(tenants),
                             "--json").stdout)["slider"]  # fmt: skip
    assert slider["positions"] == [0.2, 0.4, 0.6, 0.8, 1.0] and slider["default"] == 0.6
    listed = farm("presets", "list", "--tenants", str(tenants)).stdout
    assert "(global):" in listed and "acme:" in listed and "sketch" in listed
    mine = json.loads(farm("presets", "list", "--tenant", "globex", "--tenants", str(tenants),
                           "--json").stdout)["globex"]  # fmt: skip
    assert {p["name"] for p in mine} == {"subtle", "bold", "style", "sketch"}
    bad = farm("presets", "show", "bolt", "--tenants", str(tenants), check=False)
    assert bad.returncode == 2 and "(did you mean 'bold'?)" in bad.stderr


def test_the_gallery_lays_out_by_preset(shared, s3):
    job = s3.url("tenants/acme/acme-sweep")
    _, tenants = shared
    farm("report", job, "--tenants", str(tenants), "--tenant", "acme")
    key = "tenants/acme/acme-sweep/report/data/index.js"
    index = s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read().decode()
    assert '"preset"' in index and '"subtle"' in index and '"style"' in index


BAD_TENANTS = [
    ("no-output", {"tenants": {"a": {}}}, "tenants.a.output: required"),
    ("unknown-key", {"tenants": {"a": {"output": "x", "capz": {}}}},
     "tenants.a.capz: unknown key (did you mean 'caps'?)"),
    ("caps-images", {"tenants": {"a": {"output": "x", "caps": {"images": 0}}}},
     "tenants.a.caps.images: 0 is out of range"),
    ("caps-strength", {"tenants": {"a": {"output": "x", "caps": {"strength": [1, 0]}}}},
     "tenants.a.caps.strength: 1 is above 0"),
    ("preset-two-kinds", {"presets": {"p": {"weight": 1, "slider": {}}},
                          "tenants": {"a": {"output": "x"}}},
     "presets.p: give exactly one of weight, loras or slider"),
    ("slider-default", {"presets": {"s": {"slider": {"min": 0, "max": 1, "step": 0.25,
                                                     "default": 0.3}}},
                        "tenants": {"a": {"output": "x"}}},
     "presets.s.slider.default: 0.3 is not a slider position"),
    ("preset-lora", {"tenants": {"a": {"output": "x", "presets": {"p": {"loras": {"z": 1}}}}}},
     "tenants.a.presets.p: LoRA 'z' is not in tenants.a.loras"),
    ("preset-over-cap", {"tenants": {"a": {"output": "x", "loras": {"n": "tiny:neon"},
                                           "presets": {"p": {"weight": 3}},
                                           "caps": {"strength": [0, 1]}}}},
     "tenants.a.presets.p: strength 3 is outside the tenant's cap 0..1"),
    ("registry-pickle", {"tenants": {"a": {"output": "x", "loras": {"n": "n.ckpt"}}}},
     "tenants.a.loras.n: n.ckpt is a pickle-based .ckpt file"),
    ("nested-prefix", {"tenants": {"a": {"output": "s3://b/t"}, "b": {"output": "s3://b/t/x"}}},
     "tenants.b.output: s3://b/t/x is inside tenant a's prefix"),
    ("empty", {"tenants": {}}, "tenants: is empty"),
]  # fmt: skip


@pytest.mark.parametrize(("doc", "expected"), [pytest.param(d, e, id=i) for i, d, e in BAD_TENANTS])
def test_a_bad_tenants_file_names_the_field(doc, expected):
    with pytest.raises(SpecError) as info:
        parse_tenants(doc, source="tenants.yaml", base=".")
    # The file, the field and the problem first; a hint may follow.
    assert str(info.value).startswith(f"tenants.yaml: {expected}"), str(info.value)
    assert "\n" not in str(info.value)


def test_a_bad_tenants_file_is_one_line_from_the_cli(tmp_path):
    path = tmp_path / "tenants.yaml"
    path.write_text("tenants:\n  a: {output: x, caps: {jobs: -1}}\n")
    proc = farm("presets", "list", "--tenants", str(path), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: tenants.yaml: tenants.a.caps.jobs: -1 is out of range " \
        "(1..1000000000000)"  # fmt: skip
    proc = farm("presets", "list", "--tenants", str(tmp_path / "none.yaml"), check=False)
    assert proc.returncode == 2 and "file not found" in proc.stderr
    env = {k: v for k, v in os.environ.items() if k != "FARM_TENANTS"}
    proc = farm("presets", "list", check=False, env=env)
    assert proc.returncode == 2 and "no tenants file" in proc.stderr


def test_prefixes_compare_by_segment():
    assert inside("s3://b/tenants/acme/job", "s3://b/tenants/acme")
    assert not inside("s3://b/tenants/acme2/job", "s3://b/tenants/acme")
    assert not inside("s3://other/tenants/acme/job", "s3://b/tenants/acme")
    with pytest.raises(SpecError):
        inside("s3://b/tenants/acme/../globex", "s3://b/tenants/acme")
    with pytest.raises(SpecError, match="'..' is not allowed"):
        inside("/data/tenants/acme/../acme/job", "/data/tenants/acme")


def test_the_example_tenants_and_catalog_job_run(tmp_path, tiny_dir, monkeypatch):
    # From a folder of the user's own: the example's local prefixes land there. In this
    # process, without Ray: the tenants file and the catalog are the subject here.
    monkeypatch.chdir(tmp_path)
    examples = REPO / "jobs" / "examples"
    args = ["--tenants", str(examples / "tenants.yaml"), "--local"]
    farm_here("run", str(examples / "house-style.yaml"), *args)
    job = tmp_path / "renders" / "tenants" / "acme" / "house-style"
    table = pq.read_table(job / "metadata.parquet").to_pylist()
    in_stock = [r for r in _csv(examples / "products.csv") if r["in_stock"] == "yes"]
    assert len(table) == len(in_stock) == 44
    by_category = {
        "jewellery": ("subtle", 0.3),
        "sneakers": ("bold", 0.9),
        "bags": ("standard", 0.6),
    }
    sku = {r["sku"]: r for r in in_stock}
    for row in table:
        fields = dict((p["key"], p["value"]) for p in row["catalog"])
        preset, weight = by_category[sku[fields["sku"]]["category"]]
        assert (row["preset"], row["loras"][0]["weight"]) == (preset, weight)
        named = job / row["named_key"]
        assert row["named_key"] == f"named/{fields['category']}/{fields['sku']}-{preset}-0.png"
        assert named.read_bytes() == (job / row["image_key"]).read_bytes()
    assert "ok: 44 planned items" in farm_here("verify", str(job)).stdout


def _csv(path: Path) -> list[dict]:
    import csv

    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_the_tenants_file_can_live_in_s3(shared, s3):
    _, tenants = shared
    doc = yaml.safe_load(tenants.read_text())
    # A relative registry path in an s3:// tenants file names an object beside it.
    doc["tenants"]["globex"]["loras"]["extra"] = "loras/extra.safetensors"
    s3.client().put_object(Bucket=s3.bucket, Key="config/tenants.yaml",
                           Body=yaml.safe_dump(doc).encode())  # fmt: skip
    url = s3.url("config/tenants.yaml")
    shown = json.loads(farm("presets", "show", "bold", "--tenant", "acme", "--tenants", url,
                            "--json").stdout)  # fmt: skip
    assert shown["weight"]["unet"] == 0.9
    from farm.tenancy.tenants import load_tenants

    assert load_tenants(url).tenants["globex"].loras["extra"] == s3.url(
        "config/loras/extra.safetensors")  # fmt: skip
    missing = farm("presets", "list", "--tenants", s3.url("config/none.yaml"), check=False)
    assert missing.returncode == 2 and "none.yaml" in missing.stderr
