"""LoRA files: safetensors header checks, layout detection, hashes and the demo LoRAs."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FARM, REPO
from safetensors.numpy import load_file, save_file

from farm import families
from farm.families import LORA_KEYS, FamilyError
from farm.loras.demo import (
    DEMO_LORAS,
    demo_lora_path,
    unet_attention_modules,
    unet_resnet_convs,
    write_demo_lora,
)
from farm.loras.describe import describe_lora
from farm.loras.families import Recognised, lora_family
from farm.loras.files import LoraError, a1111_block, detect_layout, inspect_lora, read_header
from farm.plan.model_refs import read_model
from farm.plan.sweep import make_plan
from farm.spec import SpecError, parse_spec

PEFT = {
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": (4, 32),
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": (32, 4),
}
KOHYA_KEY = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"


def tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(shape).astype(np.float32) for k, shape in PEFT.items()}


def write_lora(path: Path, metadata: dict[str, str] | None = None, seed: int = 0) -> Path:
    save_file(tensors(seed), str(path), metadata=metadata)
    return path


def raw_file(path: Path, header: object, data: bytes = b"", length: int | None = None) -> Path:
    """A hand-made safetensors file: 8-byte length, JSON header, data."""
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(head) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + head + data)
    return path


def refused(path: Path) -> str:
    with pytest.raises(LoraError) as info:
        read_header(path)
    message = str(info.value)
    assert str(path) in message, message
    return message


# ---------------------------------------------------------------- read_header


def test_read_header_accepts_a_good_file(tmp_path):
    path = write_lora(tmp_path / "good.safetensors", {"ss_network_dim": "4"})
    header, metadata = read_header(path)
    assert set(header) == set(PEFT)
    for key, shape in PEFT.items():
        assert header[key]["dtype"] == "F32"
        assert tuple(header[key]["shape"]) == shape
    assert metadata == {"ss_network_dim": "4"}


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin", ".PT"])
def test_read_header_refuses_pickle_suffixes(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(pickle.dumps({"a": 1}))
    message = refused(path)
    assert "pickle" in message
    assert "convert" in message and ".safetensors" in message


def test_read_header_refuses_a_pickle_renamed_to_safetensors(tmp_path):
    path = tmp_path / "sneaky.safetensors"
    path.write_bytes(pickle.dumps({"a": 1}))
    message = refused(path)
    assert "not a safetensors file" in message


def test_read_header_refuses_a_truncated_file(tmp_path):
    good = write_lora(tmp_path / "good.safetensors").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good[: len(good) // 2])
    assert "truncated" in refused(cut)


def test_read_header_refuses_a_file_cut_inside_its_header(tmp_path):
    good = write_lora(tmp_path / "good.safetensors").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good[:20])
    assert "truncated" in refused(cut)


@pytest.mark.parametrize("data", [b"", b"\x01\x02\x03"])
def test_read_header_refuses_a_file_shorter_than_the_length_prefix(tmp_path, data):
    path = tmp_path / "short.safetensors"
    path.write_bytes(data)
    assert "too short" in refused(path)


def test_read_header_refuses_a_header_longer_than_the_file(tmp_path):
    path = raw_file(tmp_path / "long.safetensors", {}, length=1000)
    assert "header length 1000" in refused(path)


def test_read_header_refuses_a_header_that_is_not_json(tmp_path):
    path = raw_file(tmp_path / "notjson.safetensors", b"this is not json {")
    assert "not JSON" in refused(path)


def test_read_header_refuses_a_header_that_is_not_utf8(tmp_path):
    path = raw_file(tmp_path / "binary.safetensors", b"\xff\xfe\x00\x80garbage")
    assert "not JSON" in refused(path)


def test_read_header_refuses_a_header_that_is_not_a_mapping(tmp_path):
    path = raw_file(tmp_path / "list.safetensors", [1, 2, 3])
    assert "not a mapping" in refused(path)


def test_read_header_refuses_a_deeply_nested_header(tmp_path):
    path = raw_file(tmp_path / "deep.safetensors", b"[" * 200_000)
    assert "not JSON" in refused(path)


def test_read_header_refuses_metadata_that_is_not_a_mapping(tmp_path):
    header = {
        "__metadata__": ["a", "b"],
        "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
    }
    path = raw_file(tmp_path / "meta.safetensors", header, b"\0" * 4)
    assert "__metadata__" in refused(path)


@pytest.mark.parametrize("dtype", ["F17", "Q4_K", None, ["F32"], {"x": 1}])
def test_read_header_refuses_an_unknown_dtype(tmp_path, dtype):
    header = {"w": {"dtype": dtype, "shape": [2], "data_offsets": [0, 8]}}
    path = raw_file(tmp_path / "dtype.safetensors", header, b"\0" * 8)
    message = refused(path)
    assert "'w'" in message and "unknown dtype" in message


def test_read_header_refuses_offsets_beyond_the_data(tmp_path):
    header = {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    path = raw_file(tmp_path / "beyond.safetensors", header, b"\0" * 8)
    message = refused(path)
    assert "'w'" in message and "outside the file" in message


def test_read_header_refuses_offsets_that_disagree_with_the_shape(tmp_path):
    header = {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}
    path = raw_file(tmp_path / "size.safetensors", header, b"\0" * 16)
    assert "'w'" in refused(path)


@pytest.mark.parametrize(
    "entry",
    [
        5,
        {"shape": [4], "data_offsets": [0, 16]},
        {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": "4", "data_offsets": [0, 16]},
        {"dtype": "F32", "shape": [4], "data_offsets": [0]},
        {"dtype": "F32", "shape": [4], "data_offsets": ["0", "16"]},
        {"dtype": "F32", "shape": [4], "data_offsets": [8, 4]},
    ],
)
def test_read_header_refuses_malformed_entries(tmp_path, entry):
    path = raw_file(tmp_path / "bad.safetensors", {"w": entry}, b"\0" * 16)
    assert "'w'" in refused(path)


@pytest.mark.parametrize("header", [{}, {"__metadata__": {"ss_network_dim": "4"}}])
def test_read_header_refuses_an_empty_tensor_table(tmp_path, header):
    path = raw_file(tmp_path / "empty.safetensors", header)
    assert "no tensors" in refused(path)


def test_read_header_names_a_missing_file(tmp_path):
    assert "cannot read" in refused(tmp_path / "missing.safetensors")


# ---------------------------------------------------------------- detect_layout


def test_detect_layout_peft():
    assert detect_layout(list(PEFT)) == "peft"


def test_detect_layout_kohya():
    keys = [f"{KOHYA_KEY}.lora_down.weight", f"{KOHYA_KEY}.lora_up.weight", f"{KOHYA_KEY}.alpha"]
    assert detect_layout(keys) == "kohya"
    assert detect_layout(["lora_te_text_model_encoder_layers_0_q_proj.lora_down.weight"]) == "kohya"


def test_detect_layout_diffusers():
    keys = ["unet.mid_block.attentions.0.proj_in.lora.down.weight"]
    assert detect_layout(keys) == "diffusers"


@pytest.mark.parametrize(
    ("keys", "word"),
    [
        ([f"{KOHYA_KEY}.hada_w1_a", f"{KOHYA_KEY}.hada_w1_b"], "LoHa"),
        ([f"{KOHYA_KEY}.lokr_w1", f"{KOHYA_KEY}.lokr_w2"], "LoKr"),
        ([f"{KOHYA_KEY}.lora_down.weight", f"{KOHYA_KEY}.dora_scale"], "DoRA"),
        ([*PEFT, "unet.x.lora_magnitude_vector.weight"], "DoRA"),
    ],
)
def test_detect_layout_refuses_other_adapter_kinds(keys, word):
    with pytest.raises(LoraError, match=word) as info:
        detect_layout(keys, "odd.safetensors")
    assert "odd.safetensors" in str(info.value)
    assert "not supported" in str(info.value)


@pytest.mark.parametrize("keys", [["model.diffusion_model.conv.weight"], []])
def test_detect_layout_refuses_files_without_lora_keys(keys):
    with pytest.raises(LoraError, match="no LoRA weights") as info:
        detect_layout(keys, "full.safetensors")
    assert "full.safetensors" in str(info.value)


# ---------------------------------------------------------------- inspect_lora


def addnet_hash(path: Path) -> str:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return hashlib.sha256(data[8 + n :]).hexdigest()


def test_inspect_lora_hashes(tmp_path):
    path = write_lora(tmp_path / "a.safetensors", {"note": "x"})
    info = inspect_lora(path)
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.shorthash == addnet_hash(path)[:12]
    assert info.shorthash != info.sha256[:12]
    assert info.layout == "peft"
    assert info.metadata == {"note": "x"}
    assert info.path == str(path.resolve())


def test_shorthash_ignores_metadata_and_sha256_does_not(tmp_path):
    a = inspect_lora(write_lora(tmp_path / "a.safetensors", {"note": "x"}))
    b = inspect_lora(write_lora(tmp_path / "b.safetensors", {"note": "a much longer note"}))
    c = inspect_lora(write_lora(tmp_path / "c.safetensors", {"note": "x"}, seed=1))
    assert a.shorthash == b.shorthash
    assert a.sha256 != b.sha256
    assert c.shorthash != a.shorthash


def test_shorthash_prefers_sshs_model_hash(tmp_path):
    sshs = "0123456789abcdef" * 4
    info = inspect_lora(write_lora(tmp_path / "a.safetensors", {"sshs_model_hash": sshs}))
    assert info.shorthash == "0123456789ab"
    assert info.sha256 == hashlib.sha256((tmp_path / "a.safetensors").read_bytes()).hexdigest()


def test_inspect_lora_sees_a_rewritten_file(tmp_path):
    path = write_lora(tmp_path / "a.safetensors")
    first = inspect_lora(path)
    write_lora(path, {"note": "changed"}, seed=2)
    second = inspect_lora(path)
    assert second.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() != first.sha256


def test_inspect_lora_refuses_unsupported_files(tmp_path):
    path = tmp_path / "loha.safetensors"
    save_file({f"{KOHYA_KEY}.hada_w1_a": np.zeros((2, 2), np.float32)}, str(path))
    with pytest.raises(LoraError, match="LoHa"):
        inspect_lora(path)
    with pytest.raises(LoraError, match="cannot read"):
        inspect_lora(tmp_path / "missing.safetensors")


# ---------------------------------------------------------------- demo LoRAs


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FARM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.mark.parametrize(
    ("ref", "layout"),
    [
        ("tiny:neon", "kohya"),
        ("tiny:ink", "peft"),
        ("tiny:neon-peft", "peft"),
        ("tiny:ink-kohya", "kohya"),
    ],  # fmt: skip
)
def test_demo_loras_inspect(home, ref, layout):
    path = demo_lora_path(ref)
    assert home in path.parents
    info = inspect_lora(path)
    assert info.layout == layout
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.metadata["farm_demo"].endswith("/" + DEMO_LORAS[ref.removeprefix("tiny:")].name)


def test_demo_lora_unknown_name(home):
    with pytest.raises(KeyError, match="tiny:nope"):
        demo_lora_path("tiny:nope")


TWINS = [("tiny:neon", "tiny:neon-peft"), ("tiny:ink-kohya", "tiny:ink")]


@pytest.mark.parametrize(("kohya_ref", "peft_ref"), TWINS)
def test_demo_twins_hold_the_same_deltas(home, kohya_ref, peft_ref):
    peft = load_file(str(demo_lora_path(peft_ref)))
    kohya = load_file(str(demo_lora_path(kohya_ref)))
    modules = {k.removesuffix(".lora_A.weight") for k in peft if k.endswith(".lora_A.weight")}
    assert {m.split(".")[0] for m in modules} == {"unet", "text_encoder"}
    assert len(peft) == 2 * len(modules)
    assert len(kohya) == 3 * len(modules)  # lora_down, lora_up, alpha
    for module in modules:
        component, rest = module.split(".", 1)
        key = {"unet": "lora_unet_", "text_encoder": "lora_te_"}[component]
        key += rest.replace(".", "_")
        down, up = peft[f"{module}.lora_A.weight"], peft[f"{module}.lora_B.weight"]
        rank = down.shape[0]
        assert np.array_equal(down, kohya[f"{key}.lora_down.weight"])
        # PEFT carries kohya's alpha/rank in B; a power of two, so exactly (in float32).
        scale = np.float32(float(kohya[f"{key}.alpha"]) / rank)
        assert np.array_equal(up, kohya[f"{key}.lora_up.weight"].astype(np.float32) * scale)


def test_demo_neon_is_kohya_with_alpha_below_rank(home):
    kohya = load_file(str(demo_lora_path("tiny:neon")))
    alphas = {float(v) for k, v in kohya.items() if k.endswith(".alpha")}
    ranks = {v.shape[0] for k, v in kohya.items() if k.endswith(".lora_down.weight")}
    assert alphas == {4.0} and ranks == {8}
    assert any(k.startswith("lora_te_") for k in kohya)
    assert any(k.startswith("lora_unet_") for k in kohya)


@pytest.mark.parametrize(
    "name",
    # The kohya demos carry several metadata keys, which safetensors writes in hash-map
    # order; the sha256 is part of every item_id, so the bytes must not depend on it.
    ["neon", "ink", "neon-peft", "ink-kohya"],
)
def test_demo_lora_is_deterministic(tmp_path, monkeypatch, name):
    paths = []
    for home in ("one", "two", "three"):
        monkeypatch.setenv("FARM_HOME", str(tmp_path / home))
        paths.append(demo_lora_path(f"tiny:{name}"))
    paths.append(write_demo_lora(DEMO_LORAS[name], tmp_path / "again" / "x.safetensors"))
    assert len(set(paths)) == len(paths)
    assert len({inspect_lora(p).sha256 for p in paths}) == 1
    assert len({p.read_bytes() for p in paths}) == 1
    assert not [p for p in (tmp_path / "again").iterdir() if p.name != "x.safetensors"]


# ---------------------------------------------------------------- formats and families

ATTN2 = "down_blocks_0_attentions_0_transformer_blocks_0_attn2"
PEFT_ATTN2 = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2"
TE = "text_model_encoder_layers_0_self_attn_q_proj"


def save_shapes(path: Path, shapes: dict[str, tuple[int, ...]], alpha: float | None = None) -> Path:
    """A LoRA file with small random tensors of these shapes (kohya alphas added if given)."""
    rng = np.random.default_rng(0)
    tensors = {
        k: rng.standard_normal(shape).astype(np.float32) * 0.01 for k, shape in shapes.items()
    }
    if alpha is not None:
        for key in shapes:
            if key.endswith(".lora_down.weight"):
                tensors[key.replace(".lora_down.weight", ".alpha")] = np.array(alpha, np.float32)
    save_file(tensors, str(path))
    return path


def kohya(module: str, in_dim: int, out_dim: int, rank: int = 4) -> dict[str, tuple[int, ...]]:
    return {
        f"{module}.lora_down.weight": (rank, in_dim),
        f"{module}.lora_up.weight": (out_dim, rank),
    }


def peft(module: str, in_dim: int, out_dim: int, rank: int = 4) -> dict[str, tuple[int, ...]]:
    return {f"{module}.lora_A.weight": (rank, in_dim), f"{module}.lora_B.weight": (out_dim, rank)}


def sdxl_kohya(path: Path) -> Path:
    """An SDXL-shaped kohya LoRA: cross-attention over 2048-wide context, two text encoders."""
    shapes = {
        **kohya(f"lora_unet_{ATTN2}_to_k", 2048, 320),
        **kohya(f"lora_unet_{ATTN2}_to_v", 2048, 320),
        **kohya(f"lora_te1_{TE}", 768, 768),
        **kohya(f"lora_te2_{TE}", 1280, 1280),
    }
    return save_shapes(path, shapes, alpha=2.0)


def locon_for_tiny(path: Path) -> Path:
    """A kohya LoCon for the tiny UNet: its attention projections and its ResNet convs."""
    shapes: dict[str, tuple[int, ...]] = {}
    for module, out_dim, in_dim in unet_attention_modules():
        shapes |= kohya("lora_unet_" + module.replace(".", "_"), in_dim, out_dim)
    for module, out_ch, in_ch, k in unet_resnet_convs():
        key = "lora_unet_" + module.replace(".", "_")
        shapes[f"{key}.lora_down.weight"] = (2, in_ch, k, k)
        shapes[f"{key}.lora_up.weight"] = (out_ch, 2, 1, 1)
    return save_shapes(path, shapes, alpha=1.0)


@pytest.mark.parametrize(
    "keys",
    [
        ["lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight"],
        ["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"],
        ["lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"],
    ],
)
def test_detect_layout_recognizes_sdxl_kohya_keys(keys):
    assert detect_layout(keys) == "kohya"


def test_detect_layout_recognizes_sdxl_diffusers_keys():
    keys = ["text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight"]
    assert detect_layout(keys) == "peft"


# Each refused file, and the words of its own message.
REFUSED = {
    "loha": ({f"{KOHYA_KEY}.hada_w1_a": (4, 32), f"{KOHYA_KEY}.hada_w1_b": (4, 32)}, "LoHa"),
    "lokr": ({f"{KOHYA_KEY}.lokr_w1": (4, 4), f"{KOHYA_KEY}.lokr_w2": (8, 8)}, "LoKr"),
    "dora-kohya": ({**kohya(KOHYA_KEY, 32, 32), f"{KOHYA_KEY}.dora_scale": (1, 32)}, "DoRA"),
    "dora-peft": ({**PEFT, f"{PEFT_ATTN2}.to_q.lora_magnitude_vector": (32,)}, "DoRA"),
    "tucker": ({**kohya(KOHYA_KEY, 32, 32), f"{KOHYA_KEY}.lora_mid.weight": (4, 4, 1, 1)},
               "Tucker"),
    "full-diff": ({f"{KOHYA_KEY}.diff": (32, 32)}, "full-weight difference"),
    "checkpoint": ({"model.diffusion_model.out.0.weight": (4,)}, "no LoRA weights found"),
    "odd-key": ({**kohya(KOHYA_KEY, 32, 32), f"{KOHYA_KEY}.scale": (1,)}, "is not part of a kohya"),
}  # fmt: skip


def model_family(model: str) -> Recognised:
    """A model's family as messages name it, from its configs."""
    return read_model(model).recognised


