"""LoRA files: safetensors header checks, layout detection, hashes and the demo LoRAs."""

from __future__ import annotations

import hashlib
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from farm.demo_loras import DEMO_LORAS, demo_lora_path, write_demo_lora
from farm.loras import LoraError, detect_layout, inspect_lora, read_header

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
    [("tiny:neon", "peft"), ("tiny:ink", "kohya"), ("tiny:neon-kohya", "kohya")],
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


def test_demo_neon_layouts_hold_the_same_deltas(home):
    peft = load_file(str(demo_lora_path("tiny:neon")))
    kohya = load_file(str(demo_lora_path("tiny:neon-kohya")))
    modules = {k.removesuffix(".lora_A.weight") for k in peft if k.endswith(".lora_A.weight")}
    assert modules and all(m.startswith("unet.") for m in modules)
    assert len(peft) == 2 * len(modules)
    assert len(kohya) == 3 * len(modules)  # lora_down, lora_up, alpha
    for module in modules:
        key = "lora_unet_" + module.removeprefix("unet.").replace(".", "_")
        down, up = peft[f"{module}.lora_A.weight"], peft[f"{module}.lora_B.weight"]
        assert np.array_equal(down, kohya[f"{key}.lora_down.weight"])
        assert np.array_equal(up, kohya[f"{key}.lora_up.weight"])
        # alpha == rank: kohya's alpha/rank scale is 1, as in the PEFT layout.
        assert float(kohya[f"{key}.alpha"]) == down.shape[0]


def test_demo_ink_targets_the_text_encoder(home):
    keys = list(load_file(str(demo_lora_path("tiny:ink"))))
    assert any(k.startswith("lora_te_") for k in keys)
    assert any(k.startswith("lora_unet_") for k in keys)


@pytest.mark.parametrize(
    "name",
    # The kohya demos carry several metadata keys, which safetensors writes in hash-map
    # order; the sha256 is part of every item_id, so the bytes must not depend on it.
    ["neon", "ink-peft", "ink", "neon-kohya"],
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
