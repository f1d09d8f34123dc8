"""`farm run --local` against `farm run` on a private local Ray, for a small job.

The job is the quick start's (jobs/examples/neon-sweep.yaml: 48 images at 128², 20 steps),
written to a fresh folder each time. Each run is a whole `farm run` process, timed from
its start to its exit: what a user waits for. Alternating, `--rounds` times.

    python bench/local_vs_ray.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "jobs" / "examples" / "neon-sweep.yaml"


def run(args: list[str]) -> float:
    with tempfile.TemporaryDirectory(prefix="farm-bench-") as out:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "farm", "run", str(SPEC), "--output", out, *args],
                       cwd=REPO, check=True, capture_output=True, timeout=1800)  # fmt: skip
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    # `--workers 1` is --local's layout on Ray (one worker, every core's thread): the
    # difference is Ray's start-up; farm's own layout is what `farm run` does.
    kinds = {"--local (no Ray)": ["--local"], "Ray, --workers 1": ["--workers", "1"],
             "Ray, farm's own layout": []}  # fmt: skip
    seconds: dict[str, list[float]] = {k: [] for k in kinds}
    run(["--local"])  # warm: the tiny model is built, the page cache filled
    for r in range(args.rounds):
        for label, flags in kinds.items():
            seconds[label].append(run(flags))
            print(f"round {r} {label}: {seconds[label][-1]:.1f} s", flush=True)
    print(f"\n{os.cpu_count()} CPUs; {SPEC.name}, 48 images; median of {args.rounds} rounds\n")
    print("| run | seconds, start to exit | each round |")
    print("| --- | --- | --- |")
    for label, values in seconds.items():
        each = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {label} | {statistics.median(values):.1f} | {each} |")


if __name__ == "__main__":
    main()
