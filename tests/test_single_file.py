"""`model:` as one `.safetensors` checkpoint: the original layout farm writes and checks
(farm/families/checkpoint_layout.py), images identical to the diffusers folder's through
`farm run --local`, A1111's `Model hash`, the hash kept in the node cache, and every
refusal in one line with exit 2 and nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from jobrun import farm_here
from safetensors import safe_open
from safetensors.torch import save_file

from farm.families.checkpoint_layout import flux_layout, sd_layout
from farm.families.standard_configs import (
    byte_symbols,
    clip_vocabulary,
    standard_config,
)
from farm.storage.hashes import file_sha256, record_path

KINDS = ("sd1", "sd2", "sdxl", "flux-dev", "chroma")
TRANSFORMERS = ("flux-dev", "chroma")
PROMPT = "a red circle on a white background"


class Made:
    """A tiny pipeline of one kind: its diffusers folder and its single-file twin."""

    def __init__(self, kind: str, root: Path, tiny_dir: Path):
        import diffusers

        from farm.render.checkpoint_writer import original_state_dict
        from farm.render.tiny_pipelines import ensure

        self.kind = kind
        self.folder = tiny_dir if kind == "sd1" else ensure(kind)
        index = json.loads((self.folder / "model_index.json").read_text())
        cls = getattr(diffusers, index["_class_name"])
        self.pipe = cls.from_pretrained(self.folder, use_safetensors=True)
        self.state = original_state_dict(self.pipe)
        self.file = root / f"tiny-{kind}.safetensors"
        save_file(self.state, str(self.file))

    @property
    def model(self) -> dict:
        key = ("transformer", "base") if self.kind in TRANSFORMERS else ("file", "config")
        return {key[0]: str(self.file), key[1]: str(self.folder)}


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_dir):
    root = tmp_path_factory.mktemp("checkpoints")
    cache: dict[str, Made] = {}

    def get(kind: str) -> Made:
        if kind not in cache:
            cache[kind] = Made(kind, root, tiny_dir)
        return cache[kind]

    return get


def settings(kind: str) -> dict:
    from farm.render.tiny_pipelines import RENDER

    return dict(RENDER.get(kind, {"steps": 2, "width": 64, "height": 64, "guidance": 7.5}))


def spec_file(folder: Path, name: str, model, kind: str = "sd1", **over) -> str:
    data = {"job": name, "model": model, "prompts": [PROMPT], "seeds": [7],
            "render": settings(kind), "output": str(folder / "out")} | over  # fmt: skip
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def rendered(job: Path) -> tuple[np.ndarray, dict]:
    import pyarrow.parquet as pq
    from PIL import Image

    (row,) = pq.read_table(job / "metadata.parquet").to_pylist()
    return np.asarray(Image.open(job / row["file_name"])), row


# ------------------------------------------------------------------ the layout


def test_sd15_layout_has_the_original_files_blocks():
    configs = {name: standard_config("sd1", name) for name in ("unet", "vae", "text_encoder")}
    shapes = {t.key: t.shape for t in sd_layout(configs["unet"], configs["vae"],
                                                 configs["text_encoder"])}  # fmt: skip
    unet = [k for k in shapes if k.startswith("model.diffusion_model.")]
    vae = [k for k in shapes if k.startswith("first_stage_model.")]
    clip = [k for k in shapes if k.startswith("cond_stage_model.transformer.text_model.")]
    # v1-5-pruned-emaonly.safetensors: 686 UNet tensors, 248 VAE, 196 CLIP (its
    # position_ids buffer aside), nothing else.
    assert (len(unet), len(vae), len(clip)) == (686, 248, 196) and len(shapes) == 1130
    m = "model.diffusion_model."
    # Upsamplers: after the ResBlock of the attention-free level, after the attention
    # elsewhere; the last level has none.
    ups = sorted(k for k in unet if k.endswith(".conv.weight") and "output_blocks" in k)
    assert ups == [f"{m}output_blocks.2.1.conv.weight", f"{m}output_blocks.5.2.conv.weight",
                   f"{m}output_blocks.8.2.conv.weight"]  # fmt: skip
    assert shapes[f"{m}input_blocks.3.0.op.weight"] == (320, 320, 3, 3)
    assert shapes[f"{m}input_blocks.1.1.proj_in.weight"] == (320, 320, 1, 1)  # a 1×1 conv
    assert shapes[f"{m}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] == (320, 768)
    assert shapes[f"{m}output_blocks.0.0.skip_connection.weight"] == (1280, 2560, 1, 1)
    assert shapes["first_stage_model.decoder.mid.attn_1.q.weight"] == (512, 512, 1, 1)
    assert shapes["first_stage_model.encoder.down.0.block.1.conv1.weight"] == (128, 128, 3, 3)
    assert shapes["first_stage_model.decoder.up.3.upsample.conv.weight"] == (512, 512, 3, 3)
    assert "first_stage_model.decoder.up.0.upsample.conv.weight" not in shapes
    assert shapes["cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc1.weight"] == (
        3072, 768)  # fmt: skip


def test_sdxl_and_sd2_layouts_have_the_original_files_blocks():
    c = {name: standard_config("sdxl", name)
         for name in ("unet", "vae", "text_encoder", "text_encoder_2")}  # fmt: skip
    xl = {t.key: t.shape for t in sd_layout(c["unet"], c["vae"], c["text_encoder"],
                                             c["text_encoder_2"])}  # fmt: skip
    m = "model.diffusion_model."
    assert len([k for k in xl if k.startswith(m)]) == 1680  # sd_xl_base_1.0's UNet
    assert xl[f"{m}label_emb.0.0.weight"] == (1280, 2816)
    assert f"{m}input_blocks.8.1.transformer_blocks.9.attn1.to_q.weight" in xl
    assert f"{m}middle_block.1.transformer_blocks.9.ff.net.2.weight" in xl
    assert xl[f"{m}output_blocks.2.2.conv.weight"] == (1280, 1280, 3, 3)
    assert xl[f"{m}output_blocks.5.2.conv.weight"] == (640, 640, 3, 3)
    g = "conditioner.embedders.1.model."
    assert xl[f"{g}transformer.resblocks.31.attn.in_proj_weight"] == (3840, 1280)
    assert xl[f"{g}text_projection"] == (1280, 1280) and f"{g}logit_scale" in xl
    assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in xl
    c = {name: standard_config("sd2", name) for name in ("unet", "vae", "text_encoder")}
    sd2 = {t.key: t for t in sd_layout(c["unet"], c["vae"], c["text_encoder"], open_clip=True)}
    # SD2.x files hold all 24 OpenCLIP layers; diffusers reads 23 of them.
    last = sd2["cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight"]
    assert not last.needed and sd2["cond_stage_model.model.positional_embedding"].needed
    assert sd2[f"{m}input_blocks.1.1.proj_in.weight"].shape == (320, 320)  # linear


@pytest.mark.parametrize("kind", KINDS)
def test_the_writer_uses_every_weight_once_in_the_original_layout(made, kind):
    got = made(kind)
    pipe = got.pipe
    if kind in TRANSFORMERS:
        layout = flux_layout(dict(pipe.transformer.config))
        components = {"transformer": pipe.transformer}
    else:
        from farm.families.single_file import read_checkpoint

        family = read_checkpoint(got.file, "model").family
        assert family.tiny == kind
        components = {"unet": pipe.unet, "vae": pipe.vae}
        components |= {name: getattr(pipe, name) for name in family.text_encoders}
        layout = sd_layout_of(pipe, family)
    assert [t.key for t in layout] == list(got.state)
    assert all(tuple(got.state[t.key].shape) == t.shape for t in layout)
    for name, module in components.items():
        used = [s.removeprefix("text_model.") for t in layout if t.component == name
                for s in t.sources]  # fmt: skip
        keys = [k.removeprefix("text_model.") for k in module.state_dict()]
        assert sorted(used) == sorted(keys), name
    s = got.state
    if kind == "sd1":
        # transformers ≥ 5.6 leaves `text_model.` out of CLIPTextModel's own keys.
        assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in s
        assert s["first_stage_model.encoder.mid.attn_1.k.weight"].ndim == 4
        assert "model.diffusion_model.output_blocks.1.2.conv.weight" in s
    if kind == "sdxl":
        proj = pipe.text_encoder_2.text_projection.weight
        assert (s["conditioner.embedders.1.model.text_projection"] == proj.T).all()
    if kind == "flux-dev":
        w = pipe.transformer.transformer_blocks[0].attn
        import torch

        qkv = torch.cat([w.to_q.weight, w.to_k.weight, w.to_v.weight])
        assert (s["double_blocks.0.img_attn.qkv.weight"] == qkv).all()
        scale, shift = pipe.transformer.norm_out.linear.weight.chunk(2)
        assert (s["final_layer.adaLN_modulation.1.weight"] == torch.cat([shift, scale])).all()


def sd_layout_of(pipe, family):
    from farm.families.single_file import layout_of

    configs = {"vae": dict(pipe.vae.config)}
    configs |= {name: getattr(pipe, name).config.to_dict() for name in family.text_encoders}
    return layout_of(family, dict(pipe.unet.config), configs)


def test_clip_vocabulary_is_numbered_as_clip_numbers_it(tmp_path):
    import gzip

    merges = ["#version", "c a", "ca t</w>"] + [f"x{i} y" for i in range(60000)]
    path = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    path.write_bytes(gzip.compress("\n".join(merges).encode()))
    vocab, kept = clip_vocabulary(path)
    assert len(vocab) == 49408 and len(kept) == 49152 - 258
    assert vocab["!"] == 0 and vocab["!</w>"] == 256 and vocab["ca"] == 512
    assert vocab["cat</w>"] == 513 and vocab["<|endoftext|>"] == 49407


@pytest.mark.parametrize("kind", ["sd1", "sd2", "sdxl"])
def test_the_standard_configs_build_the_released_models_layout(kind, tmp_path, monkeypatch):
    """farm's standard config folder loads as the released model (built on the meta
    device: no weights), its tokenizers included, and the layout uses its every weight."""
    import gzip

    import diffusers
    import transformers
    from accelerate import init_empty_weights

    from farm.families import by_key
    from farm.families.single_file import layout_of
    from farm.families.standard_configs import standard_dir

    monkeypatch.setenv("FARM_HOME", str(tmp_path / "home"))
    # A BPE file of CLIP's size whose merges join two byte symbols (not CLIP's own).
    symbols = byte_symbols()
    merges = [f"{a} {b}" for a in symbols for b in symbols][:49000]
    bpe = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    bpe.write_bytes(gzip.compress("\n".join(["#version: 0.2", *merges]).encode()))
    folder = standard_dir(kind, bpe)
    index = json.loads((folder / "model_index.json").read_text())
    family = by_key(kind)
    states, configs = {}, {}
    with init_empty_weights():
        for name in ("unet", "vae", *family.text_encoders):
            library = diffusers if index[name][0] == "diffusers" else transformers
            cls = getattr(library, index[name][1])
            if library is diffusers:
                module = cls.from_config(cls.load_config(folder / name))
            else:
                module = cls(cls.config_class.from_pretrained(folder / name))
            configs[name] = json.loads((folder / name / "config.json").read_text())
            states[name] = {k.removeprefix("text_model."): tuple(v.shape)
                            for k, v in module.state_dict().items()}  # fmt: skip
    layout = layout_of(family, configs["unet"], configs)
    for name, state in states.items():
        used = sorted(s.removeprefix("text_model.") for t in layout if t.component == name
                      for s in t.sources)  # fmt: skip
        assert used == sorted(state), name
    for t in layout:
        if t.how == "copy":
            (source,) = t.sources
            assert states[t.component][source.removeprefix("text_model.")] == t.shape
    for name in ("tokenizer", "tokenizer_2"):
        if name in index:
            tokenizer = transformers.CLIPTokenizer.from_pretrained(folder / name)
            assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
            pad = "!" if kind == "sd2" or name == "tokenizer_2" else "<|endoftext|>"
            assert tokenizer.pad_token == pad
    scheduler = getattr(diffusers, index["scheduler"][1]).from_pretrained(folder / "scheduler")
    assert scheduler.config.prediction_type == ("v_prediction" if kind == "sd2" else "epsilon")


# ------------------------------------------------------------------ rendering


def check_twins(made, kind: str, out: Path) -> None:
    """The folder's job and the file's rendered the same pixels; the file's rows carry
    A1111's Model hash and name, and its item ids the file's content."""
    folder_image, _ = rendered(out / f"folder-{kind}")
    file_image, row = rendered(out / f"file-{kind}")
    assert np.array_equal(folder_image, file_image)
    sha = file_sha256(made(kind).file)
    assert row["model_hash"] == sha[:10]
    assert f"Model hash: {sha[:10]}, Model: tiny-{kind}," in row["infotext"]
    doc = json.loads((out / f"file-{kind}" / "job.json").read_text())
    assert doc["model"]["fingerprint"].startswith(sha + "+")
    assert doc["spec"]["model"] == made(kind).model


@pytest.mark.parametrize("kind", ["sd1", "sd2", "sdxl"])
def test_a_checkpoint_renders_what_its_folder_renders(made, kind, tmp_path):
    got = made(kind)
    # On the tiny SD1.x model, with a demo LoRA loaded into the file's pipeline too.
    neon = [{"name": "neon", "path": "tiny:neon", "alpha": [0.8]}]
    lora = {"loras": neon} if kind == "sd1" else {}
    farm_here("run", spec_file(tmp_path, f"folder-{kind}", str(got.folder), kind, **lora),
              "--local")  # fmt: skip
    farm_here("run", spec_file(tmp_path, f"file-{kind}", got.model, kind, **lora), "--local")
    check_twins(made, kind, tmp_path / "out")
    # job.json gives the model back as written: the job resumes as itself.
    resumed = farm_here("resume", str(tmp_path / "out" / f"file-{kind}"), "--local").stdout
    assert "nothing to render" in resumed


# `farm run --local` for each spec given, in one process.
RUN_EACH = """
import sys
from farm.cli import main
for spec in sys.argv[1:]:
    try:
        main.main(["run", spec, "--local"], prog_name="farm")
    except SystemExit as exit:
        assert not exit.code, (spec, exit.code)
