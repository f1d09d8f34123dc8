"""Every model family farm renders, end to end on its tiny pipeline: through `farm run` on
Ray as a plain diffusers loop renders it, strength 0 as no LoRA, mixed strengths in one
call, LoRA files in every layout they are shared in, and per-block, text-encoder and
scheduled strength."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import FARM, REPO
from family_loras import random_lora, save
from jobrun import farm_here
from PIL import Image

from farm.families import LORA_KEYS, read_folder
from farm.families.unet import a1111_block
from farm.loras.describe import describe_lora
from farm.loras.flux_keys import from_diffusers
from farm.loras.layouts import peft_to_kohya

pytestmark = pytest.mark.slow

# Family key → the text encoders its LoRAs adapt (Chroma's T5, Qwen-Image's and
# Z-Image's Qwen encoders are left alone).
TE = ("text_encoder",)
KINDS = {"sd2": TE, "sdxl": ("text_encoder", "text_encoder_2"), "flux-dev": TE,
         "flux-schnell": TE, "chroma": (), "qwen-image": (), "z-image": ()}  # fmt: skip
RENDER = {"steps": 2, "width": 32, "height": 32}
# Settings a family's jobs take besides its defaults: Z-Image's defaults are Turbo's
# (guidance 0, one pass); at 3 it runs Base's [cond; uncond] pass, the doubled batch.
OVER = {"z-image": {"guidance": 3.0}}
PROMPT, NEGATIVE = "a red house", "blurry"
WEIGHTS = (0.0, 0.5, 1.0)


class Setup:
    """A family's tiny model, a random PEFT LoRA for it, and its plain diffusers images."""

    def __init__(self, kind: str, root: Path, folder: Path):
        self.kind, self.root, self.folder = kind, root, folder
        self.family = read_folder(root).family
        self.peft = random_lora(root, KINDS[kind])
        self.lora = save(self.peft, folder / f"{kind}.safetensors")
        self._pipe = None

    @property
    def negative(self) -> str:
        return NEGATIVE if self.family.guidance in ("cfg", "true_cfg") else ""

    def spec(self, name: str, loras: list[dict], **render) -> Path:
        settings = RENDER | OVER.get(self.kind, {}) | render
        # No negative prompt where the guidance runs no unconditional pass (Z-Image at 0).
        guidance = settings.get("guidance", self.family.defaults.guidance)
        negative = self.negative if self.family.negative_problem(guidance) is None else ""
        spec = {"job": name, "model": str(self.root), "prompts": [PROMPT], "seeds": [0, 1],
                "negative_prompt": negative, "loras": loras, "render": settings,
                "output": str(self.folder / "out")}  # fmt: skip
        path = self.folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec))
        return path

    def run_here(self, name: str, loras: list[dict], **render) -> dict:
        """A job in this process (`--local`); its images by (seed, weights)."""
        farm_here("run", str(self.spec(name, loras, **render)), "--local")
        return images(self.folder / "out" / name)

    def plain(self, threads: int, weight: float | None) -> dict[int, np.ndarray]:
        """The loop a user writes: load_lora_weights, set_adapters, one call per image."""
        import torch
        from diffusers import DiffusionPipeline

        if self._pipe is None:
            self._pipe = DiffusionPipeline.from_pretrained(self.root, use_safetensors=True)
            self._pipe.set_progress_bar_config(disable=True)
            self._pipe.load_lora_weights(str(self.lora), adapter_name="x")
        pipe = self._pipe
        if weight is None:
            pipe.disable_lora()
        else:
            pipe.enable_lora()
            pipe.set_adapters(["x"], [weight])
        guidance = {
            "cfg": {"guidance_scale": 7.5, "negative_prompt": self.negative},
            "true_cfg": {"guidance_scale": 4.0, "negative_prompt": self.negative},
            "embedded": {"guidance_scale": 3.5},
            "none": {"guidance_scale": 0.0},
        }
        args = guidance[self.family.guidance]
        if self.kind == "sdxl":
            args["guidance_scale"] = 7.0
        if self.kind == "qwen-image":  # its true CFG scale has an argument of its own
            args = {"true_cfg_scale": 4.0, "negative_prompt": self.negative}
        if self.kind == "z-image":
            args["guidance_scale"] = OVER["z-image"]["guidance"]
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return {seed: np.asarray(pipe(PROMPT, num_inference_steps=RENDER["steps"],
                                          width=RENDER["width"], height=RENDER["height"],
                                          generator=torch.Generator("cpu").manual_seed(seed),
                                          **args).images[0])
                    for seed in (0, 1)}  # fmt: skip
        finally:
            torch.set_num_threads(before)


