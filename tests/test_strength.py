"""Strength control on the tiny model: blends, text-encoder/UNet split, per-block
multipliers, per-step schedules, and flags on broken images."""

from __future__ import annotations

import io
import json
import subprocess

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import FARM, REPO
from PIL import Image

from farm.cli import main
from farm.families import sd1
from farm.families.base import BlockMap
from farm.loras.demo import demo_lora_path
from farm.plan.items import Adapter
from farm.plan.sweep import expand, make_plan, unit_streams
from farm.records.parts import decode_part, part_key, read_rows
from farm.render.adapters import adapter_name
from farm.run.job import job_context
from farm.spec import SpecError, parse_spec
from farm.spec.strength import LBW_PRESETS, Strength, StrengthError, parse_blocks, parse_schedule
from farm.storage.store import LocalStore
from farm.worker.render_worker import image_flags

# Batch 1: these compare images bit for bit (tests/test_batched.py checks mixed calls).
RENDER = {"steps": 6, "guidance": 7.5, "width": 64, "height": 64, "batch": 1}
NEON = {"name": "neon", "path": "tiny:neon"}
INK = {"name": "ink", "path": "tiny:ink"}


def render(worker, tmp_path, name: str, combine: list, loras=(NEON,), seeds=(3,)) -> list:
    """Render explicit combos; returns [(row, pixels)] in combine order, per seed."""
    data = {"job": name, "prompts": ["a lighthouse at dusk"], "seeds": list(seeds),
            "loras": list(loras), "combine": combine, "render": RENDER}  # fmt: skip
    plan = make_plan(parse_spec(data, base_dir=tmp_path))
    store = LocalStore(tmp_path / name)
    ctx = job_context(plan, store)
    rows = {}
    for stream in unit_streams(plan):
        for unit in stream.units:
            worker.render(unit, ctx)
            for row in decode_part(store.get(part_key(unit.unit_id))).to_pylist():
                image = Image.open(io.BytesIO(store.get(row["image_key"]))).convert("RGB")
                rows[row["item_id"]] = (row, np.asarray(image))
    order = [i.item_id for i in expand(plan)]
    return [rows[i] for i in order]


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return np.array_equal(a, b)


# ---------------------------------------------------------------- rendering properties


def test_all_zero_block_weights_equal_the_base_model(cpu_worker, tmp_path):
    # Every block at 0, in diffusers' dict form (LBW's 17 values leave the blocks they
    # don't name, OUT00-OUT02, at 1, as LoRA Block Weight does).
    zero = {"weight": 1.0, "blocks": {"text_encoder": 0, "unet": 0}}
    out = render(cpu_worker, tmp_path, "zero-blocks", [{"neon": 0}, {"neon": zero}, {"neon": 1}])
    (_, base), (row, blocked), (_, full) = out
    assert same(blocked, base) and not same(full, base)
    assert row["loras"][0]["blocks"] == '{"down":0.0,"mid":0.0,"te":0.0,"up":0.0}'


def test_a_constant_schedule_equals_the_plain_strength(cpu_worker, tmp_path):
    out = render(cpu_worker, tmp_path, "constant", [
        {"neon": 0.8}, {"neon": {"weight": 0.8, "schedule": "1@0"}},
        {"neon": {"weight": 0.8, "schedule": "0@0,1@0.5"}},
    ])  # fmt: skip
    (_, plain), (row, constant), (_, late) = out
    assert same(constant, plain)
    assert row["loras"][0]["schedule"] == "1@0"
    # Starting halfway changes the image: the schedule really acts per step.
    assert not same(late, plain)


def test_a_schedule_that_stops_at_zero_steps_equals_no_lora_in_the_unet(cpu_worker, tmp_path):
    # A schedule acts on the UNet: with the text encoder's part at 0, off for every step is
    # the base image.
    off = {"te": 0, "unet": 1, "schedule": "0@0"}
    out = render(cpu_worker, tmp_path, "off", [{"neon": 0}, {"neon": off}])
    (_, base), (_, off) = out
    assert same(off, base)


def test_blocks_act_where_they_say(cpu_worker, tmp_path):
    # Only the mid block on: differs from both the base and the full LoRA.
    mid_only = {"text_encoder": 1, "unet": {"down": 0, "mid": 1, "up": 0}}
    out = render(cpu_worker, tmp_path, "mid", [
        {"neon": 0}, {"neon": 1}, {"neon": {"weight": 1, "blocks": mid_only}},
        {"neon": {"weight": 1, "blocks": "ALL"}},
    ])  # fmt: skip
    (_, base), (_, full), (_, mid), (_, all_) = out
    assert not same(mid, base) and not same(mid, full)
    assert same(all_, full)  # ALL multiplies every block by 1


