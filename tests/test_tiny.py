"""The embedded tiny model: written by the CLI, deterministic, a real diffusers pipeline."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess

from conftest import FARM


def digest(folder) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.safetensors"))
    }


def header_dtypes(path) -> set[str]:
    """The dtypes a safetensors file declares, from its header: an 8-byte little-endian
    length, then that much JSON (the format's spec; no safetensors code involved)."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    return {t["dtype"] for name, t in header.items() if name != "__metadata__"}


def test_model_tiny_writes_a_loadable_deterministic_pipeline(tmp_path, tiny_dir):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "tiny"
    proc = subprocess.run([*FARM, "model", "tiny", str(out)], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (out / "model_index.json").exists()
    # Written from the shipped weights: the same as the cached copy, file for file.
    assert digest(out) == digest(tiny_dir) and len(digest(out)) == 3
    # In fp32 (docs/tiny-model.md), though the weights ship in fp16.
    for path in sorted(out.rglob("*.safetensors")):
        assert header_dtypes(path) == {"F32"}, path
    pipe = StableDiffusionPipeline.from_pretrained(out)
    assert pipe.tokenizer.model_max_length == 77
    assert pipe.vae_scale_factor == 8
    ids = pipe.tokenizer("neon city").input_ids
    assert ids[0] == pipe.tokenizer.bos_token_id and ids[-1] == pipe.tokenizer.eos_token_id
    assert len(ids) == 4  # whole-word tokens for words in the small vocabulary


def test_the_shipped_weights_are_small_fp16_safetensors():
    from safetensors import safe_open

    from farm.tiny.identity import shipped_weights

    files = sorted(shipped_weights().glob("*"))
    names = ("unet", "vae", "text_encoder", "neon", "ink")
    assert {p.name for p in files} == {f"{n}.safetensors" for n in names}
    assert sum(p.stat().st_size for p in files) < 20 * 1024 * 1024
    for path in files:
        with safe_open(str(path), framework="np") as f:
            keys = f.keys()  # a safe_open handle is not iterable
            assert {str(f.get_tensor(k).dtype) for k in keys} == {"float16"}, path.name


def test_model_tiny_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    proc = subprocess.run([*FARM, "model", "tiny", str(tmp_path)], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 2 and "not empty" in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_lora_demo_writes_both_layouts(tmp_path):
    from farm.loras.files import inspect_lora

    proc = subprocess.run([*FARM, "lora", "demo", str(tmp_path)], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    layouts = {p.stem: inspect_lora(p).layout for p in tmp_path.glob("*.safetensors")}
    assert layouts == {"neon": "kohya", "ink": "peft", "neon-peft": "peft", "ink-kohya": "kohya"}
