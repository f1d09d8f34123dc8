"""`farm verify` hashing in parallel and by sample: a damaged image is found when the
sample covers it, the seed that drew the sample is printed, and the same seed draws the
same images."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from jobrun import farm_here, write_spec

from farm.audit.verify import check_images_in_parallel, verify_job
from farm.storage import open_store


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_dir) -> Path:
    """16 images: 2 prompts × 8 seeds, one LoRA strength each."""
    folder = tmp_path_factory.mktemp("verify")
    spec = write_spec(folder, "sampled", combine=[{"neon": 0.5}])
    farm_here("run", str(spec), "--local")
    return folder / "out" / "sampled"


@pytest.fixture
def damaged(job, tmp_path) -> tuple[Path, str]:
    """A copy of the job with one image's bytes changed; the image's key."""
    import shutil

    copy = tmp_path / "job"
    shutil.copytree(job, copy)
    key = pq.read_table(copy / "metadata.parquet").to_pylist()[5]["image_key"]
    path = copy / key
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    return copy, key


def hit(job: Path, key: str, size: int, seed: int) -> bool:
    verdict = verify_job(open_store(str(job)), sample=size, seed=seed)
    assert verdict.images_checked == size and verdict.rows == 16 and verdict.sample_seed == seed
    return any(problem.startswith(key) for problem in verdict.problems)


def test_a_sample_that_covers_the_damaged_image_finds_it_and_says_its_seed(damaged):
    job, key = damaged
    # Two of sixteen: some seeds draw the damaged image, others miss it.
    hits = [seed for seed in range(40) if hit(job, key, 2, seed)]
    misses = [seed for seed in range(40) if seed not in hits]
    assert hits and misses
    found = farm_here("verify", str(job), "--sample", "2", "--seed", str(hits[0]), check=False)
    assert found.returncode == 1
    assert f"sample: 2 of 16 images, seed {hits[0]} (`farm verify {job} --sample 2 --seed " \
        f"{hits[0]}` checks the same ones)" in found.stdout  # fmt: skip
    assert f"problem: {key}: sha256 " in found.stdout
    missed = farm_here("verify", str(job), "--sample", "2", "--seed", str(misses[0]))
    assert f"seed {misses[0]}" in missed.stdout and "ok: 16 planned items, 16 rows, 2 images" \
        in missed.stdout  # fmt: skip
    # The same seed draws the same images, every time.
    assert [hit(job, key, 2, s) for s in hits[:3]] == [True] * len(hits[:3])


def test_without_a_seed_one_is_drawn_and_printed(damaged):
    job, _ = damaged
    out = farm_here("verify", str(job), "--sample", "16", check=False)
    # All sixteen: the damaged one is among them, whatever the seed.
    assert out.returncode == 1 and "sample: 16 of 16 images, seed " in out.stdout
    seed = int(out.stdout.split("seed ", 1)[1].split(" ", 1)[0])
    again = farm_here("verify", str(job), "--sample", "16", "--seed", str(seed), check=False)
    assert again.returncode == 1


def test_chunks_on_threads_report_problems_in_row_order(damaged):
    job, key = damaged
    store = open_store(str(job))
    rows = pq.read_table(job / "metadata.parquet").to_pylist()
    (job / rows[12]["image_key"]).unlink()
    seen: list[tuple[int, int]] = []
    problems, tasks = check_images_in_parallel(store, rows, workers=4, address=None,
                                               progress=lambda d, t: seen.append((d, t)),
                                               chunk=3)  # fmt: skip
    assert tasks == 0  # no Ray cluster: threads here
    gone = rows[12]
    assert len(problems) == 2 and problems[0].startswith(f"{key}: sha256 ")
    assert problems[1] == f"{gone['image_key']}: missing (item {gone['item_id']})"
    assert sorted(seen)[-1] == (16, 16) and len(seen) == 6  # one call per chunk of 3


def test_verify_refuses_flags_that_do_not_go_together(job):
    for args, message in (
        (["--seed", "3"], "--seed: only with --sample N"),
        (["--no-images", "--sample", "2"], "--no-images: hashes no image"),
    ):
        out = farm_here("verify", str(job), *args, check=False)
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


def test_verify_holds_a_bounded_number_of_rows_whatever_the_job(damaged):
    """Rows are hashed as their parts are read, a few chunks in flight: with chunks of 3
    on one thread, at most 2 chunks wait and 2 rows gather for the next, of 16."""
    from farm.audit.verify import IN_FLIGHT

    job, key = damaged
    verdict = verify_job(open_store(str(job)), workers=1, chunk=3)
    assert verdict.images_checked == verdict.rows == 16
    assert 0 < verdict.peak_rows <= IN_FLIGHT * 3 + 2 < 16
    assert [p for p in verdict.problems if p.startswith(key)]
    whole = verify_job(open_store(str(job)), workers=1)  # one chunk holds the 16
    assert whole.peak_rows == 16 and whole.problems == verdict.problems


def test_item_ids_are_compared_a_scratch_bucket_at_a_time(job, tmp_path, monkeypatch):
    """Buckets of 3 ids (6 buckets for 16 items): a missing item, a repeated row and a
    row the plan never made are found as with one bucket, and the first missing id named
    is the smallest of all buckets'."""
    import shutil

    from farm.audit import verify
    from farm.records.parts import encode_rows, read_rows

    copy = tmp_path / "ids"
    shutil.copytree(job, copy)
    store = open_store(str(copy))
    rows = sorted(read_rows(store).to_pylist(), key=lambda r: r["item_id"])
    (copy / "metadata.parquet").unlink()
    for part in (copy / "parts").iterdir():
        part.unlink()
    kept = rows[2:5] + rows[7:]  # items 0, 1, 5 and 6 have no row
    foreign = dict(rows[9], item_id="f" * len(rows[9]["item_id"]))
    store.put("parts/a.parquet", encode_rows(kept))
    store.put("parts/b.parquet", encode_rows([rows[3], foreign]))

    def problems() -> list[str]:
        return verify_job(store, check_images=False).problems

    whole = problems()
    monkeypatch.setattr(verify, "IDS_PER_BUCKET", 3)
    assert sorted(problems()) == sorted(whole)
    assert f"4 planned items have no row (e.g. {rows[0]['item_id']}); run `farm resume " \
        f"{store.url}`" in whole  # fmt: skip
    assert f"item {rows[3]['item_id']}: 2 rows (expected exactly one)" in whole
    assert f"item {foreign['item_id']}: has a row but is not in the plan" in whole
    assert len(whole) == 3
