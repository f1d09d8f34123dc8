"""Batched strength grids: items at different strengths in one pipeline call.

A call with a strength per sample must render what the same items render one call each,
within 2/255 a pixel on CPU float32 (batched kernels sum in another order); strength 0
must stay the base model; a compiled denoiser must not recompile for a new strength.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from test_loras import locon_for_tiny

from farm.families import tiny_model
from farm.families.base import BlockMap
from farm.plan.items import Adapter
from farm.plan.sweep import make_plan, unit_streams
from farm.records.parts import decode_part, part_key
from farm.render.adapters import AdapterSet
from farm.render.sample_scales import SampleScales
from farm.run.job import job_context
from farm.spec import SpecError, parse_spec
from farm.spec.strength import Strength, parse_blocks, parse_schedule
from farm.storage.store import LocalStore
from farm.worker.render_worker import RenderWorker, batches

TOLERANCE = 2  # of 255, per pixel channel
RENDER = {"steps": 6, "guidance": 7.5, "width": 64, "height": 64}
NEON = {"name": "neon", "path": "tiny:neon"}
INK = {"name": "ink", "path": "tiny:ink"}
# Every kind of setting at once: off, a blend, split text encoder / UNet, blocks and
# schedules, each sample different from its neighbours in the call.
MIXED = [
    {"neon": 0, "ink": 0},
    {"neon": 1, "ink": 0.5},
    {"neon": {"te": 0, "unet": 1}, "ink": 0.3},
    {"neon": {"weight": 1, "blocks": "OUTS"}, "ink": 0},
    {"neon": {"weight": 1, "schedule": "0.2@0,1@0.5"}, "ink": 1},
    {"neon": {"weight": 0.8, "schedule": {"start": 0.3}}, "ink": {"te": 1, "unet": 0}},
]


def render(worker, tmp_path, name: str, batch: int, prompts=("a lighthouse at dusk",),
           seeds=(3,), **spec) -> dict[str, tuple[dict, np.ndarray]]:  # fmt: skip
    """Render a spec at `batch`; {item_id: (row, pixels as int)}."""
    data = {"job": name, "prompts": list(prompts), "seeds": list(seeds),
            "render": {**RENDER, "batch": batch} | spec.pop("render", {}), **spec}  # fmt: skip
    plan = make_plan(parse_spec(data, base_dir=tmp_path))
    store = LocalStore(tmp_path / name)
    ctx = job_context(plan, store)
    out = {}
    for stream in unit_streams(plan):
        for unit in stream.units:
            worker.render(unit, ctx)
            for row in decode_part(store.get(part_key(unit.unit_id))).to_pylist():
                image = Image.open(io.BytesIO(store.get(row["image_key"]))).convert("RGB")
                out[row["item_id"]] = (row, np.asarray(image).astype(int))
    return out


def worst(a: dict, b: dict) -> int:
    assert a.keys() == b.keys()
    return max(int(np.abs(a[k][1] - b[k][1]).max()) for k in a)


def test_a_mixed_batch_matches_the_items_rendered_one_at_a_time(cpu_worker, tmp_path):
    spec = {"loras": [NEON, INK], "combine": MIXED, "prompts": ["a lighthouse", "a red star"]}
    one = render(cpu_worker, tmp_path, "one", 1, seeds=(3, 4), **dict(spec))
    many = render(cpu_worker, tmp_path, "many", 8, seeds=(3, 4), **dict(spec))
    assert worst(one, many) <= TOLERANCE
    # The calls really mixed strengths: 24 items, 8 to a call, 3 calls.
    calls = {tuple(row["batch_items"]) for row, _ in many.values()}
    assert sorted(len(c) for c in calls) == [8, 8, 8]
    for call in calls:
        assert len({many[i][0]["prompt"] for i in call}) > 1
        assert all(many[i][0]["batch_size"] == 8 for i in call)
    assert {row["batch_size"] for row, _ in one.values()} == {1}
    # The strengths act: no two settings render alike.
    by_prompt = {}
    for row, image in many.values():
        by_prompt.setdefault((row["seed"], row["prompt"].split(" <")[0]), []).append(image)
    for images in by_prompt.values():
        assert min(np.abs(a - b).mean() for i, a in enumerate(images) for b in images[i + 1 :]) > 0


def test_strength_zero_in_a_mixed_batch_equals_no_lora(cpu_worker, tmp_path):
    swept = render(cpu_worker, tmp_path, "swept", 4, seeds=(7, 8),
                   loras=[{**NEON, "alpha": [1, 0]}])  # fmt: skip
    plain = render(cpu_worker, tmp_path, "plain", 1, seeds=(7, 8))
    base = {row["seed"]: image for row, image in plain.values()}
    (call,) = {tuple(row["batch_items"]) for row, _ in swept.values()}
    assert len(call) == 4  # both strengths, both seeds, one call
    for row, image in swept.values():
        if row["alpha"] == 0:
            assert np.abs(image - base[row["seed"]]).max() <= TOLERANCE
        else:
            assert np.abs(image - base[row["seed"]]).mean() > 1


def test_without_guidance_and_with_a_locon_the_batch_still_matches(cpu_worker, tmp_path):
    locon = locon_for_tiny(tmp_path / "locon.safetensors")
    spec = {"loras": [{"name": "locon", "path": str(locon), "alpha": [0, 0.5, 1, 2]}]}
    for guidance in (1.0, 7.5):  # 1 runs the UNet on the items alone, 7.5 on [uncond; cond]
        r = {"render": {"guidance": guidance}}
        one = render(cpu_worker, tmp_path, f"l1-{guidance}", 1, **dict(spec), **r)
        many = render(cpu_worker, tmp_path, f"l4-{guidance}", 4, **dict(spec), **r)
        assert worst(one, many) <= TOLERANCE
        assert len({tuple(row["batch_items"]) for row, _ in many.values()}) == 1


def random_lora_pipeline(tiny_dir):
    """The tiny pipeline with a random LoRA on an attention projection, a ResNet conv and
    the time embedding: (B, N, C), (B, C, H, W) and (B, C) branches."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig

    pipe = StableDiffusionPipeline.from_pretrained(tiny_dir)
    torch.manual_seed(0)
    targets = ["attn2.to_q", "resnets.0.conv1", "time_embedding.linear_1"]
    config = LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False)
    name = "lora_" + "a" * 16  # what AdapterSet calls the adapter with sha256 "a" * 64
    pipe.unet.add_adapter(config, adapter_name=name)
    return pipe, Adapter("rand", "", "a" * 64, "a")