def images(job: Path) -> dict:
    """A job's images by (seed, ((lora, weight), …)), as pixel arrays."""
    out = {}
    for row in pq.read_table(job / "metadata.parquet").to_pylist():
        key = (row["seed"], tuple((x["name"], x["weight"]) for x in row["loras"]))
        out[key] = np.asarray(Image.open(job / row["image_key"]).convert("RGB"))
    return out


@pytest.fixture(scope="module")
def setups(tmp_path_factory):
    from farm.render.tiny_pipelines import ensure

    made: dict[str, Setup] = {}

    def get(kind: str) -> Setup:
        if kind not in made:
            made[kind] = Setup(kind, ensure(kind), tmp_path_factory.mktemp(kind))
        return made[kind]

    return get


@pytest.fixture(scope="module")
def ray_jobs(ray_head, setups):
    """Every family's sweep through `farm run` on one Ray cluster, all at once: each job
    is a driver and a worker of its own, and most of their time is starting up."""
    procs = {}
    for kind in KINDS:
        setup = setups(kind)
        spec = setup.spec("ray", [{"name": "x", "path": str(setup.lora),
                                   "alpha": list(WEIGHTS)}], batch=1)  # fmt: skip
        # One worker each, half a (fake) GPU: the five jobs render side by side.
        args = ["--address", ray_head.address, "--workers", "1", "--gpus-per-worker", "0.5"]
        procs[kind] = subprocess.Popen([*FARM, "run", str(spec), *args], cwd=REPO,
                                       env=ray_head.env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)  # fmt: skip
    results = {}
    for kind, proc in procs.items():
        output = proc.communicate(timeout=600)[0]
        results[kind] = (proc.returncode, output)
    return results


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_family_renders_through_farm_run_on_ray_as_plain_diffusers_does(ray_jobs, setups,
                                                                          kind):  # fmt: skip
    setup = setups(kind)
    code, output = ray_jobs[kind]
    assert code == 0, output
    job = setup.folder / "out" / "ray"
    doc = json.loads((job / "job.json").read_text())
    assert doc["model"]["family"] == setup.family.name
    rows = pq.read_table(job / "metadata.parquet").to_pylist()
    assert len(rows) == 6 and {r["scheduler"] for r in rows} == {setup.family.defaults.scheduler}
    # Every tensor of the file applies: the counts in each row and in job.json.
    counts = {(x["applied"], x["dropped"]) for r in rows for x in r["loras"]}
    assert counts == {(len(setup.peft), 0)}
    assert (doc["adapters"][0]["applied"], doc["adapters"][0]["dropped"]) == (len(setup.peft), 0)
    if kind == "flux-dev":
        assert "CFG scale: 1, Distilled CFG Scale: 3.5," in rows[0]["infotext"]
    if kind == "z-image":  # diffusers' guidance 3 is A1111's CFG scale 4
        assert "CFG scale: 4," in rows[0]["infotext"] and rows[0]["guidance"] == 3.0
    got = images(job)
    threads = rows[0]["threads"]
    for weight in WEIGHTS:
        expected = setup.plain(threads, weight)
        for seed in (0, 1):
            assert np.array_equal(got[(seed, (("x", weight),))], expected[seed]), (seed, weight)
    # diffusers itself made a LoRA layer of every module of the file, as farm counted.
    layers = [m for c in setup._pipe.components.values() if hasattr(c, "named_modules")
              for _, m in c.named_modules() if "x" in getattr(m, "lora_A", {})]  # fmt: skip
    assert len(layers) == len(setup.peft) // 2
    # Strength 0 is the model without the LoRA.
    base = setup.plain(threads, None)
    assert all(np.array_equal(got[(s, (("x", 0.0),))], base[s]) for s in (0, 1))
    assert not np.array_equal(got[(0, (("x", 1.0),))], base[0])


@pytest.mark.parametrize("kind", list(KINDS))
def test_mixed_strengths_in_one_call_match_single_calls(setups, kind):
    setup = setups(kind)
    lora = [{"name": "x", "path": str(setup.lora), "alpha": list(WEIGHTS)}]
    single = setup.run_here("single", lora, batch=1)
    # Two calls of three strengths each: the second reads peft's own scaling, the first
    # the hooks that learn each layer's batch.
    mixed = setup.run_here("mixed", lora, batch=3)
    for key, image in single.items():
        diff = np.abs(mixed[key].astype(int) - image.astype(int)).max()
        assert diff <= 2, (key, diff)


