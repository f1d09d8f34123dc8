"""The static gallery of `farm report`: its data files, and the page in a real browser.

The browser tests drive Debian's chromium through playwright against a synthetic job
folder opened from file://, the way a user opens a report copied out of a bucket.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from farm.report.gallery import Chunking, gallery_files, write_gallery

CHROMIUM = Path("/usr/bin/chromium")
EVIL = "</script><script>alert(1)</script>"
PROMPTS = ["a red fox in the snow", f"neon city {EVIL} at night"]
SEEDS = ["0", "1", "2"]
STRENGTHS = ["0", "0.25", "0.5", "0.75", "1"]
AXES = [
    {"name": "prompt", "label": "prompt", "kind": "prompt", "values": PROMPTS},
    {"name": "seed", "label": "seed", "kind": "seed", "values": SEEDS},
    {"name": "neon", "label": "neon strength", "kind": "strength", "values": STRENGTHS},
]
NOTE = "2 of 32 planned images are missing: the job is still running or was stopped"
FLAGGED = ("p0", "1", "1")  # prompt, seed, strength of the one flagged image


def item_id(p: int, seed: str, strength: str) -> str:
    return f"p{p}-s{seed}-a{strength.replace('.', '_')}"


def make_entries(images: Path | None = None) -> Iterator[dict]:
    """2 prompts x 3 seeds x 5 strengths of "neon"; each image a distinct flat colour."""
    for p, prompt in enumerate(PROMPTS):
        for s, seed in enumerate(SEEDS):
            for a, strength in enumerate(STRENGTHS):
                iid = item_id(p, seed, strength)
                if images is not None:
                    colour = (40 + 100 * p, 40 + 60 * s, 40 + 50 * a)
                    Image.new("RGB", (24, 24), colour).save(images / f"{iid}.png")
                alpha = float(strength)
                yield {
                    "id": iid,
                    "src": f"../images/{iid}.png",
                    "axes": {"prompt": prompt, "seed": seed, "neon": strength},
                    "flags": ["black image"] if (f"p{p}", seed, strength) == FLAGGED else [],
                    "d0": None if a == 0 and s == 2 else alpha * (0.5 + 0.2 * s),
                    "detail": {
                        "infotext": f"{prompt} <lora:neon:{strength}>\nSteps: 4, Seed: {seed}",
                        "row": {
                            "item_id": iid,
                            "seed": int(seed),
                            "alpha": alpha,
                            "loras": [{"name": "neon", "weight": alpha}],
                        },
                    },
                }


def write_report(job: Path, files: dict[str, bytes]) -> Path:
    report = job / "report"
    for name, data in files.items():
        path = report / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return report


def load_index(files: dict[str, bytes]) -> dict:
    text = files["data/index.js"].decode()
    prefix = "window.FARM_GALLERY = "
    assert text.startswith(prefix) and text.endswith(";\n")
    return json.loads(text[len(prefix) : -2])


def load_pages(files: dict[str, bytes]) -> list[list[list]]:
    """The rows of each data/entries-NNNN.js page, pages in order."""
    pages: list[list[list]] = []
    start = 0
    names = sorted(n for n in files if n.startswith("data/entries-"))
    for k, name in enumerate(names):
        assert name == f"data/entries-{k:04d}.js"
        text = files[name].decode()
        match = re.fullmatch(r"window\.farmEntries\((\d+),(\d+),(.*)\);\n", text, re.S)
        assert match and int(match.group(1)) == k and int(match.group(2)) == start, name
        pages.append(json.loads(match.group(3)))
        start += len(pages[-1])
    return pages


def load_rows(files: dict[str, bytes]) -> list[list]:
    """Every entry row, in the gallery's order."""
    return [row for page in load_pages(files) for row in page]


def load_chunk(data: bytes) -> tuple[int, list]:
    match = re.fullmatch(r"window\.farmDetail\((\d+),(.*)\);\n", data.decode(), re.S)
    assert match, data[:80]
    return int(match.group(1)), json.loads(match.group(2))


