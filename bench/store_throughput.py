"""Store throughput: the same sweep into a local folder and into S3, in one run.

S3 is moto's server in its own process on 127.0.0.1, reached over HTTP by boto3, like any
S3-compatible endpoint. Local and S3 runs alternate on one warm Ray, each rendering every
item of a fresh job, and the report is the ratio of S3 images/s to local images/s.

    python bench/store_throughput.py [--rounds 2] [--workers 2] [--seeds 12] [--size 256]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import secrets
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the moto server helper the tests use


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--spec", default=str(REPO / "jobs/examples/neon-sweep.yaml"))
    parser.add_argument("--seeds", type=int, default=12, help="seeds per prompt (sweep size)")
    parser.add_argument("--size", type=int, default=0, help="render width and height")
    args = parser.parse_args()

    from s3server import start_moto

    os.environ.setdefault("FARM_HOME", tempfile.mkdtemp(prefix="farm-bench-"))
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY=secrets.token_hex(16),
        AWS_DEFAULT_REGION="us-east-1", RAY_USAGE_STATS_ENABLED="0",
    )  # fmt: skip
    proc, port = start_moto()
    os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
    try:
        import boto3

        boto3.client("s3").create_bucket(Bucket="bench")
        rates = run_rounds(args)
    finally:
        proc.kill()
    report(rates, args)


def run_rounds(args) -> dict[str, list[float]]:
    from farm.run.job import run_job
    from farm.spec import load_spec

    spec = dataclasses.replace(load_spec(args.spec), seeds=tuple(range(args.seeds)))
    if args.size:
        render = dataclasses.replace(spec.render, width=args.size, height=args.size)
        spec = dataclasses.replace(spec, render=render)
    outputs = {"local": tempfile.mkdtemp(prefix="farm-bench-out-"), "s3": "s3://bench/run"}
    rates: dict[str, list[float]] = {"local": [], "s3": []}
    # A warm-up job builds the tiny model and starts Ray before anything is timed.
    run_job(dataclasses.replace(spec, job="warmup", output=outputs["local"]), workers=args.workers,
            echo=lambda *_: None)  # fmt: skip
    for n in range(args.rounds):
        for kind in ("local", "s3") if n % 2 == 0 else ("s3", "local"):
            job = dataclasses.replace(spec, job=f"round-{n}", output=outputs[kind])
            result = run_job(job, workers=args.workers, echo=lambda *_: None)
            assert result.ok and result.rendered == result.planned, result
            rates[kind].append(result.rendered / result.seconds)
            print(f"round {n} {kind:>5}: {rates[kind][-1]:.2f} images/s", flush=True)
    return rates


def report(rates: dict[str, list[float]], args) -> None:
    local, s3 = statistics.median(rates["local"]), statistics.median(rates["s3"])
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()}")
    print(f"workers: {args.workers}, rounds: {args.rounds}, spec: {Path(args.spec).name} "
          f"with {args.seeds} seeds at {args.size or 'the spec size'}")  # fmt: skip
    print(f"local folder: {local:.2f} images/s (median)")
    print(f"S3 (moto):    {s3:.2f} images/s (median)")
    print(f"S3 / local:   {s3 / local:.3f}")


if __name__ == "__main__":
    main()
