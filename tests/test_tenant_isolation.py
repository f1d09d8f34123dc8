"""A hostile tenant of a shared farm: every value that reaches the render is bounded by the
cap, every path a tenant names is checked where the store writes, and every command that
renders runs the policy on what it renders, whatever job.json says.

Tenants `acme`, `acme2` (whose prefix shares acme's string prefix) and `globex` have local
prefixes; `s3acme` has one on the session's S3 server. Commands run in this process
through Click (no subprocess per attempt); each refusal must be exit 2, one line, and
leave every folder and the bucket exactly as they were.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from jobrun import farm_here

CAP = 1.2
RENDER = {"steps": 2, "width": 64, "height": 64}
LBW = lambda v: ",".join([str(v)] * 17)  # noqa: E731 (a LoRA Block Weight row of one value)


class Farm:
    """One shared farm on disk (and a prefix on S3), with helpers to attack it."""

    def __init__(self, root: Path, s3):
        self.root, self.s3 = root, s3
        self.prefix = {t: root / "tenants" / t for t in ("acme", "acme2", "globex")}
        for folder in self.prefix.values():
            folder.mkdir(parents=True)
        self.s3acme = s3.url("iso/tenants/s3acme")
        self.catalogs = root / "catalogs" / "acme"  # acme's catalog folder, outside its prefix
        self.catalogs.mkdir(parents=True)
        self.secret = self.prefix["globex"] / "secret.csv"
        self.secret.write_text("id,secret\n1,globex launch codes\n")
        self.specs = root / "specs"
        self.specs.mkdir()
        self.tenants = root / "tenants.yaml"
        caps = {"strength": [0, CAP], "images": 40, "workers": 1, "jobs": 1}
        self.tenants.write_text(yaml.safe_dump({
            "presets": {"bold": {"weight": 1.0},
                        "style": {"slider": {"min": 0.2, "max": 1.0, "step": 0.2,
                                             "default": 0.6}}},
            "tenants": {
                "acme": {"output": str(self.prefix["acme"]), "loras": {"house": "tiny:neon"},
                         "catalogs": [str(self.catalogs)], "caps": caps},
                "acme2": {"output": str(self.prefix["acme2"]), "loras": {"house": "tiny:neon"}},
                "globex": {"output": str(self.prefix["globex"]), "loras": {"ink": "tiny:ink"},
                           "caps": {"strength": [0, 1]}},
                "s3acme": {"output": self.s3acme, "loras": {"house": "tiny:neon"},
                           "catalogs": [str(self.catalogs)], "caps": caps},
            },
        }))  # fmt: skip

    def spec(self, name: str, **over) -> Path:
        spec = {
            "job": name,
            "tenant": "acme",
            "loras": ["house"],
            "seeds": [0],
            "prompts": ["a red circle on a white background"],
            "render": RENDER,
        } | over
        path = self.specs / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec))
        return path

    def snapshot(self) -> tuple[list[str], list[str]]:
        """Every file, folder and link below the root (links not followed), and every key
        of the bucket."""
        found = []
        for dirpath, dirnames, files in os.walk(self.root):
            for name in dirnames + files:
                path = Path(dirpath, name)
                found.append(f"{path.relative_to(self.root)}{'@' if path.is_symlink() else ''}")
        pages = self.s3.client().get_paginator("list_objects_v2").paginate(Bucket=self.s3.bucket)
        keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
        return sorted(found), sorted(keys)


@pytest.fixture(scope="module")
def shared(tmp_path_factory, s3, tiny_dir) -> Farm:
    return Farm(tmp_path_factory.mktemp("isolation"), s3)


def cli(*args: str, env: dict | None = None):
    """`farm ARGS` in this process, FARM_TENANTS and FARM_TENANT unset unless given."""
    return farm_here(*args, env=env, check=False)


def refused(shared: Farm, args: list[str], expected: str, env: dict | None = None) -> str:
    """Run a command that must be refused: exit 2, one line naming `expected`, nothing
    written anywhere. The line, for more checks."""
    before = shared.snapshot()
    result = cli(*args, env=env)
    err = result.stderr.strip()
    assert result.returncode == 2, (args, result.stdout, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert expected in err, err
    assert shared.snapshot() == before
    return err


def run_refused(shared: Farm, spec: Path, expected: str, *more: str) -> str:
    return refused(shared, ["run", str(spec), "--tenants", str(shared.tenants), *more], expected)


def planned(shared: Farm, spec: Path, *more: str) -> dict:
    result = cli("plan", str(spec), "--json", "--tenants", str(shared.tenants), *more)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# ---------------------------------------------------------------- 1. the cap bounds products

# (name, alpha, blocks, schedule): each is past the cap of 1.2 only as a product, or
# past it in one factor the render multiplies.
PAST_THE_CAP = [
    ("blocks-times-schedule", 1, LBW(1.2), "1.2@0"),  # 1.44
    ("tiny-weight-huge-factors", 1e-9, LBW(1e9), "1e9@0"),  # about 1e9
    ("schedule-late-keyframe", 1, LBW(1.1), "1@0,1.2@0.5"),  # 1.32, second half
    ("one-block-times-schedule", 1, "1," + ",".join(["1"] * 15) + ",2", "0.7@0"),  # OUT11 1.4
    ("negative-block", 1, "1," + ",".join(["-0.5"] * 16), None),  # -0.5
    ("text-encoder-block", 1, "1.3," + ",".join(["1"] * 16), None),  # te × BASE 1.3
]
# Carriers: each way a strength reaches the render.
CARRIERS = ["alpha", "combine", "tag", "catalog-cell"]


def carry(shared: Farm, name: str, carrier: str, alpha: float, blocks: str, schedule) -> Path:
    if carrier == "alpha":
        lora = {"name": "house", "alpha": alpha, "blocks": blocks}
        return shared.spec(name, loras=[lora | ({"schedule": schedule} if schedule else {})])
    if carrier == "combine":
        entry = {"weight": alpha, "blocks": blocks} | ({"schedule": schedule} if schedule else {})
        return shared.spec(name, combine=[{"house": entry}])
    tag = f"<lora:house:{alpha}:lbw={blocks}" + (f":sched={schedule}>" if schedule else ">")
    if carrier == "tag":
        return shared.spec(name, prompts=[f"a red circle {tag}"])
    # A catalog cell: the row's text carries the tag into the filled prompt.
    path = shared.catalogs / f"{name}.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([["sku", "colour", "style"], ["1", "red", tag]])
    return shared.spec(
        name,
        prompts=None,
        catalog={"path": str(path), "key": "sku", "template": "a {colour} circle {style}"},
    )


@pytest.mark.parametrize("carrier", CARRIERS)
@pytest.mark.parametrize(("case", "alpha", "blocks", "schedule"),
                         [pytest.param(*c, id=c[0]) for c in PAST_THE_CAP])  # fmt: skip
def test_the_cap_bounds_every_product_the_render_applies(shared, carrier, case, alpha, blocks,
                                                         schedule):  # fmt: skip
    spec = carry(shared, f"cap-{carrier}-{case}", carrier, alpha, blocks, schedule)
    err = run_refused(shared, spec, "is outside the tenant's cap 0..1.2")
    assert "strength" in err


@pytest.mark.parametrize("carrier", CARRIERS)
def test_a_product_at_the_cap_is_accepted(shared, carrier):
    # 0.5 × block 2 × schedule 1.2 is exactly 1.2 on every UNet layer; te × BASE is 1.
    spec = carry(shared, f"at-cap-{carrier}", carrier, 0.5, LBW(2), "1.2@0")
    assert planned(shared, spec)["items"] == 1


def test_the_message_names_the_factors_and_the_exact_value(shared):
    spec = shared.spec("exact", loras=[{"name": "house", "alpha": 1.2000001}])
    err = run_refused(shared, spec, "strength 1.2000001 is outside the tenant's cap 0..1.2")
    assert err.startswith("error: loras[0].alpha:")
    spec = carry(shared, "factors", "alpha", 1, LBW(1.2), "1.2@0")
    run_refused(shared, spec, "strength 1.44 (unet 1 × block IN01 1.2 × schedule 1.2@0)")


def test_a_preset_over_the_cap_with_blocks_is_refused_where_picked(shared, tmp_path):
    # A global preset the tenants file accepts (it fits no particular tenant) but whose
    # product passes acme's cap: refused when acme's job picks it.
    doc = yaml.safe_load(shared.tenants.read_text())
    doc["presets"]["loud"] = {"weight": {"unet": 1, "blocks": LBW(1.2), "schedule": "1.2@0"}}
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(yaml.safe_dump(doc))
    spec = shared.spec("loud", preset="loud")
    refused(shared, ["run", str(spec), "--tenants", str(tenants)], "preset 'loud'")


# ---------------------------------------------------------------- 2. paths a tenant names


def test_outputs_are_compared_where_the_store_writes(shared):
    acme, globex = shared.prefix["acme"], shared.prefix["globex"]
    (acme / "outlink").symlink_to(globex, target_is_directory=True)
    (acme / "linked-job").symlink_to(globex, target_is_directory=True)
    cases = [
        (f"{acme}/../globex", "'..' is not allowed"),
        (f"{acme}/a/../b", "'..' is not allowed"),  # climbs back inside: still refused
        (f"{acme}/outlink", "is a link that leads out of tenant acme's prefix"),
        (f"{acme}2", "is outside tenant acme's prefix"),
        (str(globex), "is outside tenant acme's prefix"),
        (shared.s3acme, "is outside tenant acme's prefix"),
    ]
    for output, expected in cases:
        run_refused(shared, shared.spec("out", output=output), expected)
        run_refused(shared, shared.spec("out"), expected, "--output", output)
    # Encoded and look-alike spellings are literal names, below the prefix where written.
    for literal in ["%2e%2e", "..%2fglobex", "\u2025", "a\\..\\b"]:
        assert planned(shared, shared.spec("enc", output=f"{acme}/{literal}"))["output"] == \
            f"{acme}/{literal}"  # fmt: skip
    # A job folder that is a link out of the prefix says so, not "outside acme".
    err = run_refused(shared, shared.spec("linked-job"), "is a link that leads out of tenant acme")
    assert "outside tenant acme's prefix" not in err


def test_s3_prefixes_refuse_empty_segments_and_climbs(shared):
    s3acme, bucket = shared.s3acme, shared.s3.bucket
    for output, expected in [
        (f"s3://{bucket}/iso/tenants//s3acme", "empty segment"),
        (f"{s3acme}//deeper", "empty segment"),
        (f"{s3acme}/../globex", "'..'"),
        (f"{s3acme}2", "is outside tenant s3acme's prefix"),
    ]:
        spec = shared.spec("s3out", tenant="s3acme", output=output)
        run_refused(shared, spec, expected)
    # The prefix itself, and below it (encoded dots are a literal key), plan.
    assert planned(shared, shared.spec("s3in", tenant="s3acme"))["output"] == s3acme
    deeper = f"{s3acme}/%2e%2e/x"
    assert planned(shared, shared.spec("s3in", tenant="s3acme", output=deeper))["output"] == deeper


def test_a_catalog_is_read_only_from_the_tenants_own_folders(shared):
    globex_secret = shared.secret
    inside = shared.catalogs / "link.csv"
    inside.symlink_to(globex_secret)
    (shared.prefix["acme"] / "own.csv").write_text("id,name\n1,sneaker\n")
    template = {"template": "a {secret}", "key": "id"}
    spec = lambda p: shared.spec("cat", prompts=None, catalog={"path": str(p)} | template)  # noqa: E731
    messages = []
    for path in [globex_secret, inside, shared.catalogs / ".." / ".." / "tenants" / "globex" /
                 "secret.csv", shared.prefix["globex"] / "missing.csv"]:  # fmt: skip
        err = run_refused(shared, spec(path), "is outside tenant acme's catalog folders")
        messages.append(err.replace(str(path), "PATH"))
    # A file that exists elsewhere and one that does not get the same answer.
    assert len(set(messages)) == 1, messages
    # Relative to the spec's folder, climbing out: refused too.
    run_refused(shared, spec("../tenants/globex/secret.csv"), "catalog folders")
    # Its own prefix and its catalog folder are readable; a missing file there says so.
    assert (
        planned(
            shared,
            shared.spec(
                "own",
                prompts=None,
                catalog={
                    "path": str(shared.prefix["acme"] / "own.csv"),
                    "template": "a {name}",
                    "key": "id",
                },
            ),
        )["items"]
        == 1
    )
    run_refused(shared, spec(shared.catalogs / "missing.csv"), "not found")
    # A tenant on S3 reads catalogs only from the folders the tenants file gives it.
    spec_s3 = shared.spec("cat-s3", tenant="s3acme", prompts=None,
                          catalog={"path": str(globex_secret)} | template)  # fmt: skip
    run_refused(shared, spec_s3, "is outside tenant s3acme's catalog folders")


def test_a_catalog_template_cannot_pad_or_flood(shared):
    rows = shared.catalogs / "pad.csv"
    rows.write_text("sku,colour\n1,red\n")
    for template in ["a {colour:>50000000} circle", "a {colour!r} circle", "a {colour:.3} x"]:
        spec = shared.spec(
            "pad", prompts=None, catalog={"path": str(rows), "key": "sku", "template": template}
        )
        run_refused(shared, spec, "formats and conversions are not supported; write {colour}")
    long = shared.catalogs / "long.csv"
    long.write_text("sku,colour\n1," + "r" * 30_000 + "\n")
    spec = shared.spec(
        "long",
        prompts=None,
        catalog={"path": str(long), "key": "sku", "template": "a {colour} circle"},
    )
    run_refused(shared, spec, "more than 20,000; shorten the row's text")


# ---------------------------------------------------------------- 3, 4: stored jobs


@pytest.fixture(scope="module")
def job(shared) -> tuple[Path, str]:
    """One finished job of acme's (one image), and its item id."""
    spec = shared.spec("stored", preset="bold")
    farm_here("run", str(spec), "--tenants", str(shared.tenants), "--local")
    folder = shared.prefix["acme"] / "stored"
    return folder, pq.read_table(folder / "metadata.parquet")["item_id"][0].as_py()