def test_each_kind_of_layer_takes_its_own_sample_scale_under_guidance(tiny_dir):
    pipe, adapter = random_lora_pipeline(tiny_dir)
    adapters = AdapterSet(pipe, tiny_model())
    adapters.loaded.add("lora_" + "a" * 16)
    parts = {type(m.get_base_layer()).__name__ for _, _, m in adapters._lora_layers()}
    assert parts == {"Linear", "Conv2d"}
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(3, 4, 16, 16, generator=g)
    context = torch.randn(3, 77, 64, generator=g)
    weights = [0.0, 0.6, 1.5]

    def unet(x, c):
        with torch.no_grad():
            return pipe.unet(x, 500, encoder_hidden_states=c).sample

    one = []
    for i, w in enumerate(weights):
        adapters.activate([(adapter, Strength.plain(w))])
        one.append(unet(latents[i : i + 1], context[i : i + 1]))
    adapters.activate_per_sample([[(adapter, Strength.plain(w))] for w in weights])
    # Classifier-free guidance runs [uncond; cond]: twice the call's items, in that order.
    doubled = unet(torch.cat([latents, latents]), torch.cat([context, context]))
    expected = torch.cat(one)
    assert torch.allclose(doubled[:3], expected, atol=1e-5)
    assert torch.allclose(doubled[3:], expected, atol=1e-5)
    assert (expected[1] - expected[0]).abs().max() > 1e-3  # the LoRA acts
    # Back to plain calls: the hooks stay, idle, and a plain call is exactly what it was
    # without them.
    adapters.activate([(adapter, Strength.plain(weights[1]))])
    assert adapters.per_sample.installed and not adapters.per_sample.active
    assert torch.equal(unet(latents[1:2], context[1:2]), one[1])
    # The next mixed call of that layout: every layer's batch is known, so peft's own
    # scaling reads the table and the hooks come off; the images stay what they were.
    adapters.activate_per_sample([[(adapter, Strength.plain(w))] for w in weights])
    scales = adapters.per_sample
    assert len(scales.resident) == len(scales.rows) and not scales._handles
    again = unet(torch.cat([latents, latents]), torch.cat([context, context]))
    assert torch.allclose(again[:3], expected, atol=1e-5)
    assert torch.allclose(again[3:], expected, atol=1e-5)
    adapters.activate([(adapter, Strength.plain(weights[1]))])
    assert torch.equal(unet(latents[1:2], context[1:2]), one[1])
    # Another layout (no guidance here): hooked again, and a batch that fits no call
    # of that size is refused, never broadcast.
    with pytest.raises(RuntimeError, match="a batch of 2 for a call of 3"):
        adapters.activate_per_sample([[(adapter, Strength.plain(w))] for w in weights],
                                     layout="single")  # fmt: skip
        unet(latents[:2], context[:2])
    assert not scales.resident and len(scales._handles) == len(scales.rows)
    scales.remove()
    assert all(isinstance(m.scaling[a], float) for _, _, m in adapters._lora_layers()
               for a in m.scaling)  # fmt: skip