"""


def test_a_transformer_file_renders_what_its_folder_renders(made, tmp_path):
    """The transformer farm converts holds the folder's weights bit for bit. On a CPU,
    MKL's matrix products depend on where the weights lie in memory (a diffusers folder's
    lie wherever its file's header puts them), so the twins are rendered with MKL's
    conditional numerical reproducibility on, as one user process."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    specs = []
    for kind in TRANSFORMERS:
        got = made(kind)
        specs += [spec_file(tmp_path, f"folder-{kind}", str(got.folder), kind),
                  spec_file(tmp_path, f"file-{kind}", got.model, kind)]  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", RUN_EACH, *specs], cwd=REPO, text=True,
                          capture_output=True, timeout=600,
                          env=os.environ | {"MKL_CBWR": "COMPATIBLE"})  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for kind in TRANSFORMERS:
        check_twins(made, kind, tmp_path / "out")
    from farm.families.single_file import checkpoint_model
    from farm.render.single_file import checkpoint_pipeline

    got = made("flux-dev")
    model = checkpoint_model(got.file, "model", str(got.folder), "model.base")
    loaded = checkpoint_pipeline(str(got.file), str(got.folder), model, got.pipe.dtype)
    theirs = got.pipe.transformer.state_dict()
    assert all(v.equal(theirs[k]) for k, v in loaded.transformer.state_dict().items())


