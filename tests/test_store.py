"""Stores and the records kept in them.

One contract suite runs over both stores (`store` is parametrized: a LocalStore folder and an
S3Store on moto's server over HTTP, a fresh prefix per test): reads, writes, listing, children,
create-once, a second writer of a part, and parts, completion truth and compaction. Then the
tests of what only one store has: LocalStore's root confinement, temp files, thread and process
races (its create-once is an atomic link, so any interleaving gives one winner) and bad roots;
S3Store's URLs, conditional-write fallback, two writers that both pass the check, bucket root.

No test here depends on how threads happen to interleave: where the outcome depends on the
order (a create-once that is not atomic), the test forces the order.
"""

from __future__ import annotations

import datetime as dt
import io
import multiprocessing
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from uuid import uuid4

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO

import farm.storage.s3
from farm.audit.verify import verify_job
from farm.plan.sweep import expand, group_units, make_plan
from farm.records import parts
from farm.records.parts import (
    METADATA,
    SCHEMA,
    CorruptPart,
    compact,
    completed_items,
    decode_part,
    encode_rows,
    iter_compacted,
    iter_parts,
    part_key,
    read_rows,
    scan_parts,
)
from farm.run.job import job_context, open_job
from farm.spec import parse_spec
from farm.storage import open_store
from farm.storage.s3 import S3Store
from farm.storage.store import LocalStore, Store, StoreError, split_job_url


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> Store:
    """An empty store of each kind; moto starts only when an s3 case runs."""
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    s3 = request.getfixturevalue("s3")
    return S3Store.from_url(s3.url(f"contract/{uuid4().hex}"))


def twin(store: Store) -> Store:
    """A second, independent writer on the same root (for S3, its own client and pool)."""
    if isinstance(store, LocalStore):
        return LocalStore(store.root)
    assert isinstance(store, S3Store)
    other = S3Store(store.bucket, store.prefix, endpoint=os.environ["AWS_ENDPOINT_URL"])
    assert other.client is not store.client
    return other


# ================================================================ contract: both stores


def test_put_get_exists(store):
    assert not store.exists("a.txt")
    store.put("a.txt", b"hello")
    assert store.exists("a.txt")
    assert store.get("a.txt") == b"hello"
    store.put("empty", b"")
    assert store.exists("empty")
    assert store.get("empty") == b""


def test_put_nested_keys_and_overwrite(store):
    store.put("images/x/y.png", b"one")
    store.put("images/x/y.png", b"two, longer")
    assert store.get("images/x/y.png") == b"two, longer"
    store.put("images/x/y.png", b"3")  # shorter again: nothing of the old bytes is left
    assert store.get("images/x/y.png") == b"3"
    assert not store.exists("images/x")  # a folder is not a key
    assert not store.exists("images")
    assert list(store.list()) == ["images/x/y.png"]


def test_get_missing_key_raises_file_not_found(store):
    with pytest.raises(FileNotFoundError):
        store.get("nope")
    with pytest.raises(FileNotFoundError):
        store.get("parts/deep/nope.parquet")


def test_list_nested_and_prefixed(store):
    keys = ["job.json", "images/a.png", "images/b.png", "parts/u1.parquet", "parts/u2.parquet"]
    for key in keys:
        store.put(key, key.encode())
    assert sorted(store.list()) == sorted(keys)
    assert sorted(store.list("parts/")) == ["parts/u1.parquet", "parts/u2.parquet"]
    assert sorted(store.list("parts")) == ["parts/u1.parquet", "parts/u2.parquet"]
    assert sorted(store.list("images/")) == ["images/a.png", "images/b.png"]
    assert list(store.list("missing/")) == []
    for key in store.list():
        assert store.get(key) == key.encode()  # listed keys are usable as they are


def test_list_of_an_empty_store(store):
    assert list(store.list()) == []
    assert list(store.list("parts/")) == []


