"""`prompts: {file, format}`: a trainer's sample prompts as the prompt axis, each line
rendered with the seed, negative prompt, size, steps and guidance it sets, and the spec's
settings where it sets none; job.json keeps the lines, so a resume never reads the file."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import FARM, REPO
from jobrun import farm_here, job_doc

from farm.plan.items import Item
from farm.plan.stored import plan_fingerprint, spec_from_job, stored_plan
from farm.plan.sweep import Plan, expand, make_plan
from farm.records.job_doc import JobError
from farm.spec import Render, SpecError, load_spec, parse_spec
from farm.storage import open_store
from farm.tenancy.policy import check_stored
from farm.tenancy.tenants import load_tenants
from farm.worker.render_worker import batches, settings_groups

RENDER = {"steps": 2, "width": 64, "height": 64, "guidance": 7.5}
NEON = {"name": "neon", "path": "tiny:neon", "alpha": [0, 1]}

SD_FILE = """\
# neon samples
a red circle --n blurry --w 64 --h 128 --d 7 --l 4 --s 3

a blue square
a green star --g 2.5 --l 1 --s 2
"""

AIT_CONFIG = """\
job: neon-lora
config:
  name: neon
  process:
    - type: sd_trainer
      trigger_word: "in [name] style"
      sample:
        width: 64
        height: 96
        neg: "blurry"
        seed: 10
        walk_seed: true
        guidance_scale: 5
        sample_steps: 3
        samples:
          - prompt: "a red circle [trigger]"
          - prompt: "a blue square"
            width: 128
            neg: ""
            seed: 100
            guidance_scale: 2
            sample_steps: 4
          - prompt: "a green star --w 32 --h 40 --d 3 --l 6.5 --s 2 --n ugly"
