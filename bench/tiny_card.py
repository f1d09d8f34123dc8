"""Figures and strength strips for the tiny model's card (docs/tiny-model.md), rendered by
farm itself.

    python bench/tiny_card.py [--seeds 4] [--out /tmp/tiny-card]

It times one render on one CPU thread, then runs three farm jobs on the embedded tiny
model at 128×128, 20 steps:
1. every colour × shape prompt on every background, at `--seeds` seeds;
2. each demo LoRA from 0 to 1 in steps of 0.2 and overdriven at 2, 3 and 4, with
   `--report`, to count the images marked (the worker's flags or the report's collapse);
then reads the images back with the numpy probe (farm/training/probe.py), prints the
card's tables as Markdown and writes docs/tiny-{neon,ink}-strip.png.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml
from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from farm.tiny.identity import BACKGROUNDS  # noqa: E402
from farm.training.probe import STYLE_SCORES, read  # noqa: E402
from farm.training.shapes import combinations  # noqa: E402

CARD = {"steps": 20, "guidance": 7.5, "width": 128, "height": 128, "scheduler": "euler"}
# The figures' jobs render 8 images per pipeline call (a few times faster on a CPU); what
# the model draws does not depend on the batch.
BATCH = 8
STRIP_STRENGTHS = [0, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 3.0, 4.0]
STRIP_PROMPTS = {
    "neon": ["a red circle on a white background", "a blue star on a gray background"],
    "ink": ["a yellow square on a blue background", "a white triangle on a green background"],
}


def run_job(spec: dict, folder: Path, report: bool = False) -> list[dict]:
    """The job's rows with their pixels; with `report`, each row's `marked` says whether
    the worker flagged it or the report marked it collapsed."""
    path = folder / f"{spec['job']}.yaml"
    path.write_text(yaml.safe_dump(spec | {"output": str(folder), "model": "tiny"}))
    command = [sys.executable, "-m", "farm", "run", str(path)] + (["--report"] if report else [])
    subprocess.run(command, check=True, cwd=REPO)
    job = folder / spec["job"]
    rows = pq.read_table(job / "metadata.parquet").to_pylist()
    marked = set()
    if report:
        response = pq.read_table(job / "report" / "response.parquet").to_pylist()
        marked = {r["item_id"] for r in response if r["kind"] == "strength"
                  and (r["flags"] or r["report_flags"])}  # fmt: skip
    for row in rows:
        row["pixels"] = np.asarray(Image.open(job / row["image_key"]).convert("RGB"))
        row["marked"] = row["item_id"] in marked or bool(row["flags"])
    return rows


def probe_figures(rows: list[dict]) -> str:
    right = defaultdict(lambda: [0, 0, 0, 0])  # background: colour, shape, background, n
    for row in rows:
        words = row["prompt"].split()
        colour, shape, background = words[1], words[2], words[5]
        reading = read(row["pixels"])
        tally = right[background]
        tally[0] += reading.colour == colour
        tally[1] += reading.shape == shape
        tally[2] += reading.background == background
        tally[3] += 1
    lines = ["| background | images | colour right | shape right | background right |",
             "| --- | --- | --- | --- | --- |"]  # fmt: skip
    total = [0, 0, 0, 0]
    for background in BACKGROUNDS:
        c, s, b, n = right[background]
        total = [t + v for t, v in zip(total, (c, s, b, n), strict=True)]
        lines.append(f"| {background} | {n} | {c / n:.0%} | {s / n:.0%} | {b / n:.0%} |")
    c, s, b, n = total
    lines.append(f"| all | {n} | {c / n:.0%} | {s / n:.0%} | {b / n:.0%} |")
    return "\n".join(lines)


def style_curve(lora: str, rows: list[dict]) -> str:
    score = STYLE_SCORES[lora]
    by_weight = defaultdict(list)
    flagged = defaultdict(int)
    marked = defaultdict(int)
    for row in rows:
        weight = row["loras"][0]["weight"]
        by_weight[weight].append(score(row["pixels"]))
        flagged[weight] += bool(row["flags"])
        marked[weight] += row["marked"]
    head = "| strength | " + " | ".join(f"{w:g}" for w in sorted(by_weight)) + " |"
    rule = "| --- " * (len(by_weight) + 1) + "|"
    values = "| style score | " + " | ".join(f"{np.mean(by_weight[w]):.2f}"
                                             for w in sorted(by_weight)) + " |"  # fmt: skip

    def counts(label: str, count: dict) -> str:
        cells = [f"{count[w]}/{len(by_weight[w])}" for w in sorted(by_weight)]
        return f"| {label} | " + " | ".join(cells) + " |"

    return "\n".join([head, rule, values, counts("flagged by the worker", flagged),
                      counts("marked (flagged or collapsed)", marked)])  # fmt: skip


def strip(lora: str, rows: list[dict], path: Path) -> None:
    """One row per prompt (seed 0), one column per strength, labelled."""
    font = _font(13)
    cell, pad, label = 128, 4, 20
    prompts = STRIP_PROMPTS[lora]
    width = len(STRIP_STRENGTHS) * (cell + pad) + pad
    sheet = Image.new("RGB", (width, label + len(prompts) * (cell + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for j, w in enumerate(STRIP_STRENGTHS):
        x = pad + j * (cell + pad)
        draw.text((x + cell // 2, label // 2), f"{lora} {w:g}", fill="black", font=font,
                  anchor="mm")  # fmt: skip
    for i, text in enumerate(prompts):
        for j, w in enumerate(STRIP_STRENGTHS):
            # A row's prompt carries the swept strength as a tag: `… <lora:neon:0.2>`.
            (row,) = [r for r in rows if r["prompt"].startswith(f"{text} <lora:")
                      and r["seed"] == 0 and r["loras"][0]["weight"] == w]  # fmt: skip
            sheet.paste(Image.fromarray(row["pixels"]),
                        (pad + j * (cell + pad), label + pad + i * (cell + pad)))  # fmt: skip
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", optimize=True)
    path.write_bytes(buffer.getvalue())


def _font(size: int):
    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def render_time() -> str:
    """One 128×128, 20-step image with guidance on one CPU thread, batch 1, best of 5."""
    import time

    import torch

    from farm.render.tiny import build_tiny_pipeline
    from farm.tiny.identity import shipped_weights

    torch.set_num_threads(1)
    pipe = build_tiny_pipeline(shipped_weights())
    pipe.set_progress_bar_config(disable=True)
    times = []
    for _ in range(6):
        t0 = time.perf_counter()
        pipe(STRIP_PROMPTS["neon"][0], num_inference_steps=CARD["steps"], height=128, width=128,
             generator=torch.Generator().manual_seed(0), output_type="np")  # fmt: skip
        times.append(time.perf_counter() - t0)
    return f"one 128×128, 20-step image on one CPU thread: {min(times[1:]):.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("/tmp/tiny-card"))
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--loras-only", action="store_true", help="only the LoRA strips")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not (args.skip_timing or args.loras_only):
        print(render_time())
    if not args.loras_only:
        prompts = [f"a {c} {s} on a {b} background" for c, s, b in combinations()]
        rows = run_job({"job": "probe", "prompts": prompts,
                        "seeds": {"start": 0, "count": args.seeds},
                        "render": CARD | {"batch": BATCH}}, args.out)  # fmt: skip
        print("## Probe\n")
        print(probe_figures(rows))
    for lora, texts in STRIP_PROMPTS.items():
        spec = {"job": f"strip-{lora}", "prompts": texts, "seeds": {"start": 0, "count": 4},
                "loras": [{"name": lora, "path": f"tiny:{lora}", "alpha": STRIP_STRENGTHS}],
                "render": CARD | {"batch": BATCH}}  # fmt: skip
        rows = run_job(spec, args.out, report=True)
        print(f"\n## {lora}\n")
        print(style_curve(lora, rows))
        strip(lora, rows, REPO / "docs" / f"tiny-{lora}-strip.png")


if __name__ == "__main__":
    main()