def test_each_prompt_is_embedded_at_its_own_text_encoder_strength(cpu_worker):
    loaded = cpu_worker.pipelines.get("tiny")
    ink = Adapter("ink", "", "9" * 64, "9")
    from farm.loras.demo import demo_lora_path

    loaded.adapters.ensure([Adapter("ink", str(demo_lora_path("tiny:ink")), "9" * 64, "9")])
    strengths = [Strength(0.0, 1.0), Strength(1.0, 1.0), Strength(0.4, 0.0)]
    prompts = ["a lighthouse", "a red star", "a lighthouse"]

    def encode(texts):
        with torch.no_grad():
            return loaded.pipe.encode_prompt(texts, "cpu", 1, True, [""] * len(texts))

    single = []
    for text, w in zip(prompts, strengths, strict=True):
        loaded.adapters.activate([(ink, w)])
        single.append(encode([text]))
    loaded.adapters.activate_per_sample([[(ink, w)] for w in strengths])
    cond, uncond = encode(prompts)
    loaded.adapters.activate([])
    for i, (c, u) in enumerate(single):
        assert torch.allclose(cond[i], c[0], atol=1e-5)
        assert torch.allclose(uncond[i], u[0], atol=1e-5)
    assert not torch.allclose(cond[0], cond[2], atol=1e-3)  # same prompt, other strength


def test_sample_scales_follow_blocks_and_schedules_per_sample():
    """The table holds each sample's block multiplier per row and its schedule per step."""
    from farm.render.sample_scales import Row

    scales = SampleScales(torch.float32, "cpu")
    scales.rows = [Row("te", "text_model.encoder.layers.0.self_attn.q_proj", "a"),
                   Row("unet", "down_blocks.0.attentions.0.proj_in", "a"),
                   Row("unet", "up_blocks.1.attentions.0.proj_in", "a"),
                   Row("unet", "mid_block.attentions.0.proj_in", "b")]  # fmt: skip
    scales.adapters = ["a", "b"]
    blocks = parse_blocks({"text_encoder": 0.5, "unet": {"down": 0, "up": 2}})
    samples = [
        {"a": Strength(1.0, 0.8, blocks=blocks), "b": Strength.plain(0.3)},
        {"a": Strength(0.2, 1.0, schedule=parse_schedule("0@0,1@0.5"))},
    ]
    on_step = scales.set(
        samples, steps=4, where=BlockMap(tiny_model().family, {"layers_per_block": 1})
    )
    assert torch.allclose(scales.table, torch.tensor([[0.5, 0.2], [0.0, 0.0], [1.6, 0.0],
                                                      [0.3, 0.0]]))  # fmt: skip
    on_step(None, 1, None, {})  # after step 1: step 2 is half way, the schedule is on
    assert torch.allclose(scales.table, torch.tensor([[0.5, 0.2], [0.0, 1.0], [1.6, 1.0],
                                                      [0.3, 0.0]]))  # fmt: skip
    table = scales.table
    scales.set(samples[::-1], steps=4, where=BlockMap(tiny_model().family, {"layers_per_block": 1}))
    assert scales.table is table  # the same tensor, rewritten in place


def test_batches_cut_a_unit_into_calls():
    from farm.plan.items import Item

    def item(i, w):
        return Item(str(i), "p", "p", "", i, (("x", Strength.plain(w)),), w)

    items = [item(0, 0.5), item(1, 0.5), item(2, 1.0), item(3, 1.0), item(4, 1.0)]
    sizes = [[len(b) for b in batches(items, 2, mixed)] for mixed in (True, False)]
    assert sizes == [[2, 2, 1], [2, 2, 1]]
    assert [len(b) for b in batches(items, 4, True)] == [4, 1]
    assert [len(b) for b in batches(items, 4, False)] == [2, 3]


