"""s3:// LoRA files and model folders: fetched once per node, checked, cached; end to end."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import REPO
from jobrun import farm_here

from farm.plan.items import Adapter
from farm.plan.model_refs import model_fingerprint
from farm.plan.sweep import make_plan
from farm.spec import SpecError, parse_spec
from farm.storage import fetch
from farm.storage.fetch import fetch_dir, fetch_file, s3_dir_fingerprint
from farm.storage.store import StoreError
from farm.worker.localize import local_lora_path, local_model_path, resolve_model_path


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    # A fresh node cache per test, so one test's download never serves another.
    monkeypatch.setenv("FARM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def prefix() -> str:
    return f"fetch-{uuid.uuid4().hex[:10]}"


def put(s3, key: str, data: bytes) -> str:
    s3.client().put_object(Bucket=s3.bucket, Key=key, Body=data)
    return s3.url(key)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def downloads(monkeypatch) -> list[str]:
    """Every object this process downloads, in order."""
    seen: list[str] = []
    real = fetch._download

    def counting(bucket, key, url, target):
        seen.append(key)
        real(bucket, key, url, target)

    monkeypatch.setattr(fetch, "_download", counting)
    return seen


def one_line(err: Exception, s3) -> str:
    text = str(err)
    assert "\n" not in text and s3.secret not in text and s3.access_key not in text
    return text


def test_fetch_file_downloads_once_then_serves_the_cache(s3, prefix, downloads):
    data = os.urandom(3000)
    url = put(s3, f"{prefix}/neon.safetensors", data)
    first = fetch_file(url)
    assert first.read_bytes() == data and first.name == "neon.safetensors"
    s3.client().delete_object(Bucket=s3.bucket, Key=f"{prefix}/neon.safetensors")
    # With the sha256 a worker finds the driver's copy without asking S3 (it is gone).
    by_sha = fetch_file(url, sha(data))
    assert by_sha.read_bytes() == data and fetch_file(url, sha(data)) == by_sha
    assert downloads == [f"{prefix}/neon.safetensors"]


def test_a_worker_node_makes_each_planned_lora_a_local_file(s3, prefix, home, downloads):
    data = os.urandom(500)
    url = put(s3, f"{prefix}/neon.safetensors", data)
    # Plans keep references; the node that renders turns them into files of its own.
    fetched = Path(local_lora_path(Adapter("neon", url, sha(data), "x")))
    assert fetched.read_bytes() == data and home in fetched.parents
    demo = Path(local_lora_path(Adapter("ink", "tiny:ink", "0" * 64, "x")))
    assert demo.is_file() and home in demo.parents
    assert local_lora_path(Adapter("own", str(fetched), sha(data), "x")) == str(fetched)
    assert downloads == [f"{prefix}/neon.safetensors"]


def test_a_reuploaded_object_is_not_confused_with_the_old_one(s3, prefix):
    old, new = os.urandom(100), os.urandom(120)
    url = put(s3, f"{prefix}/a.safetensors", old)
    assert fetch_file(url).read_bytes() == old
    put(s3, f"{prefix}/a.safetensors", new)
    assert fetch_file(url).read_bytes() == new
    assert fetch_file(url, sha(new)).read_bytes() == new
    # A job planned against the old file is refused rather than rendered with the new one.
    with pytest.raises(StoreError) as info:
        fetch_file(url, sha(old)[:-1] + ("0" if sha(old)[-1] != "0" else "1"))
    assert "changed since" in one_line(info.value, s3)


def test_sha_mismatch_is_refused_and_leaves_nothing(s3, prefix, home):
    url = put(s3, f"{prefix}/b.safetensors", b"new bytes")
    with pytest.raises(StoreError) as info:
        fetch_file(url, sha(b"planned bytes"))
    text = one_line(info.value, s3)
    assert text.startswith(f"{url}: sha256 ") and "changed since the job was planned" in text
    cached = [p for p in (home / "cache" / "s3").rglob("*") if p.is_file()]
    assert all(p.suffix == ".lock" for p in cached), cached


def watched_fcntl(found_held) -> SimpleNamespace:
    """fcntl for farm.storage.fetch, whose blocking exclusive flock first tries without blocking
    and calls `found_held()` when that finds the lock taken (then waits, as asked)."""

    def flock(fd, operation):
        if operation == fcntl.LOCK_EX:
            try:
                return fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                found_held()
        return fcntl.flock(fd, operation)

    names = {name: getattr(fcntl, name) for name in dir(fcntl) if not name.startswith("_")}
    return SimpleNamespace(**{**names, "flock": flock})


def test_concurrent_threads_download_once(s3, prefix, downloads, monkeypatch):
    data = os.urandom(1 << 20)
    url = put(s3, f"{prefix}/c.safetensors", data)
    # The overlap is certain, not likely: the thread holding the lock downloads only once
    # the five others have found the lock taken. Without the lock they would download too.
    waiting = threading.Condition()
    found_held: list[int] = []

    def note_held():
        with waiting:
            found_held.append(1)
            waiting.notify_all()

    monkeypatch.setattr(fetch, "fcntl", watched_fcntl(note_held))
    counting = fetch._download

    def download_when_all_wait(*args):
        with waiting:
            assert waiting.wait_for(lambda: len(found_held) >= 5, timeout=60), found_held
        counting(*args)

    monkeypatch.setattr(fetch, "_download", download_when_all_wait)
    results: list[Path] = []
    errors: list[BaseException] = []

    def one():
        try:
            results.append(fetch_file(url, sha(data)))
        except BaseException as err:  # an assertion in a thread: the test reports it
            errors.append(err)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(found_held) == 5
    assert len(results) == 6 and len(set(results)) == 1
    assert results[0].read_bytes() == data and len(downloads) == 1


# A process that fetches one file. Finding the lock taken, it leaves a file in the
# rendezvous folder; holding it, it downloads only once both others have left theirs.
CHILD = """
import fcntl, os, sys, time, types
from pathlib import Path
from farm.storage import fetch
url, sha256, rendezvous = sys.argv[1], sys.argv[2], Path(sys.argv[3])
def flock(fd, operation):
    if operation == fcntl.LOCK_EX:
        try:
            return fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            (rendezvous / f"held-{os.getpid()}").touch()
    return fcntl.flock(fd, operation)