def artifact(tmp_path: Path, name: str) -> Path:
    folder = Path(os.environ.get("FARM_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


# ---- the data files (no browser) ------------------------------------------------------------


def test_index_is_json_after_the_assignment():
    files = gallery_files(make_entries(), title="neon sweep", axes=AXES, notes=[NOTE])
    assert {"index.html", "gallery.js", "gallery.css", "data/index.js"} <= set(files)
    index = load_index(files)
    assert index["title"] == "neon sweep" and index["notes"] == [NOTE]
    assert [a["name"] for a in index["axes"]] == ["prompt", "seed", "neon"]
    assert [a["counts"] for a in index["axes"]] == [[15, 15], [10, 10, 10], [6] * 5]
    assert index["count"] == 30 and "entries" not in index
    assert index["src"] == ["../images/", ".png"]
    # A small job: no chunk axis, one key whose single page holds every entry.
    assert index["chunks"] == {"axes": [], "keys": [[[], 30, 0, 1]]}
    rows = load_rows(files)
    assert len(rows) == 30
    # Compact rows: [id, src (0 = the template), axis value indices, flags, d0].
    assert rows[0] == ["p0-s0-a0", 0, [0, 0, 0], [], 0.0]
    flagged = [row for row in rows if row[3]]
    assert [row[0] for row in flagged] == ["p0-s1-a1"]
    assert flagged[0][3] == ["black image"]


def test_script_breaking_text_is_escaped():
    entries = list(make_entries())
    entries[0]["detail"]["row"]["note"] = "line\u2028break & <!-- comment"
    files = gallery_files(entries, title=f"sweep {EVIL}", axes=AXES, notes=[EVIL])
    for name, data in files.items():
        if name.startswith("data/"):
            text = data.decode()
            assert "<" not in text and ">" not in text and "\u2028" not in text, name
    assert EVIL not in files["index.html"].decode()
    assert "sweep &lt;/script&gt;" in files["index.html"].decode()
    index = load_index(files)
    assert index["axes"][0]["values"][1] == PROMPTS[1] and index["notes"] == [EVIL]
    _, details = load_chunk(files["data/detail-0000.js"])
    assert EVIL in details[15]["infotext"]
    assert details[0]["row"]["note"] == "line\u2028break & <!-- comment"


def test_details_are_chunked():
    files = gallery_files(make_entries(), title="t", axes=AXES, detail_chunk=8)
    names = sorted(n for n in files if n.startswith("data/detail-"))
    assert names == [f"data/detail-{k:04d}.js" for k in range(4)]
    sizes = []
    for k, name in enumerate(names):
        chunk, details = load_chunk(files[name])
        assert chunk == k
        sizes.append(len(details))
    assert sizes == [8, 8, 8, 6]
    _, last = load_chunk(files[names[-1]])
    assert last[-1]["row"]["item_id"] == "p1-s2-a1"
    assert load_index(files)["detail"] == 8


def test_entries_are_read_once_and_the_page_put_last():
    stream = make_entries()
    put: list[str] = []
    written = write_gallery(stream, lambda name, _: put.append(name), title="t", axes=AXES,
                            detail_chunk=10)  # fmt: skip
    assert written.count == 30 and written.chunk_axes == () and written.pages == 1
    assert next(stream, None) is None  # iterated once, to the end
    assert len(put) == len(set(put))  # each file put once
    # The data first, then its index, then the page: a half-written report never opens.
    data = {"data/entries-0000.js", *(f"data/detail-{k:04d}.js" for k in range(3))}
    assert set(put[:4]) == data
    assert put[4:] == ["data/index.js", "gallery.js", "gallery.css", "index.html"]


def test_odd_entries_keep_their_place():
    entries = list(make_entries())[:3]
    entries[1]["src"] = "../images/elsewhere.webp"
    entries[2]["axes"]["neon"] = "1.5"  # a value the axis did not list
    del entries[2]["axes"]["seed"]
    entries[2]["d0"] = float("nan")
    files = gallery_files(iter(entries), title="t", axes=AXES)
    index = load_index(files)
    rows = {row[0]: row for row in load_rows(files)}
    assert rows[entries[0]["id"]][1] == 0  # the template's
    assert rows[entries[1]["id"]][1] == "../images/elsewhere.webp"
    assert index["axes"][2]["values"][-1] == "1.5" and rows[entries[2]["id"]][2] == [0, -1, 5]
    assert rows[entries[2]["id"]][4] is None
    assert index["axes"][2]["counts"] == [1, 1, 0, 0, 0, 1]


def test_bad_axes_are_named():
    bad = [*AXES[:1], {"name": "seed", "kind": "number", "values": ["0"]}]
    with pytest.raises(ValueError, match=r"axes\[1\]\.kind"):
        gallery_files(make_entries(), title="t", axes=bad)
    with pytest.raises(ValueError, match=r"axes\[1\]\.name: 'prompt'"):
        gallery_files(make_entries(), title="t", axes=[AXES[0], AXES[0]])


def test_page_names_no_network_address():
    files = gallery_files(make_entries(), title="t", axes=AXES)
    for name, data in files.items():
        assert not re.search(rb"https?:|//[a-z]", data, re.I), name


# ---- big galleries: one chunk key at a time, written in bounded memory ----------------------


@pytest.mark.parametrize(
    ("key_limit", "chunk_axes", "keys"),
    [
        (15, [0], [[0], [1]]),  # a prompt holds 15 entries: one prompt at a time
        (10, [1], [[0], [1], [2]]),  # too many for one prompt: one seed at a time
        (5, [0, 1], [[p, s] for p in range(2) for s in range(3)]),  # both, together
    ],
)
def test_the_chunk_axes_split_a_big_gallery_finely_enough(key_limit, chunk_axes, keys):
    chunking = Chunking(big_from=30, key_limit=key_limit, page=4)
    files = gallery_files(make_entries(), title="t", axes=AXES, chunking=chunking)
    table = load_index(files)["chunks"]
    assert table["axes"] == chunk_axes and [key[0] for key in table["keys"]] == keys
    pages = load_pages(files)
    for values, count, first, n in table["keys"]:
        rows = [row for page in pages[first : first + n] for row in page]
        assert len(rows) == count and all(len(page) <= 4 for page in pages[first : first + n])
        assert all([row[2][k] for k in chunk_axes] == values for row in rows)
        # Within a key, in axis value order: seeds down, strengths across.
        assert [row[2] for row in rows] == sorted(row[2] for row in rows)
    assert sum(key[1] for key in table["keys"]) == 30 == len(load_rows(files))


def test_sliders_never_wait_on_a_chunk_file():
    axes = [
        {"name": "step", "kind": "checkpoint", "values": [str(s) for s in range(10)]},
        {"name": "neon", "kind": "strength", "values": STRENGTHS},
    ]
    entries = ({"id": f"c{c}-{a}", "axes": {"step": str(c), "neon": a}}
               for c in range(10) for a in STRENGTHS)  # fmt: skip
    put: dict[str, bytes] = {}
    chunking = Chunking(big_from=10, key_limit=5, page=8)
    written = write_gallery(entries, put.__setitem__, title="t", axes=axes, chunking=chunking)
    # Strength and checkpoint axes are never chunk axes: all 50 entries load at once.
    assert written.chunk_axes == () and load_index(put)["chunks"]["keys"] == [[[], 50, 0, 7]]


def many_entries() -> Iterator[dict]:
    """6 prompts x 50 seeds x 10 strengths, some of them on values the axes do not list."""
    for p in range(6):
        for seed in range(50):
            for a in range(10):
                prompt = f"prompt {p}" if p < 4 else ["zebra", "aardvark"][p - 4]
                strength = str(a / 10) if a < 8 else ["2.5", "1.5"][a - 8]
                yield {
                    "id": f"m{p}-{seed}-{a}",
                    "axes": {"prompt": prompt, "seed": str(seed), "neon": strength},
                    "flags": ["odd"] if seed == 7 else [],
                    "d0": a / 10,
                    "detail": {"infotext": f"{prompt}, seed {seed}", "row": {"a": a / 10}},
                }


MANY_AXES = [
    {"name": "prompt", "kind": "prompt", "values": [f"prompt {p}" for p in range(4)]},
    {"name": "seed", "kind": "seed", "values": [str(s) for s in range(50)]},
    {"name": "neon", "kind": "strength", "values": [str(a / 10) for a in range(8)]},
]


def test_the_writer_holds_a_bounded_number_of_entries_in_any_order(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the spill goes
    # 3000 entries, sorted in runs of 60 merged 30 at a time: two rounds of merging.
    chunking = Chunking(big_from=1000, key_limit=500, page=20, hold=60)
    entries = list(many_entries())

    def write(order: list[dict]) -> tuple[dict[str, bytes], int]:
        files: dict[str, bytes] = {}
        written = write_gallery(iter(order), files.__setitem__, title="t", axes=MANY_AXES,
                                detail_chunk=10, chunking=chunking)  # fmt: skip
        assert written.count == 3000 and written.chunk_axes == ("prompt",)
        assert list(tmp_path.iterdir()) == []  # the spill is gone
        return files, written.peak_held

    whole, peak = write(entries)
    assert 0 < peak <= chunking.hold
    shuffled = entries[:]
    random.Random(7).shuffle(shuffled)
    assert write(shuffled) == (whole, peak)  # byte for byte
    # A job rendered in two halves, the second half first: the same report.
    assert write(entries[1500:] + entries[:1500])[0] == whole
    index = load_index(whole)
    # Values the axes did not list follow the listed ones, numbers in order.
    assert index["axes"][0]["values"][4:] == ["aardvark", "zebra"]
    assert index["axes"][2]["values"][8:] == ["1.5", "2.5"]
    assert [key[1] for key in index["chunks"]["keys"]] == [500] * 6
    assert len(whole) == 3000 // 20 + 3000 // 10 + 4


def test_a_failed_write_leaves_no_spill(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    entries = [*list(make_entries())[:5], {"axes": {}}]
    with pytest.raises(ValueError, match="gallery entry 5: it has no 'id'"):
        gallery_files(iter(entries), title="t", axes=AXES)
    assert list(tmp_path.iterdir()) == []


def test_a_chunking_that_cannot_hold_a_page_is_refused():
    with pytest.raises(ValueError, match=r"chunking\.hold: 100 leaves no room"):
        gallery_files(make_entries(), title="t", axes=AXES, chunking=Chunking(hold=100))
    with pytest.raises(ValueError, match=r"chunking\.page: must be at least 1"):
        gallery_files(make_entries(), title="t", axes=AXES, chunking=Chunking(page=0))


# ---- the page in a browser --------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the gallery tests need Debian's chromium "
            "(apt-get install chromium)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    job = tmp_path_factory.mktemp("job")
    (job / "images").mkdir()
    files = gallery_files(
        make_entries(job / "images"), title="neon sweep", axes=AXES, notes=[NOTE], detail_chunk=7
    )
    return write_report(job, files)


class Watched:
    """A page (a file, or a URL) with its console errors, uncaught errors and requests
    recorded."""

    def __init__(self, browser, index: Path | str):
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(index.as_uri() if isinstance(index, Path) else index)
        self.page.wait_for_selector(".cell")

    def assert_clean(self) -> None:
        assert self.errors == []
        assert self.requests and all(url.startswith("file://") for url in self.requests)


@pytest.fixture
def watched(browser, report):
    page = Watched(browser, report / "index.html")
    yield page
    page.page.close()


def data_files(watched: Watched) -> list[str]:
    """The entry pages the page asked for, in order."""
    return [url[url.rindex("/data/") + 1 :] for url in watched.requests if "/data/entries-" in url]


def cell_ids(page) -> list[str]:
    return page.eval_on_selector_all(".cell", "cells => cells.map(c => c.dataset.id)")


def texts(page, selector: str) -> list[str]:
    return page.eval_on_selector_all(selector, "nodes => nodes.map(n => n.textContent)")


def test_grid_opens_with_seeds_by_strength(watched, tmp_path):
    page = watched.page
    assert page.title() == "neon sweep"
    assert page.input_value("#row-axis") == "seed" and page.input_value("#col-axis") == "neon"
    assert NOTE in page.text_content("#notes")
    # prompt is on "all": one block per prompt, 3 seeds x 5 strengths each.
    assert page.locator(".block").count() == 2
    assert texts(page, ".block:first-child th.col-head") == STRENGTHS
    assert texts(page, ".block:first-child th.row-head") == SEEDS
    assert page.locator(".cell").count() == 30
    assert EVIL in texts(page, ".block-title")[1]  # shown as text, never run
    cell = page.locator(f'.cell[data-id="{item_id(0, "2", "0.5")}"]')
    assert cell.get_attribute("data-row") == "2" and cell.get_attribute("data-col") == "0.5"
    assert cell.locator("img").get_attribute("loading") == "lazy"
    page.screenshot(path=str(artifact(tmp_path, "gallery-grid.png")), full_page=True)
    watched.assert_clean()


def test_choosing_axes_relays_the_grid(watched):
    page = watched.page
    page.select_option("#row-axis", "prompt")
    page.select_option("#col-axis", "seed")
    # neon now makes the blocks: 5 blocks of 2 prompts x 3 seeds.
    assert page.locator(".block").count() == 5
    assert texts(page, ".block:first-child th.col-head") == SEEDS
    assert texts(page, ".block:first-child th.row-head") == PROMPTS
    assert texts(page, ".block-title")[:2] == ["neon: 0", "neon: 0.25"]
    cell = page.locator(f'.cell[data-id="{item_id(1, "2", "0.25")}"]')
    assert cell.get_attribute("data-row") == PROMPTS[1] and cell.get_attribute("data-col") == "2"
    assert cell_ids(page)[:3] == [item_id(0, "0", "0"), item_id(0, "1", "0"), item_id(0, "2", "0")]
    # Rows set to the columns' axis: the two swap instead of repeating one axis.
    page.select_option("#row-axis", "seed")
    assert page.input_value("#col-axis") == "prompt"
    assert texts(page, ".block:first-child th.col-head") == PROMPTS
    watched.assert_clean()


def test_a_filter_hides_cells(watched):
    page = watched.page
    page.select_option('.filter[data-axis="prompt"]', "1")
    assert page.locator(".block").count() == 1 and page.locator(".cell").count() == 15
    assert all(i.startswith("p1-") for i in cell_ids(page))
    page.select_option(".filter[data-axis=seed]", "2")  # a filter on the row axis: one row
    assert texts(page, "th.row-head") == ["2"]
    assert cell_ids(page) == [item_id(1, "2", s) for s in STRENGTHS]
    page.select_option('.filter[data-axis="prompt"]', "all")
    assert page.locator(".cell").count() == 10
    watched.assert_clean()


def test_flagged_cells_are_marked(watched):
    page = watched.page
    flagged = page.locator(".cell.flagged")
    assert flagged.count() == 1
    assert flagged.get_attribute("data-id") == item_id(0, "1", "1")
    assert "black image" in flagged.locator(".flag").text_content()
    outline = flagged.locator(".open").evaluate("n => getComputedStyle(n).outlineColor")
    red, green, _ = (int(x) for x in re.findall(r"\d+", outline)[:3])
    assert red > 150 and green < 80
    watched.assert_clean()


def test_heatmap_overlays_distance(watched, tmp_path):
    page = watched.page
    assert page.locator(".heat:visible").count() == 0
    page.check("#heatmap")
    assert page.locator(".heat:visible").count() == 30
    far = page.locator(f'.cell[data-id="{item_id(0, "2", "1")}"] .heat')
    assert far.text_content() == "0.90"
    assert "rgba(220, 20, 30" in far.evaluate("n => getComputedStyle(n).backgroundColor")
    unknown = page.locator(f'.cell[data-id="{item_id(0, "2", "0")}"] .heat')
    assert unknown.text_content() == "\u2013"
    page.screenshot(path=str(artifact(tmp_path, "gallery-heatmap.png")), full_page=True)
    page.uncheck("#heatmap")
    assert page.locator(".heat:visible").count() == 0
    watched.assert_clean()


def test_clicking_an_image_shows_its_details(watched):
    page = watched.page
    target = item_id(1, "1", "0.75")  # entry 23: the fourth detail chunk (7 per chunk)
    page.click(f'.cell[data-id="{target}"] img')
    dialog = page.locator("#detail")
    infotext = page.locator("#detail-infotext")
    assert dialog.is_visible()
    page.wait_for_function(
        "!document.getElementById('detail-infotext').textContent.startsWith('loading')"
    )
    assert infotext.text_content() == f"{PROMPTS[1]} <lora:neon:0.75>\nSteps: 4, Seed: 1"
    assert page.text_content('#detail-row tr[data-key="item_id"] td') == target
    assert page.text_content('#detail-row tr[data-key="alpha"] td') == "0.75"
    assert any(u.endswith("data/detail-0003.js") for u in watched.requests)
    page.keyboard.press("Escape")
    assert not dialog.is_visible()
    # Another image of an already loaded chunk, closed with the button.
    page.click(f'.cell[data-id="{item_id(1, "1", "1")}"] img')
    page.wait_for_function(
        "document.getElementById('detail-infotext').textContent.endsWith('Seed: 1')"
    )
    assert "<lora:neon:1>" in infotext.text_content()
    page.click("#detail-close")
    assert not dialog.is_visible()
    watched.assert_clean()


def test_slider_moves_image_and_label(watched, tmp_path):
    page = watched.page
    page.click("#view-slider")
    cards = page.locator(".slider-card")
    assert cards.count() == 6  # every prompt x seed
    assert page.locator(".cell").count() == 0
    assert page.input_value("#slider-axis") == "neon"
    card = cards.nth(1)  # prompt 0, seed 1
    img, label = card.locator("img"), card.locator(".slider-label")
    slider = card.locator("input[type=range]")
    assert label.text_content() == "neon 0"
    assert img.get_attribute("src") == f"../images/{item_id(0, '1', '0')}.png"

    slider.focus()
    page.keyboard.press("ArrowRight")
    assert slider.input_value() == "1" and label.text_content() == "neon 0.25"
    assert img.get_attribute("src") == f"../images/{item_id(0, '1', '0.25')}.png"

    slider.evaluate("(r) => { r.value = '4'; r.dispatchEvent(new Event('input')); }")
    assert label.text_content() == "neon 1"
    assert img.get_attribute("src") == f"../images/{item_id(0, '1', '1')}.png"
    assert "flagged" in card.get_attribute("class")  # the flagged image is now shown

    card.focus()  # the card itself, not its range: its own arrow keys
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    assert slider.input_value() == "2" and label.text_content() == "neon 0.5"
    assert card.get_attribute("data-id") == item_id(0, "1", "0.5")
    card.locator(".open").focus()  # the image keeps the focus while it slides
    page.keyboard.press("ArrowRight")
    assert label.text_content() == "neon 0.75"
    assert page.evaluate("document.activeElement.classList.contains('open')")
    page.keyboard.press("ArrowLeft")
    page.screenshot(path=str(artifact(tmp_path, "gallery-sliders.png")), full_page=True)

    card.locator("img").click()  # the detail of the image now shown
    page.wait_for_function(
        "document.getElementById('detail-infotext').textContent.includes('<lora:neon:0.5>')"
    )
    page.keyboard.press("Escape")
    watched.assert_clean()


def test_paging_a_big_job(browser, tmp_path):
    job = tmp_path / "big"
    (job / "images").mkdir(parents=True)
    for n in range(4):
        Image.new("RGB", (16, 16), (60 * n, 90, 200 - 40 * n)).save(job / "images" / f"im{n}.png")
    prompts = [f"prompt {n}" for n in range(40)]
    seeds = [str(s) for s in range(5)]
    strengths = [str(a / 10) for a in range(10)]
    axes = [
        {"name": "prompt", "label": "prompt", "kind": "prompt", "values": prompts},
        {"name": "seed", "label": "seed", "kind": "seed", "values": seeds},
        {"name": "neon", "label": "neon strength", "kind": "strength", "values": strengths},
    ]

    def entries() -> Iterator[dict]:
        n = 0
        for prompt in prompts:
            for seed in seeds:
                for strength in strengths:
                    yield {
                        "id": f"item{n:05d}",
                        "src": f"../images/im{n % 4}.png",
                        "axes": {"prompt": prompt, "seed": seed, "neon": strength},
                        "flags": [],
                        "d0": float(strength),
                        "detail": {"infotext": f"{prompt}, item {n}", "row": {"n": n}},
                    }
                    n += 1

    # Under big_from: no chunk axis, and every one of the 7 pages of entries loads at once.
    chunking = Chunking(page=300)
    report = write_report(job, gallery_files(entries(), title="big", axes=axes, chunking=chunking))
    watched = Watched(browser, report / "index.html")
    page = watched.page
    assert data_files(watched) == [f"data/entries-{k:04d}.js" for k in range(7)]
    assert page.locator('.filter[data-axis="prompt"] option').first.text_content() == "all"
    # 40 prompts x 5 seeds = 200 rows of 10: 8 pages of 25 rows.
    assert page.text_content("#page-info") == "page 1 of 8"
    assert page.evaluate("document.images.length") == 250
    first = cell_ids(page)[0]
    page.click("#next")
    assert page.text_content("#page-info") == "page 2 of 8"
    assert page.evaluate("document.images.length") == 250
    assert cell_ids(page)[0] != first and cell_ids(page)[0] == "item00250"
    assert page.is_disabled("#next") is False and page.is_disabled("#prev") is False
    page.click('.cell[data-id="item00260"] img')  # detail chunk 0 of the default 500
    page.wait_for_function(
        "document.getElementById('detail-infotext').textContent === 'prompt 5, item 260'"
    )
    page.keyboard.press("Escape")
    page.click("#view-slider")  # 200 sliders, 24 a page
    assert page.text_content("#page-info") == "page 1 of 9"
    assert page.locator(".slider-card").count() == 24
    watched.assert_clean()
    page.close()


# ---- a big gallery in a browser: one prompt's files at a time -------------------------------

BIG_PROMPTS = ["a red fox", f"neon {EVIL}", "a blue whale"]
BIG_STRENGTHS = ["0", "0.25", "0.5", "0.75"]
# 3 prompts x 60 seeds x 4 strengths = 720 entries: over big_from, and a prompt's 240 under
# key_limit, so the page shows one prompt at a time, from 3 pages of at most 100 entries.
BIG_CHUNKING = Chunking(big_from=500, key_limit=300, page=100)
BIG_AXES = [
    {"name": "prompt", "label": "prompt", "kind": "prompt", "values": BIG_PROMPTS},
    {"name": "seed", "label": "seed", "kind": "seed", "values": [str(s) for s in range(60)]},
    {"name": "neon", "label": "neon strength", "kind": "strength", "values": BIG_STRENGTHS},
]


def big_id(p: int, seed: int, a: int) -> str:
    return f"b{p}-s{seed:02d}-a{a}"


def big_entries() -> Iterator[dict]:
    """The big gallery's entries, strengths outermost: not in the order the page uses."""
    for a, strength in enumerate(BIG_STRENGTHS):
        for p, prompt in enumerate(BIG_PROMPTS):
            for seed in range(60):
                yield {
                    "id": big_id(p, seed, a),
                    "src": f"../images/im{(seed + a) % 4}.png",
                    "axes": {"prompt": prompt, "seed": str(seed), "neon": strength},
                    "flags": ["black image"] if (p, seed, a) == (2, 3, 3) else [],
                    "d0": float(strength),
                    "detail": {"infotext": f"{prompt}, seed {seed}, neon {strength}"},
                }


@pytest.fixture(scope="module")
def big_report(tmp_path_factory) -> Path:
    job = tmp_path_factory.mktemp("bigjob")
    (job / "images").mkdir()
    for n in range(4):
        Image.new("RGB", (16, 16), (60 * n, 90, 200 - 40 * n)).save(job / "images" / f"im{n}.png")
    files = gallery_files(big_entries(), title="big", axes=BIG_AXES, detail_chunk=50,
                          chunking=BIG_CHUNKING)  # fmt: skip
    assert load_index(files)["chunks"]["axes"] == [0]
    return write_report(job, files)


def entry_scripts(page) -> list[str]:
    return page.eval_on_selector_all(
        "script[src*='data/entries-']", "nodes => nodes.map(n => n.getAttribute('src'))"
    )


def test_a_big_gallery_loads_one_prompt_at_a_time(browser, big_report):
    watched = Watched(browser, big_report / "index.html")
    page = watched.page
    prompt = '.filter[data-axis="prompt"]'
    # The chunk axis has no "all": the first prompt is shown, from its 3 pages only.
    assert page.get_attribute(prompt, "data-chunk") == ""
    assert texts(page, f"{prompt} option") == BIG_PROMPTS
    assert page.input_value(prompt) == "0"
    assert page.input_value("#row-axis") == "seed" and page.input_value("#col-axis") == "neon"
    assert data_files(watched) == [f"data/entries-{k:04d}.js" for k in range(3)]
    assert page.text_content("#page-info") == "page 1 of 3"  # 60 seeds, 25 rows a page
    assert cell_ids(page) == [big_id(0, s, a) for s in range(25) for a in range(4)]
    assert "720 images in all" in page.text_content("#summary")
    page.click("#next")
    assert cell_ids(page) == [big_id(0, s, a) for s in range(25, 50) for a in range(4)]

    page.select_option(prompt, "2")
    page.wait_for_selector(f'main[aria-busy="false"] .cell[data-id="{big_id(2, 0, 0)}"]')
    assert page.text_content("#page-info") == "page 1 of 3"
    assert cell_ids(page) == [big_id(2, s, a) for s in range(25) for a in range(4)]
    # Prompt 2's pages were loaded, prompt 1's never; prompt 0's have left the document.
    assert data_files(watched)[3:] == [f"data/entries-{k:04d}.js" for k in range(6, 9)]
    assert entry_scripts(page) == [f"data/entries-{k:04d}.js" for k in range(6, 9)]
    flagged = page.locator(".cell.flagged")
    assert flagged.count() == 1 and flagged.get_attribute("data-id") == big_id(2, 3, 3)
    # Back to the first prompt: its pages load again.
    page.select_option(prompt, "0")
    page.wait_for_selector(f'main[aria-busy="false"] .cell[data-id="{big_id(0, 0, 0)}"]')
    assert data_files(watched)[6:] == [f"data/entries-{k:04d}.js" for k in range(3)]
    page.select_option(prompt, "2")
    page.wait_for_selector(f'main[aria-busy="false"] .cell[data-id="{big_id(2, 0, 0)}"]')

    # Other filters work over the loaded entries: nothing more is loaded.
    page.select_option(".filter[data-axis=neon]", "3")
    assert cell_ids(page) == [big_id(2, s, 3) for s in range(25)]
    page.select_option(".filter[data-axis=neon]", "all")
    target = big_id(2, 1, 2)  # entry 480 + 4 + 2 of the gallery's order: detail file 9
    page.click(f'.cell[data-id="{target}"] img')
    page.wait_for_function(
        "document.getElementById('detail-infotext').textContent.endsWith('neon 0.5')"
    )
    assert page.text_content("#detail-infotext") == f"{BIG_PROMPTS[2]}, seed 1, neon 0.5"
    assert any(url.endswith("data/detail-0009.js") for url in watched.requests)
    page.keyboard.press("Escape")

    page.click("#view-slider")  # one slider per seed of prompt 2
    assert page.text_content("#page-info") == "page 1 of 3"
    card = page.locator(".slider-card").nth(3)
    slider = card.locator("input[type=range]")
    slider.evaluate("(r) => { r.value = '3'; r.dispatchEvent(new Event('input')); }")
    assert card.get_attribute("data-id") == big_id(2, 3, 3)
    assert card.locator(".slider-label").text_content() == "neon 0.75"
    assert "flagged" in card.get_attribute("class")
    assert len(data_files(watched)) == 12
    watched.assert_clean()
    page.close()


def test_a_big_gallery_over_http(browser, big_report):
    """`farm report --serve`: the same files through the report server, nothing else."""
    import threading

    from farm.report.serve import ReportServer
    from farm.storage.store import LocalStore

    server = ReportServer(LocalStore(big_report.parent))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        origin = server.url.split("/report/")[0]
        watched = Watched(browser, server.url)
        page = watched.page
        page.select_option('.filter[data-axis="prompt"]', "1")
        page.wait_for_selector(f'main[aria-busy="false"] .cell[data-id="{big_id(1, 0, 0)}"]')
        assert EVIL in page.text_content('.filter[data-axis="prompt"] option:checked')
        assert data_files(watched)[3:] == [f"data/entries-{k:04d}.js" for k in range(3, 6)]
        assert watched.errors == []
        assert all(url.startswith(origin + "/") for url in watched.requests)
        page.close()
    finally:
        server.shutdown()
        thread.join(timeout=30)
