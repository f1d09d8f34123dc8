"""Storage at its limits: what the README promises past the sizes that small tests reach.

- S3 answers a listing 1,000 keys at a time: a job with more parts and images than that is
  listed whole, and resume and status see every finished item.
- Uploads of 64 MiB and more go multipart, at the real threshold; a multipart upload that
  fails is aborted, leaving neither an incomplete upload nor an object behind.
- The worker's upload queue is bounded: while storage does not answer, rendering stops
  with at most UPLOAD_QUEUE images waiting for it, then finishes when storage comes back.

No test here can fail by timing: where a thread must be at a given point, the test waits
(with a bound) for a mark that the code under test sets there, and the one wait that lets
time pass (GO_ON) can only make a broken worker look right, never a correct one wrong.
"""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from uuid import uuid4

import pytest

import farm.worker.render_worker
from farm.audit.verify import job_status, verify_job
from farm.plan.stored import inspect_job
from farm.plan.sweep import expand, group_units, make_plan, unit_streams
from farm.records.parts import SCHEMA, decode_part, encode_rows, part_key
from farm.run.job import job_context, open_job
from farm.spec import parse_spec
from farm.storage import open_store
from farm.storage.s3 import MULTIPART_BYTES, S3Store
from farm.storage.store import LocalStore, StoreError
from farm.worker.render_worker import UPLOAD_QUEUE

MIB = 1024 * 1024
S3_PAGE = 1000  # keys per listing page, S3's (and moto's) default and maximum
MANY = 1100  # parts and images in a job: more than one page of each


def quiet(_: str) -> None:
    pass


def part_row(item, unit, image: bytes) -> dict:
    """A row that says `item` is done with `image`: what resume, status and verify read."""
    row = {name: None for name in SCHEMA.names}
    key = f"images/{item.item_id}.png"
    return row | {
        "job_id": "paged", "item_id": item.item_id, "unit_id": unit.unit_id,
        "seed": item.seed, "image_key": key, "file_name": key,
        "image_sha256": hashlib.sha256(image).hexdigest(), "image_bytes": len(image),
    }  # fmt: skip


@pytest.fixture
def scratch(s3):
    """A fresh prefix of the session's bucket, emptied afterwards: a thousand keys or a
    64 MiB object left there would slow every later listing of the bucket."""
    prefix = uuid4().hex
    yield prefix
    client = s3.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket,
                                                                 Prefix=f"{prefix}/"):  # fmt: skip
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=s3.bucket, Delete={"Objects": keys})


def test_s3_jobs_past_a_thousand_parts_and_images_are_listed_and_read_whole(s3, scratch, tmp_path):
    data = {"job": "paged", "prompts": ["a dot"], "seeds": {"start": 0, "count": MANY},
            "render": {"steps": 2, "width": 64, "height": 64}}  # fmt: skip
    plan = make_plan(parse_spec(data, base_dir=tmp_path))
    job = S3Store.from_url(s3.url(f"{scratch}/paged"))
    open_job(plan, job, echo=quiet)
    # Units of one item: a part per item, as a job rendered one image per unit leaves.
    units = list(group_units(expand(plan), size=1))
    assert len(units) == MANY

    def finish(unit) -> None:
        (item,) = unit.items
        image = f"png of {item.item_id}".encode()  # cheap: only keys and digests matter
        job.put(f"images/{item.item_id}.png", image)
        job.put(part_key(unit.unit_id), encode_rows([part_row(item, unit, image)]))

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(finish, units))

    # The server really answers in pages: one listing call does not hold them all.
    first = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=f"{job.prefix}/parts/")
    assert first["IsTruncated"] and first["KeyCount"] == S3_PAGE

    item_ids = {u.items[0].item_id for u in units}
    assert sorted(job.list("parts/")) == sorted(part_key(u.unit_id) for u in units)
    assert sorted(job.list("images/")) == sorted(f"images/{i}.png" for i in item_ids)
    # resume: every item is done, and nothing is left to render.
    seen = inspect_job(plan, job)
    assert seen.done == item_ids and seen.corrupt == []
    assert [u for stream in unit_streams(plan, seen.done) for u in stream.units] == []
    # status counts them too. (verify reads the parts through the same iter_parts: a third
    # read of 1,100 parts would cost seconds and prove nothing more about the listing.)
    status = job_status(job)
    assert (status["rendered"], status["parts"], status["remaining"]) == (MANY, MANY, 0)


# ================================================================ multipart uploads