def twins(setup: Setup) -> dict[str, dict[str, np.ndarray]]:
    """The LoRA in each other layout it is shared in, the same weights: kohya's and
    ComfyUI's in the model's original names (q, k and v fused where those fuse them)
    and in diffusers' names, as people share both."""
    if setup.family.denoiser == "transformer":
        config = json.loads((setup.root / "transformer" / "config.json").read_text())
        layers = setup.family.lora_layers(config)
        out = {layout: from_diffusers(setup.peft, layout, layers)
               for layout in ("kohya", "onetrainer", "comfyui")}  # fmt: skip
        if layers.native_table():
            out |= {f"{layout}-split": from_diffusers(setup.peft, layout, layers, fuse=False)
                    for layout in ("kohya", "comfyui")}  # fmt: skip
        return out
    rank = next(iter(setup.peft.values())).shape[0]
    return {"kohya": peft_to_kohya(setup.peft, alpha=float(rank))}


# The blocks `farm lora inspect` finds in each transformer family's test LoRA.
LORA_BLOCKS = {"qwen-image": ("B00", "B01"), "z-image": ("CR00", "L00", "L01", "NR00")}


@pytest.mark.parametrize("kind", list(KINDS))
def test_layout_twins_render_identical_images(setups, kind):
    setup = setups(kind)
    reference = setup.run_here("peft", [{"name": "x", "path": str(setup.lora), "alpha": [1]}],
                               batch=1)  # fmt: skip
    for layout, tensors in twins(setup).items():
        path = save(tensors, setup.folder / f"{layout}.safetensors")
        if setup.family.denoiser == "transformer":  # what `farm lora inspect` says of it
            report = describe_lora(path, LORA_KEYS)
            assert report.family.name == setup.family.lora_family, layout
            assert report.blocks == LORA_BLOCKS.get(kind, ("D00", "D01", "S00", "S01")), layout
        got = setup.run_here(layout, [{"name": "x", "path": str(path), "alpha": [1]}], batch=1)
        assert sorted(got) == sorted(reference)
        assert all(np.array_equal(got[k], reference[k]) for k in got), layout


def without(peft: dict, drop) -> dict:
    return {k: v for k, v in peft.items() if not drop(k.rsplit(".lora_", 1)[0])}


def block_cases(setup: Setup) -> list[tuple[object, object]]:
    """(a block setting that zeroes one block, the layers that block holds)."""
    if setup.kind == "qwen-image":
        values = ["1"] * 61
        values[1] = "0"  # B00 of BASE, B00 … B59
        return [(",".join(values), lambda m: m.startswith("transformer.transformer_blocks.0.")),
                ({"transformer": {"blocks": {"block_1": 0}}},
                 lambda m: m.startswith("transformer.transformer_blocks.1."))]  # fmt: skip
    if setup.kind == "z-image":
        values = ["1"] * 35
        values[6] = "0"  # L01 of BASE, NR00, NR01, CR00, CR01, L00 … L29
        return [(",".join(values), lambda m: m.startswith("transformer.layers.1.")),
                ({"transformer": {"noise_refiner": 0, "context_refiner": {"block_0": 0}}},
                 lambda m: m.startswith(("transformer.noise_refiner.",
                                         "transformer.context_refiner.0.")))]  # fmt: skip
    if setup.family.denoiser == "transformer":
        lbw = ["1"] * 61
        lbw[3] = "0"  # D00 of LoRA Block Weight's CLIP, T5, IN, D00 … S37, OUT
        return [(",".join(lbw), lambda m: m.startswith("transformer.transformer_blocks.0.")),
                ({"transformer": {"single": 0}},
                 lambda m: m.startswith("transformer.single_transformer_blocks."))]  # fmt: skip
    config = json.loads((setup.root / "unet" / "config.json").read_text())
    ids = setup.family.block_forms[0].ids
    # The first block of the family's short form that this small UNet adapts.
    held = {a1111_block(k.split(".", 1)[1].rsplit(".lora_", 1)[0], config)
            for k in setup.peft if k.startswith("unet.")}  # fmt: skip
    block = next(b for b in ids[1:] if b in held)
    values = ["0" if b == block else "1" for b in ids]
    return [(",".join(values), lambda m: m.startswith("unet.")
             and a1111_block(m.split(".", 1)[1], config) == block),
            ({"unet": {"mid": 0}}, lambda m: m.startswith("unet.mid_block."))]  # fmt: skip


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_zero_block_text_encoder_or_constant_schedule_acts_only_where_it_says(setups, kind):
    """A block at 0 renders as the LoRA without that block's layers; the text encoder at
    0 as the LoRA without its text-encoder layers; a schedule of constant 1 as strength 1."""
    setup = setups(kind)
    cases = [(f"blocks{i}", {"blocks": blocks}, without(setup.peft, drop))
             for i, (blocks, drop) in enumerate(block_cases(setup))]  # fmt: skip
    if KINDS[kind]:
        cases.append(("te0", {"te": 0}, without(setup.peft, lambda m: m.startswith("text_"))))
    cases.append(("sched", {"schedule": "1@0,1@0.5"}, setup.peft))
    for name, setting, expected_tensors in cases:
        assert len(expected_tensors) < len(setup.peft) or name == "sched"
        got = setup.run_here(name, [{"name": "x", "path": str(setup.lora), "alpha": [1],
                                     **setting}], batch=1)  # fmt: skip
        path = save(expected_tensors, setup.folder / f"{name}-expected.safetensors")
        want = setup.run_here(f"{name}-expected", [{"name": "x", "path": str(path),
                                                    "alpha": [1]}], batch=1)  # fmt: skip
        assert sorted(s for s, _ in got) == sorted(s for s, _ in want) == [0, 1]
        for (seed, _), image in got.items():
            match = next(v for (s, _), v in want.items() if s == seed)
            assert np.array_equal(image, match), (name, seed)


