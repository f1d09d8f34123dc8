"""Sweeps: plan counts against the real expansion, item and unit ids, tags and alphas."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from farm.plan.sweep import (
    AUTO_UNIT,
    Item,
    Plan,
    Unit,
    expand,
    group_units,
    make_plan,
    unit_streams,
)
from farm.spec import SpecError, parse_spec

NEON = {"name": "neon", "path": "tiny:neon", "alpha": [0, 0.5, 1]}
INK = {"name": "ink", "path": "tiny:ink", "alpha": [0.4, 0.6]}


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FARM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def base(tmp_path) -> Path:
    return tmp_path


def spec_dict(**over) -> dict:
    data = {
        "job": "sweep",
        "model": "tiny",
        "prompts": ["a cat", "a dog"],
        "negative_prompt": "blurry",
        "seeds": {"start": 0, "count": 3},
        "loras": [NEON],
        "render": {"steps": 4, "width": 64, "height": 64},
    }
    return data | over


def plan_of(base: Path, **over) -> Plan:
    return make_plan(parse_spec(spec_dict(**over), base_dir=base))


def run(plan: Plan) -> tuple[list[Item], list[Unit]]:
    # Units as the executor gets them: one stream per adapter set.
    items = list(expand(plan))
    return items, [u for stream in unit_streams(plan) for u in stream.units]


def plain(item: Item) -> tuple[tuple[str, float], ...]:
    """An item's LoRAs as (name, weight), for items with plain strengths only."""
    assert all(w.is_plain for _, w in item.loras)
    return tuple((n, w.weight) for n, w in item.loras)


def check_counts(plan: Plan, items: list[Item], units: list[Unit]) -> dict:
    counts = plan.counts()
    assert counts["items"] == len(items) == plan.items
    assert counts["units"] == len(units) == plan.units
    assert counts["adapter_groups"] == len({u.adapters for u in units}) == plan.adapter_groups
    assert counts["prompts"] * counts["seeds"] * counts["combos"] == len(items)
    assert sum(len(u.items) for u in units) == len(items)
    # Every item exactly once; within an adapter set, the combination-major order is kept.
    assert sorted(i.item_id for u in units for i in u.items) == sorted(i.item_id for i in items)
    for key, n in plan.groups():
        in_set = [i for i in items if tuple(sorted(x for x, _ in i.loras)) == key]
        assert [i for u in units if u.adapters == key for i in u.items] == in_set
        assert len(in_set) == n
    return counts


# ---------------------------------------------------------------- counts


def test_product_of_two_loras(base):
    plan = plan_of(base, loras=[NEON, INK])
    items, units = run(plan)
    counts = check_counts(plan, items, units)
    assert counts == {"prompts": 2, "seeds": 3, "combos": 6, "loras": 2, "items": 36,
                      "units": 3, "adapter_groups": 1}  # fmt: skip
    assert {plain(i) for i in items if i.seed == 0 and i.text == "a cat"} == {
        (("neon", a), ("ink", b)) for a in (0.0, 0.5, 1.0) for b in (0.4, 0.6)
    }
    assert all(i.alpha is None for i in items)  # a blend has no single swept strength
    assert {u.adapters for u in units} == {("ink", "neon")}


def test_zip(base):
    ink = {"name": "ink", "path": "tiny:ink", "alpha": [1, 0.5, 0]}
    plan = plan_of(base, loras=[NEON, ink], combine="zip", seeds=[7])
    items, units = run(plan)
    counts = check_counts(plan, items, units)
    assert (counts["combos"], counts["items"], counts["units"]) == (3, 6, 1)
    assert sorted({plain(i) for i in items}) == [
        (("neon", 0.0), ("ink", 1.0)),
        (("neon", 0.5), ("ink", 0.5)),
        (("neon", 1.0), ("ink", 0.0)),
    ]