def test_rerender_out_stays_inside_the_tenants_prefix(shared, job, tmp_path):
    folder, item = job
    globex = shared.prefix["globex"]
    (shared.prefix["acme"] / "to-globex").symlink_to(globex, target_is_directory=True)
    base = ["rerender", str(folder), item, "--tenants", str(shared.tenants), "--tenant", "acme"]
    for out, expected in [
        (globex / "planted.png", "is outside tenant acme's prefix"),
        (shared.prefix["acme"] / "to-globex" / "planted.png", "is outside tenant acme's prefix"),
        (shared.prefix["acme"] / ".." / "globex" / "planted.png", "'..' is not allowed"),
        (tmp_path / "elsewhere.png", "is outside tenant acme's prefix"),
    ]:
        refused(shared, [*base, "--out", str(out)], expected)
    # Inside the prefix it renders, and the file is written.
    out = shared.prefix["acme"] / "again.png"
    result = cli(*base, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert f"match: {item}" in result.stdout and out.read_bytes().startswith(b"\x89PNG")
    out.unlink()


FORGED = [
    ("another-tenants-lora", lambda s: s["loras"][0].update(path="tiny:ink"),
     "is not a LoRA of tenant acme"),
    ("a-model-not-allowed", lambda s: s.update(model="{model}"), "is not allowed for tenant acme"),
    ("weight-past-the-cap", lambda s: s["preset_weights"][0].update(weight=5),
     "is outside the tenant's cap"),
    ("product-past-the-cap", lambda s: s["preset_weights"][0].update(
        weight={"unet": 1, "blocks": LBW(1.2), "schedule": "1.2@0"}), "strength 1.44"),
    ("a-lora-folder", lambda s: s.update(lora_dir="{globex}"), "lora_dir: a job of tenant acme"),
    ("globex-catalog", lambda s: (s.pop("prompts"), s.update(catalog={
        "path": "{secret}", "template": "a {secret}", "key": "id"})),
     "is outside tenant acme's catalog folders"),
    ("no-tenant", lambda s: s.update(tenant=None), "is inside tenant acme's prefix"),
]  # fmt: skip


@pytest.mark.parametrize("command", ["resume", "rerender"])
@pytest.mark.parametrize(("case", "forge", "expected"),
                         [pytest.param(*f, id=f[0]) for f in FORGED])  # fmt: skip
def test_a_rewritten_job_json_is_held_to_the_policy(shared, job, tiny_dir, command, case, forge,
                                                    expected):  # fmt: skip
    folder, item = job
    path = folder / "job.json"
    original = path.read_text()
    doc = json.loads(original)
    forge(doc["spec"])
    fill = {"{model}": str(tiny_dir), "{globex}": str(shared.prefix["globex"]),
            "{secret}": str(shared.secret)}  # fmt: skip
    text = json.dumps(doc)
    for a, b in fill.items():
        text = text.replace(a, b)
    path.write_text(text)
    try:
        args = [command, str(folder)] + ([item] if command == "rerender" else [])
        # As the operator (the tenants file alone) and acting for acme: refused either way.
        refused(shared, [*args, "--tenants", str(shared.tenants)], expected)
        if case != "no-tenant":
            refused(shared, [*args, "--tenants", str(shared.tenants), "--tenant", "acme"],
                    expected)  # fmt: skip
    finally:
        path.write_text(original)


def test_a_spec_cannot_write_resolved_preset_weights(shared):
    forged = [{"preset": "style", "weight": 1.1, "at": 1.1}]
    spec = shared.spec("forged", preset_weights=forged)
    run_refused(shared, spec, "preset_weights: farm writes this from the tenants file")
    refused(shared, ["run", str(spec)], "preset_weights: farm writes this")
    # The same slider position written the supported way is refused by the slider.
    spec = shared.spec("slider", preset={"name": "style", "at": 1.1})
    run_refused(shared, spec, "outside the slider's 0.2..1")


# ---------------------------------------------------------------- 7. nothing written


def test_a_refused_run_writes_nothing_not_even_job_json_or_a_lease(shared):
    job = shared.prefix["acme"] / "trap"
    job.mkdir()
    (job / "parts").symlink_to(shared.prefix["globex"], target_is_directory=True)
    run_refused(shared, shared.spec("trap"), "a link that leads out of")
    assert not (job / "job.json").exists() and not (shared.prefix["acme"] / ".running").exists()
    shutil.rmtree(job)


def test_a_local_store_leaves_no_empty_folder_behind_a_delete(tmp_path):
    from farm.storage.store import LocalStore

    store = LocalStore(tmp_path / "prefix")
    store.put(".running/job.json", b"{}")
    store.put("named/a/b/c.png", b"x")
    store.put("named/a/d.png", b"y")
    store.delete(".running/job.json")
    store.delete("named/a/b/c.png")
    assert sorted(p.relative_to(store.root).as_posix() for p in store.root.rglob("*")) == [
        "named", "named/a", "named/a/d.png"]  # fmt: skip
    store.put(".running/again.json", b"{}")  # the folder comes back when needed
    assert list(store.list(".running/")) == [".running/again.json"]


# ---------------------------------------------------------------- messages and modes


def test_messages_say_what_happened(shared, job):
    spec = shared.spec("mismatch", tenant="acme")
    err = run_refused(shared, spec, "the spec is for tenant 'acme' and --tenant is 'globex'",
                      "--tenant", "globex")  # fmt: skip
    assert "''" not in err
    refused(shared, ["run", str(spec), "--tenant", "acme"], "--tenant acme: needs a tenants file")
    folder, _ = job
    link = shared.prefix["globex"] / "borrowed"
    link.symlink_to(folder, target_is_directory=True)
    try:
        refused(shared, ["status", str(link), "--tenants", str(shared.tenants), "--tenant",
                         "globex"], "links out of tenant globex's output prefix")  # fmt: skip
    finally:
        link.unlink()


def test_the_redactor_leaves_lora_schedules_alone():
    from farm.redact import redact

    tag = "<lora:house:1:sched=0.5@0,3@0.5>"
    assert redact(f"prompts[0]: {tag}: too strong") == f"prompts[0]: {tag}: too strong"
    assert redact(f"{tag} user:pw@10.0.0.1:6379") == f"{tag} ***@10.0.0.1:6379"
    assert redact("user:pw@head-node:10001") == "***@head-node:10001"


def test_farm_tenants_in_the_environment_always_applies(shared):
    # An installation sets FARM_TENANTS once: a job of no tenant cannot write into a
    # tenant's prefix, whether or not the command names a tenants file.
    spec = shared.spec("operator", tenant=None, output=str(shared.prefix["acme"]),
                       loras=[{"name": "n", "path": "tiny:neon", "alpha": 1}])  # fmt: skip
    refused(shared, ["run", str(spec)], "is inside tenant acme's prefix",
            env={"FARM_TENANTS": str(shared.tenants)})  # fmt: skip
    # Without it, farm is the operator's tool: no policy (docs/tenants.md says so).
    result = cli("plan", str(spec))
    assert result.returncode == 0, result.stderr


def test_a_tenant_cannot_sweep_a_training_run_from_the_planning_machine(shared, tmp_path):
    """A run's checkpoints are files on the machine that plans: a tenant names LoRAs from
    its registry only."""
    run = tmp_path / "run"
    run.mkdir()
    spec = shared.spec("run", loras=[{"name": "house", "checkpoints": str(run), "alpha": [1]}])
    run_refused(shared, spec, "loras[0].checkpoints: a job of tenant acme names its LoRAs "
                "from the registry")  # fmt: skip
