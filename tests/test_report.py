"""`farm report` on a real job: both demo LoRAs swept to 4× overdrive, and blended.

One job is rendered (through `farm run --report`) for the whole module; the other tests
copy it (a partial job, an S3 job) rather than render again.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import FARM, REPO
from jobrun import farm_here
from PIL import Image

from farm.report.response import MONOTONE_TOLERANCE

EXAMPLE = REPO / "jobs" / "examples" / "overdrive.yaml"
CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_dir) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("renders")
    proc = farm_here("run", str(EXAMPLE), "--output", str(out), "--local", "--report")
    return out / "overdrive", proc


def summaries(job: Path) -> dict[str, dict]:
    table = pq.read_table(job / "report" / "response.parquet").to_pylist()
    return {r["curve"]: r for r in table if r["kind"] == "summary"}


def curve_points(job: Path, curve: str) -> dict[float, float]:
    """Mean pixel distance from strength 0 at each strength of a curve."""
    rows = pq.read_table(job / "report" / "response.parquet").to_pylist()
    by: dict[float, list[float]] = {}
    for r in rows:
        if r["kind"] == "strength" and r["curve"] == curve and r["reference"] == 0:
            by.setdefault(r["strength"], []).append(r["d0_pixel"])
    return {s: float(np.mean(v)) for s, v in sorted(by.items())}


def test_run_report_writes_every_part(job):
    job, proc = job
    report = job / "report"
    for name in ("index.html", "gallery.js", "gallery.css", "data/index.js", "curves.png",
                 "response.parquet"):  # fmt: skip
        assert (report / name).is_file(), name
    # One sheet per prompt and LoRA set: neon and ink alone per prompt, the blend per seed.
    sheets = sorted(p.name for p in (report / "sheets").iterdir())
    assert len(sheets) == 2 * 2 + 2 * 2, sheets
    assert sum("neon-ink-seed-" in s for s in sheets) == 4
    # An animation for every series of every swept LoRA, each stepping through its
    # strengths: one frame per strength (every image is rendered). response.parquet holds
    # a row per series and strength; an animation's name starts with its series' number.
    strengths: dict[int, int] = {}
    for r in pq.read_table(report / "response.parquet").to_pylist():
        if r["kind"] == "strength":
            strengths[r["series"]] = strengths.get(r["series"], 0) + 1
    # Each LoRA alone per prompt and seed (8), and each swept beside the other's two blend
    # strengths per prompt and seed (16).
    assert len(strengths) == 2 * 2 * 2 + 2 * 2 * 2 * 2, strengths
    animations = sorted((report / "animations").iterdir())
    assert sorted(int(a.name[:4]) for a in animations) == sorted(strengths)
    for path in animations:
        with Image.open(path) as anim:
            assert anim.format == "WEBP", path.name
            assert anim.n_frames == strengths[int(path.name[:4])] > 1, path.name
    assert "report:" in proc.stdout and "index.html" in proc.stdout
    # 2, 3 and 4 of both LoRAs collapse: 2 prompts x 2 seeds x 3 strengths x 2 LoRAs.
    assert "collapsed: 24 images past full strength" in proc.stdout
    header = next(line for line in proc.stdout.splitlines() if line.startswith("curve"))
    assert header.split()[:5] == ["curve", "series", "onset", "knee", "break"]
    for curve in ("neon", "ink"):
        assert any(line.split()[0] == curve for line in proc.stdout.splitlines()), curve


@pytest.mark.parametrize("lora", ["neon", "ink"])
def test_demo_loras_turn_on_rise_and_break(job, lora):
    job, _ = job
    summary = summaries(job)[lora]
    points = curve_points(job, lora)
    strengths = sorted(points)
    assert strengths == [0, 0.2, 0.4, 0.6, 0.8, 1, 2, 3, 4]
    # Onset strictly inside the sweep; the knee past it and below full strength.
    assert strengths[0] < summary["onset"] < strengths[-1]
    assert summary["onset"] <= summary["knee"] <= 1
    # The distance from strength 0 rises up to full strength, within the stated tolerance.
    ramp = [points[s] for s in strengths if s <= 1]
    assert all(b >= a - MONOTONE_TOLERANCE for a, b in zip(ramp, ramp[1:], strict=False)), ramp
    assert ramp[-1] > 0.2  # full strength is a large change
    assert summary["monotone"]
    # Overdrive breaks: somewhere above 1 and at most 4, with a reason, and the range stops
    # below it.
    assert 1 < summary["break_at"] <= 4
    assert summary["break_reason"]
    assert summary["recommended_low"] == summary["onset"]
    assert summary["recommended_high"] < summary["break_at"]


@pytest.mark.parametrize("lora", ["neon", "ink"])
def test_overdriven_images_are_marked_one_by_one(job, lora):
    """The worker flags what it can see in one image (4×); the report marks each image past
    full strength whose structure has left the strength-1 picture: every image from 2×."""
    job, _ = job
    rows = pq.read_table(job / "report" / "response.parquet").to_pylist()
    marked: dict[float, list[bool]] = {}
    for r in rows:
        if r["kind"] == "strength" and r["curve"] == lora:
            marked.setdefault(r["strength"], []).append(bool(r["flags"] or r["report_flags"]))
    assert not any(any(v) for s, v in marked.items() if s <= 1)
    assert all(marked[2]) and all(marked[3]) and all(marked[4])
    # The gallery shows the report's marks with the worker's flags, in its entry pages.
    pages = (job / "report" / "data").glob("entries-*.js")
    assert any('"collapsed"' in page.read_text() for page in pages)
    # So does the contact sheet: exactly the marked cells are framed in red.
    from farm.report.sheets import Axis, layout

    strengths = sorted(marked)
    page = layout(
        Axis("seed", ["0", "1"]), Axis(f"{lora} strength", [f"{s:g}" for s in strengths])
    )[0]
    sheet = next((job / "report" / "sheets").glob(f"*-{lora}-a-red-circle*"))
    pixels = np.asarray(Image.open(sheet).convert("RGB")).astype(int)
    by_cell = {
        (r["seed"], r["strength"]): bool(r["flags"] or r["report_flags"])
        for r in rows
        if r["kind"] == "strength" and r["curve"] == lora and r["prompt"].startswith("a red")
    }
    for (row, col), (x0, y0, _, y1) in page.cells.items():
        red = pixels[(y0 + y1) // 2, x0 + 1]
        framed = red[0] > 180 and red[1] < 80 and red[2] < 80
        assert framed == by_cell[(row, strengths[col])], (row, strengths[col])


def test_blends_get_their_own_curves_and_a_two_d_sheet(job):
    job, _ = job
    curves = summaries(job)
    # neon's series with ink at 1 start from {ink: 1} alone: a curve of their own.
    assert {"neon", "ink", "neon with ink 1", "ink with neon 1"} <= set(curves)
    sheet = next((job / "report" / "sheets").glob("*neon-ink-seed-0-a-red*"))
    with Image.open(sheet) as img:
        width, height = img.size
    # 2 × 2 cells of 256 px plus labels: about square, not a strip.
    assert 512 < width < 1024 and 512 < height < 1024


def test_response_rows_cover_every_series_and_strength(job):
    job, _ = job
    rows = pq.read_table(job / "report" / "response.parquet").to_pylist()
    strength_rows = [r for r in rows if r["kind"] == "strength"]
    # Every measured image: 2 prompts × 2 seeds × (9 neon + 9 ink) alone, plus the blend
    # series (4 curves of 2 or 3 strengths each) — every rendered, with three distances.
    assert all(r["rendered"] for r in strength_rows)
    for r in strength_rows:
        if r["strength"] == r["reference"]:
            assert r["d0_pixel"] == 0 and r["d0_structure"] == 0 and r["d0_changed"] == 0
        else:
            assert 0 <= r["d0_pixel"] <= 1 and 0 <= r["d0_changed"] <= 1
    ids = {r["series"] for r in strength_rows}
    assert len(ids) == len({(r["curve"], r["prompt"], r["seed"]) for r in strength_rows})


def test_sheet_labels_are_drawn(job):
    """The column labels band holds text: dark pixels above each column, none elsewhere."""
    job, _ = job
    sheet = next((job / "report" / "sheets").glob("*-neon-a-red-circle*"))
    pixels = np.asarray(Image.open(sheet).convert("L"))
    # The band just above the first row of cells (found as the first row of image pixels
    # that is not near-white across the middle of the sheet) holds the strength labels.
    middle = pixels[:, pixels.shape[1] // 3 : 2 * pixels.shape[1] // 3]
    first_cell_row = next(y for y in range(middle.shape[0]) if (middle[y] < 200).mean() > 0.5)
    band = pixels[max(0, first_cell_row - 40) : first_cell_row - 2]
    assert (band < 100).sum() > 50, "no label text above the cells"


def test_a_small_cap_pages_the_sheets(job, tmp_path):
    job, _ = job
    copy = tmp_path / "paged"
    shutil.copytree(job, copy)
    farm_here("report", str(copy), "--max-pixels", "400000", "--cell-px", "128")
    names = sorted(p.name for p in (copy / "report" / "sheets").iterdir())
    assert any(n.endswith("-p2.png") for n in names)
    for name in names:
        with Image.open(copy / "report" / "sheets" / name) as img:
            assert img.width * img.height <= 400_000


def test_a_cap_too_small_is_refused_and_writes_nothing(job, tmp_path):
    job, _ = job
    copy = tmp_path / "tiny-cap"
    shutil.copytree(job, copy, ignore=shutil.ignore_patterns("report"))
    proc = farm_here("report", str(copy), "--max-pixels", "1000", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--max-pixels" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (copy / "report").exists()


def test_rerun_gives_the_same_files_and_drops_stale_ones(job, tmp_path):
    job, _ = job
    copy = tmp_path / "again"
    shutil.copytree(job, copy)
    before = sorted(p.relative_to(copy) for p in (copy / "report").rglob("*") if p.is_file())
    stale = copy / "report" / "sheets" / "999-old.png"
    stale.write_bytes(b"old")
    farm_here("report", str(copy))
    after = sorted(p.relative_to(copy) for p in (copy / "report").rglob("*") if p.is_file())
    assert after == before
    assert (copy / "report" / "response.parquet").read_bytes() == \
        (job / "report" / "response.parquet").read_bytes()  # fmt: skip


def test_partial_job_shows_what_exists_and_says_what_is_missing(job, tmp_path):
    """A killed job: no metadata.parquet, a running status and two parts gone."""
    job, _ = job
    copy = tmp_path / "killed"
    shutil.copytree(job, copy, ignore=shutil.ignore_patterns("report"))
    (copy / "metadata.parquet").unlink()
    doc = json.loads((copy / "job.json").read_text())
    doc["status"] = "running"
    (copy / "job.json").write_text(json.dumps(doc))
    parts = sorted((copy / "parts").iterdir())
    lost = sum(pq.read_metadata(p).num_rows for p in parts[:2])
    for p in parts[:2]:
        p.unlink()
    proc = farm_here("report", str(copy))
    assert f"{lost} of 84 planned images are missing" in proc.stdout
    rows = pq.read_table(copy / "report" / "response.parquet").to_pylist()
    missing = [r for r in rows if r["kind"] == "strength" and not r["rendered"]]
    assert missing and all(np.isnan(r["d0_pixel"]) for r in missing)
    index = (copy / "report" / "data" / "index.js").read_text()
    assert f"{lost} of 84 planned images are missing" in index
    # The missing cells are drawn gray on the sheets; every sheet is still there.
    assert len(list((copy / "report" / "sheets").iterdir())) == 8


def test_the_job_still_loads_as_a_dataset(job):
    import datasets

    job, _ = job
    ds = datasets.load_dataset("imagefolder", data_dir=str(job), split="train")
    assert ds.num_rows == 84  # the report's own PNGs are not taken for rows
    assert set(ds["item_id"]) == {r["item_id"] for r in pq.read_table(
        job / "metadata.parquet", columns=["item_id"]).to_pylist()}  # fmt: skip


def test_report_of_a_job_in_a_bucket(job, s3):
    """The same job uploaded to S3: the report reads it there and writes beside it."""
    job, _ = job
    client = s3.client()
    prefix = "report-test/overdrive"
    for path in job.rglob("*"):
        if path.is_file() and "report" not in path.relative_to(job).parts:
            client.upload_file(str(path), s3.bucket, f"{prefix}/{path.relative_to(job)}")
    url = s3.url(prefix)
    proc = farm_here("report", url)
    assert f"{url}/report/index.html" in proc.stdout
    body = client.get_object(Bucket=s3.bucket, Key=f"{prefix}/report/response.parquet")
    remote = pq.read_table(io.BytesIO(body["Body"].read())).to_pylist()
    local = pq.read_table(job / "report" / "response.parquet").to_pylist()
    assert [r for r in remote if r["kind"] == "summary"] == \
        [r for r in local if r["kind"] == "summary"]  # fmt: skip
    assert s3.secret not in proc.stdout + proc.stderr


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_serve_serves_the_report_until_ctrl_c(job, stop):
    job, _ = job
    proc = subprocess.Popen([*FARM, "report", str(job), "--serve"], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        line = ""
        for line in proc.stdout:  # ends if the command exits
            if line.startswith("serving "):
                break
        assert line.startswith("serving http://127.0.0.1:"), line
        url = line.split()[1]
        with urllib.request.urlopen(url, timeout=30) as page:
            assert b"<html" in page.read().lower()
        key = next((job / "images").iterdir()).name
        with urllib.request.urlopen(url.replace("report/index.html", f"images/{key}"),
                                    timeout=30) as image:  # fmt: skip
            assert image.read() == (job / "images" / key).read_bytes()
        proc.send_signal(stop)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopped" in out and "Traceback" not in err


def test_serve_on_a_port_in_use_is_bad_input(job, tmp_path):
    job, _ = job
    copy = tmp_path / "busy"
    shutil.copytree(job, copy, ignore=shutil.ignore_patterns("report"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = farm_here("report", str(copy), "--serve", "--port", str(port), check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: --port {port}: cannot listen on 127.0.0.1 (Address already in use); "
        "pick another port or 0"
    ]
    assert not (copy / "report").exists()  # refused before anything was written


# The gallery of the finished job, in a real browser.


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "Debian's chromium is needed: run tests/install-browser"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        browser.close()


def open_gallery(browser, url: str, allowed: str):
    """A page on the gallery that records console errors and any request off `allowed`."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.problems = []
    page.on("console", lambda m: m.type == "error" and page.problems.append(m.text))
    page.on("pageerror", lambda e: page.problems.append(str(e)))
    page.on("request", lambda r: r.url.startswith(allowed)
            or page.problems.append(f"request {r.url}"))  # fmt: skip
    page.goto(url)
    page.wait_for_selector(".cell img")
    return page