def test_explicit_combos(base):
    combos = [{"neon": 0.5}, {"ink": 0.4}, {"neon": 0.3, "ink": 0.3}]
    plan = plan_of(base, loras=[NEON, INK], combine=combos, seeds={"start": 0, "count": 5})
    items, units = run(plan)
    counts = check_counts(plan, items, units)
    assert (counts["combos"], counts["items"]) == (3, 30)
    assert counts["adapter_groups"] == 3
    assert counts["units"] == 3  # 10 items per combination: one unit each
    assert {u.adapters for u in units} == {("neon",), ("ink",), ("ink", "neon")}
    assert all(i.alpha is None for i in items)


def test_explicit_combos_of_one_lora_keep_alpha(base):
    plan = plan_of(base, loras=[NEON], combine=[{"neon": 0.25}, {"neon": -1}])
    items, units = run(plan)
    check_counts(plan, items, units)
    assert sorted({i.alpha for i in items}) == [-1.0, 0.25]


def test_no_loras(base):
    plan = plan_of(base, loras=[], seeds={"start": 0, "count": 9})
    items, units = run(plan)
    counts = check_counts(plan, items, units)
    assert counts == {"prompts": 2, "seeds": 9, "combos": 1, "loras": 0, "items": 18,
                      "units": 2, "adapter_groups": 1}  # fmt: skip
    assert all(i.loras == () and i.alpha is None for i in items)
    assert [i.prompt for i in items[:1]] == ["a cat"]
    assert {u.adapters for u in units} == {()}


def test_inline_tag_while_another_lora_is_swept(base):
    ink = {"name": "ink", "path": "tiny:ink"}  # no alpha: serves the inline tag only
    neon = {"name": "neon", "path": "tiny:neon", "alpha": [0, 1]}
    plan = plan_of(base, loras=[neon, ink], prompts=["a cat", "a dog <lora:ink:0.5>"])
    items, units = run(plan)
    counts = check_counts(plan, items, units)
    assert (counts["combos"], counts["items"], counts["loras"]) == (2, 12, 2)
    # Runs alternate (neon) / (ink, neon); each adapter set's 6 items make one unit.
    assert (counts["units"], counts["adapter_groups"]) == (2, 2)
    dogs = [i for i in items if i.text.startswith("a dog")]
    expected = {(("neon", 0.0), ("ink", 0.5)), (("neon", 1.0), ("ink", 0.5))}
    assert {plain(i) for i in dogs} == expected
    assert {i.prompt for i in dogs} == {
        "a dog <lora:ink:0.5> <lora:neon:0>",
        "a dog <lora:ink:0.5> <lora:neon:1>",
    }
    assert all("<" not in i.text for i in items)
    assert sorted({i.alpha for i in items}) == [0.0, 1.0]  # only neon is swept


def test_many_runs_of_one_adapter_set(base):
    # 3 prompts x 1 seed alternate between two adapter sets: counts must follow the runs.
    ink = {"name": "ink", "path": "tiny:ink"}
    neon = {"name": "neon", "path": "tiny:neon", "alpha": "0:1:0.1"}
    prompts = ["a <lora:ink:1>", "b", "c <lora:ink:0.2>"]
    plan = plan_of(base, loras=[neon, ink], prompts=prompts, seeds=[0])
    items, units = run(plan)
    counts = check_counts(plan, items, units)
    assert counts["items"] == 33
    assert counts["adapter_groups"] == 2
    # The runs of one adapter set are merged: 11 + 22 items, not one unit per run.
    assert counts["units"] == len(units) == 1 + 2


def test_unit_streams_leave_out_done_items(base):
    plan = plan_of(base, prompts=["a cat", "a dog"], seeds={"start": 0, "count": 5})
    items = list(expand(plan))
    done = {i.item_id for i in items[::3]}
    left = [i.item_id for s in unit_streams(plan, done) for u in s.units for i in u.items]
    assert sorted(left) == sorted(i.item_id for i in items if i.item_id not in done)