def test_keys_are_relative_to_the_store_root(store):
    # Siblings whose names share a prefix never see each other's keys.
    a, ab = store.child("a"), store.child("ab")
    a.put("k", b"a")
    ab.put("k", b"ab")
    assert list(a.list()) == ["k"]
    assert list(ab.list()) == ["k"]
    assert a.get("k") == b"a" and ab.get("k") == b"ab"
    assert sorted(store.list()) == ["a/k", "ab/k"]


def test_delete(store):
    store.put("parts/u.parquet", b"x")
    store.put("parts/v.parquet", b"y")
    store.delete("parts/u.parquet")
    assert not store.exists("parts/u.parquet")
    with pytest.raises(FileNotFoundError):
        store.get("parts/u.parquet")
    assert list(store.list()) == ["parts/v.parquet"]
    store.delete("parts/u.parquet")  # deleting a missing key is fine
    store.delete("never/was.txt")
    assert store.put_if_absent("parts/u.parquet", b"again") is True
    assert store.get("parts/u.parquet") == b"again"


def test_put_if_absent_creates_once(store):
    assert store.put_if_absent("parts/u.parquet", b"first") is True
    assert store.put_if_absent("parts/u.parquet", b"second, longer") is False
    assert store.put_if_absent("parts/u.parquet", b"") is False
    assert store.get("parts/u.parquet") == b"first"
    assert list(store.list()) == ["parts/u.parquet"]
    store.put("parts/u.parquet", b"replaced")  # put still replaces
    assert store.get("parts/u.parquet") == b"replaced"
    assert store.put_if_absent("parts/u.parquet", b"third") is False
    assert store.get("parts/u.parquet") == b"replaced"


def test_put_if_absent_after_put_is_refused(store):
    store.put("job.json", b"{}")
    assert store.put_if_absent("job.json", b"other") is False
    assert store.get("job.json") == b"{}"


def test_child_nests_under_the_parent(store):
    job = store.child("job-1")
    assert type(job) is type(store)
    assert job.url == f"{store.url}/job-1"
    assert list(job.list()) == []
    job.put("parts/u.parquet", b"x")
    assert job.put_if_absent("images/i.png", b"png") is True
    assert store.get("job-1/parts/u.parquet") == b"x"
    assert store.exists("job-1/images/i.png")
    assert sorted(job.list()) == ["images/i.png", "parts/u.parquet"]
    assert sorted(store.list()) == ["job-1/images/i.png", "job-1/parts/u.parquet"]
    assert list(store.list("job-1/parts/")) == ["job-1/parts/u.parquet"]
    # What the parent writes under the name, the child reads as its own.
    store.put("job-1/job.json", b"{}")
    assert job.get("job.json") == b"{}"
    job.delete("parts/u.parquet")
    assert not store.exists("job-1/parts/u.parquet")


def test_child_of_a_child(store):
    deep = store.child("out").child("job-1")
    assert deep.url == f"{store.url}/out/job-1"
    deep.put("parts/u.parquet", b"x")
    assert list(store.list()) == ["out/job-1/parts/u.parquet"]
    assert list(store.child("out").list()) == ["job-1/parts/u.parquet"]


def test_check_passes_and_leaves_nothing(store):
    store.check()
    store.check()
    assert list(store.list()) == []
    store.put("a.txt", b"x")
    store.check()
    assert list(store.list()) == ["a.txt"]
    store.child("job-1").check()


# ================================================================ contract: writers of one part


def payload(i: int) -> bytes:
    """Each writer's own bytes, of its own length, so a mix of two is never a payload."""
    return f"payload {i} ".encode() * (i + 1)