# README: "Uploads above 64 MiB use multipart". The size is the documented figure, not
# MULTIPART_BYTES, so that a change of the constant shows here.
THRESHOLD = 64 * MIB
S3_CALLS = ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload",
            "AbortMultipartUpload")  # fmt: skip


class Calls:
    """The S3 requests a store's client makes, counted as botocore is about to send them.

    The client is shared per endpoint and process, so the hooks come off afterwards.
    `fail_part` makes that UploadPart (1-based, in the order they are sent) come back
    as the server's 400 BadDigest, as when a part was damaged on the way.
    """

    def __init__(self, store: S3Store, fail_part: int | None = None):
        self.events = store.client.meta.events
        self.fail_part = fail_part
        self.counts = dict.fromkeys(S3_CALLS, 0)
        self.lock = threading.Lock()
        self.hooks = [(f"before-call.s3.{name}", self._hook(name)) for name in S3_CALLS]

    def _hook(self, name: str):
        def seen(**_):
            with self.lock:  # s3transfer sends parts from threads of its own
                self.counts[name] += 1
                number = self.counts[name]
            if name == "UploadPart" and number == self.fail_part:
                error = {"Code": "BadDigest", "Message": "The Content-MD5 did not match"}
                return SimpleNamespace(status_code=400, headers={}), {
                    "Error": error,
                    "ResponseMetadata": {"HTTPStatusCode": 400},
                }
            return None

        return seen

    def __enter__(self) -> Calls:
        for event, hook in self.hooks:
            self.events.register(event, hook)
        return self

    def __exit__(self, *_) -> None:
        for event, hook in self.hooks:
            self.events.unregister(event, hook)


def test_the_multipart_threshold_is_the_documented_64_mib():
    assert MULTIPART_BYTES == THRESHOLD


@pytest.mark.parametrize(
    ("size", "multipart"),
    [(THRESHOLD, True), (THRESHOLD - 1, False)],
    ids=["at-64-mib", "one-byte-under"],
)
def test_s3_uploads_of_64_mib_go_multipart_and_smaller_ones_do_not(s3, scratch, size,
                                                                  multipart):  # fmt: skip
    store = S3Store.from_url(s3.url(f"{scratch}/threshold"))
    data = os.urandom(size)  # random, so that parts put back out of order would show
    with Calls(store) as calls:
        store.put("images/big.png", data)
    if multipart:
        assert calls.counts["CreateMultipartUpload"] == 1
        assert calls.counts["UploadPart"] >= 2
        assert calls.counts["CompleteMultipartUpload"] == 1
        assert calls.counts["PutObject"] == 0
    else:
        assert calls.counts == dict.fromkeys(S3_CALLS, 0) | {"PutObject": 1}
    assert store.get("images/big.png") == data
    # The server's own record: a multipart upload's ETag ends in "-{number of parts}".
    head = s3.client().head_object(Bucket=s3.bucket, Key=f"{store.prefix}/images/big.png")
    assert ("-" in head["ETag"]) is multipart


def test_s3_a_failed_multipart_upload_is_aborted_and_leaves_nothing(s3, scratch):
    store = S3Store.from_url(s3.url(f"{scratch}/aborted"))
    with Calls(store, fail_part=2) as calls, pytest.raises(StoreError, match="BadDigest") as info:
        store.put("images/big.png", bytes(THRESHOLD))
    assert "\n" not in str(info.value)  # farm's one-line error, not botocore's
    # The server holds no incomplete upload (whose parts it would keep, and bill, forever)
    # and no object under the key.
    client = s3.client()
    uploads = client.list_multipart_uploads(Bucket=s3.bucket, Prefix=store.prefix)
    assert uploads.get("Uploads", []) == []
    assert not store.exists("images/big.png")
    assert list(store.list()) == []
    # It was a multipart upload, failed mid-way and aborted, not refused before it began.
    assert calls.counts["CreateMultipartUpload"] == 1 and calls.counts["UploadPart"] >= 2
    assert calls.counts["CompleteMultipartUpload"] == 0
    assert calls.counts["AbortMultipartUpload"] == 1


# ================================================================ the bounded upload queue

WAIT = 300  # seconds: a guard against a hang, never a clock the test reads
# Seconds given a worker without the bound to render one image more (64², 2 steps: about
# a tenth of a second here). A worker with the bound never renders it, so this wait can
# only make a broken worker pass on a machine 50 times slower, never fail a correct one.
GO_ON = 5