@pytest.mark.parametrize("count", [1, 7, 8, 9, 16, 17])
def test_unit_sizes(base, count):
    plan = plan_of(base, prompts=["a cat"], seeds={"start": 0, "count": count})
    items, units = run(plan)
    check_counts(plan, items, units)
    for unit in units:
        assert 1 <= len(unit.items) <= AUTO_UNIT
        assert {tuple(sorted(n for n, _ in i.loras)) for i in unit.items} == {unit.adapters}
    # Each alpha's `count` items are contiguous; the combination-major order is kept.
    assert len(units) == -(-3 * count // AUTO_UNIT)


def test_group_units_never_mixes_adapter_sets(base):
    combos = [{"neon": 0.5}, {"ink": 0.4}, {"neon": 0.3, "ink": 0.3}, {"ink": 0.1}]
    plan = plan_of(base, loras=[NEON, INK], combine=combos, seeds={"start": 0, "count": 5})
    items, units = run(plan)
    check_counts(plan, items, units)
    for unit in units:
        assert len(unit.items) <= AUTO_UNIT
        assert {tuple(sorted(n for n, _ in i.loras)) for i in unit.items} == {unit.adapters}
    assert [len(u.items) for u in group_units(items, size=3)][:4] == [3, 3, 3, 1]


# ---------------------------------------------------------------- ids


def ids(plan: Plan) -> list[str]:
    return [i.item_id for i in expand(plan)]


def test_ids_are_unique_and_stable(base):
    spec = parse_spec(spec_dict(loras=[NEON, INK]), base_dir=base)
    first, second = make_plan(spec), make_plan(spec)
    a, b = ids(first), ids(second)
    assert len(set(a)) == len(a) == 36
    assert a == b
    assert all(len(x) == 20 and int(x, 16) >= 0 for x in a)
    units_a, units_b = run(first)[1], run(second)[1]
    assert [u.unit_id for u in units_a] == [u.unit_id for u in units_b]
    assert len({u.unit_id for u in units_a}) == len(units_a)
    assert not {u.unit_id for u in units_a} & set(a)


def test_ids_are_the_same_in_another_farm_home(base, tmp_path, monkeypatch):
    a = ids(plan_of(base))
    monkeypatch.setenv("FARM_HOME", str(tmp_path / "other-home"))
    plan = plan_of(base)
    # The demo LoRA was written in the other home, but the plan keeps its reference:
    # each worker node writes its own copy.
    assert any((tmp_path / "other-home").rglob("neon.safetensors"))
    assert plan.adapters["neon"].path == "tiny:neon"
    assert ids(plan) == a


ONE = {"prompts": ["a cat"], "seeds": [3], "loras": [{**NEON, "alpha": 0.5}]}
SAME = [
    {"output": "/elsewhere/renders"},
    {"job": "another-job"},
    {"render": {"steps": 4, "width": 64, "height": 64, "batch": 2}},
    {"loras": [{**NEON, "alpha": 0.5, "name": "renamed"}]},  # same file: same pixels
]
CHANGED = [
    {"seeds": [4]},
    {"render": {"steps": 5, "width": 64, "height": 64}},
    {"render": {"steps": 4, "width": 64, "height": 72}},
    {"render": {"steps": 4, "width": 64, "height": 64, "guidance": 5}},
    {"render": {"steps": 4, "width": 64, "height": 64, "scheduler": "ddim"}},
    {"render": {"steps": 4, "width": 64, "height": 64, "format": "webp"}},
    {"prompts": ["a dog"]},
    {"prompts": ["a cat, studio photo"]},
    {"negative_prompt": "sharp"},
    {"loras": [{**NEON, "alpha": 0.6}]},
    {"loras": [{**NEON, "alpha": 0.5, "path": "tiny:neon-peft"}]},  # same deltas, other file
    {"loras": [{**NEON, "alpha": 0.5, "path": "tiny:ink"}]},
    {"loras": []},
]


@pytest.mark.parametrize("over", SAME, ids=lambda o: ",".join(o))
def test_item_id_ignores_what_does_not_change_pixels(base, over):
    assert ids(plan_of(base, **ONE)) == ids(plan_of(base, **(ONE | over)))


@pytest.mark.parametrize("over", CHANGED, ids=lambda o: ",".join(o))
def test_item_id_changes_with_what_changes_pixels(base, over):
    (a,) = ids(plan_of(base, **ONE))
    (b,) = ids(plan_of(base, **(ONE | over)))
    assert a != b


def test_item_id_changes_with_the_lora_file(base, tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    path = tmp_path / "mine.safetensors"
    key = "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q"
    weights = {f"{key}.lora_A.weight": np.ones((4, 64), np.float32),
               f"{key}.lora_B.weight": np.ones((64, 4), np.float32)}  # fmt: skip
    save_file(weights, str(path))
    mine = {"name": "mine", "path": "mine.safetensors", "alpha": 0.5}
    (a,) = ids(plan_of(base, **(ONE | {"loras": [mine]})))
    weights[f"{key}.lora_B.weight"] *= 2
    save_file(weights, str(path))
    (b,) = ids(plan_of(base, **(ONE | {"loras": [mine]})))
    assert a != b


def test_item_id_changes_with_the_inline_tag_weight(base):
    ink = {"name": "ink", "path": "tiny:ink"}
    (a,) = ids(plan_of(base, **(ONE | {"loras": [ink], "prompts": ["a <lora:ink:0.5>"]})))
    (b,) = ids(plan_of(base, **(ONE | {"loras": [ink], "prompts": ["a <lora:ink:0.6>"]})))
    assert a != b


def test_unit_ids_change_with_their_items(base):
    a = [u.unit_id for u in run(plan_of(base))[1]]
    b = [u.unit_id for u in run(plan_of(base, seeds={"start": 1, "count": 3}))[1]]
    assert not set(a) & set(b)


# ---------------------------------------------------------------- prompts, tags and alpha


def test_stored_prompt_carries_the_swept_tag(base):
    plan = plan_of(base, prompts=["a cat"], seeds=[0], loras=[{**NEON, "alpha": [0.2, 1, -0.5]}])
    items = list(expand(plan))
    assert [i.prompt for i in items] == [
        "a cat <lora:neon:0.2>",
        "a cat <lora:neon:1>",
        "a cat <lora:neon:-0.5>",
    ]
    assert {i.text for i in items} == {"a cat"}
    assert [i.alpha for i in items] == [0.2, 1.0, -0.5]
    assert [plain(i) for i in items] == [(("neon", 0.2),), (("neon", 1.0),), (("neon", -0.5),)]
    assert {(i.negative_prompt, i.seed) for i in items} == {("blurry", 0)}


def test_alpha_only_when_one_lora_is_swept(base):
    items = list(expand(plan_of(base, loras=[NEON])))
    assert sorted({i.alpha for i in items}) == [0.0, 0.5, 1.0]
    assert all(i.alpha == i.loras[0][1].weight for i in items)
    blend = list(expand(plan_of(base, loras=[NEON, INK])))
    assert {i.alpha for i in blend} == {None}


def test_plan_counts_without_reading_files(base):
    plan = plan_of(base, loras=[NEON, INK])
    frozen = make_plan(plan.spec, frozen=(plan.model_fingerprint, plan.adapters))
    assert frozen.counts() == plan.counts()
    assert ids(frozen) == ids(plan)


def test_adapters_record_file_hashes(base):
    plan = plan_of(base, loras=[NEON, INK])
    assert set(plan.adapters) == {"neon", "ink"}
    neon = plan.adapters["neon"]
    assert neon.path == "tiny:neon"  # a reference: each worker node writes its own copy
    assert len(neon.sha256) == 64 and len(neon.shorthash) == 12
    assert neon.sha256 != plan.adapters["ink"].sha256


# ---------------------------------------------------------------- errors


def test_lora_both_swept_and_tagged_raises(base):
    with pytest.raises(SpecError, match=r"^prompts\[1\]: neon is both swept") as info:
        plan_of(base, prompts=["a cat", "a dog <lora:neon:0.5>"])
    assert "keep one" in str(info.value)


def test_inline_tag_naming_an_unknown_lora_raises(base):
    with pytest.raises(SpecError, match=r"^prompts\[2\]: <lora:nope:…>") as info:
        plan_of(base, prompts=["a cat", "a dog", "a fox <lora:nope:0.5>"])
    assert "loras" in str(info.value)


def test_bad_inline_tag_raises_with_prompt_index(base):
    with pytest.raises(SpecError, match=r"^prompts\[1\]: <lora:ink:x>: te weight 'x'"):
        plan_of(base, prompts=["a cat", "a dog <lora:ink:x>"])


def test_lora_tagged_twice_raises(base):
    ink = {"name": "ink", "path": "tiny:ink"}
    with pytest.raises(SpecError, match=r"^prompts\[0\]: a LoRA is tagged twice"):
        plan_of(base, loras=[NEON, ink], prompts=["a <lora:ink:1> b <lora:ink:0.5>"])


def test_prompts_that_differ_only_in_tag_position_are_duplicates(base):
    ink = {"name": "ink", "path": "tiny:ink"}
    prompts = ["a cat<lora:ink:1>", "a cat <lora:ink:1>", "<lora:ink:1>a cat"]
    # The texts are 'a cat', 'a cat ' and 'a cat': the first and third render the same.
    with pytest.raises(SpecError, match=r"^prompts\[2\]: duplicate"):
        plan_of(base, loras=[NEON, ink], prompts=prompts)


def test_a_bad_lora_file_raises_naming_the_spec_path(base):
    (base / "bad.safetensors").write_bytes(b"\x80\x04\x95" + b"\0" * 40)
    bad = {"name": "bad", "path": "bad.safetensors", "alpha": 1}
    with pytest.raises(SpecError, match=r"^loras\[1\]\.path: .*bad\.safetensors"):
        plan_of(base, loras=[NEON, bad])


def test_counts_match_for_every_small_shape(base):
    for n_prompts, n_seeds in itertools.product([1, 2, 3], [1, 4, 9]):
        plan = plan_of(
            base,
            prompts=[f"p{i}" for i in range(n_prompts)],
            seeds={"start": 0, "count": n_seeds},
            loras=[NEON, INK],
        )
        items, units = run(plan)
        check_counts(plan, items, units)


@pytest.mark.parametrize(
    "combine",
    ["zip", [{"neon": 0.5}, {"alias": 0.5}]],
    ids=["zip", "explicit"],
)
def test_one_file_under_two_names_raises(base, combine):
    # Both would give one item_id to different items: (neon 0.5, alias 1) and
    # (neon 1, alias 0.5) are the same image, and a job could never finish.
    neon = {"name": "neon", "path": "tiny:neon", "alpha": [0.5, 1]}
    alias = {"name": "alias", "path": "tiny:neon", "alpha": [1, 0.5]}
    with pytest.raises(SpecError, match=r"^loras\[1\]\.path: .*loras\[0\]"):
        plan_of(base, loras=[neon, alias], combine=combine)


# ---------------------------------------------------------------- LoRA files at plan time


def test_a_lora_for_another_model_family_is_refused_at_plan_time(base):
    from test_loras import sdxl_kohya

    xl = sdxl_kohya(base / "xl.safetensors")
    with pytest.raises(SpecError, match=r"^loras\[0\]\.path: .*xl\.safetensors: an SDXL LoRA .*"
                       r"cannot be used on SD1\.x-architecture model 'tiny'"):  # fmt: skip
        plan_of(base, loras=[{"name": "xl", "path": str(xl), "alpha": [1]}])


def test_prompt_tags_resolve_from_the_lora_library(base):
    from farm.loras.demo import demo_lora_path

    library = base / "library" / "styles"
    library.mkdir(parents=True)
    (library / "inky.safetensors").write_bytes(demo_lora_path("tiny:ink").read_bytes())
    plan = plan_of(base, lora_dir="library", loras=[], prompts=["a cat <lora:inky:0.4:0.8>"])
    assert set(plan.adapters) == {"inky"}
    (item, *_) = expand(plan)
    ((name, strength),) = item.loras
    assert (name, strength.te, strength.unet) == ("inky", 0.4, 0.8)
    with pytest.raises(SpecError, match=r"names no LoRA in `loras` or lora_dir"):
        plan_of(base, lora_dir="library", loras=[], prompts=["a cat <lora:missing:1>"])
    with pytest.raises(SpecError, match=r"^lora_dir: .* is not a folder"):
        plan_of(base, lora_dir="nowhere", prompts=["a cat"])