def race(writers: list[Store], key: str) -> dict[int, bool]:
    """One thread per writer, released together, each creating `key` with its own payload."""
    barrier = threading.Barrier(len(writers))
    results: dict[int, bool] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = writers[i].put_if_absent(key, payload(i))
        except BaseException as err:  # re-raised in the test's thread
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(writers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    if errors:
        raise errors[0]
    assert len(results) == len(writers)
    return results


def the_winner(results: dict[int, bool]) -> int:
    winners = [i for i, created in results.items() if created]
    assert len(winners) == 1, f"exactly one writer must create the key, got {winners}"
    return winners[0]


def test_a_second_writer_of_a_part_is_refused(store):
    """Independent writers (their own store objects, for S3 their own clients), one after
    the other: the first creates the part, every later one gets False and reads its bytes.
    Racing writers are tested where the outcome does not depend on luck: LocalStore's
    atomic link below, and S3 with both writers forced past the check."""
    writers = [store, twin(store), twin(store)]
    key = part_key("u1")
    assert writers[0].put_if_absent(key, payload(0)) is True
    for i, writer in enumerate(writers):
        assert writer.put_if_absent(key, payload(i + 1)) is False
        assert writer.get(key) == payload(0)
    assert list(store.list("parts/")) == [key]


# ================================================================ contract: records in a store


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
                "blocks": "MIDD",
                "schedule": "0.2@0,1@0.5",
                "applied": 288,
                "dropped": 0,
                "checkpoint": {
                    "run": "neon",
                    "file": "neon-000004.safetensors",
                    "step": 400,
                    "epoch": 4,
                },
            },
            {
                "name": "ink",
                "sha256": "cd" * 32,
                "shorthash": "0123456789ab",
                "weight": -0.5,
                "te_weight": 0.0,
                "unet_weight": -0.5,
                "blocks": None,
                "schedule": None,
                "applied": None,
                "dropped": None,
                "checkpoint": None,
            },
        ],  # fmt: skip
        "alpha": 0.2,
        "preset": "subtle",
        "steps": 20,
        "guidance": 7.5,
        "scheduler": "euler",
        "width": 128,
        "height": 64,
        "catalog": [{"key": "sku", "value": "A-1"}, {"key": "color", "value": "red"}],
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
        "threads": 3,
        "attempt": 2,
        "created_at": dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC),
        "infotext": "a cat <lora:neon:0.2>\nSteps: 20, Seed: 3, Size: 128x64",
        "flags": ["saturated"],
        "named_key": f"named/A-1/{item_id}.png",
        "batch_items": [item_id, "i9"],
    }
    assert set(base) == set(SCHEMA.names)
    return base | over


def good_part() -> bytes:
    return encode_rows([row("i1"), row("i2")])


def test_a_part_round_trips_through_the_store(store):
    original = row()
    assert store.put_if_absent(part_key("u1"), encode_rows([original])) is True
    ((key, table),) = iter_parts(store)
    assert key == "parts/u1.parquet"
    assert table.schema.equals(SCHEMA)
    (back,) = table.to_pylist()
    assert back == original


def test_corrupt_parts_are_reported_and_ignored(store):
    store.put(part_key("good"), good_part())
    store.put(part_key("random"), os.urandom(4096))
    store.put(part_key("truncated"), encode_rows([row("i3")])[:100])
    store.put(part_key("empty"), b"")
    store.put("parts/notes.txt", b"not a part")
    store.put("images/i9.png", b"png")
    parts = dict(iter_parts(store))
    assert set(parts) == {
        "parts/empty.parquet",
        "parts/good.parquet",
        "parts/random.parquet",
        "parts/truncated.parquet",
    }
    assert isinstance(parts["parts/good.parquet"], pa.Table)
    for bad in ("empty", "random", "truncated"):
        assert isinstance(parts[f"parts/{bad}.parquet"], CorruptPart)
    assert completed_items(store) == {"i1", "i2"}
    done, corrupt = scan_parts(store)
    assert done == {"i1", "i2"}
    assert sorted(corrupt) == [
        "parts/empty.parquet",
        "parts/random.parquet",
        "parts/truncated.parquet",
    ]
    assert read_rows(store).column("item_id").to_pylist() == ["i1", "i2"]