def test_auto_batch_on_cpu_and_a_larger_batch_makes_larger_units(cpu_worker, tmp_path):
    # README: `batch: auto` is 16 on a CPU, the unit size. 18 items of one adapter set
    # (6 strengths x 3 seeds) make a unit of 16, rendered in one call, and one of 2.
    rows = render(cpu_worker, tmp_path, "auto", None, seeds=(1, 2, 3),
                  loras=[{**NEON, "alpha": [0, 0.2, 0.4, 0.6, 0.8, 1]}],
                  render={"steps": 2})  # fmt: skip
    calls = {tuple(row["batch_items"]) for row, _ in rows.values()}
    assert sorted(len(call) for call in calls) == [2, 16]
    assert sorted(row["batch_size"] for row, _ in rows.values()) == [2] * 2 + [16] * 16
    data = {
        "job": "big",
        "prompts": ["a"],
        "seeds": {"start": 0, "count": 40},
        "render": {"batch": 32},
    }
    plan = make_plan(parse_spec(data))
    assert plan.unit_size == 32 and plan.units == 2
    assert [len(u.items) for s in unit_streams(plan) for u in s.units] == [32, 8]


def test_every_torch_call_of_a_worker_runs_on_its_one_torch_thread(tmp_path, tiny_dir):
    # Ray runs an actor's concurrent calls on threads of its own; a thread that enters
    # OpenMP gets a thread team of its own, and two teams on two cores stop OpenMP from
    # spinning (a render at a fraction of the speed). So the worker renders, from
    # whichever thread calls it, on one thread, with the torch thread count it was given.
    import threading
    from concurrent.futures import ThreadPoolExecutor

    worker = RenderWorker("cpu", 2)
    ran_on: set[tuple[int, int]] = set()

    def record(module, args):
        ran_on.add((threading.get_ident(), torch.get_num_threads()))

    loras = [{**NEON, "alpha": [0, 1]}]
    render = {**RENDER, "steps": 2, "batch": 4}
    data = {"job": "threads", "prompts": ["a", "b"], "seeds": list(range(10)),
            "loras": loras, "render": render}  # fmt: skip
    plan = make_plan(parse_spec(data))
    store = LocalStore(tmp_path / "threads")
    ctx = job_context(plan, store)
    units = [u for s in unit_streams(plan) for u in s.units]
    assert len(units) > 2  # more units than callers: each caller thread renders some
    unet = worker.on_torch_thread(lambda: worker.pipelines.get("tiny").pipe.unet)
    unet.register_forward_pre_hook(record)
    with ThreadPoolExecutor(2) as callers:  # two units in flight, as on a Ray actor
        list(callers.map(lambda u: worker.render(u, ctx), units))
    torch_thread = worker.on_torch_thread(threading.get_ident)
    assert ran_on == {(torch_thread, 2)}
    assert torch_thread != threading.get_ident()
    rows = [r for u in units for r in decode_part(store.get(part_key(u.unit_id))).to_pylist()]
    assert {r["threads"] for r in rows} == {2}


def test_hooks_are_installed_once_per_adapter_set_across_units(cpu_worker, tmp_path):
    # Calls of one strength use peft's own scaling, mixed calls the per-sample table; the
    # hooks stay on between them (idle for plain calls), never removed and put back.
    loaded = cpu_worker.pipelines.get("tiny")
    before = loaded.adapters.per_sample.installs if loaded.adapters.per_sample else 0
    rows = render(cpu_worker, tmp_path, "installs", 3, prompts=("a", "b"), seeds=(0, 1),
                  loras=[{**NEON, "alpha": [0, 0.5, 1]}],
                  render={"steps": 2})  # fmt: skip
    per_sample = loaded.adapters.per_sample
    assert per_sample.installs - before <= 1 and per_sample.installed
    calls = {tuple(r["batch_items"]) for r, _ in rows.values()}
    strengths = [{rows[i][0]["alpha"] for i in call} for call in calls]
    assert any(len(s) > 1 for s in strengths) and any(len(s) == 1 for s in strengths)
    # A second job of the same adapter set installs nothing more.
    installs = per_sample.installs
    render(cpu_worker, tmp_path, "installs-again", 3, prompts=("c",), seeds=(5, 6),
           loras=[{**NEON, "alpha": [0.2, 0.7]}], render={"steps": 2})  # fmt: skip
    assert per_sample.installs == installs


@pytest.mark.parametrize(("value", "message"), [
    ("yes", "render.compile: 'yes' is not true or false"),
    (1, "render.compile: 1 is not true or false"),
])  # fmt: skip
def test_a_bad_compile_setting_names_the_field(value, message):
    with pytest.raises(SpecError, match=message):
        parse_spec({"job": "c", "prompts": ["a"], "seeds": [1], "render": {"compile": value}})


