"""Where the demo LoRAs break, and which overdriven images farm marks, rendered by farm.

    python bench/overdrive_marks.py [--seeds 4] [--out /tmp/overdrive-marks]

One farm job on the embedded tiny model (128×128, 20 Euler steps, guidance 7.5): six
prompts × `--seeds` seeds, `tiny:neon` and `tiny:ink` each alone at 0, 0.2, …, 1, then
1.25, 1.5, 2, 3 and 4, with `--report`. It prints each LoRA's landmarks from
response.parquet and, per strength, how many images are marked: by the worker's flags
(one image alone) or as collapsed by the report (against the series' strength-1 image),
the tables in docs/report.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parent.parent
PROMPTS = [
    "a red circle on a white background",
    "a blue star on a gray background",
    "a yellow square on a blue background",
    "a white triangle on a green background",
    "a green cross on a black background",
    "a purple ring on a white background",
]
STRENGTHS = [0.2, 0.4, 0.6, 0.8, 1, 1.25, 1.5, 2, 3, 4]
RENDER = {"steps": 20, "guidance": 7.5, "width": 128, "height": 128, "scheduler": "euler",
          "batch": 8}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("/tmp/overdrive-marks"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    combine = [{"neon": 0}] + [{lora: s} for lora in ("neon", "ink") for s in STRENGTHS]
    spec = {
        "job": "overdrive-marks", "model": "tiny", "prompts": PROMPTS,
        "seeds": {"start": 0, "count": args.seeds},
        "loras": [{"name": "neon", "path": "tiny:neon"}, {"name": "ink", "path": "tiny:ink"}],
        "combine": combine, "render": RENDER, "output": str(args.out),
    }  # fmt: skip
    path = args.out / "overdrive-marks.yaml"
    path.write_text(yaml.safe_dump(spec))
    subprocess.run([sys.executable, "-m", "farm", "run", str(path), "--report"], check=True,
                   cwd=REPO)  # fmt: skip
    rows = pq.read_table(args.out / "overdrive-marks" / "report" / "response.parquet")
    rows = rows.to_pylist()
    print("\n| LoRA | onset | knee | break | recommended | why |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if r["kind"] == "summary" and r["curve"] in ("neon", "ink"):
            print(f"| {r['curve']} | {r['onset']:g} | {r['knee']:g} | {r['break_at']:g} | "
                  f"{r['recommended_low']:g} to {r['recommended_high']:g} | "
                  f"{r['break_reason']} |")  # fmt: skip
    marked: dict[tuple[str, float], list[bool]] = defaultdict(list)
    for r in rows:
        if r["kind"] == "strength" and r["curve"] in ("neon", "ink"):
            marked[r["curve"], r["strength"]].append(bool(r["flags"] or r["report_flags"]))
    strengths = sorted({s for _, s in marked})
    print("\n| LoRA | " + " | ".join(f"{s:g}" for s in strengths) + " |")
    print("| --- " * (len(strengths) + 1) + "|")
    for lora in ("neon", "ink"):
        cells = [f"{sum(marked[lora, s])}/{len(marked[lora, s])}" for s in strengths]
        print(f"| {lora} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