class StalledStore(LocalStore):
    """A real folder whose image writes wait until the test lets them through: storage
    that has stopped answering. Everything else is written at once."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.lock = threading.Lock()
        self.arrived = 0  # image puts that reached the store
        self.written = 0  # image puts that returned
        self.flowing = threading.Event()

    def put(self, key: str, data: bytes) -> None:
        if key.startswith("images/"):
            with self.lock:
                self.arrived += 1
            if not self.flowing.wait(WAIT):
                raise StoreError(f"{key}: the test never let the write through")
            super().put(key, data)
            with self.lock:
                self.written += 1
            return
        super().put(key, data)


class Decoded:
    """Images the pipeline has rendered, counted as the VAE decodes them (a forward hook
    observes and changes nothing). `reached` is set at `mark` images, `past` beyond it."""

    def __init__(self, decoder, mark: int):
        self.count, self.mark = 0, mark
        self.reached, self.past = threading.Event(), threading.Event()
        self.handle = decoder.register_forward_hook(self._seen)

    def _seen(self, module, args, output) -> None:
        self.count += len(output)  # only the worker's torch thread calls the decoder
        if self.count >= self.mark:
            self.reached.set()
        if self.count > self.mark:
            self.past.set()


def test_slow_storage_stops_rendering_at_the_upload_queue_and_the_unit_then_finishes(
    cpu_worker, tmp_path, monkeypatch
):
    # One unit of more items than the queue holds plus one call (batch 1): without the
    # bound, rendering would run to the end of the unit while no image can be written.
    count = UPLOAD_QUEUE + 4
    data = {"job": "stalled", "prompts": ["a red circle on a white background"],
            "seeds": {"start": 0, "count": count},
            "render": {"steps": 2, "width": 64, "height": 64, "batch": 1}}  # fmt: skip
    plan = make_plan(parse_spec(data, base_dir=tmp_path))
    store = StalledStore(tmp_path / "stalled")
    open_job(plan, store, echo=quiet)
    (unit,) = group_units(expand(plan), size=count)
    ctx = job_context(plan, store)
    # The worker opens its store from the job's URL; this one URL opens the stalled store.
    monkeypatch.setattr(farm.worker.render_worker, "open_store",
                        lambda url: store if url == store.url else open_store(url))  # fmt: skip
    loaded = cpu_worker.on_torch_thread(cpu_worker.pipelines.get, ctx.model_path,
                                        ctx.model_fingerprint)  # fmt: skip
    # With no image written, the queue fills with UPLOAD_QUEUE images and the one after
    # them is rendered and then waits for a slot: rendering must stop right there.
    stall = UPLOAD_QUEUE + 1
    decoded = Decoded(loaded.pipe.vae.decoder, stall)
    outcome: dict = {}

    def render() -> None:
        try:
            outcome["report"] = cpu_worker.render(unit, ctx)
        except BaseException as err:  # noqa: BLE001 (handed to the test's thread)
            outcome["error"] = err

    thread = threading.Thread(target=render, name="test-render", daemon=True)
    thread.start()
    try:
        assert decoded.reached.wait(WAIT), f"rendering stopped at {decoded.count} images"
        # Rendering goes no further while storage holds every image: had it gone on, the
        # next call would decode within this wait. (A correct worker never sets `past`, so
        # how long the wait is decides nothing when the bound holds.)
        assert not decoded.past.wait(GO_ON), f"rendered {decoded.count} with none written"
        with store.lock:
            arrived, written = store.arrived, store.written
        assert written == 0
        assert arrived <= UPLOAD_QUEUE
        # Images rendered and not written: the queue's and the one that waits for a slot.
        assert decoded.count - written == UPLOAD_QUEUE + 1
        assert not store.exists(part_key(unit.unit_id))
    finally:
        store.flowing.set()
        thread.join(WAIT)
        decoded.handle.remove()
    assert not thread.is_alive()
    assert "error" not in outcome, outcome.get("error")
    report = outcome["report"]
    assert (report.images, report.skipped) == (count, False)
    assert decoded.count == count and store.written == count
    # Every image and the part are written, and the rows match the images.
    rows = decode_part(store.get(part_key(unit.unit_id))).to_pylist()
    assert [r["item_id"] for r in rows] == [i.item_id for i in unit.items]
    assert sorted(store.list("images/")) == sorted(r["image_key"] for r in rows)
    verdict = verify_job(store)
    assert verdict.problems == [] and verdict.images_checked == count
    # Every slot came back: one kept by a finished upload would shrink the queue of every
    # later unit of this worker.
    slots = cpu_worker.upload_slots
    taken = [slots.acquire(blocking=False) for _ in range(UPLOAD_QUEUE + 1)]
    for _ in range(sum(taken)):
        slots.release()
    assert taken == [True] * UPLOAD_QUEUE + [False]