# ---------------------------------------------------------------- planning, per family


def plan_of(setup: Setup, **over):
    from farm.plan.sweep import make_plan
    from farm.spec import parse_spec

    spec = {"job": "plan", "model": str(setup.root), "prompts": [PROMPT], "seeds": [0]} | over
    return make_plan(parse_spec(spec, base_dir=setup.folder))


def test_each_family_takes_its_own_render_defaults_unless_the_spec_says(setups):
    from farm.spec import SpecError

    dev = plan_of(setups("flux-dev")).spec.render
    assert (dev.steps, dev.guidance, dev.width, dev.scheduler) == (28, 3.5, 1024, "flow_euler")
    schnell = plan_of(setups("flux-schnell"), render={"steps": 2}).spec.render
    assert (schnell.steps, schnell.guidance, schnell.scheduler) == (2, 0.0, "flow_euler")
    xl = plan_of(setups("sdxl"), render={"guidance": 5}).spec.render
    assert (xl.steps, xl.guidance, xl.width, xl.scheduler) == (30, 5.0, 1024, "euler")
    with pytest.raises(SpecError) as info:
        plan_of(setups("chroma"), render={"scheduler": "euler"})
    assert str(info.value) == ("render.scheduler: euler does not fit Chroma models (use "
                               "flow_euler)")  # fmt: skip
    with pytest.raises(SpecError, match="flow_euler does not fit SD2.x models"):
        plan_of(setups("sd2"), render={"scheduler": "flow_euler"})
    with pytest.raises(SpecError) as info:
        plan_of(setups("flux-dev"), negative_prompt="blurry")
    assert str(info.value) == ("negative_prompt: Flux.1-dev models take no negative prompt "
                               "(their guidance is distilled); remove it")  # fmt: skip
    qwen = plan_of(setups("qwen-image")).spec.render
    assert (qwen.steps, qwen.guidance, qwen.width, qwen.scheduler) == (50, 4.0, 1328,
                                                                       "flow_euler")  # fmt: skip
    z = plan_of(setups("z-image")).spec.render
    assert (z.steps, z.guidance, z.width, z.scheduler) == (9, 0.0, 1024, "flow_euler")
    with pytest.raises(SpecError, match="euler does not fit Z-Image models"):
        plan_of(setups("z-image"), render={"scheduler": "euler"})
    # A negative prompt at a guidance with no unconditional pass would change nothing.
    with pytest.raises(SpecError) as info:
        plan_of(setups("z-image"), negative_prompt="blurry")
    assert str(info.value) == (
        "negative_prompt: at guidance 0, Z-Image models run no unconditional pass, so it "
        "changes nothing (it needs guidance above 0); remove it or raise render.guidance"
    )
    assert plan_of(setups("z-image"), negative_prompt="blurry", render={"guidance": 3})
    with pytest.raises(SpecError, match="at guidance 1, SDXL models run no unconditional"):
        plan_of(setups("sdxl"), negative_prompt="blurry", render={"guidance": 1})


