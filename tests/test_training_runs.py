"""A training run's checkpoints swept one per image, beside a companion LoRA at one fixed
strength: planned, rendered, recorded and resumed as any sweep."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from jobrun import farm_here
from PIL import Image
from safetensors.numpy import load_file, save_file

from farm.loras.demo import demo_lora_path
from farm.plan.sweep import expand, make_plan
from farm.spec import SpecError, parse_spec

STEPS = (100, 200, 300, 400)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_dir) -> Path:
    """A run of four checkpoints: the neon demo LoRA's (kohya) up weights at a quarter, half,
    three quarters and all of their size, saved as kohya names them, with ss_steps."""
    folder = tmp_path_factory.mktemp("run") / "mystyle"
    folder.mkdir()
    neon = load_file(str(demo_lora_path("tiny:neon")))
    for epoch, step in enumerate(STEPS, start=1):
        part = step / STEPS[-1]
        tensors = {k: (v * part if ".lora_up." in k else v).astype(v.dtype)
                   for k, v in neon.items()}  # fmt: skip
        save_file(tensors, str(folder / f"mystyle-{epoch:06d}.safetensors"),
                  metadata={"ss_steps": str(step), "ss_epoch": str(epoch)})  # fmt: skip
    return folder


def spec_of(folder: Path, **over) -> dict:
    return {"job": "run", "prompts": ["a red circle on a white background"], "seeds": [0],
            "loras": [{"name": "mystyle", "checkpoints": str(folder), "alpha": [0, 1]},
                      {"name": "ink", "path": "tiny:ink", "alpha": [0.5]}],
            "render": {"steps": 4, "width": 64, "height": 64}} | over  # fmt: skip


def test_each_image_uses_one_checkpoint_of_the_run_beside_the_companion(run_dir, tmp_path):
    spec = tmp_path / "run.yaml"
    spec.write_text(yaml.safe_dump(spec_of(run_dir, output=str(tmp_path / "out"))))
    farm_here("run", str(spec), "--local")
    job = tmp_path / "out" / "run"
    rows = pq.read_table(job / "metadata.parquet").to_pylist()
    assert len(rows) == len(STEPS) * 2
    seen = set()
    for row in rows:
        names = [x["name"] for x in row["loras"]]
        (ckpt,) = [x for x in row["loras"] if x["checkpoint"] is not None]
        (ink,) = [x for x in row["loras"] if x["name"] == "ink"]
        assert len(names) == 2 and ink["weight"] == 0.5  # the companion, in every image
        epoch = int(ckpt["name"].rsplit("-", 1)[1])
        assert ckpt["checkpoint"] == {"run": "mystyle", "file": f"{ckpt['name']}.safetensors",
                                      "step": STEPS[epoch - 1], "epoch": epoch}  # fmt: skip
        assert row["alpha"] == ckpt["weight"]  # the swept strength, not the companion's
        assert f"<lora:{ckpt['name']}:" in row["prompt"] and "<lora:ink:0.5>" in row["prompt"]
        seen.add((ckpt["name"], ckpt["weight"]))
    assert len(seen) == len(rows)  # every checkpoint at every strength, once
    doc = json.loads((job / "job.json").read_text())
    runs = {a["name"]: a.get("checkpoint") for a in doc["adapters"]}
    assert runs["ink"] is None and runs["mystyle-000003"] == {"run": "mystyle", "step": 300,
                                                               "epoch": 3}  # fmt: skip
    # The later checkpoint moved further from strength 0 than the early one.
    pixels = {}
    for r in rows:
        (ckpt,) = [x for x in r["loras"] if x["checkpoint"] is not None]
        pixels[(ckpt["name"], r["alpha"])] = np.asarray(Image.open(job / r["image_key"]), float)

    def effect(name: str) -> float:
        return float(np.abs(pixels[(name, 1.0)] - pixels[(name, 0.0)]).mean())

    assert effect("mystyle-000001") < effect("mystyle-000004")
    assert np.array_equal(pixels[("mystyle-000001", 0.0)], pixels[("mystyle-000004", 0.0)])
    out = farm_here("verify", str(job)).stdout
    assert "ok: 8 planned items, 8 rows, 8 images" in out


def test_a_stored_run_plans_again_from_job_json_alone(run_dir, tmp_path):
    """job.json keeps the checkpoints it resolved: the stored spec plans the same items
    even after the folder has gained a file."""
    plan = make_plan(parse_spec(spec_of(run_dir), base_dir=tmp_path))
    again = parse_spec(plan.spec.to_dict(), base_dir=tmp_path)
    assert [c.name for c in again.loras[0].checkpoints] == [
        f"mystyle-{e:06d}.safetensors" for e in (1, 2, 3, 4)]  # fmt: skip
    ids = [i.item_id for i in expand(plan)]
    assert ids == [i.item_id for i in expand(make_plan(again))]
    assert len(set(ids)) == len(ids) == 8


@pytest.mark.parametrize(("over", "message"), [
    ({"combine": "zip"}, "loras[0].checkpoints: a run's checkpoints are swept one per image"),
    ({"loras": [{"name": "m", "checkpoints": "RUN", "path": "tiny:neon", "alpha": [1]}]},
     "loras[0]: give path (one file) or checkpoints (a training run), not both"),
    ({"loras": [{"name": "m", "checkpoints": "RUN"}]}, "loras[0].alpha: required with "
     "checkpoints"),
    ({"loras": [{"name": "mystyle-000002", "path": "tiny:neon", "alpha": [1]},
                {"name": "m", "checkpoints": "RUN", "alpha": [1]}]},
     "loras[1].checkpoints: mystyle-000002.safetensors goes by 'mystyle-000002', a name "
     "loras[0] already uses"),
])  # fmt: skip
def test_checkpoint_settings_that_cannot_work_are_refused(run_dir, tmp_path, over, message):
    data = spec_of(run_dir) | json.loads(json.dumps(over).replace("RUN", str(run_dir)))
    if over.get("combine") == "zip":
        data["loras"] = [data["loras"][0]]
    with pytest.raises(SpecError) as info:
        parse_spec(data, base_dir=tmp_path)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
