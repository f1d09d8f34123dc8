"""LocalStore (reads, writes, listing, create-once races, bad roots) and the records kept
in it: parts, completion truth and compaction."""

from __future__ import annotations

import datetime as dt
import io
import multiprocessing
import os
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from farm.records import (
    METADATA,
    SCHEMA,
    CorruptPart,
    compact,
    completed_items,
    decode_part,
    encode_rows,
    iter_parts,
    part_key,
    read_rows,
    scan_parts,
)
from farm.store import LocalStore, StoreError, open_store, split_job_url


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "out")


def test_put_get_exists(store, tmp_path):
    assert not store.exists("a.txt")
    store.put("a.txt", b"hello")
    assert store.exists("a.txt")
    assert store.get("a.txt") == b"hello"
    assert (tmp_path / "out" / "a.txt").read_bytes() == b"hello"
    assert store.url == str((tmp_path / "out").resolve())


def test_put_nested_keys_and_overwrite(store):
    store.put("images/x/y.png", b"one")
    store.put("images/x/y.png", b"two, longer")
    assert store.get("images/x/y.png") == b"two, longer"
    assert not store.exists("images/x")  # a folder is not a key
    assert list(store.list()) == ["images/x/y.png"]


def test_get_missing_key_raises(store):
    with pytest.raises(FileNotFoundError):
        store.get("nope")


def test_list_nested_and_prefixed(store):
    keys = ["job.json", "images/a.png", "images/b.png", "parts/u1.parquet", "parts/u2.parquet"]
    for key in keys:
        store.put(key, key.encode())
    assert sorted(store.list()) == sorted(keys)
    assert sorted(store.list("parts/")) == ["parts/u1.parquet", "parts/u2.parquet"]
    assert sorted(store.list("parts")) == ["parts/u1.parquet", "parts/u2.parquet"]
    assert list(store.list("missing/")) == []
    assert list(LocalStore(store.root / "never-made").list()) == []


def test_list_never_shows_hidden_temp_files(store):
    store.put("parts/u1.parquet", b"x")
    (store.root / "parts" / ".u2.parquet.abc123").write_bytes(b"half written")
    (store.root / ".check-xyz").write_bytes(b"")
    assert list(store.list()) == ["parts/u1.parquet"]
    # A write leaves no temp file behind.
    store.put_if_absent("parts/u1.parquet", b"y")
    assert sorted(os.listdir(store.root / "parts")) == [".u2.parquet.abc123", "u1.parquet"]


def test_put_if_absent_creates_once(store):
    assert store.put_if_absent("parts/u.parquet", b"first") is True
    assert store.put_if_absent("parts/u.parquet", b"second") is False
    assert store.get("parts/u.parquet") == b"first"
    assert os.listdir(store.root / "parts") == ["u.parquet"]
    store.put("parts/u.parquet", b"replaced")
    assert store.get("parts/u.parquet") == b"replaced"


def test_delete(store):
    store.put("parts/u.parquet", b"x")
    store.delete("parts/u.parquet")
    assert not store.exists("parts/u.parquet")
    store.delete("parts/u.parquet")  # deleting a missing key is fine
    assert store.put_if_absent("parts/u.parquet", b"again") is True


def race_threads(store: LocalStore, key: str, n: int = 8) -> dict[int, bool]:
    """n threads released together, each trying to create `key` with its own payload."""
    barrier = threading.Barrier(n)
    results: dict[int, bool] = {}

    def race(i: int) -> None:
        barrier.wait()
        results[i] = store.put_if_absent(key, payload(i))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def payload(i: int) -> bytes:
    return f"payload {i} ".encode() * (i + 1)


def test_put_if_absent_race_between_threads(store):
    for round_ in range(5):
        key = f"parts/race-{round_}.parquet"
        results = race_threads(store, key)
        winners = [i for i, created in results.items() if created]
        assert len(results) == 8
        assert len(winners) == 1
        assert store.get(key) == payload(winners[0])
    assert len(list(store.list())) == 5
    assert all(not n.startswith(".") for n in os.listdir(store.root / "parts"))


def _race_in_process(root: str, key: str, i: int, start, results) -> None:
    start.wait()
    results.put((i, LocalStore(root).put_if_absent(key, f"process {i}".encode() * 100)))