def test_completed_items_of_an_empty_job(store):
    assert completed_items(store) == set()
    assert scan_parts(store) == (set(), [])
    assert read_rows(store).num_rows == 0
    assert read_rows(store).schema.equals(SCHEMA)


def test_completed_items_of_a_job_in_a_child(store):
    job = store.child("neon-sweep")
    job.put(part_key("u1"), encode_rows([row("i1"), row("i2")]))
    job.put(part_key("u2"), encode_rows([row("i3")]))
    store.child("other-job").put(part_key("u1"), encode_rows([row("x1")]))
    assert completed_items(job) == {"i1", "i2", "i3"}
    assert completed_items(store) == set()  # parts are found only at the job's own root


def read_metadata(store: Store) -> pa.Table:
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


def test_compacted_rows_are_read_a_row_group_at_a_time(store, monkeypatch):
    """A reader of metadata.parquet holds one row group, read from a file of the object."""
    monkeypatch.setattr(parts, "ROW_GROUP_ROWS", 4)
    ids = [f"i{n:02d}" for n in range(10)]
    store.put(part_key("u1"), encode_rows([row(i) for i in reversed(ids)]))
    assert compact(store) == 10
    tables = list(iter_compacted(store, ["item_id", "worker"]))
    assert [t.num_rows for t in tables] == [4, 4, 2]
    assert [i for t in tables for i in t.column("item_id").to_pylist()] == ids
    with store.reading(METADATA) as f:
        assert f.read() == store.get(METADATA)
    store.put(METADATA, b"PAR1 damaged")
    with pytest.raises(CorruptPart, match="metadata.parquet"):
        list(iter_compacted(store))
    with pytest.raises(FileNotFoundError), store.reading("no-such-key"):
        pass


def test_compact_with_no_parts_writes_an_empty_table(store):
    assert compact(store) == 0
    table = read_metadata(store)
    assert table.num_rows == 0
    assert table.schema.equals(SCHEMA)


# ================================================================ records: bytes only, no store


def test_encode_decode_round_trip_of_a_full_row():
    original = row()
    table = decode_part(encode_rows([original]))
    assert table.schema.equals(SCHEMA)
    (back,) = table.to_pylist()
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


# ================================================================ LocalStore only


@pytest.fixture
def local(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "out")


def test_local_writes_files_under_its_root(local, tmp_path):
    local.put("a.txt", b"hello")
    local.put("images/x/y.png", b"png")
    assert (tmp_path / "out" / "a.txt").read_bytes() == b"hello"
    assert (tmp_path / "out" / "images" / "x" / "y.png").read_bytes() == b"png"
    assert local.url == str((tmp_path / "out").resolve())
    assert list(LocalStore(local.root / "never-made").list()) == []


@pytest.mark.parametrize(
    "umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)], ids=["022", "027", "077"]
)
def test_local_files_get_the_umask_mode_not_mkstemps_0600(tmp_path, umask, mode):
    """Images and reports are served and shared as plain files: they get what open()
    would give under the writer's umask, not mkstemp's private 0600."""
    script = (
        "import sys; from farm.storage.store import LocalStore; s = LocalStore(sys.argv[1]); "
        "s.put('images/a.png', b'x'); s.put_if_absent('parts/u.parquet', b'y')"
    )
    subprocess.run(["sh", "-c", f"umask {umask:03o} && exec {sys.executable} -c \"{script}\" "
                    f"{tmp_path}"], check=True, cwd=REPO)  # fmt: skip
    for key in ("images/a.png", "parts/u.parquet"):
        assert (tmp_path / key).stat().st_mode & 0o777 == mode, key