def check_compatible(path: Path, model: str) -> Recognised:
    return families.check_compatible(path, read_model(model), model)


def refused_message(path: Path, call=inspect_lora) -> str:
    with pytest.raises((LoraError, FamilyError)) as info:
        call(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message, message
    return message


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_other_adapter_kinds_are_not_supported(tmp_path, name):
    shapes, words = REFUSED[name]
    path = save_shapes(tmp_path / f"{name}.safetensors", shapes)
    for call in (inspect_lora, lora_family, describe_lora):
        message = refused_message(path, call)
        assert f"{path}: not supported: " in message and words in message, message
    # The plan-time check refuses the file too, for any model.
    assert words in refused_message(path, lambda p: check_compatible(p, "tiny"))


def test_each_refused_file_gets_its_own_message(tmp_path):
    messages = {}
    for name, (shapes, _) in REFUSED.items():
        path = save_shapes(tmp_path / "x.safetensors", shapes)
        messages[name] = refused_message(path)
    for suffix in (".ckpt", ".pt", ".bin"):
        path = tmp_path / f"x{suffix}"
        path.write_bytes(pickle.dumps({"a": 1}))
        messages[suffix] = refused_message(path)
        assert "pickle" in messages[suffix] and "convert" in messages[suffix]
    good = write_lora(tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "x.safetensors").write_bytes(good[: len(good) - 7])
    messages["truncated"] = refused_message(tmp_path / "x.safetensors")
    assert "truncated" in messages["truncated"]
    assert len(set(messages.values())) == len(messages)


def test_a_layer_without_its_up_weight_is_refused(tmp_path):
    path = save_shapes(tmp_path / "half.safetensors", {f"{KOHYA_KEY}.lora_down.weight": (4, 32)})
    assert "no up weight" in refused_message(path)


@pytest.mark.parametrize(
    ("shapes", "name", "context", "te2"),
    [
        (kohya(f"lora_unet_{ATTN2}_to_k", 768, 320), "SD1.x", 768, False),
        (peft(f"{PEFT_ATTN2}.to_v", 1024, 320), "SD2.x", 1024, False),
        (peft("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k", 2048, 640),
         "SDXL", 2048, False),
        ({**peft("text_encoder.text_model.q_proj", 768, 768),
          **peft("text_encoder_2.text_model.q_proj", 1280, 1280)}, "SDXL", None, True),
        (kohya("lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k", 2048, 640),
         "SDXL", 2048, False),
        (kohya(f"lora_unet_{ATTN2}_to_k", 512, 320), "unknown", 512, False),
        (kohya(f"lora_te_{TE}", 768, 768), "unknown", None, False),
    ],
)  # fmt: skip
def test_lora_family_from_shapes(tmp_path, shapes, name, context, te2):
    family = lora_family(save_shapes(tmp_path / "f.safetensors", shapes))
    assert family == Recognised(name, context, te2)


def test_sdxl_lora_family_and_str(tmp_path):
    family = lora_family(sdxl_kohya(tmp_path / "xl.safetensors"))
    assert family == Recognised("SDXL", 2048, True)
    assert str(family) == "SDXL (context 2048)"
    assert str(Recognised("unknown", 32)) == "unknown (context 32)"


def write_model(root: Path, context: int, te2: bool, cls: str) -> Path:
    """Only the two configs of a diffusers folder: all model_family reads."""
    (root / "unet").mkdir(parents=True)
    (root / "unet" / "config.json").write_text(json.dumps({"cross_attention_dim": context}))
    index = {"_class_name": cls, "text_encoder": ["transformers", "CLIPTextModel"]}
    if te2:
        index["text_encoder_2"] = ["transformers", "CLIPTextModelWithProjection"]
    (root / "model_index.json").write_text(json.dumps(index))
    return root


def test_model_family_of_tiny(tiny_dir):
    expected = Recognised("SD1.x-architecture", 64, False)
    assert model_family("tiny") == expected
    assert model_family(str(tiny_dir)) == expected
    assert str(expected) == "SD1.x-architecture (context 64)"


def test_model_family_of_real_layouts(tmp_path):
    sd15 = write_model(tmp_path / "sd15", 768, False, "StableDiffusionPipeline")
    sdxl = write_model(tmp_path / "sdxl", 2048, True, "StableDiffusionXLPipeline")
    assert model_family(str(sd15)) == Recognised("SD1.x", 768, False)
    assert model_family(str(sdxl)) == Recognised("SDXL", 2048, True)


@pytest.mark.parametrize("model", ["stabilityai/stable-diffusion-xl-base-1.0", "missing"])
def test_a_model_whose_configs_cannot_be_read_is_refused(tmp_path, monkeypatch, model):
    """Neither a local folder nor reachable on the hub (HF_HUB_OFFLINE): refused at plan
    time in one line, never planned as a model of unknown family."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as info:
        read_model(model)
    message = str(info.value)
    assert message.startswith(f"model: {model} is not a local folder, and its configs cannot "
                              "be read from the Hugging Face hub (")  # fmt: skip
    assert message.endswith("give a diffusers model folder") and "\n" not in message


def test_sdxl_lora_on_tiny_is_refused_naming_both_families(tmp_path, tiny_dir):
    path = sdxl_kohya(tmp_path / "xl.safetensors")
    for model in ("tiny", str(tiny_dir)):
        message = refused_message(path, lambda p, m=model: check_compatible(p, m))
        assert message.startswith(
            f"{path}: an SDXL LoRA (context 2048) cannot be used on SD1.x-architecture "
            f"model {model!r} (context 64): "
        ), message
        assert "text_encoder_2" in message and "pick a LoRA trained for this model" in message


def test_sd15_lora_on_sdxl_model_is_refused(tmp_path):
    sdxl = write_model(tmp_path / "sdxl", 2048, True, "StableDiffusionXLPipeline")
    path = save_shapes(tmp_path / "sd15.safetensors", kohya(f"lora_unet_{ATTN2}_to_k", 768, 320))
    message = refused_message(path, lambda p: check_compatible(p, str(sdxl)))
    assert "an SD1.x LoRA (context 768)" in message and "SDXL model" in message
    assert "(context 2048)" in message and "text_encoder_2" not in message


# Transformer (DiT) LoRAs in the layouts they are shared in: Flux.1 layers spelled by
# kohya's sd-scripts, ai-toolkit (diffusers/PEFT), OneTrainer and ComfyUI (attention
# alone, named as Flux.1's and Qwen-Image's double blocks both name it), Qwen-Image and
# Z-Image ones, and one of a family farm does not render.
DIT_LORAS = {
    "kohya": (kohya("lora_unet_double_blocks_0_img_attn_qkv", 64, 192), "Flux.1", 64),
    "ai-toolkit": (peft("transformer.single_transformer_blocks.7.proj_out", 64, 64),
                   "Flux.1", None),
    "onetrainer": (kohya("lora_transformer_single_transformer_blocks_0_proj_mlp", 64, 256),
                   "Flux.1", None),
    "comfyui": (peft("diffusion_model.transformer_blocks.0.attn.to_q", 64, 64),
                "transformer (DiT)", None),
    "qwen": (peft("transformer.transformer_blocks.0.img_mlp.net.2", 64, 64), "Qwen-Image", None),
    "qwen-kohya": (kohya("lora_unet_transformer_blocks_40_attn_to_q", 64, 64), "Qwen-Image", 64),
    "z-image": (peft("diffusion_model.layers.3.attention.qkv", 48, 144), "Z-Image", 48),
    "flux2": (peft("transformer.single_transformer_blocks.0.attn.to_qkv_mlp_proj", 64, 384),
              "Flux.2", None),
}  # fmt: skip


@pytest.mark.parametrize("layout", sorted(DIT_LORAS))
def test_a_transformer_lora_on_a_unet_model_is_refused_naming_both_families(tmp_path, layout):
    """A Flux.1 (or other DiT) LoRA on an SD model is refused before anything is planned,
    never accepted as "unknown" to fail in every unit."""
    shapes, family, width = DIT_LORAS[layout]
    path = save_shapes(tmp_path / f"{layout}.safetensors", shapes)
    known = lora_family(path, LORA_KEYS)
    assert known == Recognised(family, None, transformer=True, width=width)
    assert describe_lora(path, LORA_KEYS).family == known  # what `farm lora inspect` says
    message = refused_message(path, lambda p: check_compatible(p, "tiny"))
    detail = f"width {width}" if width else "a transformer (DiT) model"
    if family == "Flux.2":
        assert message == (
            f"{path}: a Flux.2 LoRA cannot be used on SD1.x model 'tiny': farm renders "
            "SD1.x, SD2.x, SDXL, Flux.1, Qwen-Image, Z-Image LoRAs; pick one made for the model"
        )
    else:
        assert message == (
            f"{path}: a {family} LoRA ({detail}) cannot be used on SD1.x-architecture model "
            "'tiny' (context 64): it adapts a transformer's layers the model does not have; "
            "pick a LoRA trained for the model"
        )
    spec = {"job": "dit", "prompts": ["a red circle"], "seeds": [0],
            "loras": [{"name": "x", "path": str(path), "alpha": [1]}]}  # fmt: skip
    with pytest.raises(SpecError, match=rf"^loras\[0\]\.path: .*a {re.escape(family)} LoRA"):
        make_plan(parse_spec(spec, base_dir=tmp_path))


def write_dit_model(root: Path, cls: str) -> Path:
    """A transformer model folder as diffusers saves one: a transformer, no unet."""
    (root / "transformer").mkdir(parents=True)
    (root / "transformer" / "config.json").write_text(json.dumps({"num_layers": 1}))
    index = {"_class_name": cls, "transformer": ["diffusers", "FluxTransformer2DModel"],
             "text_encoder": ["transformers", "CLIPTextModel"]}  # fmt: skip
    (root / "model_index.json").write_text(json.dumps(index))
    return root


@pytest.mark.parametrize(("cls", "what"), [
    ("HiDreamImagePipeline", "a HiDream model (HiDreamImagePipeline)"),
    ("Flux2Pipeline", "a Flux.2 model (Flux2Pipeline)"),
    ("NewDiT", "a transformer (DiT) model of a family farm does not render (NewDiT)"),
])  # fmt: skip
def test_a_model_of_a_family_farm_does_not_render_is_refused_at_plan_time(tmp_path, cls, what):
    model = write_dit_model(tmp_path / "model", cls)
    spec = {"job": "dit", "model": str(model), "prompts": ["a red circle"], "seeds": [0]}
    with pytest.raises(SpecError) as info:
        make_plan(parse_spec(spec, base_dir=tmp_path))
    assert str(info.value) == (
        f"model: {model} is {what}; farm renders SD1.x, SD2.x, SDXL, Flux.1 (dev, schnell), "
        "Chroma, Qwen-Image and Z-Image models"
    )


def test_an_sd_lora_on_a_flux_model_is_refused_naming_both_families(tmp_path):
    model = write_dit_model(tmp_path / "model", "FluxPipeline")
    assert read_model(str(model)).family.key == "flux-schnell"  # no guidance embedding
    path = save_shapes(tmp_path / "sd15.safetensors", kohya(f"lora_unet_{ATTN2}_to_k", 768, 320))
    assert refused_message(path, lambda p: check_compatible(p, str(model))) == (
        f"{path}: an SD1.x LoRA (context 768) cannot be used on Flux.1-schnell model "
        f"{str(model)!r} (a transformer (DiT) model): it adapts a UNet's layers the model "
        "does not have; pick a LoRA trained for the model"
    )


def test_compatible_loras_pass(tmp_path, home):
    sdxl = write_model(tmp_path / "sdxl", 2048, True, "StableDiffusionXLPipeline")
    assert check_compatible(sdxl_kohya(tmp_path / "xl.safetensors"), str(sdxl)).transformer is False
    for name in DEMO_LORAS:
        assert check_compatible(demo_lora_path(f"tiny:{name}"), "tiny").transformer is False
    # A text-encoder-only LoRA has no cross-attention to compare: not refused.
    te_only = save_shapes(tmp_path / "te.safetensors", kohya(f"lora_te_{TE}", 768, 768))
    assert check_compatible(te_only, "tiny").transformer is False


def test_locon_is_recognized_and_compatible_with_tiny(tmp_path, tiny_dir):
    path = locon_for_tiny(tmp_path / "locon.safetensors")
    info = inspect_lora(path)
    assert (info.layout, info.locon) == ("kohya", True)
    report = describe_lora(path)
    assert report.layout == "kohya LoCon" and report.as_dict()["kind"] == "LoCon"
    assert report.rank == (2, 4) and report.alpha == (1.0, 1.0)
    assert "IN04" in report.blocks  # down_blocks.1.resnets.0: conv layers only
    assert check_compatible(path, "tiny").transformer is False
    assert check_compatible(path, str(tiny_dir)).transformer is False


def test_ldm_named_resnet_layers_are_locon(tmp_path):
    shapes = {
        "lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight": (4, 320, 3, 3),
        "lora_unet_input_blocks_1_0_in_layers_2.lora_up.weight": (320, 4, 1, 1),
    }
    info = inspect_lora(save_shapes(tmp_path / "ldm.safetensors", shapes, alpha=4.0))
    assert (info.layout, info.locon) == ("kohya", True)


@pytest.mark.parametrize("name", list(DEMO_LORAS))
def test_demo_loras_are_not_locon(home, name):
    # proj_in/proj_out aside, attention-only LoRA adapts no convolution.
    assert not inspect_lora(demo_lora_path(f"tiny:{name}")).locon


@pytest.mark.parametrize(
    ("name", "block"),
    [
        ("down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", "IN01"),
        ("down_blocks_0_resnets_1_conv1", "IN02"),
        ("down_blocks_0_downsamplers_0_conv", "IN03"),
        ("down_blocks_3_resnets_1_conv2", "IN11"),
        ("mid_block_attentions_0_proj_in", "M00"),
        ("up_blocks_0_resnets_0_conv1", "OUT00"),
        ("up_blocks_1_attentions_2_proj_out", "OUT05"),
        ("up_blocks_1_upsamplers_0_conv", "OUT05"),
        ("up_blocks_3_attentions_2_transformer_blocks_0_ff_net_2", "OUT11"),
        ("input_blocks_4_1_transformer_blocks_0_attn2_to_k", "IN04"),
        ("middle_block_1_proj_in", "M00"),
        ("output_blocks_8_0_in_layers_2", "OUT08"),
        ("conv_in", "IN00"),
        ("time_embedding_linear_1", None),
    ],
)
def test_a1111_block_ids(name, block):
    assert a1111_block(name) == block


# ---------------------------------------------------------------- farm lora inspect


def farm_lora_inspect(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*FARM, "lora", "inspect", *args], cwd=REPO, capture_output=True, text=True
    )


def inspect_json(path: Path) -> dict:
    proc = farm_lora_inspect(str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


BLOCKS = ["IN04", "IN07", "M00", "OUT00", "OUT01", "OUT03", "OUT04"]  # the transformer blocks


def test_cli_inspect_kohya_neon():
    path = demo_lora_path("tiny:neon")
    report = inspect_json(path)
    assert report["layout"] == "kohya" and report["kind"] == "LoRA"
    assert report["rank"] == {"min": 8, "max": 8}
    assert report["alpha"] == {"min": 4.0, "max": 4.0}
    assert report["family"] == "unknown (context 64)" and report["context"] == 64
    assert report["blocks"] == BLOCKS
    assert report["text_encoders"] == ["text_encoder"]
    assert report["modules_by_component"] == {"unet": 84, "text_encoder": 12}
    assert report["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert report["shorthash"] == addnet_hash(path)[:12]
    assert report["metadata"] == {
        "ss_network_alpha": "4", "ss_network_dim": "8",
        "ss_network_module": "networks.lora", "ss_output_name": "neon",
    }  # fmt: skip


def test_cli_inspect_peft_ink():
    path = demo_lora_path("tiny:ink")
    report = inspect_json(path)
    assert report["layout"] == "peft" and report["kind"] == "LoRA"
    assert report["rank"] == {"min": 4, "max": 4}
    assert report["alpha"] is None  # the PEFT layout stores none: alpha = rank
    assert report["family"] == "unknown (context 64)"
    assert report["blocks"] == BLOCKS
    assert report["text_encoders"] == ["text_encoder"] and report["modules"] == 96
    assert report["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert report["shorthash"] == addnet_hash(path)[:12]
    assert report["metadata"] == {}


def human_inspect(path: Path) -> dict[str, str]:
    """`farm lora inspect` lines as {key: value}, checking that the values line up."""
    proc = farm_lora_inspect(str(path))
    assert proc.returncode == 0, proc.stderr
    lines = [re.fullmatch(r"([\w ]+):( +)(\S.*)", line) for line in proc.stdout.splitlines()]
    assert all(lines), proc.stdout
    assert len({m.start(3) for m in lines}) == 1, proc.stdout
    return {m[1]: m[3] for m in lines}


def test_cli_inspect_human_output(tmp_path):
    ink = human_inspect(demo_lora_path("tiny:ink"))
    assert ink["layout"] == "peft" and ink["alpha"] == "rank (not stored)"
    assert ink["family"] == "unknown (context 64)" and ink["text encoders"] == "text_encoder"
    neon = human_inspect(demo_lora_path("tiny:neon"))
    assert neon["layout"] == "kohya" and (neon["rank"], neon["alpha"]) == ("8", "4")
    assert neon["blocks"] == " ".join(BLOCKS) and neon["ss_output_name"] == "neon"
    locon = human_inspect(locon_for_tiny(tmp_path / "locon.safetensors"))
    assert locon["layout"] == "kohya LoCon" and locon["rank"] == "2–4"


def test_cli_inspect_sdxl_file(tmp_path):
    report = inspect_json(sdxl_kohya(tmp_path / "xl.safetensors"))
    assert report["family"] == "SDXL (context 2048)"
    assert report["text_encoders"] == ["text_encoder", "text_encoder_2"]
    assert report["alpha"] == {"min": 2.0, "max": 2.0} and report["blocks"] == ["IN01"]


@pytest.mark.parametrize("kind", ["pickle", "renamed-pickle", "truncated", "missing", "loha"])
def test_cli_inspect_refuses_with_one_line(tmp_path, kind):
    path = tmp_path / ("x.ckpt" if kind == "pickle" else "x.safetensors")
    if kind in ("pickle", "renamed-pickle"):
        path.write_bytes(pickle.dumps({"lora_unet_x.lora_down.weight": [1.0]}))
    elif kind == "truncated":
        data = demo_lora_path("tiny:neon").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "loha":
        save_shapes(path, REFUSED["loha"][0])
    proc = farm_lora_inspect(str(path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), lines
    assert "Traceback" not in proc.stderr and not proc.stdout


def test_cli_inspect_imports_no_torch():
    path = str(demo_lora_path("tiny:ink"))
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['farm', 'lora', 'inspect', {path!r}]\n"
        "try:\n    runpy.run_module('farm', run_name='__main__')\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "assert not {'torch', 'diffusers', 'ray'} & set(sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- rendering


def test_kohya_and_peft_layouts_of_the_same_lora_render_identical_images(cpu_worker, tmp_path):
    from test_render import RENDER, pixels, render

    # Same deltas (test_demo_twins_hold_the_same_deltas); kohya's alpha/rank is 1/2, a
    # power of two, so scaling at load or in B is exact: the images must match bit for
    # bit, at every weight.
    fast = {"seeds": [7], "render": {**RENDER, "steps": 4}}
    images = {}
    for layout, path in (("kohya", "tiny:neon"), ("peft", "tiny:neon-peft")):
        lora = [{"name": "neon", "path": path, "alpha": [0.5, 1.0]}]
        images[layout] = render(cpu_worker, tmp_path, layout, lora, **fast)
    assert images["peft"].keys() == images["kohya"].keys() and len(images["peft"]) == 2
    for key, image in images["peft"].items():
        assert np.array_equal(pixels(image), pixels(images["kohya"][key])), key
    half, full = (pixels(images["peft"][(7, (("neon", w),))]) for w in (0.5, 1.0))
    assert not np.array_equal(half, full)  # the LoRA does act: the equality is not vacuous


def test_inspect_reads_the_alpha_a_diffusers_written_lora_keeps_in_its_metadata(tmp_path):
    """diffusers writes alpha into `lora_adapter_metadata` (each component's peft config,
    its keys prefixed), not as `.alpha` tensors: inspect reads it there."""
    tensors = {k: np.zeros(s, np.float32) for k, s in peft(f"unet.{ATTN2}.to_k", 64, 32).items()}
    config = {"unet.r": 4, "unet.lora_alpha": 8, "unet.target_modules": ["to_k"],
              "unet.alpha_pattern": {"attn2.to_v": 2}}  # fmt: skip
    path = tmp_path / "diffusers.safetensors"
    save_file(tensors, str(path), metadata={"lora_adapter_metadata": json.dumps(config)})
    report = describe_lora(path)
    assert report.alpha == (2.0, 8.0) and not report.alpha_missing
    assert dict(report.rows())["alpha"] == "2–8"
    # Without the metadata: nothing stored, the layers behave as alpha = rank.
    save_file(tensors, str(path))
    assert describe_lora(path).alpha is None