def test_put_if_absent_race_between_processes(store):
    # fork: the children only touch the file system, and start in milliseconds.
    ctx = multiprocessing.get_context("fork")
    start, results = ctx.Event(), ctx.Queue()
    key = "parts/u.parquet"
    procs = [
        ctx.Process(target=_race_in_process, args=(str(store.root), key, i, start, results))
        for i in range(8)
    ]
    for p in procs:
        p.start()
    start.set()
    outcomes = dict(results.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    winners = [i for i, created in outcomes.items() if created]
    assert len(outcomes) == 8
    assert len(winners) == 1
    assert store.get(key) == f"process {winners[0]}".encode() * 100
    assert os.listdir(store.root / "parts") == ["u.parquet"]


@pytest.mark.parametrize("key", ["../x", "a/../../x", "parts/../../../etc/passwd", "/etc/x"])
def test_keys_escaping_the_root_raise(store, tmp_path, key):
    for call in (
        lambda: store.put(key, b"x"),
        lambda: store.put_if_absent(key, b"x"),
        lambda: store.get(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
        lambda: list(store.list(key)),
        lambda: store.child(key),
    ):
        with pytest.raises(StoreError, match="escapes the store root"):
            call()
    assert not (tmp_path / "x").exists()


def test_dotdot_inside_the_root_is_allowed(store):
    store.put("a/../b.txt", b"x")
    assert store.get("b.txt") == b"x"


def test_child(store):
    job = store.child("job-1")
    assert isinstance(job, LocalStore)
    assert job.url == str(store.root / "job-1")
    job.put("parts/u.parquet", b"x")
    assert store.get("job-1/parts/u.parquet") == b"x"
    assert list(job.list()) == ["parts/u.parquet"]
    assert list(store.list()) == ["job-1/parts/u.parquet"]
    with pytest.raises(StoreError):
        job.get("../../outside")


def test_check_creates_the_root_and_leaves_nothing(tmp_path):
    store = LocalStore(tmp_path / "new" / "deep")
    store.check()
    assert (tmp_path / "new" / "deep").is_dir()
    assert os.listdir(tmp_path / "new" / "deep") == []


def test_check_refuses_a_path_under_a_regular_file(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    store = LocalStore(tmp_path / "file" / "out")
    with pytest.raises(StoreError, match="cannot write here") as info:
        store.check()
    assert str(tmp_path / "file" / "out") in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("url", ["ftp://x", "http://host/out", "gs://bucket/out"])
def test_open_store_refuses_other_schemes(url):
    with pytest.raises(StoreError, match="unsupported output URL") as info:
        open_store(url)
    assert url in str(info.value)


def test_open_store_local(tmp_path):
    store = open_store(str(tmp_path / "out"))
    assert isinstance(store, LocalStore)
    assert store.root == (tmp_path / "out").resolve()


def test_open_store_expands_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    store = open_store("~/renders")
    assert isinstance(store, LocalStore)
    assert store.root == (tmp_path / "renders").resolve()


@pytest.mark.parametrize(
    ("url", "parts"),
    [
        ("s3://bucket/prefix/job-1", ("s3://bucket/prefix", "job-1")),
        ("s3://bucket/prefix/job-1/", ("s3://bucket/prefix", "job-1")),
        ("/tmp/renders/neon-sweep", ("/tmp/renders", "neon-sweep")),
        ("renders/neon-sweep", ("renders", "neon-sweep")),
        ("./renders/a.b_c-d", ("./renders", "a.b_c-d")),
    ],
)
def test_split_job_url(url, parts):
    assert split_job_url(url) == parts


@pytest.mark.parametrize("url", ["job-1", "", "/", "job-1/"])
def test_split_job_url_refuses_urls_without_a_parent(url):
    with pytest.raises(StoreError, match="OUTPUT/JOB_ID"):
        split_job_url(url)


def test_root_is_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = LocalStore("out/../out2")
    assert store.root == (tmp_path / "out2").resolve()
    assert Path(store.url).is_absolute()


# ---------------------------------------------------------------- records: parts and compaction


def row(item_id: str = "i1", **over) -> dict:
    """A metadata row with every SCHEMA field set to a non-default value."""
    base = {
        "job_id": "neon-sweep",
        "tenant": "acme",
        "item_id": item_id,
        "unit_id": "u1",
        "prompt": "a cat <lora:neon:0.2>",
        "negative_prompt": "blurry",
        "seed": 2**32 - 1,
        "rng": "cpu",
        "model": "tiny",
        "model_hash": "0123456789",
        "loras": [
            {
                "name": "neon",
                "sha256": "ab" * 32,
                "shorthash": "abc123def456",
                "weight": 0.2,
                "te_weight": 0.2,
                "unet_weight": 0.2,
            },
            {
                "name": "ink",
                "sha256": "cd" * 32,
                "shorthash": "0123456789ab",
                "weight": -0.5,
                "te_weight": 0.0,
                "unet_weight": -0.5,
            },
        ],  # fmt: skip
        "alpha": 0.2,
        "preset": "subtle",
        "steps": 20,
        "guidance": 7.5,
        "scheduler": "euler",
        "width": 128,
        "height": 64,
        "catalog": {"sku": "A-1", "color": "red"},
        "image_key": f"images/{item_id}.png",
        "file_name": f"images/{item_id}.png",
        "image_sha256": "ef" * 32,
        "image_bytes": 12345,
        "format": "png",
        "render_seconds": 0.25,
        "batch_size": 4,
        "worker": "worker-0",
        "node": "node-a",
        "gpu": "H100",
        "attempt": 2,
        "created_at": dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC),
        "infotext": "a cat <lora:neon:0.2>\nSteps: 20, Seed: 3, Size: 128x64",
    }
    assert set(base) == set(SCHEMA.names)
    return base | over


def test_encode_decode_round_trip_of_a_full_row():
    original = row()
    table = decode_part(encode_rows([original]))
    assert table.schema.equals(SCHEMA)
    (back,) = table.to_pylist()
    back["catalog"] = dict(back["catalog"])  # Arrow maps come back as (key, value) pairs
    assert back == original
    assert back["created_at"].tzinfo is not None


def test_decode_part_reads_selected_columns():
    table = decode_part(encode_rows([row("a"), row("b")]), ["item_id"])
    assert table.column_names == ["item_id"]
    assert table.column("item_id").to_pylist() == ["a", "b"]


def test_encode_rows_allows_nulls():
    nullable = {k: None for k in SCHEMA.names} | {"item_id": "x"}
    (back,) = decode_part(encode_rows([nullable])).to_pylist()
    assert back == nullable


def good_part() -> bytes:
    return encode_rows([row("i1"), row("i2")])


@pytest.mark.parametrize(
    "data",
    [
        os.urandom(2048),
        b"",
        good_part()[: len(good_part()) // 2],
        good_part()[: len(good_part()) - 10],
    ],
    ids=["random", "empty", "half", "cut-footer"],
)
def test_decode_part_refuses_corrupt_bytes(data):
    with pytest.raises(CorruptPart):
        decode_part(data)


def test_decode_part_refuses_a_part_without_farm_columns():
    buf = io.BytesIO()
    pq.write_table(pa.table({"x": [1]}), buf)
    with pytest.raises(CorruptPart, match="item_id"):
        decode_part(buf.getvalue())
    with pytest.raises(CorruptPart, match="item_id"):
        decode_part(buf.getvalue(), ["item_id"])


def test_corrupt_parts_are_reported_and_ignored(store):
    store.put(part_key("good"), good_part())
    store.put(part_key("random"), os.urandom(4096))
    store.put(part_key("truncated"), encode_rows([row("i3")])[:100])
    store.put("parts/notes.txt", b"not a part")
    store.put("images/i9.png", b"png")
    parts = dict(iter_parts(store))
    assert set(parts) == {"parts/good.parquet", "parts/random.parquet", "parts/truncated.parquet"}
    assert isinstance(parts["parts/good.parquet"], pa.Table)
    assert isinstance(parts["parts/random.parquet"], CorruptPart)
    assert isinstance(parts["parts/truncated.parquet"], CorruptPart)
    assert completed_items(store) == {"i1", "i2"}
    done, corrupt = scan_parts(store)
    assert done == {"i1", "i2"}
    assert sorted(corrupt) == ["parts/random.parquet", "parts/truncated.parquet"]
    assert read_rows(store).column("item_id").to_pylist() == ["i1", "i2"]


def test_completed_items_of_an_empty_job(store):
    assert completed_items(store) == set()
    assert read_rows(store).num_rows == 0


def read_metadata(store: LocalStore) -> pa.Table:
    return pq.ParquetFile(io.BytesIO(store.get(METADATA))).read()


def test_compact_keeps_one_row_per_item_first_part_wins(store):
    # Two parts hold i2 (a retried unit); parts are read in key order, so "a" wins.
    store.put(part_key("b-unit"), encode_rows([row("i2", worker="second"), row("i1")]))
    store.put(part_key("a-unit"), encode_rows([row("i3"), row("i2", worker="first")]))
    store.put(part_key("broken"), b"PAR1 not really")
    assert compact(store) == 3
    table = read_metadata(store)
    assert table.schema.equals(SCHEMA)
    assert table.column("item_id").to_pylist() == ["i1", "i2", "i3"]
    rows = {r["item_id"]: r for r in table.to_pylist()}
    assert rows["i2"]["worker"] == "first"
    assert rows["i1"]["file_name"] == "images/i1.png"


def test_compact_is_idempotent(store):
    store.put(part_key("u1"), encode_rows([row("i2"), row("i1")]))
    store.put(part_key("u2"), encode_rows([row("i3"), row("i1", worker="dup")]))
    assert compact(store) == 3
    first = store.get(METADATA)
    assert compact(store) == 3
    assert store.get(METADATA) == first
    assert read_metadata(store).to_pylist() == pq.ParquetFile(io.BytesIO(first)).read().to_pylist()
    assert METADATA in list(store.list())


def test_compact_with_no_parts_writes_an_empty_table(store):
    assert compact(store) == 0
    table = read_metadata(store)
    assert table.num_rows == 0
    assert table.schema.equals(SCHEMA)