"""


def spec_file(folder: Path, name: str, prompts, **over) -> Path:
    """A spec on the tiny model; a key given as None is left out."""
    spec = {"job": name, "model": "tiny", "prompts": prompts, "seeds": [0, 1],
            "render": RENDER, "output": str(folder / "out")} | over  # fmt: skip
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in spec.items() if v is not None}))
    return path


def lines_file(folder: Path, text: str, name: str = "samples.txt") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def sd(path: Path) -> dict:
    return {"file": str(path), "format": "sd-scripts"}


def plan_of(folder: Path, prompts, **over) -> Plan:
    return make_plan(load_spec(spec_file(folder, "lines", prompts, **over)))


def refusal(folder: Path, prompts, **over) -> str:
    with pytest.raises(SpecError) as err:
        plan_of(folder, prompts, **over)
    message = str(err.value)
    assert "\n" not in message
    return message


def rendered(plan: Plan, item: Item) -> tuple:
    """What an item is drawn with: (negative, width, height, steps, guidance)."""
    r = item.render_of(plan.spec.render)
    return item.negative_prompt, r.width, r.height, r.steps, r.guidance


def by_prompt(plan: Plan) -> dict[tuple[str, int], set[tuple]]:
    """{(text, seed): {what it is drawn with, over every strength}}."""
    out: dict[tuple[str, int], set[tuple]] = {}
    for item in expand(plan):
        out.setdefault((item.text, item.seed), set()).add(rendered(plan, item))
    return out


# ---------------------------------------------------------------- each line's own settings


def test_an_sd_scripts_file_gives_each_line_its_own_settings(tmp_path):
    path = lines_file(tmp_path, SD_FILE)
    plan = plan_of(tmp_path, sd(path), negative_prompt="lowres", loras=[NEON])
    assert plan.spec.prompts == ("a red circle", "a blue square", "a green star")
    assert by_prompt(plan) == {
        # --d: this seed only, as the trainer rendered it; the rest from the line.
        ("a red circle", 7): {("blurry", 64, 128, 3, 4.0)},
        # Nothing set: the spec's seeds and settings.
        ("a blue square", 0): {("lowres", 64, 64, 2, 7.5)},
        ("a blue square", 1): {("lowres", 64, 64, 2, 7.5)},
        # --g with --l 1 (sd-scripts' Flux.1 samples): the guidance; --s 2 is the spec's.
        ("a green star", 0): {("lowres", 64, 64, 2, 2.5)},
        ("a green star", 1): {("lowres", 64, 64, 2, 2.5)},
    }
    items = list(expand(plan))
    assert len(items) == plan.items == 10 and len({i.item_id for i in items}) == 10
    assert sum(n for _, n in plan.groups()) == 10
    assert plan.counts()["seeds"] == 3  # 0, 1 and the first line's 7
    # Only what differs from the spec's render is an item's own.
    assert {i.settings for i in items} == {
        (("guidance", 4.0), ("height", 128), ("steps", 3)),
        (),
        (("guidance", 2.5),),
    }


def test_an_ai_toolkit_config_gives_each_sample_its_own_settings(tmp_path):
    path = lines_file(tmp_path, AIT_CONFIG, "neon.yaml")
    # Every sample has a seed (walk_seed, an item's own, a --d flag): no `seeds` needed.
    plan = plan_of(tmp_path, {"file": str(path), "format": "ai-toolkit"}, seeds=None,
                   negative_prompt="lowres", loras=[NEON])  # fmt: skip
    assert plan.spec.seeds == ()
    assert by_prompt(plan) == {
        ("a red circle in neon style", 10): {("blurry", 64, 96, 3, 5.0)},
        # neg: "" replaces the spec's negative prompt with none.
        ("a blue square", 100): {("", 128, 96, 4, 2.0)},
        ("a green star", 3): {("ugly", 32, 40, 2, 6.5)},
    }
    assert plan.items == 6 and plan.counts()["seeds"] == 3
    assert "seeds" not in plan.spec.to_dict()


def test_a_line_with_the_specs_own_settings_has_the_ids_of_a_listed_prompt(tmp_path):
    text = "a red circle --n lowres --w 64 --h 64 --s 2 --l 7.5 --d 1\na blue square --d 0\n"
    from_file = plan_of(tmp_path, sd(lines_file(tmp_path, text)), negative_prompt="lowres",
                        loras=[NEON])  # fmt: skip
    listed = [plan_of(tmp_path, [prompt], seeds=[seed], negative_prompt="lowres", loras=[NEON])
              for prompt, seed in (("a red circle", 1), ("a blue square", 0))]  # fmt: skip
    ids = [i.item_id for i in expand(from_file)]
    assert len(ids) == 4 and set(ids) == {i.item_id for p in listed for i in expand(p)}
    assert all(i.settings == () for i in expand(from_file))
    # One setting apart: another image, another id.
    other = plan_of(tmp_path, sd(lines_file(tmp_path, "a red circle --d 1 --s 3\n")),
                    negative_prompt="lowres", loras=[NEON])  # fmt: skip
    assert not {i.item_id for i in expand(other)} & {i.item_id for i in expand(listed[0])}


def test_lines_of_one_text_with_other_settings_are_prompts_of_their_own(tmp_path):
    path = lines_file(tmp_path, "a cat --d 1\na cat --d 2\na cat --d 2 --w 128\n")
    plan = plan_of(tmp_path, sd(path))
    assert plan.spec.prompts == ("a cat",) * 3
    assert sorted((i.seed, rendered(plan, i)[1]) for i in expand(plan)) == [
        (1, 64), (2, 64), (2, 128)
    ]  # fmt: skip
    counts = plan.counts()
    assert (counts["prompts"], counts["seeds"], counts["items"]) == (3, 2, 3)


def test_the_example_plans_as_its_comment_says():
    plan = make_plan(load_spec(REPO / "jobs" / "examples" / "neon-samples.yaml"))
    counts = plan.counts()
    assert (counts["prompts"], counts["seeds"], counts["combos"], counts["items"]) == (2, 3, 5, 15)
    assert by_prompt(plan) == {
        ("a red circle on a white background", 42): {("blurry", 128, 192, 24, 6.0)},
        ("a blue star on a gray background", 0): {("low quality", 128, 128, 20, 7.5)},
        ("a blue star on a gray background", 1): {("low quality", 128, 128, 20, 7.5)},
    }


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("text", "seeds", "expected"),
    [
        ("a cat --d 1\na dog\na cat --d 1\n", [0], "line 3: the same prompt and settings as "
         "line 1 (give each once)"),
        # The spec fills in what a line leaves out: then both render the same images.
        ("a cat\na cat --w 64\n", [0], "line 2: renders the same images as line 1"),
        ("a cat\na cat --d 1\n", [0, 1], "line 2: renders the same images as line 1"),
        ("a cat --n lowres\na cat\n", [0], "line 2: renders the same images as line 1"),
    ],
)  # fmt: skip
def test_repeated_lines_are_refused_naming_both(tmp_path, text, seeds, expected):
    path = lines_file(tmp_path, text)
    message = refusal(tmp_path, sd(path), seeds=seeds, negative_prompt="lowres")
    assert message.startswith(f"prompts.file: {path} line ")
    assert expected in message


def test_a_seeded_line_beside_other_seeds_is_not_a_repeat(tmp_path):
    plan = plan_of(tmp_path, sd(lines_file(tmp_path, "a cat\na cat --d 5\n")), seeds=[0, 1])
    assert sorted(i.seed for i in expand(plan)) == [0, 1, 5]


def test_seeds_are_required_while_a_line_sets_none(tmp_path):
    path = lines_file(tmp_path, "a cat --d 1\na dog\n")
    assert refusal(tmp_path, sd(path), seeds=None) == (
        f"prompts.file: {path} line 2: sets no seed and the spec has no seeds; give the line "
        "one (--d N) or add seeds: to the spec"
    )
    ait = lines_file(tmp_path, "config:\n  process:\n    - sample:\n        prompts: [a cat]\n",
                     "ait.yaml")  # fmt: skip
    message = refusal(tmp_path, {"file": str(ait), "format": "ai-toolkit"}, seeds=None)
    assert message.startswith(f"prompts.file: {ait} entry 1: sets no seed")
    assert "give the line one (seed: N)" in message


@pytest.mark.parametrize(
    ("prompts", "expected"),
    [
        ({"file": "samples.txt"}, "prompts.format: required (the file's format: sd-scripts or "
         "ai-toolkit)"),
        ({"file": "samples.txt", "format": "kohya"}, "prompts.format: 'kohya' is not a sample "
         "prompt format"),
        ({"format": "sd-scripts"}, "prompts.file: required"),
        ({"file": "samples.txt", "format": "sd-scripts", "seed": 1}, "prompts.seed: unknown key"),
        ({"file": "s3://bucket/samples.txt", "format": "sd-scripts"}, "prompts.file: "
         "s3://bucket/samples.txt: a prompt file is read from this machine; give a local path"),
        ({"file": "missing.txt", "format": "sd-scripts"}, "missing.txt: file not found"),
    ],
)  # fmt: skip
def test_the_prompts_mapping_is_checked(tmp_path, prompts, expected):
    lines_file(tmp_path, "a cat\n")
    assert expected in refusal(tmp_path, prompts)


def test_a_file_lines_tags_are_named_by_file_and_line(tmp_path):
    path = lines_file(tmp_path, "a cat\na dog <lora:nope:1> --d 3\n")
    assert refusal(tmp_path, sd(path)).startswith(
        f"prompts.file: {path} line 2: <lora:nope:…> names no LoRA in `loras`"
    )


def test_too_few_steps_for_the_scheduler_are_refused_at_plan_time(tmp_path):
    path = lines_file(tmp_path, "a cat --s 4\na dog --s 3\n")
    assert refusal(tmp_path, sd(path), render=RENDER | {"steps": 4, "scheduler": "pndm"}) == (
        f"prompts.file: {path} line 2: 3 steps are too few for the pndm scheduler (give the "
        "line 4 or more, or another render.scheduler)"
    )


def test_a_negative_prompt_on_a_distilled_family_is_refused(tmp_path):
    """A Flux.1-dev folder: its configs say its family, and planning stops there."""
    model = tmp_path / "flux-dev"
    (model / "transformer").mkdir(parents=True)
    (model / "model_index.json").write_text(json.dumps({
        "_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"],
    }))  # fmt: skip
    (model / "transformer" / "config.json").write_text(json.dumps({
        "_class_name": "FluxTransformer2DModel", "attention_head_dim": 16,
        "axes_dims_rope": [4, 6, 6], "guidance_embeds": True, "in_channels": 64,
        "joint_attention_dim": 32, "num_attention_heads": 2, "num_layers": 2,
        "num_single_layers": 2, "patch_size": 1, "pooled_projection_dim": 32,
    }))  # fmt: skip
    path = lines_file(tmp_path, "a cat --g 3.5\na dog --n blurry --g 3.5\n")
    assert refusal(tmp_path, sd(path), model=str(model), render=None) == (
        f"prompts.file: {path} line 2: a negative prompt, but Flux.1-dev models take no "
        "negative prompt (their guidance is distilled); remove it"
    )


def cli_refused(args: list[str], expected: str, out: Path) -> None:
    proc = subprocess.run([*FARM, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    err = proc.stderr.strip()
    assert proc.returncode == 2, proc.stdout + err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("error: ") and expected in err, err
    assert not out.exists()


@pytest.mark.parametrize("command", ["plan", "run"])
def test_a_bad_line_is_one_line_naming_the_file_and_line(tmp_path, command):
    path = lines_file(tmp_path, "# samples\na cat --w 64\na dog --w 513\n")
    spec = spec_file(tmp_path, "bad", sd(path))
    cli_refused([command, str(spec), *(["--local"] if command == "run" else [])],
                f"prompts.file: {path} line 3: --w 513 is not a multiple of 8 (try 512 or 520)",
                tmp_path / "out")  # fmt: skip


def test_a_tenant_reads_no_prompt_file(tmp_path):
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(yaml.safe_dump({"tenants": {"acme": {
        "output": str(tmp_path / "acme"), "loras": {"house": "tiny:neon"}}}}))  # fmt: skip
    expected = ("prompts.file: a job of tenant acme lists its prompts in the spec (prompts: "
                "[...]) or in a catalog of the tenant's own, not in a file on the machine that "
                "plans")  # fmt: skip
    # The same answer whether the file exists or not: nothing of it is read.
    for target in (lines_file(tmp_path, "a cat --d 1\n"), tmp_path / "nowhere.txt"):
        spec = spec_file(tmp_path, "acme-job", sd(target), tenant="acme", output=None,
                         loras=["house"])  # fmt: skip
        cli_refused(["plan", str(spec), "--tenants", str(tenants)], expected, tmp_path / "acme")
    # job.json is the tenant's to rewrite: a resume checks it before parsing it.
    doc = {"spec": {"job": "x", "tenant": "acme", "prompts": sd(tmp_path / "nowhere.txt")}}
    with pytest.raises(SpecError, match=r"^prompts\.file: a job of tenant acme "):
        check_stored(doc, load_tenants(str(tenants)))


# ---------------------------------------------------------------- job.json


def test_job_json_keeps_the_lines_so_a_resume_never_reads_the_file(tmp_path):
    path = lines_file(tmp_path, SD_FILE)
    plan = plan_of(tmp_path, sd(path), negative_prompt="lowres", loras=[NEON])
    stored = json.loads(json.dumps(plan.spec.to_dict()))
    assert stored["prompts"]["file"] == str(path) and stored["prompts"]["format"] == "sd-scripts"
    assert stored["prompts"]["resolved"][0] == {
        "text": "a red circle", "negative": "blurry", "width": 64, "height": 128, "seed": 7,
        "guidance": 4.0, "steps": 3, "line": 2,
    }  # fmt: skip
    path.unlink()
    again = parse_spec(stored, source="job.json")
    assert again.prompt_file == plan.spec.prompt_file and again.prompts == plan.spec.prompts
    frozen = make_plan(again, frozen=(plan.model_fingerprint, plan.adapters))
    assert [i.item_id for i in expand(frozen)] == [i.item_id for i in expand(plan)]
    drawn = [rendered(plan, i) for i in expand(plan)]
    assert [rendered(frozen, i) for i in expand(frozen)] == drawn
    # The same lines read from another folder: the same job.
    moved = tmp_path / "moved"
    moved.mkdir()
    elsewhere = plan_of(moved, sd(lines_file(moved, SD_FILE)), negative_prompt="lowres",
                        loras=[NEON], output=str(tmp_path / "out"))  # fmt: skip
    assert plan_fingerprint(elsewhere) == plan_fingerprint(plan)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda p: p.update(resolved="lines"), "prompts.resolved: expected a non-empty list"),
        (lambda p: p.update(resolved=[]), "prompts.resolved: expected a non-empty list"),
        (lambda p: p["resolved"].__setitem__(0, "a cat"), "prompts.resolved[0]: expected a "
         "mapping of text, negative"),
        (lambda p: p["resolved"][0].pop("text"), "prompts.resolved[0].text: required"),
        (lambda p: p["resolved"][0].update(seed=-1), "prompts.resolved[0].seed: -1 is not a seed"),
        (lambda p: p["resolved"][0].update(width=63), "prompts.resolved[0].width: 63 is not a "
         "multiple of 8"),
        (lambda p: p["resolved"][0].update(steps=0), "prompts.resolved[0].steps: 0 is not a "
         "step count"),
        (lambda p: p["resolved"][0].update(guidance=-1), "prompts.resolved[0].guidance: -1 is "
         "not a guidance scale"),
        (lambda p: p["resolved"][0].update(line=0), "prompts.resolved[0].line: expected a line "
         "number"),
        (lambda p: p["resolved"][0].update(sampler="euler"), "prompts.resolved[0].sampler: "
         "unknown key"),
        (lambda p: p["resolved"][1].update(seed=None), "prompts.file: /samples.txt line 3: sets "
         "no seed"),
        (lambda p: p["resolved"].append(dict(p["resolved"][0])), "prompts.file: /samples.txt "
         "line 2: the same prompt and settings as line 2"),
    ],
)  # fmt: skip
def test_a_damaged_job_json_is_one_line(damage, expected):
    lines = [
        {"text": "a cat", "negative": None, "width": 64, "height": None, "seed": 1,
         "guidance": None, "steps": 3, "line": 2},
        {"text": "a dog", "negative": "", "width": None, "height": None, "seed": 2,
         "guidance": 4.0, "steps": None, "line": 3},
    ]  # fmt: skip
    prompts = {"file": "/samples.txt", "format": "sd-scripts", "resolved": lines}
    assert parse_spec({"job": "j", "prompts": json.loads(json.dumps(prompts))}).seeds == ()
    damage(prompts)
    with pytest.raises(JobError) as err:
        spec_from_job({"spec": {"job": "j", "prompts": prompts}}, "/out/j")
    message = str(err.value)
    assert "\n" not in message and expected in message, message
    assert message.startswith("/out/j/job.json: stored spec is unusable (")


# ---------------------------------------------------------------- rendering


def test_batches_never_mix_settings():
    def item(i: int, settings=()) -> Item:
        return Item(str(i), "p", "p", "", i, (), None, settings=settings)

    tall = (("height", 128),)
    items = [item(0), item(1, tall), item(2), item(3, tall), item(4)]
    groups = settings_groups(items)
    assert [(s, [i.item_id for i in g]) for s, g in groups] == [
        ((), ["0", "2", "4"]), (tall, ["1", "3"])
    ]  # fmt: skip
    # batches() alone keeps them apart too, even given them interleaved.
    assert [[i.item_id for i in b] for b in batches(items, 8, True)] == [
        ["0"], ["1"], ["2"], ["3"], ["4"]
    ]  # fmt: skip
    assert item(1, tall).render_of(Render(width=64, height=64)) == Render(width=64, height=128)


def test_each_line_renders_at_its_own_settings_and_resumes_without_the_file(tmp_path, tiny_dir):
    from PIL import Image

    from farm.records.parts import read_rows

    path = lines_file(tmp_path, (
        "a red circle on a white background --w 64 --h 96 --s 2 --d 3\n"
        "a blue square on a white background --w 96 --h 64 --s 3 --d 4 --l 5 --n blurry\n"
    ))  # fmt: skip
    spec = spec_file(tmp_path, "lines", sd(path), seeds=None,
                     loras=[NEON | {"alpha": [0.5, 1]}])  # fmt: skip
    out = farm_here("run", str(spec), "--local").stdout
    assert "rendered 4 images" in out, out
    job = tmp_path / "out" / "lines"
    store = open_store(str(job))
    rows = read_rows(store).to_pylist()
    wanted = {  # seed, steps, guidance, width, height, negative
        "a red circle": (3, 2, 7.5, 64, 96, ""),
        "a blue square": (4, 3, 5.0, 96, 64, "blurry"),
    }
    assert len(rows) == 4
    for row in rows:
        line = next(k for k in wanted if row["prompt"].startswith(k))
        seed, steps, guidance, width, height, negative = wanted[line]
        got = [row[k] for k in ("seed", "steps", "guidance", "width", "height", "negative_prompt")]
        assert got == [seed, steps, guidance, width, height, negative]
        # One call per line: its two strengths together, never the other line's items.
        assert row["batch_size"] == 2
        info = row["infotext"]
        assert f"Steps: {steps}, " in info and f"Seed: {seed}, " in info
        assert f"Size: {width}x{height}, " in info and f"CFG scale: {guidance:g}, " in info
        assert ("Negative prompt: blurry" in info) == bool(negative)
        with Image.open(job / row["image_key"]) as image:
            assert image.size == (width, height)
            assert image.text["parameters"] == info
    # Again: nothing new. Then without the file, from job.json alone: the same items.
    assert "nothing to render" in farm_here("run", str(spec), "--local").stdout
    planned = [i.item_id for i in expand(make_plan(load_spec(spec)))]
    path.unlink()
    assert [i.item_id for i in expand(stored_plan(store, job_doc(job)))] == planned
    assert "nothing to render" in farm_here("resume", str(job), "--local").stdout
    assert "ok: 4 planned items, 4 rows, 4 images" in farm_here("verify", str(job)).stdout