def test_an_s3_checkpoint_is_fetched_once_per_node_and_hashed_once(made, s3, tmp_path,
                                                                   monkeypatch):  # fmt: skip
    home = tmp_path / "home"
    monkeypatch.setenv("FARM_HOME", str(home))
    got = made("sd1")
    url = s3.url(f"checkpoints-{tmp_path.name}/tiny-sd1.safetensors")
    s3.client().upload_file(str(got.file), s3.bucket, url.split("/", 3)[3])
    model = {"file": url, "config": str(got.folder)}
    farm_here("run", spec_file(tmp_path, "s3", model), "--local")
    _, row = rendered(tmp_path / "out" / "s3")
    sha = file_sha256(got.file)
    assert row["model_hash"] == sha[:10] and "Model: tiny-sd1," in row["infotext"]
    # Planning downloaded it and recorded its hash; the worker took it by that sha256.
    assert (home / "cache" / "s3" / "sha256" / sha / "tiny-sd1.safetensors").is_file()
    assert len(list((home / "cache" / "hashes").glob("*.json"))) >= 1
    assert "ok: 1 planned items" in farm_here("verify", str(tmp_path / "out" / "s3")).stdout


def test_a_checkpoints_hash_is_computed_once(made, tmp_path):
    from farm.plan.model_refs import model_fingerprint

    got = made("sd1")
    first = model_fingerprint(str(got.file))
    assert first == file_sha256(got.file)
    record = record_path(got.file.resolve())
    data = json.loads(record.read_text())
    assert data["sha256"] == first
    # The record is what later plans read: changed there, it is what they get.
    record.write_text(json.dumps(data | {"sha256": "0" * 64}))
    try:
        assert model_fingerprint(str(got.file)) == "0" * 64
        got.file.touch()  # a file changed since is hashed again
        assert model_fingerprint(str(got.file)) == first
    finally:
        record.unlink(missing_ok=True)


