"""Promises the README and DESIGN.md make, each with a test that fails if it breaks:
`farm verify` names every kind of damage; a unit whose worker dies on every attempt is
tried MAX_ATTEMPTS times, then recorded as failed; a SIGKILLed driver on a local folder
resumes without rendering anything twice; a kohya LoRA's alpha/rank scale; batches,
every scheduler and every output format."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from jobrun import assert_verified, farm, farm_here, job_doc, write_spec
from PIL import Image
from test_render import pixels, render

from farm.loras.demo import demo_lora_path
from farm.plan.sweep import make_plan
from farm.records.parts import decode_part, encode_rows, read_rows, scan_parts
from farm.spec import parse_spec
from farm.storage.store import LocalStore

SMALL = {"steps": 2, "width": 64, "height": 64, "batch": 8}  # units of 8


# ---------------------------------------------------------------- farm verify


@pytest.fixture(scope="module")
def finished_job(tmp_path_factory, tiny_dir) -> Path:
    """A real job run to the end by the CLI: 2 prompts x 2 seeds, one unit."""
    folder = tmp_path_factory.mktemp("finished")
    spec = write_spec(folder, "finished", seeds=[1, 2], loras=[], combine="product",
                      render=SMALL)  # fmt: skip
    farm("run", str(spec), "--local")
    job = folder / "out" / "finished"
    assert job_doc(job)["status"] == "done"
    return job


@pytest.mark.slow
def test_verify_names_a_duplicate_a_foreign_row_a_missing_image_and_a_wrong_sha256(
    finished_job, tmp_path
):
    job = tmp_path / "damaged"
    shutil.copytree(finished_job, job)
    assert_verified(job, 4)
    store = LocalStore(job)
    rows = sorted(read_rows(store).to_pylist(), key=lambda r: r["item_id"])
    assert len(rows) == 4
    dup, foreign_src, gone, overwritten = rows
    foreign = dict(foreign_src, item_id="f" * len(foreign_src["item_id"]))
    # A second part holding a row that already has one, and a row the plan never made.
    store.put("parts/extra.parquet", encode_rows([dup, foreign]))
    store.delete(gone["image_key"])
    store.put(overwritten["image_key"], store.get(dup["image_key"]))

    checked = farm("verify", str(job), check=False)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    lines = checked.stdout.splitlines()
    expected = [
        f"problem: item {dup['item_id']}: 2 rows (expected exactly one)",
        f"problem: item {foreign['item_id']}: has a row but is not in the plan",
        f"problem: {gone['image_key']}: missing (item {gone['item_id']})",
    ]
    for line in expected:
        assert line in lines, checked.stdout
    wrong = [line for line in lines if line.startswith(f"problem: {overwritten['image_key']}: ")]
    assert len(wrong) == 1 and "does not match its row" in wrong[0], checked.stdout
    assert overwritten["image_sha256"][:12] in wrong[0]
    assert not any(line.startswith("ok:") for line in lines)


# ---------------------------------------------------------------- the retry cap

DOOMED = "a prompt whose worker always dies"


@pytest.mark.slow
def test_a_unit_whose_worker_always_dies_is_tried_max_attempts_times_then_failed(tmp_path):
    from farm.run.executor import MAX_ATTEMPTS

    spec = write_spec(tmp_path, "doomed", prompts=[DOOMED], seeds=[1, 2], loras=[],
                      combine="product", render=SMALL)  # fmt: skip
    job = tmp_path / "out" / "doomed"
    # Read by the worker (farm/worker/render_worker.py): a worker given a unit with this
    # prompt exits.
    env = {**os.environ, "FARM_TEST_DIE_ON_PROMPT": DOOMED}
    run = farm("run", str(spec), "--workers", "1", env=env, check=False)
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"its worker died {MAX_ATTEMPTS} times" in run.stdout, run.stdout + run.stderr
    assert f"`farm resume {job}` renders them" in run.stderr
    doc = job_doc(job)
    assert doc["status"] == "failed"
    last = doc["runs"][-1]
    counters = last["counters"]
    assert counters["worker_deaths"] == MAX_ATTEMPTS
    assert counters["retries"] == MAX_ATTEMPTS - 1
    assert counters["failures"] == 1
    assert last["failed_items"] == 2 and last["rendered"] == 0
    assert scan_parts(LocalStore(job)) == (set(), [])

    resumed = farm_here("resume", str(job), "--local")  # no doomed prompt now; no Ray needed
    assert "0 already rendered" in resumed.stdout and "rendered 2 images" in resumed.stdout
    assert job_doc(job)["status"] == "done"
    assert_verified(job, 2)


# ---------------------------------------------------------------- SIGKILL, local folder


def test_kohya_alpha_below_rank_renders_like_its_peft_twin(cpu_worker, tmp_path):
    """kohya's `.alpha` scales each layer by alpha/rank. The demo `neon` is kohya with
    alpha/rank = 1/2 on the UNet and the text encoder; its PEFT twin has no alpha and
    carries the scale in its up weights. The two render bit-identically, and the same
    file with alpha raised to its rank renders differently: the alpha is applied."""
    from safetensors.numpy import load_file, save_file

    kohya = load_file(str(demo_lora_path("tiny:neon")))
    assert any(k.startswith("lora_te_") for k in kohya)
    full = {k: np.array(8.0, v.dtype) if k.endswith(".alpha") else v for k, v in kohya.items()}
    save_file(full, str(tmp_path / "neon-alpha-at-rank.safetensors"))

    def images(name: str, path: str) -> dict[int, np.ndarray]:
        lora = [{"name": "neon", "path": path, "alpha": [0.8]}]
        rendered = render(cpu_worker, tmp_path, name, lora, render=SMALL | {"steps": 4})
        return {seed: pixels(data) for (seed, _), data in rendered.items()}

    half_kohya = images("kohya-half", "tiny:neon")
    half_peft = images("peft-half", "tiny:neon-peft")
    at_rank = images("kohya-full", str(tmp_path / "neon-alpha-at-rank.safetensors"))
    assert half_kohya.keys() == half_peft.keys() == at_rank.keys() == {7, 8}
    for seed in (7, 8):
        assert np.array_equal(half_kohya[seed], half_peft[seed])
        assert np.abs(half_kohya[seed].astype(int) - at_rank[seed].astype(int)).mean() > 1.0


# ---------------------------------------------------------------- batches, samplers, formats


def test_batch_of_four_equals_batch_of_one_within_a_level(cpu_worker, tmp_path):
    """A batched call reproduces single calls up to kernel numerics. Measured on CPU
    float32 (64x64, 4 steps, 4 seeds): at most 1 level of 255 in any channel, mean
    difference about 0.0002 levels. Asserted: at most 2 levels, mean under 0.01."""
    lora = [{"name": "neon", "path": "tiny:neon", "alpha": [0.7]}]
    seeds = [7, 8, 9, 10]
    one = render(cpu_worker, tmp_path, "batch-1", lora, seeds=seeds,
                 render=SMALL | {"steps": 4, "batch": 1})  # fmt: skip
    four = render(cpu_worker, tmp_path, "batch-4", lora, seeds=seeds,
                  render=SMALL | {"steps": 4, "batch": 4})  # fmt: skip
    store = LocalStore(tmp_path / "batch-4")
    (part,) = store.list("parts/")
    assert decode_part(store.get(part)).column("batch_size").to_pylist() == [4] * 4
    assert one.keys() == four.keys() and len(one) == 4
    for key in one:
        diff = np.abs(pixels(one[key]).astype(int) - pixels(four[key]).astype(int))
        assert diff.max() <= 2 and diff.mean() < 0.01, (key, diff.max(), diff.mean())


def rows_of(tmp_path: Path, name: str) -> list[dict]:
    store = LocalStore(tmp_path / name)
    return [r for key in store.list("parts/") for r in decode_part(store.get(key)).to_pylist()]


def test_every_scheduler_the_spec_accepts_renders(cpu_worker, tiny_dir, tmp_path):
    from farm.families import tiny_model
    from farm.spec.samplers import SAMPLERS

    tiny = make_plan(parse_spec({"job": "tiny", "prompts": ["x"], "seeds": [1]}))
    images = {}
    # Every sampler the model's family takes (flow_euler is Flux.1's and Chroma's alone,
    # refused at plan time on an SD model: tests/test_families.py).
    assert set(tiny_model().family.schedulers) == set(SAMPLERS) - {"flow_euler"}
    for name in tiny_model().family.schedulers:
        sampler = SAMPLERS[name]
        job = "sched-" + name.replace("_", "-")
        (data,) = render(cpu_worker, tmp_path, job, seeds=[7],
                         render=SMALL | {"steps": 4, "scheduler": name}).values()  # fmt: skip
        (row,) = rows_of(tmp_path, job)
        assert row["scheduler"] == name and f"Sampler: {sampler.a1111_name}," in row["infotext"]
        assert row["flags"] == [], (name, row["flags"])
        # The pipeline really ran with that sampler's diffusers class and options.
        pipe = cpu_worker.pipelines.get(tiny.spec.model, tiny.model_fingerprint).pipe
        assert type(pipe.scheduler).__name__ == sampler.diffusers_class
        for option, value in sampler.options.items():
            assert pipe.scheduler.config[option] == value
        images[name] = pixels(data)
    # Each sampler gives its own image.
    names = list(images)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not np.array_equal(images[a], images[b]), (a, b)


def exif_user_comment(exif: bytes) -> str:
    """The EXIF UserComment of a JPEG's or WebP's EXIF block, read as A1111 reads it
    (piexif): the TIFF structure walked by hand to the Exif IFD's tag 0x9286, whose first
    8 bytes name the character code and whose "UNICODE" text piexif decodes as UTF-16-BE.
    Nothing of farm's reader (or of Pillow's EXIF class) takes part."""
    import struct

    tiff = exif.removeprefix(b"Exif\0\0")  # JPEG's APP1 header; WebP's chunk may lack it
    order = {b"II": "<", b"MM": ">"}[tiff[:2]]
    assert struct.unpack_from(order + "H", tiff, 2) == (42,)

    def entries(offset: int) -> dict[int, tuple[int, int, int]]:
        (count,) = struct.unpack_from(order + "H", tiff, offset)
        fields = (struct.unpack_from(order + "HHII", tiff, offset + 2 + 12 * i)
                  for i in range(count))  # fmt: skip
        return {tag: (kind, n, value) for tag, kind, n, value in fields}

    (ifd0,) = struct.unpack_from(order + "I", tiff, 4)
    _, _, exif_ifd = entries(ifd0)[0x8769]  # the Exif IFD pointer
    kind, length, offset = entries(exif_ifd)[0x9286]  # UserComment
    assert kind == 7 and length > 8  # UNDEFINED bytes, stored past the entry
    raw = tiff[offset : offset + length]
    assert raw[:8] == b"UNICODE\0", raw[:8]
    return raw[8:].decode("utf-16-be")


@pytest.mark.parametrize(("fmt", "pil_format", "suffix"),
                         [("png", "PNG", ".png"), ("jpeg", "JPEG", ".jpg"),
                          ("webp", "WEBP", ".webp")])  # fmt: skip
def test_every_output_format_embeds_the_infotext(cpu_worker, tmp_path, fmt, pil_format, suffix):
    from farm.records.encode import read_infotext

    (data,) = render(cpu_worker, tmp_path, f"format-{fmt}", seeds=[7],
                     render=SMALL | {"format": fmt}).values()  # fmt: skip
    (row,) = rows_of(tmp_path, f"format-{fmt}")
    assert row["format"] == fmt and row["image_key"].endswith(suffix)
    assert row["file_name"] == row["image_key"]
    image = Image.open(io.BytesIO(data))
    assert image.format == pil_format and image.size == (64, 64)
    assert row["infotext"].startswith("cyberpunk cityscape with neon lights\n")
    assert "Steps: 2, Sampler: Euler, CFG scale: 7.5, Seed: 7, Size: 64x64" in row["infotext"]
    assert read_infotext(data) == row["infotext"]
    # Read back as A1111's PNG Info reads each format: the PNG text chunk, else EXIF.
    if fmt == "png":
        assert image.info["parameters"] == row["infotext"]
    else:
        assert exif_user_comment(image.info["exif"]) == row["infotext"]


def test_a_scheduler_given_too_few_steps_is_bad_input():
    from farm.spec import SpecError

    with pytest.raises(SpecError) as err:
        parse_spec({"job": "x", "prompts": ["x"], "seeds": [1],
                    "render": {"scheduler": "pndm", "steps": 3}})  # fmt: skip
    assert str(err.value) == "render.steps: 3 is too few for the pndm scheduler (use 4 or more)"
    assert parse_spec({"job": "x", "prompts": ["x"], "seeds": [1],
                       "render": {"scheduler": "pndm", "steps": 4}}).render.steps == 4  # fmt: skip