@pytest.mark.parametrize(("kind", "blocks", "message"), [
    ("flux-dev", "SDXL-ALL", "SDXL-ALL is not a Flux.1-dev preset (its presets: FLUXALL, "),
    ("sdxl", "MIDD", "MIDD is not a SDXL preset"),
    ("sdxl", [1] * 17, "17 block values are SD1.x/SD2.x's form; SDXL takes LoRA Block "
                       "Weight's 12 values"),
    ("sd2", [1] * 12, "12 block values do not fit SD2.x: use LoRA Block Weight, 17 values"),
    ("chroma", {"unet": {"mid": 0}}, "Chroma names its blocks as transformer: {double, single}"),
    ("sd2", {"transformer": {"double": 0}}, "SD2.x names its blocks as unet: {down, mid, up}"),
    ("qwen-image", {"transformer": {"double": 0}},
     "Qwen-Image names its blocks as transformer: {blocks}"),
    ("z-image", {"transformer": {"blocks": 0}},
     "Z-Image names its blocks as transformer: {layers, noise_refiner, context_refiner}"),
    ("z-image", "FLUXALL", "FLUXALL is not a Z-Image preset (its presets: ZIMAGE-ALL, "),
    ("qwen-image", [1] * 35, "35 block values do not fit Qwen-Image: use Qwen-Image's 61"),
])  # fmt: skip
def test_blocks_of_another_family_are_refused_at_plan_time(setups, kind, blocks, message):
    from farm.spec import SpecError

    setup = setups(kind)
    loras = [{"name": "x", "path": str(setup.lora), "alpha": [1], "blocks": blocks}]
    with pytest.raises(SpecError) as info:
        plan_of(setup, loras=loras)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_lora_that_only_partly_fits_is_counted_shown_and_one_that_never_fits_refused(setups):
    """A Flux.1-dev LoRA on Chroma: its modulation and CLIP layers have no place there.
    The run says so and every row counts it; a LoRA of those layers alone is refused."""
    flux, chroma = setups("flux-dev"), setups("chroma")
    spec = chroma.spec("partly", [{"name": "x", "path": str(flux.lora), "alpha": [1]}])
    out = farm_here("run", str(spec), "--local").stdout
    moved = [k for k in flux.peft if ".norm" in k or k.startswith("text_encoder.")]
    assert f"lora x: {len(flux.peft) - len(moved)} tensors apply to the model, {len(moved)} " \
           "are dropped (" in out  # fmt: skip
    job = chroma.folder / "out" / "partly"
    rows = pq.read_table(job / "metadata.parquet").to_pylist()
    assert {(r["loras"][0]["applied"], r["loras"][0]["dropped"]) for r in rows} == {
        (len(flux.peft) - len(moved), len(moved))}  # fmt: skip
    names = json.loads((job / "job.json").read_text())["adapters"][0]["dropped_names"]
    assert sorted(names) == sorted({k.rsplit(".lora_", 1)[0] for k in moved})

    only = save({k: v for k, v in flux.peft.items() if k in moved},
                flux.folder / "modulation.safetensors")  # fmt: skip
    spec = chroma.spec("never", [{"name": "x", "path": str(only), "alpha": [1]}])
    proc = farm_here("run", str(spec), "--local", check=False)
    assert proc.returncode == 2 and not (chroma.folder / "out" / "never").exists()
    assert proc.stderr.strip() == (
        f"error: loras[0].path: {only}: none of its {len(moved)} tensors adapts a layer of "
        f"model {chroma.root} (its layers: {', '.join(names[:3])}, …); pick a LoRA "
        "trained for this model"
    )
    inspect = json.loads(farm_here("lora", "inspect", str(flux.lora), "--model",
                                   str(chroma.root), "--json").stdout)  # fmt: skip
    assert inspect["model"]["family"] == "Chroma" and inspect["model"]["dropped"] == len(moved)


