"""The report's gallery at scale: the writer's time and memory, and the page in chromium.

Synthetic galleries of 10 prompts × N seeds × 10 neon strengths, each entry with an
A1111-like infotext and metadata row, all images symbolic links to one small PNG (so every
src resolves and the page has something to show). Each gallery is written by
write_gallery in its own process, fed in an order other than the page's (seeds
outermost); reported are its seconds, peak RSS and the most entries it held at once.
Then index.html is opened from file:// in Debian's chromium (playwright), fresh tabs
each time, medians of `--rounds`:

- open: from navigation to the first grid page built and painted (its cells present);
- switch: choosing another value of the chunk axis until its grid page is painted (n/a
  when the gallery is small enough to load whole);
- slider: moving a slider in the slider view until its new image is decoded.

    python bench/gallery_scale.py [--sizes 10000 100000 1000000] [--rounds 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
STRENGTHS = ["0", "0.2", "0.4", "0.6", "0.8", "1", "1.5", "2", "3", "4"]
PROMPTS = [f"a {c} {s} on a white background" for c, s in
           zip(["red", "green", "blue", "yellow", "purple"] * 2,
               ["circle", "square", "triangle", "star", "ring"] * 2, strict=True)]  # fmt: skip
PROMPTS = [p if i < 5 else p.replace("white", "gray") for i, p in enumerate(PROMPTS)]


def axes(seeds: int) -> list[dict]:
    return [
        {"name": "prompt", "label": "prompt", "kind": "prompt", "values": PROMPTS},
        {"name": "seed", "label": "seed", "kind": "seed", "values": [str(s) for s in range(seeds)]},
        {"name": "neon", "label": "neon strength", "kind": "strength", "values": STRENGTHS},
    ]


def entries(seeds: int) -> Iterator[dict]:
    """The gallery's entries as a report would give them, one render unit after another."""
    for seed in range(seeds):
        for p, prompt in enumerate(PROMPTS):
            for a, strength in enumerate(STRENGTHS):
                item_id = f"{p:02d}{seed:07d}{a:02d}"
                weight = float(strength)
                row = {
                    "job_id": "gallery-scale", "item_id": item_id, "unit_id": f"u{p}-{seed}",
                    "prompt": f"{prompt} <lora:neon:{strength}>", "negative_prompt": "",
                    "seed": seed, "rng": "cpu", "model": "tiny", "model_hash": "0123456789",
                    "loras": [{"name": "neon", "shorthash": "abcdef012345", "weight": weight}],
                    "alpha": weight, "steps": 20, "guidance": 7.5, "scheduler": "euler",
                    "width": 64, "height": 64, "image_key": f"images/{item_id}.png",
                    "flags": ["overdriven"] if weight >= 4 else [],
                }  # fmt: skip
                yield {
                    "id": item_id,
                    "src": f"../images/{item_id}.png",
                    "axes": {"prompt": prompt, "seed": str(seed), "neon": strength},
                    "flags": row["flags"],
                    "d0": min(1.0, weight / 2),
                    "detail": {
                        "infotext": f"{row['prompt']}\nSteps: 20, Sampler: Euler, CFG scale: "
                        f"7.5, Seed: {seed}, Size: 64x64, Model hash: 0123456789",
                        "row": row,
                    },
                }


def peak_rss() -> float:
    """This process's peak RSS in MiB. VmHWM, not ru_maxrss: a child started by fork and
    exec inherits its parent's ru_maxrss, but its own VmHWM starts from nothing."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource  # not Linux: the rusage figure, which may count the parent's

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write(job: Path, seeds: int) -> dict:
    """Run in its own process (`--write`): the gallery of `seeds` seeds into job/report."""
    from farm.report.gallery import write_gallery

    report = job / "report"

    def put(name: str, data: bytes) -> None:
        path = report / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    rss0 = peak_rss()
    start = time.perf_counter()
    written = write_gallery(entries(seeds), put, title=f"gallery scale, {seeds} seeds",
                            axes=axes(seeds))  # fmt: skip
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "rss_before": rss0,
        "rss": peak_rss(),
        "peak_held": written.peak_held,
        "chunk_axes": list(written.chunk_axes),
        "pages": written.pages,
        "count": written.count,
    }


def make_images(job: Path, seeds: int) -> None:
    """Every entry's image, as a symbolic link to one 64×64 PNG: no disk per image."""
    folder = job / "images"
    folder.mkdir(parents=True)
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (40, 80, 200)).save(buf, "PNG")
    one = job / "one.png"
    one.write_bytes(buf.getvalue())
    for entry in entries(seeds):
        os.symlink("../one.png", folder / f"{entry['id']}.png")