def test_local_list_never_shows_hidden_temp_files(local):
    local.put("parts/u1.parquet", b"x")
    (local.root / "parts" / ".u2.parquet.abc123").write_bytes(b"half written")
    (local.root / ".check-xyz").write_bytes(b"")
    assert list(local.list()) == ["parts/u1.parquet"]
    # A write leaves no temp file behind.
    local.put_if_absent("parts/u1.parquet", b"y")
    local.put("parts/u3.parquet", b"z")
    assert sorted(os.listdir(local.root / "parts")) == [
        ".u2.parquet.abc123",
        "u1.parquet",
        "u3.parquet",
    ]


def test_local_put_if_absent_leaves_no_temp_file(local):
    assert local.put_if_absent("parts/u.parquet", b"first") is True
    assert local.put_if_absent("parts/u.parquet", b"second") is False
    assert os.listdir(local.root / "parts") == ["u.parquet"]


def test_local_put_if_absent_race_between_threads(local):
    # os.link either creates the name or fails: whatever the interleaving, one thread wins,
    # the file is its bytes, and no temp file is left.
    keys = []
    for round_ in range(5):
        key = f"parts/race-{round_}.parquet"
        keys.append(key)
        winner = the_winner(race([local] * 8, key))
        assert local.get(key) == payload(winner)
    assert sorted(local.list()) == keys
    assert sorted(os.listdir(local.root / "parts")) == [f"race-{r}.parquet" for r in range(5)]


def _race_in_process(root: str, key: str, i: int, start, results) -> None:
    start.wait()
    results.put((i, LocalStore(root).put_if_absent(key, f"process {i}".encode() * 100)))


def test_local_put_if_absent_race_between_processes(local):
    # fork: the children only touch the file system, and start in milliseconds.
    ctx = multiprocessing.get_context("fork")
    start, results = ctx.Event(), ctx.Queue()
    key = "parts/u.parquet"
    procs = [
        ctx.Process(target=_race_in_process, args=(str(local.root), key, i, start, results))
        for i in range(8)
    ]
    for p in procs:
        p.start()
    start.set()
    outcomes = dict(results.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(outcomes) == 8
    winner = the_winner(outcomes)
    assert local.get(key) == f"process {winner}".encode() * 100
    assert os.listdir(local.root / "parts") == ["u.parquet"]


@pytest.mark.parametrize("key", ["../x", "a/../../x", "parts/../../../etc/passwd", "/etc/x"])
def test_local_keys_escaping_the_root_raise(local, tmp_path, key):
    for call in (
        lambda: local.put(key, b"x"),
        lambda: local.put_if_absent(key, b"x"),
        lambda: local.get(key),
        lambda: local.exists(key),
        lambda: local.delete(key),
        lambda: list(local.list(key)),
        lambda: local.child(key),
    ):
        with pytest.raises(StoreError, match="escapes the store root"):
            call()
    assert not (tmp_path / "x").exists()


def test_local_dotdot_inside_the_root_is_allowed(local):
    local.put("a/../b.txt", b"x")
    assert local.get("b.txt") == b"x"


def test_local_child_cannot_escape_its_root(local):
    job = local.child("job-1")
    assert isinstance(job, LocalStore)
    assert job.root == local.root / "job-1"
    with pytest.raises(StoreError):
        job.get("../../outside")


def test_local_check_creates_the_root_and_leaves_nothing(tmp_path):
    store = LocalStore(tmp_path / "new" / "deep")
    store.check()
    assert (tmp_path / "new" / "deep").is_dir()
    assert os.listdir(tmp_path / "new" / "deep") == []


def test_local_check_refuses_a_path_under_a_regular_file(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    store = LocalStore(tmp_path / "file" / "out")
    with pytest.raises(StoreError, match="cannot write here") as info:
        store.check()
    assert str(tmp_path / "file" / "out") in str(info.value)
    assert "\n" not in str(info.value)


def test_local_root_is_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = LocalStore("out/../out2")
    assert store.root == (tmp_path / "out2").resolve()
    assert Path(store.url).is_absolute()


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


# ================================================================ S3Store only


@pytest.mark.parametrize(
    ("url", "bucket", "prefix", "canonical"),
    [
        ("s3://b/p/q", "b", "p/q", "s3://b/p/q"),
        ("s3://b/p/q/", "b", "p/q", "s3://b/p/q"),
        ("s3://b/p", "b", "p", "s3://b/p"),
        ("s3://b", "b", "", "s3://b"),
        ("s3://b/", "b", "", "s3://b"),
    ],
)
def test_s3_from_url(url, bucket, prefix, canonical):
    store = S3Store.from_url(url)
    assert (store.bucket, store.prefix, store.url) == (bucket, prefix, canonical)
    assert store.endpoint is None


def test_s3_from_url_keeps_an_explicit_endpoint():
    store = S3Store.from_url("s3://b/p", endpoint="http://127.0.0.1:9")
    assert store.endpoint == "http://127.0.0.1:9"
    assert store.child("job-1").endpoint == "http://127.0.0.1:9"


@pytest.mark.parametrize("url", ["s3://", "s3:///p", "s3://b/../x", "s3://b/p/../x", "s3://b c/p"])
def test_s3_from_url_refuses_malformed_urls(url):
    with pytest.raises(StoreError, match="malformed S3 URL") as info:
        S3Store.from_url(url)
    assert url in str(info.value)


def test_open_store_s3():
    store = open_store("s3://bucket/renders/out")
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.url) == (
        "bucket",
        "renders/out",
        "s3://bucket/renders/out",
    )


def test_s3_child_url_and_prefix():
    job = S3Store.from_url("s3://b/out").child("job-1")
    assert (job.bucket, job.prefix, job.url) == ("b", "out/job-1", "s3://b/out/job-1")
    root_child = S3Store.from_url("s3://b").child("job-1")
    assert (root_child.prefix, root_child.url) == ("job-1", "s3://b/job-1")


def test_s3_keys_land_under_the_prefix(s3):
    prefix = f"layout/{uuid4().hex}"
    store = S3Store.from_url(s3.url(prefix))
    store.put("parts/u.parquet", b"x")
    store.child("job-1").put("job.json", b"{}")
    found = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=f"{prefix}/")["Contents"]
    assert sorted(o["Key"] for o in found) == [
        f"{prefix}/job-1/job.json",
        f"{prefix}/parts/u.parquet",
    ]


