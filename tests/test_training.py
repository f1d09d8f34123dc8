"""The tiny model's training script: its pictures, its probe, and a smoke run of every
stage that reproduces itself byte for byte."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import FARM, REPO
from jobrun import farm_here
from safetensors.numpy import load_file

from farm.tiny.identity import BACKGROUNDS, COLOURS, SHAPES
from farm.training.data import draw_set, drop_prompts
from farm.training.probe import STYLE_SCORES, read
from farm.training.shapes import combinations

SHIPPED = ["unet", "vae", "text_encoder", "neon", "ink"]


def test_the_pictures_cover_every_prompt_and_never_a_shape_in_its_background():
    combos = combinations()
    assert len(combos) == len(COLOURS) * len(SHAPES) * len(BACKGROUNDS) - 4 * len(SHAPES)
    assert all(c != b for c, _, b in combos)
    pictures = draw_set(2 * len(combos), seed=3)
    assert Counter(pictures.prompts) == Counter({f"a {c} {s} on a {b} background": 2
                                                 for c, s, b in combos})  # fmt: skip
    again = draw_set(2 * len(combos), seed=3)
    assert np.array_equal(pictures.images, again.images) and pictures.prompts == again.prompts


def test_the_probe_reads_every_drawn_picture():
    pictures = draw_set(2 * len(combinations()), seed=4)
    for image, text in zip(pictures.images, pictures.prompts, strict=True):
        colour, shape = text.split(" on a ")[0].split()[1:]
        background = text.split(" on a ")[1].split()[0]
        reading = read(image)
        assert (reading.colour, reading.shape, reading.background) == (colour, shape, background)


def test_the_probe_sees_no_shape_on_a_plain_background():
    blank = np.full((128, 128, 3), 242, np.uint8)
    assert read(blank).colour is None and read(blank).shape is None


# The background a style's score cannot tell from the style itself: ink is black lines on
# near-white, neon a glow on near-black.
LOOKALIKE = {"ink": "white", "neon": "black"}


@pytest.mark.parametrize("style", ["neon", "ink"])
def test_each_style_scores_high_only_on_its_own_pictures(style):
    score = STYLE_SCORES[style]
    drawn = {s: draw_set(60, seed=5, style=s) for s in ("plain", "neon", "ink")}
    means = {}
    for name, pictures in drawn.items():
        lookalike = f"{LOOKALIKE[style]} background"
        kept = [img for img, text in zip(pictures.images, pictures.prompts, strict=True)
                if name != "plain" or not text.endswith(lookalike)]  # fmt: skip
        means[name] = float(np.mean([score(x) for x in kept]))
    assert means[style] > 0.5 and all(means[style] > 2 * v for s, v in means.items() if s != style)


def test_about_one_prompt_in_ten_is_dropped():
    rng = np.random.default_rng(0)
    dropped = drop_prompts(["a red circle on a white background"] * 10_000, rng)
    assert 0.08 < dropped.count("") / len(dropped) < 0.12


def digests(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.glob("*.safetensors"))}  # fmt: skip


def test_smoke_training_writes_loadable_weights_and_reproduces_them(tmp_path):
    """Every stage for a few steps, twice from the same seed: the same bytes, every file.
    Then the LoRA stage alone on the first run's base weights: the same LoRA bytes (the
    stage seeds itself). A smoke run takes seconds."""
    one, again, two = tmp_path / "one", tmp_path / "again", tmp_path / "two"
    runs = []
    # The LoRA stage alone also keeps each LoRA every step, as a training run.
    for out, more in ((one, []), (again, []), (two, ["--base", str(one), "--checkpoint-every",
                                                     "1"])):  # fmt: skip
        args = ["model", "train-tiny", str(out), "--smoke", "--seed", "3", *more]
        proc = subprocess.run([*FARM, *args], cwd=REPO, capture_output=True, text=True,
                              timeout=900)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "trained in " in proc.stdout and "lora step 1" in proc.stdout
        runs.append(digests(out))
    assert sorted(runs[0]) == sorted(f"{n}.safetensors" for n in SHIPPED)
    # The whole run, byte for byte: base model and LoRAs.
    assert runs[0] == runs[1]
    # The LoRA stage alone (--base copies unet, vae and text_encoder; neon and ink it trains).
    assert {n: runs[2][n] for n in ("neon.safetensors", "ink.safetensors")} == {
        n: runs[0][n] for n in ("neon.safetensors", "ink.safetensors")
    }
    record = json.loads((one / "training.json").read_text())
    assert record["recipe"]["seed"] == 3 and set(record["stages"]) == {"vae", "unet", "neon", "ink"}
    alone = json.loads((two / "training.json").read_text())
    assert set(alone["stages"]) == {"neon", "ink"} and alone["base"] == str(one)
    # Its runs, in training order; the final save is the shipped LoRA, byte for byte
    # (keeping checkpoints took no random draws).
    from farm.loras.checkpoints import find_checkpoints

    run = find_checkpoints(str(two / "checkpoints" / "neon"), tmp_path, "run")
    assert [(c.name, c.step) for c in run] == [("neon-step00000001.safetensors", 1),
                                               ("neon.safetensors", 2)]  # fmt: skip
    final, shipped = (load_file(str(p)) for p in (run[-1].path, two / "neon.safetensors"))
    assert final.keys() == shipped.keys() and all(np.array_equal(final[k], shipped[k])
                                                  for k in final)  # fmt: skip
    assert not all(np.array_equal(v, load_file(run[0].path)[k]) for k, v in final.items())
    spec = {"job": "run", "prompts": ["a red circle on a white background"], "seeds": [0],
            "loras": [{"name": "neon", "checkpoints": str(two / "checkpoints" / "neon"),
                       "alpha": [0, 1]}],
            "render": {"steps": 2, "width": 64, "height": 64},
            "output": str(tmp_path / "o")}  # fmt: skip
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(spec))
    farm_here("run", str(tmp_path / "run.yaml"), "--local")
    rows = pq.read_table(tmp_path / "o" / "run" / "metadata.parquet").to_pylist()
    steps = sorted((x["checkpoint"]["step"], x["weight"]) for r in rows for x in r["loras"])
    assert steps == [(1, 0.0), (1, 1.0), (2, 0.0), (2, 1.0)]

    # The weights load into the tiny pipeline, and both LoRAs into it as diffusers would.
    import torch

    from farm.render.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(tmp_path / "one")
    pipe.load_lora_weights(str(tmp_path / "one" / "neon.safetensors"), adapter_name="neon")
    pipe.load_lora_weights(str(tmp_path / "one" / "ink.safetensors"), adapter_name="ink")
    image = pipe(
        "a red circle on a white background",
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()


def test_train_tiny_refuses_a_base_without_the_model(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "unet.safetensors").write_bytes(b"")
    proc = subprocess.run([*FARM, "model", "train-tiny", str(tmp_path / "out"), "--smoke",
                           "--base", str(tmp_path / "base")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "--base" in proc.stderr and "vae.safetensors" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_train_tiny_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    proc = subprocess.run([*FARM, "model", "train-tiny", str(tmp_path), "--smoke"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "not empty" in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