def test_the_model_forms_round_trip_through_job_json(made, tmp_path):
    from farm.spec import parse_spec

    for kind in ("sd1", "flux-dev"):
        got = made(kind)
        spec = parse_spec({"job": "t", "model": got.model, "prompts": ["a"], "seeds": [0]})
        assert spec.model == str(got.file) and spec.model_folder == str(got.folder)
        assert parse_spec(spec.to_dict()) == spec and spec.to_dict()["model"] == got.model
    plain = parse_spec({"job": "t", "model": str(made("sd1").file), "prompts": ["a"],
                        "seeds": [0]})  # fmt: skip
    assert plain.to_dict()["model"] == str(made("sd1").file) and plain.model_folder is None


# ------------------------------------------------------------------ refusals


def refused(tmp_path: Path, model, kind: str = "sd1", **over) -> str:
    proc = farm_here("run", spec_file(tmp_path, "refused", model, kind, **over), "--local",
                     check=False)  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = (proc.stdout + proc.stderr).strip()
    assert "\n" not in line and line.startswith("error: "), line
    assert "Traceback" not in line
    assert not (tmp_path / "out").exists()
    return line


def some_tensors(path: Path, keys: dict[str, tuple[int, ...]]) -> Path:
    import torch

    save_file({k: torch.zeros(shape) for k, shape in keys.items()}, str(path))
    return path