def test_a_text_encoder_only_strength_changes_only_the_text_embeddings(cpu_worker, tmp_path):
    pipe = cpu_worker.pipelines.get("tiny").pipe
    adapters = cpu_worker.pipelines.get("tiny").adapters
    ink = Adapter("ink", str(demo_lora_path("tiny:ink")), "0" * 64, "0")
    adapters.ensure([ink])

    def embeds(strength: Strength | None):
        adapters.activate([(ink, strength)] if strength else [])
        with torch.no_grad():
            return pipe.encode_prompt("a lighthouse", "cpu", 1, True, "")

    te_only = Strength(1.0, 0.0)
    (base_embeds, _), (te_embeds, te_negative) = embeds(None), embeds(te_only)
    assert not torch.equal(base_embeds, te_embeds)
    # Every UNet LoRA layer of ink is at scale 0, every text-encoder one at full scale.
    adapters.activate([(ink, te_only)])
    name = adapter_name(ink)
    scales = {part: {m.scaling[name] for p, _, m in adapters._lora_layers()
                     if p == part and name in m.scaling} for part in ("te", "unet")}  # fmt: skip
    assert scales["unet"] == {0.0} and 0.0 not in scales["te"]
    # So the image is the base model's image conditioned on the LoRA's text embeddings.
    generator = torch.Generator("cpu").manual_seed(5)
    kwargs = {"num_inference_steps": 4, "width": 64, "height": 64, "output_type": "np"}
    with torch.no_grad():
        split = pipe(prompt_embeds=te_embeds, negative_prompt_embeds=te_negative,
                     generator=generator, **kwargs).images  # fmt: skip
        adapters.activate([])
        generator = torch.Generator("cpu").manual_seed(5)
        base_unet = pipe(prompt_embeds=te_embeds, negative_prompt_embeds=te_negative,
                         generator=generator, **kwargs).images  # fmt: skip
    assert np.array_equal(split, base_unet)


def test_a_blend_is_the_sum_of_the_adapters_deltas(cpu_worker):
    loaded = cpu_worker.pipelines.get("tiny")
    adapters = loaded.adapters
    neon = Adapter("neon", str(demo_lora_path("tiny:neon")), "1" * 64, "1")
    other = Adapter("neon-peft", str(demo_lora_path("tiny:neon-peft")), "2" * 64, "2")
    adapters.ensure([neon, other])
    # A UNet attention projection (a linear layer) both adapters target.
    layer = next(
        m
        for p, n, m in adapters._lora_layers()
        if p == "unet"
        and {adapter_name(neon), adapter_name(other)} <= set(m.scaling)
        and isinstance(m.get_base_layer(), torch.nn.Linear)
    )
    x = torch.randn(2, 5, layer.in_features, generator=torch.Generator().manual_seed(0))

    def out(a: float, b: float) -> torch.Tensor:
        adapters.activate([(neon, Strength.plain(a)), (other, Strength.plain(b))])
        with torch.no_grad():
            return layer(x)

    base = out(0.0, 0.0)
    blend = out(0.6, 0.4) - base
    parts = (out(0.6, 0.0) - base) + (out(0.0, 0.4) - base)
    assert torch.allclose(blend, parts, atol=1e-6) and blend.abs().max() > 1e-4


