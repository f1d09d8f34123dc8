"""A real training run, swept and reported: the tiny model's neon LoRA trained by farm's own
training code for 200 steps with a checkpoint every 50, then 4 checkpoints × 6 strengths ×
2 prompts × 2 seeds beside a companion LoRA, and the report's comparison of the checkpoints
checked against its stated rule (docs/report.md), recomputed here from response.parquet."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from jobrun import farm_here
from PIL import Image
from test_report_gallery import CHROMIUM, Watched, browser  # noqa: F401 - a fixture

from farm.report.sheets import Axis, fit_to_cell, layout

STRENGTHS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
PROMPTS = ("a red circle on a white background", "a blue square on a black background")
SEEDS = (1, 2)
STEPS = (50, 100, 150, 200)
FILES = ("neon-step00000050", "neon-step00000100", "neon-step00000150", "neon")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """neon trained on the shipped tiny model: 200 steps of batch 8 over 96 pictures, a
    checkpoint every 50 steps (kohya's names and ss_steps), about 30 s on two cores."""
    from farm.tiny.identity import shipped_weights
    from farm.training.recipe import DEFAULT
    from farm.training.tiny import train

    out = tmp_path_factory.mktemp("trained")
    recipe = dataclasses.replace(DEFAULT, lora_images=96, lora_steps=200, lora_batch=8,
                                 loras=DEFAULT.loras[:1])  # fmt: skip
    train(out, recipe, log=lambda _: None, checkpoint_every=50, base=shipped_weights())
    return out / "checkpoints" / "neon"


@pytest.fixture(scope="module")
def job(run_dir, tmp_path_factory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("sweep")
    spec = {"job": "run", "prompts": list(PROMPTS), "seeds": list(SEEDS),
            "loras": [{"name": "neon", "checkpoints": str(run_dir), "alpha": list(STRENGTHS)},
                      {"name": "ink", "path": "tiny:ink", "alpha": [0.5]}],
            "render": {"steps": 8, "width": 64, "height": 64},
            "output": str(folder / "out")}  # fmt: skip
    (folder / "run.yaml").write_text(yaml.safe_dump(spec))
    out = farm_here("run", str(folder / "run.yaml"), "--local", "--report").stdout
    return folder / "out" / "run", out


def rows_of(job: Path) -> list[dict]:
    return pq.read_table(job / "metadata.parquet").to_pylist()


def response(job: Path) -> list[dict]:
    return pq.read_table(job / "report" / "response.parquet").to_pylist()


def test_the_run_is_ordered_by_its_steps(run_dir):
    from farm.loras.checkpoints import find_checkpoints

    found = find_checkpoints(str(run_dir), run_dir, "run")
    want = [(f"{f}.safetensors", s) for f, s in zip(FILES, STEPS, strict=True)]
    assert [(c.name, c.step) for c in found] == want


def test_every_image_uses_one_checkpoint_at_its_strength_beside_the_companion(job):
    job, _ = job
    rows = rows_of(job)
    assert len(rows) == len(FILES) * len(STRENGTHS) * len(PROMPTS) * len(SEEDS)
    cells = []
    for row in rows:
        (ckpt,) = [x for x in row["loras"] if x["checkpoint"] is not None]
        (ink,) = [x for x in row["loras"] if x["name"] == "ink"]
        assert len(row["loras"]) == 2 and ink["weight"] == 0.5 and ink["checkpoint"] is None
        step = STEPS[FILES.index(ckpt["name"])]
        assert ckpt["checkpoint"]["step"] == step and ckpt["checkpoint"]["run"] == "neon"
        assert ckpt["weight"] == row["alpha"]
        # The tag A1111 reads says the same checkpoint and strength.
        assert f"<lora:{ckpt['name']}:{ckpt['weight']:g}>" in row["infotext"]
        cells.append((ckpt["name"], ckpt["weight"], row["prompt"].split(" <")[0], row["seed"]))
    assert sorted(cells) == sorted((f, s, p, seed) for f in FILES for s in STRENGTHS
                                   for p in PROMPTS for seed in SEEDS)  # fmt: skip


def test_each_sheet_has_checkpoints_down_and_strengths_across(job):
    job, _ = job
    rows = rows_of(job)
    sheets = sorted((job / "report" / "sheets").iterdir())
    assert len(sheets) == len(PROMPTS) * len(SEEDS)  # one per prompt and seed
    page = layout(Axis("checkpoint", [f"step {s}" for s in STEPS]),
                  Axis("neon strength", [f"{s:g}" for s in STRENGTHS]))[0]  # fmt: skip
    image_of = {}
    for row in rows:
        (ckpt,) = [x for x in row["loras"] if x["checkpoint"] is not None]
        image_of[(row["prompt"].split(" <")[0], row["seed"], ckpt["name"], row["alpha"])] = \
            row["image_key"]  # fmt: skip
    for prompt in PROMPTS:
        for seed in SEEDS:
            (sheet,) = [p for p in sheets if f"seed-{seed}-{prompt[:20].replace(' ', '-')}"
                        in p.name]  # fmt: skip
            with Image.open(sheet) as img:
                pixels = np.asarray(img.convert("RGB"))
            assert pixels.shape[:2] == (page.height, page.width)
            for (r, c), (x0, y0, x1, y1) in page.cells.items():
                key = image_of[(prompt, seed, FILES[r], STRENGTHS[c])]
                with Image.open(job / key) as img:
                    want = np.asarray(fit_to_cell(img, x1 - x0))
                # The cell's middle (clear of any flag frame) is that image, pixel for pixel.
                q = (x1 - x0) // 4
                assert np.array_equal(pixels[y0 + q:y1 - q, x0 + q:x1 - q], want[q:-q, q:-q]), \
                    (sheet.name, FILES[r], STRENGTHS[c])  # fmt: skip


def test_the_early_checkpoint_moves_the_picture_less_than_the_last(job):
    job, _ = job
    summary = {r["checkpoint_file"]: r for r in response(job) if r["kind"] == "summary"}
    assert set(summary) == {f"{f}.safetensors" for f in FILES}
    first, last = summary[f"{FILES[0]}.safetensors"], summary[f"{FILES[-1]}.safetensors"]
    assert first["effect_full"] < last["effect_full"]
    assert [summary[f"{f}.safetensors"]["step"] for f in FILES] == list(STEPS)


def test_the_recommendation_follows_the_stated_rule(job):
    """docs/report.md's rule, recomputed from the per-series rows of response.parquet."""
    job, terminal = job
    rows = response(job)
    summaries = sorted((r for r in rows if r["kind"] == "summary"), key=lambda r: r["step"])
    per_series = [r for r in rows if r["kind"] == "strength"]

    def at_full(curve: str) -> list[float]:
        return [r["d0_pixel"] for r in per_series if r["curve"] == curve and r["strength"] == 1]

    effect = {s["curve"]: float(np.mean(at_full(s["curve"]))) for s in summaries}
    spread = {s["curve"]: float(np.std(at_full(s["curve"])) / np.mean(at_full(s["curve"])))
              for s in summaries}  # fmt: skip
    # Likeness: how far each checkpoint's full-strength pictures are from the last one's,
    # over the last one's distance from strength 0, prompt and seed by prompt and seed.
    last_curve = summaries[-1]["curve"]
    span = {(r["prompt"], r["seed"]): r["d0_pixel"] for r in per_series
            if r["curve"] == last_curve and r["strength"] == 1}  # fmt: skip
    likeness = {}
    for s in summaries:
        mine = [r for r in per_series if r["curve"] == s["curve"] and r["strength"] == 1]
        assert len(mine) == len(span) == len(PROMPTS) * len(SEEDS)
        apart = sum(r["to_last"] for r in mine)
        likeness[s["curve"]] = 1 - apart / sum(span[(r["prompt"], r["seed"])] for r in mine)
    assert likeness[last_curve] == 1
    # Each `to_last` is the two image files' pixel distance.
    image = {r["item_id"]: job / r["image_key"] for r in rows_of(job)}
    first_curve = summaries[0]["curve"]
    for r in per_series:
        if r["curve"] == first_curve and r["strength"] == 1:
            (other,) = [t for t in per_series if t["curve"] == last_curve and t["strength"] == 1
                        and (t["prompt"], t["seed"]) == (r["prompt"], r["seed"])]  # fmt: skip
            a, b = (np.asarray(Image.open(image[x["item_id"]]).convert("RGB"), float)
                    for x in (r, other))  # fmt: skip
            assert r["to_last"] == pytest.approx(np.abs(a - b).mean() / 255)
    for s in summaries:  # the table's own figures are these
        assert s["effect_full"] == pytest.approx(effect[s["curve"]])
        assert s["spread_full"] == pytest.approx(spread[s["curve"]])
        assert s["likeness"] == pytest.approx(likeness[s["curve"]])
    learned = [s for s in summaries if s["onset"] is not None and s["recommended_low"]
               is not None and likeness[s["curve"]] >= 0.8]  # fmt: skip
    # Those that hold past strength 1, where any does; else all that learned.
    eligible = [s for s in learned if s["break_at"] is None or s["break_at"] > 1] or learned
    assert [s["eligible"] for s in summaries] == [s in eligible for s in summaries]
    assert eligible  # the last checkpoint is always learned: it is the yardstick
    (rec,) = [r for r in rows if r["kind"] == "recommendation"]
    widest = max(round(s["recommended_high"] - s["recommended_low"], 6) for s in eligible)
    tied = [s for s in eligible if round(s["recommended_high"] - s["recommended_low"], 6) == widest]
    least = min(spread[s["curve"]] for s in tied)
    steady = [s for s in tied if spread[s["curve"]] <= least + 0.05]
    chosen = steady[0]  # the earliest
    assert rec["checkpoint_file"] == chosen["checkpoint_file"] and rec["run"] == "neon"
    assert (rec["recommended_low"], rec["recommended_high"]) == (
        chosen["recommended_low"], chosen["recommended_high"])  # fmt: skip
    # The same in the terminal, and at the top of the gallery.
    low, high = chosen["recommended_low"], chosen["recommended_high"]
    line = (f"neon with ink 0.5: ship {chosen['checkpoint_file']} (step {chosen['step']}) at "
            f"strengths {low:g} to {high:g}")  # fmt: skip
    assert f"recommended: {line}" in terminal
    index = gallery_index(job)
    assert index["headlines"][0].startswith(line)
    # `farm presets suggest` builds on the recommended checkpoint and names its file.
    out = farm_here("presets", "suggest", str(job)).stdout
    assert f"recommended checkpoint is {chosen['checkpoint_file']}, step {chosen['step']}" in out
    presets = yaml.safe_load(out)["presets"]
    assert {p["lora"] for p in presets.values()} == {chosen["checkpoint_file"][:-12]}
    assert presets["standard"]["weight"] == pytest.approx(chosen["knee"], abs=1e-3)


def test_consistency_is_reported_per_checkpoint_and_strength(job):
    job, _ = job
    rows = response(job)
    points = [r for r in rows if r["kind"] == "point"]
    per_series = [r for r in rows if r["kind"] == "strength"]
    assert len(points) == len(FILES) * len(STRENGTHS)
    for p in points:
        values = [r["d0_pixel"] for r in per_series
                  if r["curve"] == p["curve"] and r["strength"] == p["strength"]]  # fmt: skip
        assert len(values) == p["series_count"] == len(PROMPTS) * len(SEEDS)
        if p["strength"] == 0:
            assert math.isnan(p["spread"])  # nothing has moved, so nothing can vary
        else:
            assert p["spread"] == pytest.approx(np.std(values) / np.mean(values))


def gallery_index(job: Path) -> dict:
    text = (job / "report" / "data" / "index.js").read_text()
    return json.loads(text.removeprefix("window.FARM_GALLERY = ").removesuffix(";\n"))


def test_the_companion_is_part_of_the_base_not_an_axis(job):
    job, terminal = job
    index = gallery_index(job)
    axes = {a["name"]: a for a in index["axes"]}
    assert set(axes) == {"prompt", "seed", "neon checkpoint", "neon strength"}
    assert axes["neon checkpoint"]["kind"] == "checkpoint"
    assert axes["neon checkpoint"]["values"] == [f"{f} · step {s}" for f, s in
                                                 zip(FILES, STEPS, strict=True)]  # fmt: skip
    curves = {r["curve"] for r in response(job) if r["kind"] == "summary"}
    assert curves == {f"{f} with ink 0.5" for f in FILES}
    assert "training run neon with ink 0.5:" in terminal


def test_the_gallery_slides_along_checkpoints_at_a_fixed_strength(job, browser):  # noqa: F811
    job, _ = job
    watched = Watched(browser, job / "report" / "index.html")
    page = watched.page
    assert page.locator("#headlines .headline").first.text_content().startswith(
        "neon with ink 0.5: ship ")  # fmt: skip
    # The grid opens with the checkpoints down and the strengths across.
    assert page.input_value("#row-axis") == "neon checkpoint"
    assert page.input_value("#col-axis") == "neon strength"
    page.click("#view-slider")
    page.select_option("#slider-axis", "neon checkpoint")
    page.select_option('.filter[data-axis="neon strength"]', label="1")
    cards = page.locator(".slider-card")
    assert cards.count() == len(PROMPTS) * len(SEEDS)
    card = cards.first
    slider, label = card.locator("input[type=range]"), card.locator(".slider-label")
    rows = {r["item_id"]: r for r in rows_of(job)}
    seen = []
    for i, name in enumerate(FILES):
        slider.evaluate(f"(r) => {{ r.value = '{i}'; r.dispatchEvent(new Event('input')); }}")
        assert label.text_content() == f"neon checkpoint {name} · step {STEPS[i]}"
        row = rows[card.get_attribute("data-id")]
        (ckpt,) = [x for x in row["loras"] if x["checkpoint"] is not None]
        assert ckpt["name"] == name and ckpt["weight"] == 1.0  # the strength stays put
        seen.append((row["prompt"].split(" <")[0], row["seed"]))
    assert len(set(seen)) == 1  # one prompt and seed throughout
    watched.assert_clean()
    page.close()


def test_the_walkthrough_spec_plans_a_run_where_train_tiny_puts_it(run_dir, tmp_path):
    """jobs/examples/training-run.yaml, as docs/training-runs.md runs it: the run in
    runs/tiny/checkpoints/neon from the repository root, its prompts beside the spec."""
    import shutil

    from conftest import REPO

    from farm.plan.sweep import make_plan
    from farm.spec import load_spec

    examples = tmp_path / "jobs" / "examples"
    examples.mkdir(parents=True)
    for name in ("training-run.yaml", "training-run.txt"):
        shutil.copy(REPO / "jobs" / "examples" / name, examples / name)
    (tmp_path / "runs" / "tiny" / "checkpoints").mkdir(parents=True)
    (tmp_path / "runs" / "tiny" / "checkpoints" / "neon").symlink_to(run_dir)
    plan = make_plan(load_spec(examples / "training-run.yaml"))
    # This run keeps 4 checkpoints (the walkthrough's keeps 6); 7 strengths, 4 lines.
    assert plan.items == len(FILES) * 7 * 4
    assert {source.seed for source in plan.sources} == {1, 2, 3, 4}
    out = farm_here("plan", str(examples / "training-run.yaml")).stdout
    assert "  run neon: 4 checkpoints, steps 50 to 200, each swept alone\n" in out