def test_s3_store_at_the_bucket_root(s3):
    bucket = f"farm-root-{uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=bucket)
    store = S3Store.from_url(f"s3://{bucket}")
    store.check()
    assert list(store.list()) == []
    store.put("a/b.txt", b"x")
    assert store.put_if_absent("c.txt", b"y") is True
    assert sorted(store.list()) == ["a/b.txt", "c.txt"]
    assert list(store.child("a").list()) == ["b.txt"]
    assert store.child("a").get("b.txt") == b"x"


def test_s3_conditional_write_fallback(s3):
    """HEAD-then-PUT, as used where the server does not implement If-None-Match."""
    store = S3Store.from_url(s3.url(f"fallback/{uuid4().hex}"))
    store.conditional_writes = False
    assert store.put_if_absent("parts/u.parquet", b"first") is True
    assert store.put_if_absent("parts/u.parquet", b"second") is False
    assert store.get("parts/u.parquet") == b"first"
    store.put("job.json", b"{}")
    assert store.put_if_absent("job.json", b"other") is False
    assert store.get("job.json") == b"{}"
    store.delete("parts/u.parquet")
    assert store.put_if_absent("parts/u.parquet", b"again") is True
    assert store.get("parts/u.parquet") == b"again"
    assert store.conditional_writes is False