def test_reports_and_suggested_presets_work_on_a_flux_sweep(setups):
    from a1111 import parse_generation_parameters

    setup = setups("flux-dev")
    lora = [{"name": "x", "path": str(setup.lora), "alpha": [0, 0.25, 0.5, 0.75, 1]}]
    farm_here("run", str(setup.spec("report", lora)), "--local", "--report")
    job = setup.folder / "out" / "report"
    assert (job / "report" / "response.parquet").exists()
    assert (job / "report" / "index.html").exists()
    suggested = json.loads(farm_here("presets", "suggest", str(job), "--json").stdout)
    assert suggested
    row = pq.read_table(job / "metadata.parquet").to_pylist()[0]
    params = parse_generation_parameters(row["infotext"])
    assert params["Distilled CFG Scale"] == "3.5" and params["CFG scale"] == "1"
    assert (
        params["Steps"] == "2" and params["Size-1"] == "32" and params["Seed"] == str(row["seed"])
    )


@pytest.mark.parametrize(("sgm", "diffusers"), [
    ("input_blocks_4_1_transformer_blocks_0_attn2_to_k",
     "down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"),
    ("input_blocks_1_0_in_layers_2", "down_blocks_0_resnets_0_conv1"),
    ("input_blocks_3_0_op", "down_blocks_0_downsamplers_0_conv"),
    ("middle_block_1_proj_in", "mid_block_attentions_0_proj_in"),
    ("middle_block_2_emb_layers_1", "mid_block_resnets_1_time_emb_proj"),
    ("output_blocks_5_1_transformer_blocks_1_ff_net_2",
     "up_blocks_1_attentions_2_transformer_blocks_1_ff_net_2"),
    ("output_blocks_2_2_conv", "up_blocks_0_upsamplers_0_conv"),
    ("output_blocks_0_0_skip_connection", "up_blocks_0_resnets_0_conv_shortcut"),
])  # fmt: skip
def test_sdxl_lora_names_in_sgm_form_are_placed_on_diffusers_layers(sgm, diffusers):
    """sd-scripts names SDXL LoRA layers after SGM's UNet (input_blocks_4_1_…); they are
    counted against the model's diffusers layers (two layers per block, as SDXL has)."""
    from farm.families.placement import _diffusers_name

    assert _diffusers_name(sgm, 2) == diffusers


def test_a_flux_model_in_an_s3_folder_is_read_planned_and_rendered(setups, s3):
    """The family is read from the bucket's configs at plan time (two small files), and
    the worker renders from its node-local copy."""
    import secrets

    setup = setups("flux-schnell")
    prefix = f"models/{secrets.token_hex(4)}/tiny-flux-schnell"
    for path in sorted(p for p in setup.root.rglob("*") if p.is_file()):
        key = f"{prefix}/{path.relative_to(setup.root).as_posix()}"
        s3.client().upload_file(str(path), s3.bucket, key)
    spec = setup.spec("s3model", [{"name": "x", "path": str(setup.lora), "alpha": [1]}],
                      batch=1)  # fmt: skip
    data = yaml.safe_load(spec.read_text()) | {"model": s3.url(prefix)}
    spec.write_text(yaml.safe_dump(data))
    farm_here("run", str(spec), "--local")
    job = setup.folder / "out" / "s3model"
    assert json.loads((job / "job.json").read_text())["model"]["family"] == "Flux.1-schnell"
    got = images(job)
    local = setup.run_here("local", [{"name": "x", "path": str(setup.lora), "alpha": [1]}],
                           batch=1)  # fmt: skip
    assert sorted(got) == sorted(local)
    assert all(np.array_equal(got[k], local[k]) for k in got)


def test_a_transformer_lora_with_mismatched_ranks_is_refused_at_plan_time(setups):
    """What of a file applies is counted from its header at the file's shapes, without
    its tensors: a layer whose two halves disagree is refused there, not mid-job."""
    from farm.spec import SpecError

    setup = setups("flux-dev")
    tensors = dict(setup.peft)
    key = "transformer.single_transformer_blocks.0.attn.to_k.lora_B.weight"
    tensors[key] = tensors[key][:, :3]
    bad = save(tensors, setup.folder / "damaged.safetensors")
    with pytest.raises(SpecError) as info:
        plan_of(setup, loras=[{"name": "x", "path": str(bad), "alpha": [1]}])
    assert str(info.value) == (
        f"loras[0].path: {bad}: layer 'single_transformer_blocks_0_attn_to_k' has lora_down "
        "[4, 32] and lora_up [32, 3] of different ranks; is the file damaged?"
    )