def test_a_lora_is_not_a_model(tmp_path):
    from farm.loras.demo import demo_lora_path

    lora = demo_lora_path("tiny:neon")
    line = refused(tmp_path, str(lora))
    assert "is a LoRA, not a model checkpoint; list it under loras:" in line


def test_a_vae_alone_and_another_family_are_refused(made, tmp_path):
    state = made("sd1").state
    vae = tmp_path / "vae.safetensors"
    with safe_open(made("sd1").file, "pt") as f:
        save_file({k.removeprefix("first_stage_model."): f.get_tensor(k)
                   for k in state if k.startswith("first_stage_model.")}, str(vae))  # fmt: skip
    assert "is a VAE alone, not a model checkpoint" in refused(tmp_path, str(vae))
    key = "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"
    sd3 = some_tensors(tmp_path / "sd3.safetensors", {key: (6, 2)})
    line = refused(tmp_path, str(sd3))
    assert "is an SD3 checkpoint; farm renders SD1.x, SD2.x and SDXL checkpoints" in line
    fp8 = some_tensors(tmp_path / "fp8.safetensors", {"img_in.weight": (4, 2), "scaled_fp8": (0,)})
    assert "is a scaled-fp8 checkpoint; give the model's bf16" in refused(tmp_path, str(fp8))


def test_a_pickle_checkpoint_is_refused(tmp_path):
    (tmp_path / "old.ckpt").write_bytes(b"\x80\x04")
    line = refused(tmp_path, str(tmp_path / "old.ckpt"))
    assert "is a pickle checkpoint, which can run code when loaded; convert it" in line