def micro_model(root):
    """A diffusers folder with the tiny model's text encoder and VAE and a one-block UNet,
    and a random LoRA for it: inductor compiles it in about half the tiny UNet's time."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from farm.render.tiny import ensure_tiny

    pipe = StableDiffusionPipeline.from_pretrained(ensure_tiny())
    torch.manual_seed(0)
    pipe.unet = UNet2DConditionModel(
        sample_size=8, layers_per_block=1, block_out_channels=[32], norm_num_groups=8,
        down_block_types=["CrossAttnDownBlock2D"], up_block_types=["CrossAttnUpBlock2D"],
        cross_attention_dim=pipe.text_encoder.config.hidden_size, attention_head_dim=8,
    )  # fmt: skip
    pipe.save_pretrained(root / "micro", safe_serialization=True)
    targets = ["to_q", "to_k", "to_v", "to_out.0"]
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=targets,
                                     init_lora_weights=False))  # fmt: skip
    StableDiffusionPipeline.save_lora_weights(
        root / "lora", unet_lora_layers=get_peft_model_state_dict(pipe.unet)
    )
    return root / "micro", root / "lora" / "pytorch_lora_weights.safetensors"


def test_a_compiled_denoiser_does_not_recompile_for_new_strengths(tmp_path):
    """CPU inductor: the first call compiles; later strengths (and a short last call,
    padded to the batch) reuse the graph, and the images match eager ones."""
    model, lora = micro_model(tmp_path)
    worker = RenderWorker("cpu")
    x = {"name": "x", "path": str(lora)}
    spec = {"model": str(model), "loras": [{**x, "alpha": [0, 0.5, 1, 1.5, 0.25, 0.75, 2]}],
            "render": {"steps": 2, "width": 32, "height": 32, "compile": True}}  # fmt: skip
    eager = render(
        worker, tmp_path, "eager", 4, **{**spec, "render": {**spec["render"], "compile": False}}
    )
    first = render(worker, tmp_path, "warm", 4, **{**spec, "loras": [{**x, "alpha": [0.1]}]})
    assert {row["batch_size"] for row, _ in first.values()} == {4}  # 1 item, padded to 4
    loaded = worker.pipelines.get(str(model))
    assert loaded.compiled
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = render(worker, tmp_path, "compiled", 4, **spec)
        # The guard is live: a strength set as peft's float instead would recompile.
        (adapter,) = {a for a in job_context(make_plan(parse_spec(
            {"job": "g", "prompts": ["a"], "seeds": [1], **spec}, base_dir=tmp_path)),
            LocalStore(tmp_path / "g")).adapters.values()}  # fmt: skip
        loaded.adapters.activate([(adapter, Strength.plain(0.3))])
        with pytest.raises(Exception, match="[Rr]ecompil"):
            loaded.pipe(["a"] * 4, num_inference_steps=2, width=32, height=32)
    assert worst(eager, compiled) <= TOLERANCE
    assert sorted(len(row["batch_items"]) for row, _ in compiled.values()) == [3] * 3 + [4] * 4
    strengths = [image for _, image in eager.values()]
    assert np.abs(strengths[0] - strengths[-1]).mean() > 1  # the LoRA acts


def test_rerender_renders_the_whole_call_again_and_matches(cpu_worker, tmp_path):
    from farm.audit.rerender import rerender
    from farm.records.parts import read_rows
    from farm.run.job import open_job

    data = {"job": "again", "prompts": ["a lighthouse"], "seeds": [1, 2],
            "loras": [{**NEON, "alpha": [0, 0.7, 1.4]}],
            "render": {"steps": 2, "width": 64, "height": 64, "batch": 4}}  # fmt: skip
    plan = make_plan(parse_spec(data, base_dir=tmp_path))
    store = LocalStore(tmp_path / "again")
    open_job(plan, store, echo=lambda _: None)
    for stream in unit_streams(plan):
        for unit in stream.units:
            cpu_worker.render(unit, job_context(plan, store))
    rows = read_rows(store).to_pylist()
    assert sorted(len(r["batch_items"]) for r in rows) == [2, 2, 4, 4, 4, 4]
    for row in (rows[0], rows[-1]):
        result = rerender(store, row["item_id"], device="cpu")
        assert result.match and result.batch == len(row["batch_items"])
        assert result.image == store.get(row["image_key"])