# ---------------------------------------------------------------- Qwen-Image and Z-Image


@pytest.mark.parametrize(("lora_kind", "model_kind"), [
    ("qwen-image", "z-image"), ("z-image", "qwen-image"), ("flux-dev", "qwen-image"),
    ("qwen-image", "flux-dev"), ("z-image", "chroma"),
])  # fmt: skip
def test_a_lora_of_another_transformer_family_is_refused_at_plan_time(setups, lora_kind,
                                                                      model_kind):  # fmt: skip
    from farm.spec import SpecError

    lora, model = setups(lora_kind), setups(model_kind)
    with pytest.raises(SpecError) as info:
        plan_of(model, loras=[{"name": "x", "path": str(lora.lora), "alpha": [1]}])
    assert str(info.value) == (
        f"loras[0].path: {lora.lora}: a {lora.family.lora_family} LoRA cannot be used on "
        f"{model.family.name} model {str(model.root)!r}: it adapts another transformer's "
        "layers; pick a LoRA trained for the model"
    )


def test_z_image_turbo_and_a_lora_on_its_embedders_mix_strengths_as_single_calls(setups):
    """At Turbo's guidance 0 the transformer sees each item once; a LoRA that adapts
    the input embedders (which take every sample's tokens end to end, no batch
    dimension) renders a call per strength, and matches single calls all the same."""
    setup = setups("z-image")
    rng = np.random.default_rng(1)
    embedders = {}
    for module, (n_in, n_out) in (("all_x_embedder.2-1", (64, 32)), ("cap_embedder.1", (32, 32))):
        embedders[f"transformer.{module}.lora_A.weight"] = rng.normal(0, 0.3, (4, n_in))
        embedders[f"transformer.{module}.lora_B.weight"] = rng.normal(0, 0.3, (n_out, 4))
    with_embedders = save({k: v.astype(np.float32) for k, v in (setup.peft | embedders).items()},
                          setup.folder / "embedders.safetensors")  # fmt: skip
    for name, path, guidance in (("turbo", setup.lora, 0.0), ("embedders", with_embedders, 3.0)):
        lora = [{"name": "x", "path": str(path), "alpha": list(WEIGHTS)}]
        single = setup.run_here(f"{name}-single", lora, batch=1, guidance=guidance)
        mixed = setup.run_here(f"{name}-mixed", lora, batch=3, guidance=guidance)
        assert sorted(mixed) == sorted(single)
        for key, image in single.items():
            diff = np.abs(mixed[key].astype(int) - image.astype(int)).max()
            assert diff <= 2, (name, key, diff)
        assert not np.array_equal(single[(0, (("x", 1.0),))], single[(0, (("x", 0.0),))])


@pytest.mark.parametrize("kind", ["qwen-image", "z-image"])
def test_diffusers_own_converter_reads_the_kohya_and_comfyui_twins_as_farm_does(setups, kind):
    """The twins in diffusers' names are the layouts diffusers itself converts (its
    converters for these families): farm's conversion gives the same delta B @ A per
    layer. (Z-Image's fused `attention.qkv` files are farm's alone: diffusers' converter
    does not split them.)"""
    import torch
    from diffusers.loaders import lora_conversion_utils as convert

    from farm.loras.flux_keys import to_diffusers

    theirs_of = {"qwen-image": convert._convert_non_diffusers_qwen_lora_to_diffusers,
                 "z-image": convert._convert_non_diffusers_z_image_lora_to_diffusers}  # fmt: skip
    setup = setups(kind)
    config = json.loads((setup.root / "transformer" / "config.json").read_text())
    layers = setup.family.lora_layers(config)
    for layout in ("kohya", "comfyui"):
        twin = from_diffusers(setup.peft, layout, layers, fuse=False)
        theirs = theirs_of[kind]({k: torch.from_numpy(v) for k, v in twin.items()})
        ours = to_diffusers(twin, layers)
        assert sorted(theirs) == sorted(ours.tensors) == sorted(setup.peft), layout
        assert not ours.dropped
        for key in (k for k in ours.tensors if k.endswith(".lora_A.weight")):
            up = key.replace(".lora_A.", ".lora_B.")
            mine = ours.tensors[up] @ ours.tensors[key]
            np.testing.assert_allclose((theirs[up] @ theirs[key]).numpy(), mine, rtol=1e-6,
                                       atol=1e-7)  # fmt: skip