def test_a_transformer_alone_needs_its_base(made, tmp_path):
    flux = made("flux-dev")
    line = refused(tmp_path, str(flux.file), "flux-dev")
    assert "is a Flux.1-dev transformer alone (no VAE or text encoders): name the" in line
    assert "model: {transformer: FILE, base: FOLDER}" in line
    line = refused(tmp_path, {"file": str(flux.file), "config": str(flux.folder)}, "flux-dev")
    assert line.startswith(f"error: model.file: {flux.file} is a Flux.1-dev transformer alone")
    line = refused(tmp_path, {"transformer": str(flux.file)}, "flux-dev")
    assert "model.base: required" in line
    chroma = made("chroma")
    line = refused(tmp_path, {"transformer": str(flux.file), "base": str(chroma.folder)},
                   "flux-dev")  # fmt: skip
    assert f"model.base: {chroma.folder} is a Chroma pipeline" in line
    assert "is a Flux.1-dev transformer: name a base of its own family" in line
    line = refused(tmp_path, {"transformer": str(made("sd1").file), "base": str(flux.folder)})
    assert "is a whole SD1.x checkpoint, not a transformer alone" in line


def test_the_standard_configs_refuse_other_widths(made, tmp_path):
    line = refused(tmp_path, str(made("sd1").file))
    assert "model.diffusion_model.time_embed.0.weight is [128, 32] in the file, [1280, 320] " \
           "in Stable Diffusion 1.5 (farm's standard SD1.x configs)" in line  # fmt: skip
    assert "model: {file: FILE, config: FOLDER}" in line


def test_a_config_folder_must_fit_and_be_whole(made, tmp_path):
    sd1, sd2 = made("sd1"), made("sd2")
    line = refused(tmp_path, {"file": str(sd1.file), "config": str(sd2.folder)})
    assert f"model.config: {sd2.folder} holds SD2.x configs" in line
    config = tmp_path / "config"
    shutil.copytree(sd1.folder, config, ignore=shutil.ignore_patterns("*.safetensors"))
    text = json.loads((config / "text_encoder" / "config.json").read_text())
    (config / "text_encoder" / "config.json").write_text(json.dumps(text | {
        "intermediate_size": 96}))  # fmt: skip
    line = refused(tmp_path, {"file": str(sd1.file), "config": str(config)})
    assert "layers.0.mlp.fc1.weight is [128, 64] in the file, [96, 64] by the configs in" in line
    (config / "text_encoder" / "config.json").write_text(json.dumps(text))
    shutil.rmtree(config / "tokenizer")
    line = refused(tmp_path, {"file": str(sd1.file), "config": str(config)})
    assert f"model.config: {config}: tokenizer/ has no vocabulary" in line
    # Configs alone (no weights) load it, even where the index lists a safety checker and
    # an image processor the folder does not hold.
    shutil.copytree(sd1.folder / "tokenizer", config / "tokenizer")
    index = json.loads((config / "model_index.json").read_text())
    index |= {"safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
              "feature_extractor": ["transformers", "CLIPImageProcessor"]}  # fmt: skip
    (config / "model_index.json").write_text(json.dumps(index))
    model = {"file": str(sd1.file), "config": str(config)}
    farm_here("run", spec_file(tmp_path, "configs", model), "--local")
    assert rendered(tmp_path / "out" / "configs")[1]["model_hash"] == file_sha256(sd1.file)[:10]


def test_a_file_missing_tensors_is_refused_by_name(made, tmp_path):
    sd1 = made("sd1")
    short = tmp_path / "short.safetensors"
    gone = "model.diffusion_model.middle_block.1.proj_out.weight"
    with safe_open(sd1.file, "pt") as f:
        save_file({k: f.get_tensor(k) for k in f.keys() if k != gone}, str(short))  # noqa: SIM118
    line = refused(tmp_path, {"file": str(short), "config": str(sd1.folder)})
    assert f"1 tensors of its SD1.x model are not in the file ({gone}); the file is" in line


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_the_standard_configs_tokenize_as_clip_does(kind, tmp_path, monkeypatch):
    """The standard folders' tokenizers, from the CLIP vocabulary farm carries, give
    CLIP's own ids (OpenAI's tokenizer: a=320, photo=1125, of=539, cat=2368)."""
    from transformers import CLIPTokenizer

    from farm.families.standard_configs import standard_dir

    monkeypatch.setenv("FARM_HOME", str(tmp_path))
    folder = standard_dir(kind)
    subs = ["tokenizer", "tokenizer_2"] if kind == "sdxl" else ["tokenizer"]
    for sub in subs:
        ids = CLIPTokenizer.from_pretrained(folder / sub)("a photo of a cat").input_ids
        assert ids == [49406, 320, 1125, 539, 320, 2368, 49407], sub