def rendered_parts(worker, job: Store, tmp_path: Path) -> tuple[str, bytes, bytes]:
    """A tiny job rendered into `job`, and its one unit's part from two writers.

    The second writer renders the same unit again elsewhere (as a retry on another worker
    would): same images, rows that differ in attempt, created_at and render_seconds.
    """
    data = {"job": "twice", "prompts": ["a lighthouse"], "seeds": [1, 2],
            "render": {"steps": 2, "width": 64, "height": 64}}  # fmt: skip
    plan = make_plan(parse_spec(data, base_dir=tmp_path))
    open_job(plan, job, echo=lambda _: None)
    (unit,) = group_units(expand(plan))
    worker.render(unit, job_context(plan, job), attempt=1)
    elsewhere = LocalStore(tmp_path / "elsewhere")
    worker.render(unit, job_context(plan, elsewhere), attempt=2)
    key = part_key(unit.unit_id)
    return key, job.get(key), elsewhere.get(key)


def test_s3_writers_that_both_pass_the_check_leave_one_whole_part(s3, cpu_worker, tmp_path):
    """A create-once that is not atomic, with the interleaving forced rather than hoped for.

    HEAD-then-PUT (the fallback) has the same two steps as a server that checks
    If-None-Match and then writes (moto's). Both writers' HEADs answer "absent" before
    either PUTs; then writer 0 PUTs, then writer 1. Both calls return True, and the
    guarantee still holds: one object under the key, one writer's complete part, later
    writers refused, and the job's completed items and verify are what either part gives.
    """
    job = S3Store.from_url(s3.url(f"two-writers/{uuid4().hex}"))
    key, first_part, second_part = rendered_parts(cpu_worker, job, tmp_path)
    assert first_part != second_part  # else "which writer's bytes" would prove nothing
    planned = completed_items(job)
    assert len(planned) == 2 and verify_job(job).ok
    job.delete(key)

    writers = [job, twin(job)]
    parts = [first_part, second_part]
    for w in writers:
        w.conditional_writes = False
    checked = threading.Barrier(2, timeout=60)  # a guard against a hang, not a clock
    first_put = threading.Event()

    def in_race() -> bool:
        return threading.current_thread().name.startswith("writer-")

    heads: list[str] = []

    def both_checked(**_):  # after each writer's HEAD: wait until the other's is back
        if in_race():
            heads.append(threading.current_thread().name)
            checked.wait()

    def after_first(**_):
        if in_race():
            first_put.set()

    def wait_for_first(**_):
        if in_race():
            assert first_put.wait(timeout=60)

    hooks = [(writers[0], "after-call.s3.HeadObject", both_checked),
             (writers[1], "after-call.s3.HeadObject", both_checked),
             (writers[0], "after-call.s3.PutObject", after_first),
             (writers[1], "before-call.s3.PutObject", wait_for_first)]  # fmt: skip
    results: dict[int, bool] = {}
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            results[i] = writers[i].put_if_absent(key, parts[i])
        except BaseException as err:  # re-raised in the test's thread
            errors.append(err)

    for w, event, hook in hooks:
        w.client.meta.events.register(event, hook)
    try:
        threads = [threading.Thread(target=write, args=(i,), name=f"writer-{i}") for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        for w, event, hook in hooks:
            w.client.meta.events.unregister(event, hook)
    if errors:
        raise errors[0]
    assert sorted(heads) == ["writer-0", "writer-1"]  # the order really was forced
    assert results == {0: True, 1: True}  # not atomic: both writers "created" the part
    assert list(job.list("parts/")) == [key]
    assert job.get(key) == second_part  # the last PUT, whole
    for w, part in zip(writers, parts, strict=True):
        assert w.put_if_absent(key, part) is False
    # Both writers' rows agree in everything that decides completion.
    decisive = ["item_id", "image_key", "image_sha256"]
    first_rows, second_rows = (decode_part(p, decisive).to_pylist() for p in parts)
    assert first_rows == second_rows
    attempts = [decode_part(p, ["attempt"]).column("attempt").to_pylist() for p in parts]
    assert attempts == [[1, 1], [2, 2]]
    assert completed_items(job) == planned
    assert verify_job(job).ok


def test_s3_switches_to_the_fallback_when_the_server_says_not_implemented(s3):
    store = S3Store(s3.bucket, f"fallback/{uuid4().hex}", endpoint=s3.endpoint)
    refused: list[str] = []

    def not_implemented(params, **_):
        # As a server without conditional writes answers a PUT with If-None-Match.
        if "If-None-Match" in params["headers"]:
            refused.append(params["url_path"])
            error = {
                "Code": "NotImplemented",
                "Message": "A header you provided is not implemented",
            }
            return SimpleNamespace(status_code=501, headers={}), {
                "Error": error,
                "ResponseMetadata": {"HTTPStatusCode": 501},
            }
        return None

    events = store.client.meta.events
    events.register("before-call.s3.PutObject", not_implemented)
    try:
        assert store.put_if_absent("parts/u.parquet", b"first") is True
        assert len(refused) == 1
        assert store.conditional_writes is False
        assert store.put_if_absent("parts/u.parquet", b"second") is False
        assert len(refused) == 1  # once known, If-None-Match is not sent again
        assert store.get("parts/u.parquet") == b"first"
    finally:
        events.unregister("before-call.s3.PutObject", not_implemented)


def test_s3_conditional_writes_are_used_where_the_server_has_them(s3):
    store = S3Store.from_url(s3.url(f"conditional/{uuid4().hex}"))
    assert store.put_if_absent("k", b"1") is True
    assert store.put_if_absent("k", b"2") is False
    assert store.conditional_writes is True


def test_s3_large_objects_go_multipart(s3, monkeypatch):
    monkeypatch.setattr(farm.storage.s3, "MULTIPART_BYTES", 1024 * 1024)
    store = S3Store.from_url(s3.url(f"multipart/{uuid4().hex}"))
    data = os.urandom(9 * 1024 * 1024)  # above s3transfer's 8 MiB: two parts
    store.put("images/big.png", data)
    assert store.get("images/big.png") == data
    head = s3.client().head_object(Bucket=s3.bucket, Key=f"{store.prefix}/images/big.png")
    assert head["ETag"].strip('"').endswith("-2")  # a multipart upload's ETag


def test_s3_check_refuses_a_missing_bucket(s3):
    store = S3Store.from_url(f"s3://farm-missing-{uuid4().hex[:12]}/out")
    with pytest.raises(StoreError, match="the bucket does not exist") as info:
        store.check()
    assert "\n" not in str(info.value)


def test_s3_get_of_a_missing_key_names_its_url(s3):
    store = S3Store.from_url(s3.url(f"missing/{uuid4().hex}"))
    with pytest.raises(FileNotFoundError, match=f"{store.url}/nope"):
        store.get("nope")


def test_a_scratch_folder_that_cannot_be_written_is_one_line_naming_it(tmp_path, monkeypatch):
    import tempfile

    from farm.errors import FarmError
    from farm.storage.scratch import Spill

    with Spill(2, str(tmp_path)) as spill:
        spill.add("ids", 1, "a")
        spill.add("ids", 1, "b")
        assert list(spill.read("ids", 1)) == ["a", "b"] and list(spill.read("ids", 0)) == []
        # A bucket file the disk will not take (here: a folder in its place).
        (spill.root / "ids-00000.jsonl").mkdir()
        spill.add("ids", 0, "c")
        with pytest.raises(
            FarmError,
            match=r"^scratch folder .*farm-scratch-.*: Is a "
            r"directory; free space there or set TMPDIR",
        ):
            spill.flush()
        root = spill.root
    assert not root.exists()  # removed on close, error or not
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    monkeypatch.setattr(tempfile, "tempdir", str(not_a_folder))
    with pytest.raises(FarmError, match=f"^scratch folder {not_a_folder}: Not a directory"):
        Spill(1)