# Records, in the page's own clock, when the first grid cell is built and then painted.
FIRST_CELL = """
new MutationObserver(function (_, observer) {
  if (!document.querySelector('#grid-view .cell')) return;
  observer.disconnect();
  window.__built = performance.now();
  requestAnimationFrame(function () { setTimeout(function () {
    window.__painted = performance.now();
  }, 0); });
}).observe(document, { childList: true, subtree: true });
"""

SWITCH = """async (value) => {
  const select = document.querySelector('.filter[data-chunk]');
  const view = document.getElementById('grid-view');
  const start = performance.now();
  const ready = new Promise((resolve) => {
    new MutationObserver((_, observer) => {
      if (document.querySelector('main').getAttribute('aria-busy') !== 'false') return;
      if (!view.querySelector('.cell')) return;
      observer.disconnect();
      resolve();
    }).observe(view, { childList: true });
  });
  select.value = value;
  select.dispatchEvent(new Event('change'));
  await ready;
  await new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));
  return performance.now() - start;
}"""

SLIDE = """async (card) => {
  const range = card.querySelector('input[type=range]');
  const img = card.querySelector('img');
  const start = performance.now();
  range.value = String(Number(range.max));
  range.dispatchEvent(new Event('input'));
  await img.decode();
  return performance.now() - start;
}"""


def browse(browser, index: Path, rounds: int) -> dict:
    """Medians over `rounds` fresh tabs: open, switch the chunk axis, move a slider."""
    opened, switched, slid, heap = [], [], [], []
    for _ in range(rounds):
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
        page.on("console", lambda m, errors=errors: m.type == "error" and errors.append(m.text))
        page.add_init_script(FIRST_CELL)
        page.goto(index.as_uri())
        page.wait_for_function("window.__painted !== undefined", timeout=120_000)
        opened.append(page.evaluate("window.__painted"))
        chunked = ".filter[data-chunk]"
        if page.query_selector(chunked):  # to its last value: a key not loaded yet
            last = page.eval_on_selector(chunked, "s => s.options[s.length - 1].value")
            switched.append(page.evaluate(SWITCH, last))
        page.click("#view-slider")
        card = page.wait_for_selector(".slider-card")
        slid.append(page.evaluate(SLIDE, card))
        heap.append(page.evaluate("performance.memory ? performance.memory.usedJSHeapSize : 0"))
        assert not errors, errors
        page.close()
    median = statistics.median
    return {
        "open": median(opened),
        "switch": median(switched) if switched else None,
        "slide": median(slid),
        "heap": median(heap) / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--rounds", type=int, default=3, help="Browser rounds per size.")
    parser.add_argument("--keep", type=Path, help="Make the galleries here and keep them.")
    parser.add_argument("--write", nargs=2, metavar=("JOB", "SEEDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write:
        print(json.dumps(write(Path(args.write[0]), int(args.write[1]))))
        return

    from playwright.sync_api import sync_playwright

    root = args.keep or Path(tempfile.mkdtemp(prefix="farm-gallery-scale-"))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, {platform.platform()}; chromium {CHROMIUM}, "
          f"headless; browser times are medians of {args.rounds} fresh tabs")  # fmt: skip
    print("| images | chunk axis (pages) | write (s) | writer peak RSS (MiB) | entries held "
          "at peak | data/index.js (KiB) | data/ (MiB) | open: first grid page (ms) | "
          "switch chunk value (ms) | slider move (ms) | page JS heap (MiB) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--enable-precise-memory-info"]
        )
        for size in args.sizes:
            seeds = max(1, size // (len(PROMPTS) * len(STRENGTHS)))
            job = root / f"gallery-{seeds}"
            shutil.rmtree(job, ignore_errors=True)
            make_images(job, seeds)
            proc = subprocess.run([sys.executable, __file__, "--write", str(job), str(seeds)],
                                  capture_output=True, text=True, check=True)  # fmt: skip
            w = json.loads(proc.stdout)
            data = job / "report" / "data"
            index_kib = (data / "index.js").stat().st_size / 1024
            data_mib = sum(p.stat().st_size for p in data.iterdir()) / 2**20
            b = browse(browser, job / "report" / "index.html", args.rounds)
            axis = ", ".join(w["chunk_axes"]) or "none"
            switch = "n/a" if b["switch"] is None else f"{b['switch']:.0f}"
            print(f"| {w['count']:,} | {axis} ({w['pages']:,}) | {w['seconds']:.1f} | "
                  f"{w['rss']:.0f} (at start {w['rss_before']:.0f}) | {w['peak_held']:,} | "
                  f"{index_kib:.1f} | {data_mib:.0f} | {b['open']:.0f} | {switch} | "
                  f"{b['slide']:.0f} | {b['heap']:.1f} |", flush=True)  # fmt: skip
            if not args.keep:
                shutil.rmtree(job)
        browser.close()
    if not args.keep:
        root.rmdir()


if __name__ == "__main__":
    main()