fetch.fcntl = types.SimpleNamespace(LOCK_EX=fcntl.LOCK_EX, LOCK_UN=fcntl.LOCK_UN, flock=flock)
real, count = fetch._download, []
def download_when_all_wait(*args):
    count.append(1)
    deadline = time.monotonic() + 90
    while len(list(rendezvous.iterdir())) < 2:
        if time.monotonic() > deadline:
            sys.exit("the other processes never found the lock taken")
        time.sleep(0.05)
    real(*args)
fetch._download = download_when_all_wait
path = fetch.fetch_file(url, sha256)
print(len(count), path)
"""


def test_concurrent_processes_download_once(s3, prefix, home, tmp_path):
    data = os.urandom(200_000)
    url = put(s3, f"{prefix}/d.safetensors", data)
    env = {**os.environ, "FARM_HOME": str(home)}
    rendezvous = tmp_path / "rendezvous"
    rendezvous.mkdir()
    procs = [
        subprocess.Popen([sys.executable, "-c", CHILD, url, sha(data), str(rendezvous)],
                         cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for _ in range(3)
    ]  # fmt: skip
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    counts, paths = zip(*(out.split() for out, _ in outs), strict=True)
    assert sorted(counts) == ["0", "0", "1"] and len(set(paths)) == 1
    # Both others waited on the lock while the download was in progress.
    assert len(list(rendezvous.iterdir())) == 2
    assert Path(paths[0]).read_bytes() == data


def upload_dir(s3, source: Path, prefix: str) -> str:
    for path in sorted(source.rglob("*")):
        if path.is_file():
            key = f"{prefix}/{path.relative_to(source).as_posix()}"
            s3.client().upload_file(str(path), s3.bucket, key)
    return s3.url(prefix)


def tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): sha(p.read_bytes())
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }


def test_fetch_dir_copies_the_tiny_model_once_without_pickles(s3, prefix, tiny_dir, downloads):
    url = upload_dir(s3, tiny_dir, f"{prefix}/tiny")
    put(s3, f"{prefix}/tiny/unet/diffusion_pytorch_model.bin", b"pickle")
    fingerprint = s3_dir_fingerprint(url)
    local = fetch_dir(url, fingerprint)
    assert tree(local) == tree(tiny_dir)
    assert (local / fetch.COMPLETE).is_file()
    fetched = len(downloads)
    assert fetched == len(tree(tiny_dir))
    # Cached: neither a listing nor a download the second time.
    assert fetch_dir(url, fingerprint) == local
    assert local_model_path(url, fingerprint) == str(local)
    assert len(downloads) == fetched
    # Without a fingerprint one listing finds the same copy.
    assert local_model_path(url) == str(local) and len(downloads) == fetched
    assert resolve_model_path(url) == url  # the driver never downloads a model
    assert model_fingerprint(url) == fingerprint


def test_fingerprint_follows_the_objects(s3, prefix):
    url = s3.url(f"{prefix}/m")
    put(s3, f"{prefix}/m/model_index.json", b"{}")
    put(s3, f"{prefix}/m/unet/w.safetensors", b"one")
    before = s3_dir_fingerprint(url)
    assert s3_dir_fingerprint(url + "/") == before
    put(s3, f"{prefix}/m/unet/w.safetensors", b"two")
    after = s3_dir_fingerprint(url)
    assert after != before
    # A pickle is never loaded, so it does not change what the model is.
    put(s3, f"{prefix}/m/unet/w.bin", b"pickle")
    assert s3_dir_fingerprint(url) == after
    with pytest.raises(StoreError) as info:
        fetch_dir(url, before)
    assert "changed since the job was planned" in one_line(info.value, s3)
    assert (fetch_dir(url, after) / "unet" / "w.safetensors").read_bytes() == b"two"


def test_missing_prefix_object_and_bucket_are_clear_errors(s3, prefix):
    missing = s3.url(f"{prefix}/nothing")
    with pytest.raises(StoreError) as info:
        s3_dir_fingerprint(missing)
    assert one_line(info.value, s3) == f"{missing}: no objects under this prefix; check the URL"
    with pytest.raises(StoreError) as info:
        model_fingerprint(missing)
    assert str(info.value) == f"model: {missing}: no objects under this prefix; check the URL"
    with pytest.raises(StoreError) as info:
        fetch_file(f"{missing}/x.safetensors")
    assert one_line(info.value, s3) == f"{missing}/x.safetensors: no such object; check the URL"
    with pytest.raises(StoreError) as info:
        fetch_dir("s3://farm-no-such-bucket/models/m")
    assert "the bucket does not exist" in one_line(info.value, s3)
    put(s3, f"{prefix}/pickles/model.ckpt", b"pickle")
    with pytest.raises(StoreError, match="only pickle checkpoints"):
        s3_dir_fingerprint(s3.url(f"{prefix}/pickles"))


def spec_with(lora_url: str, model: str = "tiny"):
    return parse_spec({
        "job": "s3-loras", "model": model, "prompts": ["a cat"], "seeds": [0],
        "loras": [{"name": "neon", "path": lora_url, "alpha": [0, 1]}],
    })  # fmt: skip


def test_plan_checks_an_s3_lora_and_keeps_its_url(s3, prefix):
    from farm.loras.demo import DEMO_LORAS, write_demo_lora
    from farm.loras.files import inspect_lora

    local = write_demo_lora(DEMO_LORAS["neon"], Path(os.environ["FARM_HOME"]) / "neon.safetensors")
    url = put(s3, f"{prefix}/loras/neon.safetensors", local.read_bytes())
    adapter = make_plan(spec_with(url)).adapters["neon"]
    expected = inspect_lora(local)
    assert (adapter.path, adapter.sha256, adapter.shorthash) == (
        url, expected.sha256, expected.shorthash
    )  # fmt: skip


@pytest.mark.parametrize("case", ["missing", "not-safetensors"])
def test_plan_names_the_field_for_a_bad_s3_lora(s3, prefix, case):
    url = s3.url(f"{prefix}/loras/bad.safetensors")
    if case == "not-safetensors":
        put(s3, f"{prefix}/loras/bad.safetensors", b"\x80\x04pickle" * 10)
    with pytest.raises(SpecError) as info:
        make_plan(spec_with(url))
    text = one_line(info.value, s3)
    assert text.startswith(f"loras[0].path: {url}: ")
    assert ("no such object" if case == "missing" else "not a safetensors file") in text


@pytest.mark.slow
def test_run_with_an_s3_model_and_lora_then_verify(s3, prefix, tiny_dir, tmp_path, home):
    from farm.loras.demo import DEMO_LORAS, write_demo_lora

    model = upload_dir(s3, tiny_dir, f"{prefix}/models/tiny")
    lora = write_demo_lora(DEMO_LORAS["neon"], tmp_path / "neon.safetensors")
    lora_url = put(s3, f"{prefix}/loras/neon.safetensors", lora.read_bytes())
    spec = {
        "job": "s3-inputs", "model": model, "prompts": ["neon city"], "seeds": [0, 1],
        "loras": [{"name": "neon", "path": lora_url, "alpha": [0, 1]}],
        "render": {"steps": 2, "width": 64, "height": 64},
    }  # fmt: skip
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "renders"
    # In this process, whose FARM_HOME is `home`: the worker fetches into its node's cache
    # as in any other.
    farm_here("run", str(path), "--output", str(out), "--local")
    verified = farm_here("verify", str(out / "s3-inputs")).stdout
    assert "ok: 4 planned items, 4 rows, 4 images" in verified
    doc = json.loads((out / "s3-inputs" / "job.json").read_text())
    assert lora_url in json.dumps(doc) and str(home) not in json.dumps(doc)
    # The worker loaded the node-local copies: the model folder and the LoRA by sha256.
    local = home / "cache" / "s3" / "dirs" / s3_dir_fingerprint(model)
    assert tree(local) == tree(tiny_dir) and (local / fetch.COMPLETE).is_file()
    assert (home / "cache" / "s3" / "sha256" / sha(lora.read_bytes())).is_dir()