@pytest.fixture(scope="module")
def page(job, browser):
    job, _ = job
    page = open_gallery(browser, (job / "report" / "index.html").as_uri(), "file://")
    yield page
    page.close()


def test_gallery_over_http_loads_images_through_relative_links(job, browser):
    """The same gallery served (as from a bucket or web server): every request stays on
    the server, and the images arrive."""
    import threading

    from farm.report.serve import ReportServer
    from farm.storage import open_store

    job, _ = job
    server = ReportServer(open_store(str(job)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        origin = server.url.split("/report/")[0]
        page = open_gallery(browser, server.url, origin)
        first = page.locator(".cell img").first
        first.scroll_into_view_if_needed()
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=first.element_handle()
        )
        assert not page.problems, page.problems
        page.close()
    finally:
        server.shutdown()
        thread.join(timeout=30)


def test_gallery_grid_axes_and_filters(page, tmp_path):
    page.click("#view-grid")
    page.select_option("#row-axis", "seed")
    page.select_option("#col-axis", "neon strength")
    heads = page.locator("th.col-head").all_inner_texts()
    assert "4" in heads and "0.2" in heads
    page.select_option("#row-axis", "prompt")
    page.select_option("#col-axis", "seed")
    assert page.locator("th.col-head").all_inner_texts()[:2] == ["0", "1"]
    shown = page.locator(".cell").count()
    page.select_option(".filter[data-axis='seed']", "1")
    assert 0 < page.locator(".cell").count() < shown
    page.select_option(".filter[data-axis='seed']", "all")
    artifacts = Path(os.environ.get("FARM_TEST_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(artifacts / "report-gallery.png"))
    assert not page.problems, page.problems


def test_gallery_slider_and_details(page):
    page.click("#view-slider")
    page.select_option("#slider-axis", "neon strength")
    card = page.locator(".slider-card").first
    image, label = card.locator("img"), card.locator(".slider-label")
    before = (image.get_attribute("src"), label.inner_text())
    card.locator("input[type=range]").focus()
    page.keyboard.press("ArrowRight")
    after = (image.get_attribute("src"), label.inner_text())
    assert after[0] != before[0] and after[1] != before[1]
    assert "neon" in after[1]
    image.click()
    # The details arrive with their chunk: wait (bounded) until "loading…" is replaced.
    page.wait_for_function(
        "!document.getElementById('detail-infotext').textContent.startsWith('loading')",
        timeout=30_000,
    )
    infotext = page.locator("#detail-infotext").inner_text()
    assert "Steps: 20" in infotext and "Seed:" in infotext
    page.keyboard.press("Escape")
    assert not page.problems, page.problems


def test_a_report_never_loads_torch_ray_or_diffusers(job, tmp_path):
    job, _ = job
    copy = tmp_path / "light"
    shutil.copytree(job, copy, ignore=shutil.ignore_patterns("report"))
    code = ("import sys\nfrom farm.cli import main\ntry:\n    main(['report', sys.argv[1]])\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "print(sorted(m for m in ('torch', 'ray', 'diffusers', 'transformers') "
            "if m in sys.modules))")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code, str(copy)], capture_output=True,
                          text=True, timeout=300, cwd=REPO)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_presets_suggest_turns_the_sweep_into_ordered_presets(job, tmp_path):
    from farm.tenancy.tenants import parse_tenants

    job, _ = job
    out = farm_here("presets", "suggest", str(job), "--lora", "neon").stdout
    block = yaml.safe_load(out)["presets"]
    weights = {name: block[name]["weight"] for name in ("subtle", "standard", "bold")}
    measured = sorted(curve_points(job, "neon"))
    assert measured[0] < weights["subtle"] < weights["standard"] < weights["bold"] <= measured[-1]
    s = summaries(job)["neon"]
    # Each rests on the measured response: past the onset, at the knee, below the break.
    assert s["onset"] <= weights["subtle"] and weights["standard"] == pytest.approx(s["knee"])
    assert weights["bold"] < s["break_at"]
    assert f"onset {s['onset']:g}, knee {s['knee']:g}" in out
    # The block is one a tenants file takes as it is.
    tenant = {"output": str(tmp_path), "loras": {"neon": "tiny:neon"}}
    parsed = parse_tenants({"presets": block, "tenants": {"a": tenant}}, source="t.yaml",
                           base=".")  # fmt: skip
    assert parsed.tenants["a"].presets["bold"].weight.unet == weights["bold"]
    # Without --lora, one set per LoRA swept alone.
    both = yaml.safe_load(farm_here("presets", "suggest", str(job)).stdout)["presets"]
    assert {"neon-subtle", "ink-bold"} <= set(both)
    bad = farm_here("presets", "suggest", str(job), "--lora", "nope", check=False)
    assert bad.returncode == 2 and "no curve of nope" in bad.stderr
