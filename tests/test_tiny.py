"""The embedded tiny model: written by the CLI, deterministic, a real diffusers pipeline."""

from __future__ import annotations

import hashlib
import subprocess

from conftest import FARM


def digest(folder) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.safetensors"))
    }


def test_model_tiny_writes_a_loadable_deterministic_pipeline(tmp_path, tiny_dir):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "tiny"
    proc = subprocess.run([*FARM, "model", "tiny", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (out / "model_index.json").exists()
    # Built from fixed seeds: the same weights as the cached copy, file for file.
    assert digest(out) == digest(tiny_dir) and len(digest(out)) == 3
    pipe = StableDiffusionPipeline.from_pretrained(out)
    assert pipe.tokenizer.model_max_length == 77
    assert pipe.vae_scale_factor == 8
    ids = pipe.tokenizer("neon city").input_ids
    assert ids[0] == pipe.tokenizer.bos_token_id and ids[-1] == pipe.tokenizer.eos_token_id
    assert len(ids) == 4  # whole-word tokens for words in the small vocabulary


def test_model_tiny_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    proc = subprocess.run([*FARM, "model", "tiny", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "not empty" in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_lora_demo_writes_both_layouts(tmp_path):
    from farm.loras import inspect_lora

    proc = subprocess.run([*FARM, "lora", "demo", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    layouts = {p.stem: inspect_lora(p).layout for p in tmp_path.glob("*.safetensors")}
    assert layouts == {"neon": "peft", "ink": "kohya", "ink-peft": "peft", "neon-kohya": "kohya"}