def test_overdriven_strengths_are_flagged_in_rows_and_the_run_summary(tmp_path, tiny_dir):
    # 1e30 overflows float32 inside the UNet: NaN output, shown black.
    spec = tmp_path / "overdrive.yaml"
    spec.write_text(json.dumps({
        "job": "overdrive", "prompts": ["a lighthouse"], "seeds": [1], "loras": [NEON],
        "combine": [{"neon": 1}, {"neon": 1e30}], "render": RENDER,
        "output": str(tmp_path / "out"),
    }))  # fmt: skip
    run = subprocess.run([*FARM, "run", str(spec), "--local"], cwd=REPO,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    rows = read_rows(LocalStore(tmp_path / "out" / "overdrive")).to_pylist()
    flags = {row["loras"][0]["weight"]: row["flags"] for row in rows}
    assert flags[1.0] == [] and flags[1e30] == ["nonfinite", "saturated", "flat"]
    flagged = next(r for r in rows if r["flags"])
    assert "flagged 1 images" in run.stdout
    assert f"{flagged['item_id']}  seed 1, neon=1e+30: nonfinite, saturated, flat" in run.stdout
    doc = json.loads((tmp_path / "out" / "overdrive" / "job.json").read_text())
    assert doc["runs"][0]["flagged"] == 1
    assert doc["runs"][0]["flagged_cells"][0]["item_id"] == flagged["item_id"]


def test_image_flags_on_known_arrays():
    rng = np.random.default_rng(0)
    assert image_flags(rng.uniform(0.2, 0.8, (8, 8, 3))) == []
    assert image_flags(np.full((8, 8, 3), 0.5)) == ["flat"]
    assert image_flags(np.zeros((8, 8, 3))) == ["saturated", "flat"]
    nan = rng.uniform(0.2, 0.8, (8, 8, 3))
    nan[0, 0, 0] = np.nan
    assert image_flags(nan) == ["nonfinite"]
    clipped = rng.choice([0.0, 1.0], (8, 8, 3))
    assert image_flags(clipped) == ["saturated"]
    fine = rng.uniform(0.2, 0.8, (8, 8, 3))
    assert image_flags(fine, latent_std=1.0) == [] and image_flags(fine, float("nan")) == []
    assert image_flags(fine, latent_std=4.0) == ["overdriven"]


# ---------------------------------------------------------------- strength values


def unet(blocks, module: str) -> float:
    """A block multiplier for a layer of SD1.5's UNet (two layers per block)."""
    return blocks.multiplier(BlockMap(sd1.FAMILY, {"layers_per_block": 2}), "unet", module)


def test_lbw_presets_map_to_blocks_like_lora_block_weight():
    midd = parse_blocks("midd")
    assert midd.name == "MIDD" and midd.te() == 1.0
    # SD1.x numbering (2 layers per block): down_blocks.0 holds IN01/IN02, .2 IN07/IN08.
    assert unet(midd, "down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q") == 0
    assert unet(midd, "down_blocks.1.attentions.1.proj_in") == 1  # IN05
    assert unet(midd, "down_blocks.2.resnets.0.conv1") == 1  # IN07, a ResNet (LoCon)
    assert unet(midd, "mid_block.attentions.0.proj_out") == 1
    assert unet(midd, "up_blocks.1.attentions.2.proj_out") == 1  # OUT05
    assert unet(midd, "up_blocks.2.attentions.0.proj_out") == 1  # OUT06
    assert unet(midd, "up_blocks.2.attentions.1.proj_out") == 0  # OUT07
    assert unet(midd, "up_blocks.3.attentions.2.proj_out") == 0  # OUT11
    assert unet(midd, "conv_in") == 1  # outside the named blocks: untouched
    # Blocks the 17 values don't name keep 1, as LoRA Block Weight expands them.
    assert unet(parse_blocks("NONE"), "up_blocks.0.resnets.1.conv1") == 1  # OUT01
    outs = parse_blocks("OUTS")
    assert outs.te() == 1 and unet(outs, "up_blocks.3.attentions.0.x") == 1  # OUT09
    values = parse_blocks(LBW_PRESETS["OUTD"])
    assert values.pairs == parse_blocks("OUTD").pairs
    assert len(LBW_PRESETS) >= 9 and {"ALL", "INS", "IND", "INALL", "MIDD", "OUTD", "OUTS",
                                      "OUTALL"} <= set(LBW_PRESETS)  # fmt: skip


def test_diffusers_dict_blocks():
    blocks = parse_blocks(
        {"text_encoder": 0.5, "unet": {"down": {"block_1": [0.2, 0.3]}, "mid": 0, "up": 0.9}}
    )
    assert blocks.te() == 0.5
    assert unet(blocks, "down_blocks.1.attentions.1.to_k") == 0.3
    assert unet(blocks, "down_blocks.1.resnets.0.conv1") == 0.2
    assert unet(blocks, "down_blocks.0.attentions.0.to_k") == 1.0
    assert unet(blocks, "mid_block.resnets.1.conv2") == 0
    assert unet(blocks, "up_blocks.2.attentions.2.to_v") == 0.9


@pytest.mark.parametrize("value, message", [
    ("MIDDLE", "17"), ([1] * 59, "59 block values"), ({"unet": {"side": 1}}, "side"),
    ({"unet": {"down": {"blk": 1}}}, "block_0"), ("1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,inf", "finite"),
])  # fmt: skip
def test_bad_blocks_are_refused(value, message):
    with pytest.raises(StrengthError, match=message):
        parse_blocks(value)


def test_schedules():
    assert parse_schedule("0.2@0,1@0.5") == ((0.0, 0.2), (0.5, 1.0))
    assert parse_schedule({"start": 0.25, "stop": 0.75}) == ((0, 0), (0.25, 1), (0.75, 0))
    s = Strength(1, 1, schedule=parse_schedule("0@0,1@0.5"))
    assert [s.unet_at(i, 4) for i in range(4)] == [0, 0, 1, 1]
    for bad in ("1@2", "1@0,2@0", "x@0", "1", {"start": 0.8, "stop": 0.2}):
        with pytest.raises(StrengthError):
            parse_schedule(bad)


def test_spec_strength_settings_round_trip(tmp_path):
    data = {"job": "s", "prompts": ["p"], "seeds": [1], "render": RENDER,
            "loras": [{**NEON, "alpha": [0.5, 1], "te": 0, "blocks": ["ALL", "MIDD"],
                       "schedule": {"start": 0.2}}]}  # fmt: skip
    spec = parse_spec(data, base_dir=tmp_path)
    plan = make_plan(spec)
    assert len(plan.combos) == 4  # 2 alphas x 2 block settings
    strengths = [c[0][1] for c in plan.combos]
    assert {(w.te, w.unet, w.blocks.name) for w in strengths} == {
        (0, 0.5, "ALL"),
        (0, 0.5, "MIDD"),
        (0, 1, "ALL"),
        (0, 1, "MIDD"),
    }
    again = parse_spec(spec.to_dict(), base_dir=tmp_path)
    assert list(make_plan(again).combos) == list(plan.combos)
    explicit = {
        "job": "e",
        "prompts": ["p"],
        "seeds": [1],
        "loras": [NEON, INK],
        "combine": [{"neon": {"te": 0.2, "unet": 0.9, "blocks": "INS"}, "ink": 0.3}],
    }
    spec = parse_spec(explicit, base_dir=tmp_path)
    assert parse_spec(spec.to_dict(), base_dir=tmp_path).combine == spec.combine
    (combo,) = spec.combine
    assert combo[0][1] == Strength(0.2, 0.9, parse_blocks("INS"))


@pytest.mark.parametrize("lora, message", [
    ({"te": 0.5, "unet": 1, "alpha": [1]}, "te and unet are both fixed"),
    ({"blocks": "MIDD"}, r"loras\[0\]\.blocks: applies to a swept LoRA"),
    ({"alpha": [1], "blocks": "SIDEWAYS"}, r"loras\[0\]\.blocks: .*17"),
    ({"alpha": [1], "schedule": "1@1.5"}, r"loras\[0\]\.schedule: "),
    ({"alpha": [1], "te": "strong"}, r"loras\[0\]\.te: "),
])  # fmt: skip
def test_bad_strength_settings_name_the_field(tmp_path, lora, message):
    data = {"job": "b", "prompts": ["p"], "seeds": [1], "loras": [{**NEON, **lora}]}
    with pytest.raises(SpecError, match=message):
        parse_spec(data, base_dir=tmp_path)


def test_tags_carry_split_and_block_strengths_into_rows(cpu_worker, tmp_path):
    data = {"job": "tags", "prompts": ["a cat <lora:ink:0.3:0.9:lbw=OUTD>"], "seeds": [1],
            "loras": [INK], "render": RENDER}  # fmt: skip
    plan = make_plan(parse_spec(data, base_dir=tmp_path))
    store = LocalStore(tmp_path / "tags")
    ctx = job_context(plan, store)
    (unit,) = [u for s in unit_streams(plan) for u in s.units]
    cpu_worker.render(unit, ctx)
    (row,) = decode_part(store.get(part_key(unit.unit_id))).to_pylist()
    (lora,) = row["loras"]
    assert (lora["te_weight"], lora["unet_weight"], lora["blocks"]) == (0.3, 0.9, "OUTD")
    assert "<lora:ink:0.3:0.9:lbw=OUTD>" in row["prompt"] and row["prompt"] in row["infotext"]


def test_rerender_reproduces_every_strength_setting_bit_for_bit(tmp_path, tiny_dir):
    spec = tmp_path / "repro.yaml"
    spec.write_text(json.dumps({
        "job": "repro", "prompts": ["a lighthouse <lora:ink:0.3:0.7>"], "seeds": [2],
        "loras": [NEON, INK], "render": RENDER, "output": str(tmp_path / "out"),
        "combine": [{"neon": {"te": 0.2, "unet": 0.9, "blocks": "MIDD",
                              "schedule": "0.5@0,1@0.5"}},
                    {"neon": {"weight": 0.7, "blocks": {"unet": {"up": 0}}}}],
    }))  # fmt: skip
    run = subprocess.run([*FARM, "run", str(spec), "--local"], cwd=REPO,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    job = tmp_path / "out" / "repro"
    rows = read_rows(LocalStore(job)).to_pylist()
    assert len(rows) == 2
    # Rerender in this process: what it renders is the subject, not its start-up.
    for row in rows:
        again = CliRunner().invoke(main, ["rerender", str(job), row["item_id"], "--out",
                                          str(tmp_path / "again.png")])  # fmt: skip
        assert again.exit_code == 0, again.output
        assert f"match: {row['item_id']}" in again.stdout
        assert (tmp_path / "again.png").read_bytes() == (job / row["image_key"]).read_bytes()
    neon = {x["blocks"]: x for r in rows for x in r["loras"] if x["name"] == "neon"}
    assert neon["MIDD"]["schedule"] == "0.5@0,1@0.5" and neon["MIDD"]["te_weight"] == 0.2
    missing = CliRunner().invoke(main, ["rerender", str(job), "f" * 20])
    assert missing.exit_code == 2 and "no row for item" in missing.stderr


def test_block_multipliers_reach_resnet_layers_of_a_locon(cpu_worker, tmp_path):
    # A LoCon adapting only ResNet convs: diffusers' attention-only block scaling would
    # leave it fully on; here a zero multiplier on its blocks turns it off.
    from safetensors.numpy import save_file

    from farm.loras.demo import unet_resnet_convs

    rng = np.random.default_rng(1)
    tensors = {}
    for module, out_ch, in_ch, k in unet_resnet_convs():
        key = "lora_unet_" + module.replace(".", "_")
        tensors[f"{key}.lora_down.weight"] = rng.standard_normal((4, in_ch, k, k)).astype("f4")
        # Large enough to show in 64x64 pixels.
        tensors[f"{key}.lora_up.weight"] = rng.standard_normal((out_ch, 4, 1, 1)).astype("f4")
        tensors[f"{key}.alpha"] = np.asarray(4.0, dtype="f4")
    path = tmp_path / "convs.safetensors"
    save_file(tensors, str(path))
    locon = {"name": "convs", "path": str(path)}
    zero = {"weight": 1, "blocks": {"unet": {"down": 0, "mid": 0}}}
    out = render(cpu_worker, tmp_path, "locon", [{"convs": 0}, {"convs": 1}, {"convs": zero}],
                 loras=(locon,))  # fmt: skip
    (_, base), (_, full), (_, blocked) = out
    assert not same(full, base)
    assert same(blocked, base)


@pytest.mark.parametrize("strength", [
    Strength(0.7, 0.9, parse_blocks("0.5,1.5,0,2,1,1,1,-1,1,1,1,1,3,1,1,1,0.2"),
             parse_schedule("0.5@0,2@0.5,1@0.75")),
    Strength(1.1, 0.4, parse_blocks({"text_encoder": 0.5, "unet": {"down": {"block_1": 2},
                                     "mid": 1.5, "up": {"block_0": [1, 3, 1]}}}),
             parse_schedule({"start": 0.25, "stop": 0.75})),
], ids=["lbw", "diffusers-dict"])  # fmt: skip
def test_every_scale_the_render_sets_is_one_the_cap_checks(cpu_worker, strength):
    # A tenant's cap bounds Strength.scales(): each scale the render gives a LoRA layer at
    # any step must be one of them, so that no factor escapes the cap.
    adapters = cpu_worker.pipelines.get("tiny").adapters
    neon = Adapter("neon", str(demo_lora_path("tiny:neon")), "3" * 64, "3")
    adapters.ensure([neon])
    name = adapter_name(neon)
    layers = [(p, m) for p, _, m in adapters._lora_layers() if name in m.scaling]
    adapters.activate([(neon, Strength.plain(1.0))])
    unit = {id(m): m.scaling[name] for _, m in layers}  # lora_alpha / r at strength 1
    steps = 8
    callback = adapters.activate([(neon, strength)], steps=steps)
    seen = set()
    for step in range(steps):
        if step:
            callback(None, step - 1, None, {})
        seen |= {round(m.scaling[name] / unit[id(m)], 9) for _, m in layers}
    allowed = {round(v, 9) for v, _ in strength.scales()}
    assert seen <= allowed, seen - allowed
    assert len(seen) > 4  # blocks and the schedule both acted
    adapters.activate([])
