"""Golden item and unit ids: today's ids for a few fixed specs, written out in full.

A stored job is resumed, verified and rerendered by its ids: `parts/` holds the item_ids
that are done, and a resume renders exactly the planned items whose id has no row. If
the id hash changes (farm/plan/sweep.py `expand` and `content_id`, `Strength.key`), every
stored job's ids stop matching its plan, and a resume renders the whole job again
beside the old images.

CHANGING ANY HEX STRING BELOW MEANS EVERY STORED JOB BECOMES UNRESUMABLE. Do not update
them to make a test pass: if the hash must change, give the id payload a version (farm
has none today, so today's ids are version 0), keep reading jobs planned with the old
one, and say so in README.md ("Job layout") and in the release notes.

The inputs are pinned too, so a failure says which one moved: the tiny model's
fingerprint (it changes with TINY_VERSION, on purpose: new weights, new pixels, new ids)
and the demo LoRA files' sha256 (their bytes are the same on every machine).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from farm.plan.sweep import Plan, expand, make_plan, unit_streams
from farm.spec import load_spec
from farm.tenancy.policy import resolver
from farm.tenancy.tenants import load_tenants

RENDER = {"steps": 2, "width": 64, "height": 64}
NEON = {"name": "neon", "path": "tiny:neon"}
INK = {"name": "ink", "path": "tiny:ink"}

# The inputs every id below hashes.
TINY_FINGERPRINT = "7d66072526736b129ba1e41ca0e55cc84788a82d1252fae32dfbe842e86e389d"
NEON_SHA256 = "7afd1c4a4bde5a4a32691573bb6a6830c4d0d21b30469204372f5c7dda21b0e9"
INK_SHA256 = "c1306008e7c8656a26dc1dd81d626fcd6ec638d057a17feb9b3983778c3ba51e"


def planned(folder: Path, spec: dict, tenants: Path | None = None) -> Plan:
    """The plan of `spec` as `farm plan` makes it: from a spec file, through load_spec."""
    path = folder / f"{spec['job']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    config = load_tenants(str(tenants)) if tenants is not None else None
    return make_plan(load_spec(path, resolver(config)))


def ids(plan: Plan) -> tuple[dict[tuple, str], set[str]]:
    """{(stored prompt, seed, catalog key): item_id} and the set of unit_ids."""
    items = {(i.prompt, i.seed, dict(i.catalog).get("sku")): i.item_id for i in expand(plan)}
    units = {u.unit_id for stream in unit_streams(plan) for u in stream.units}
    return items, units


def check_inputs(plan: Plan) -> None:
    assert plan.model_fingerprint == TINY_FINGERPRINT, "the tiny model changed (TINY_VERSION)"
    for adapter in plan.adapters.values():
        expected = {"tiny:neon": NEON_SHA256, "tiny:ink": INK_SHA256}[adapter.path]
        assert adapter.sha256 == expected, f"the demo LoRA {adapter.path} changed"


def test_a_plain_prompt_seed_alpha_sweep_keeps_its_ids(tmp_path):
    plan = planned(tmp_path, {
        "job": "plain", "model": "tiny", "prompts": ["a red circle on a white background"],
        "seeds": [0, 1], "loras": [NEON | {"alpha": [0, 0.5, 1]}], "render": RENDER,
    })  # fmt: skip
    check_inputs(plan)
    p = "a red circle on a white background"
    assert ids(plan) == (
        {
            (f"{p} <lora:neon:0>", 0, None): "8b93ad2cb59811910d7b",
            (f"{p} <lora:neon:0>", 1, None): "4f80bcd9cc8b5fc01d4b",
            (f"{p} <lora:neon:0.5>", 0, None): "9bf03479dd80816a3b6a",
            (f"{p} <lora:neon:0.5>", 1, None): "91965fab4f8f423ff010",
            (f"{p} <lora:neon:1>", 0, None): "21cbaefc52ce1e51f61a",
            (f"{p} <lora:neon:1>", 1, None): "04b5331ec6420af0039d",
        },
        {"87d032c7a2cc8a1110ce"},
    )


@pytest.mark.parametrize(
    "lora",
    [
        pytest.param({"loras": [NEON | {"alpha": 0.5}]}, id="alpha"),
        pytest.param({"loras": [NEON | {"alpha": [0.5]}]}, id="alpha-list"),
        pytest.param({"loras": [NEON], "combine": [{"neon": 0.5}]}, id="combine"),
        pytest.param({"loras": [NEON], "combine": [{"neon": {"weight": 0.5}}]}, id="weight"),
        pytest.param(
            {"loras": [NEON], "combine": [{"neon": {"te": 0.5, "unet": 0.5}}]}, id="te-equals-unet"
        ),
        pytest.param(
            {"loras": [NEON | {"alpha": 0.5}], "render": RENDER | {"batch": 8}}, id="batch"
        ),
    ],
)
def test_a_plain_strength_keeps_its_id_however_the_spec_writes_it(tmp_path, lora):
    # README: "item ids of plain sweeps do not depend on these features" (te/unet, blocks,
    # schedules): a plain 0.5, however spelled, is the plain sweep's id above.
    spec = {"job": "spelled", "model": "tiny", "prompts": ["a red circle on a white background"],
            "seeds": [0], "render": RENDER} | lora  # fmt: skip
    (item,) = expand(planned(tmp_path, spec))
    assert item.item_id == "9bf03479dd80816a3b6a"


def test_a_blend_keeps_its_ids(tmp_path):
    plan = planned(tmp_path, {
        "job": "blend", "model": "tiny", "prompts": ["a blue star on a gray background"],
        "seeds": [3], "loras": [NEON, INK], "combine": [{"neon": 0.6, "ink": 0.4}, {"neon": 1.0}],
        "render": RENDER,
    })  # fmt: skip
    check_inputs(plan)
    p = "a blue star on a gray background"
    assert ids(plan) == (
        {
            (f"{p} <lora:ink:0.4> <lora:neon:0.6>", 3, None): "e6035eb9e9d140d8f020",
            (f"{p} <lora:neon:1>", 3, None): "596f9a47f9ae9c9933ef",
        },
        {"891fdf713c8b60e225e0", "5ae21198619302d6f4da"},
    )


def test_a_split_blocked_scheduled_strength_keeps_its_id(tmp_path):
    # A te/unet split with LoRA Block Weight and a schedule in a combine cell, beside a
    # prompt tag with its own te/unet split.
    plan = planned(tmp_path, {
        "job": "strength", "model": "tiny", "prompts": ["a lighthouse <lora:ink:0.3:0.7>"],
        "seeds": [2], "loras": [NEON, INK], "render": RENDER,
        "combine": [{"neon": {"te": 0.5, "unet": 1.0, "blocks": "MIDD",
                              "schedule": "0.2@0,1@0.5"}}],
    })  # fmt: skip
    check_inputs(plan)
    prompt = "a lighthouse <lora:ink:0.3:0.7> <lora:neon:0.5:1:lbw=MIDD:sched=0.2@0,1@0.5>"
    assert ids(plan) == ({(prompt, 2, None): "ef9adb65d9b91bd10574"}, {"63c0e8eb6cf37af22368"})


def test_catalog_rows_keep_their_ids(tmp_path):
    (tmp_path / "products.csv").write_text("sku,colour\nA1,red\nB2,green\n")
    plan = planned(tmp_path, {
        "job": "catalog", "model": "tiny", "seeds": [0], "render": RENDER,
        "catalog": {"path": "products.csv", "template": "a {colour} circle", "key": "sku"},
        "loras": [NEON | {"alpha": 0.8}],
    })  # fmt: skip
    check_inputs(plan)
    assert ids(plan) == (
        {
            ("a red circle <lora:neon:0.8>", 0, "A1"): "286dc5e16a561e1b54ae",
            ("a green circle <lora:neon:0.8>", 0, "B2"): "b16ed1b13ed8901e5c8d",
        },
        {"d222d5f7782cfd018630"},
    )


def test_a_tenants_preset_job_keeps_its_ids(tmp_path):
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(yaml.safe_dump({
        "presets": {"subtle": {"weight": 0.3}, "bold": {"weight": 1.0}},
        "tenants": {"acme": {"output": str(tmp_path / "acme"), "models": ["tiny"],
                             "loras": {"house": "tiny:neon"},
                             "presets": {"bold": {"weight": 0.9}}}},
    }))  # fmt: skip
    plan = planned(tmp_path, {
        "job": "preset", "tenant": "acme", "loras": ["house"], "prompts": ["a red sneaker"],
        "seeds": [0], "presets": ["subtle", "bold"], "render": RENDER,
    }, tenants)  # fmt: skip
    check_inputs(plan)
    assert ids(plan) == (
        {
            ("a red sneaker <lora:house:0.3>", 0, None): "5ab0b75e894306f09cbc",
            ("a red sneaker <lora:house:0.9>", 0, None): "ae9777a1b2a7eb217ad2",
        },
        {"62f86be71c1ffa250227"},
    )
