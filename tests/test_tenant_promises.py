"""Tenant promises of docs/tenants.md that no other test holds to: `farm submit` refuses a
tenant's job, a job.json naming another tenant is out of reach, the concurrent-jobs lease
(heartbeat, lapse, race), and what a preset job refuses.

Tenants `acme` and `globex` have local prefixes under one folder. Commands run in this
process through Click; a refusal must be exit 2, one line, and leave the folder as it was.
The lease is driven at chosen points, never by waiting: a stand-in clock gives the times,
and the lease's keep-alive thread beats only when the test lets it.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from click.testing import CliRunner

from farm.run import tenant_leases
from farm.spec.errors import SpecError
from farm.tenancy.tenants import load_tenants

RENDER = {"steps": 2, "width": 64, "height": 64}
# docs/tenants.md, "Concurrent jobs": rewritten every 30 s, lapses after 120 s.
HEARTBEAT_S = 30
LAPSE_S = 120


class Farm:
    def __init__(self, root: Path):
        self.root = root
        self.prefix = {t: root / "tenants" / t for t in ("acme", "globex")}
        for folder in self.prefix.values():
            folder.mkdir(parents=True)
        self.specs = root / "specs"
        self.specs.mkdir()
        self.tenants = root / "tenants.yaml"
        self.tenants.write_text(yaml.safe_dump({
            "presets": {"subtle": {"weight": 0.3}, "standard": {"weight": 0.6},
                        "bold": {"weight": 1.0},
                        "light": {"weight": 0.3},  # the same weight as subtle
                        "style": {"slider": {"min": 0.2, "max": 1.0, "step": 0.2,
                                             "default": 0.6}}},
            "tenants": {
                "acme": {"output": str(self.prefix["acme"]), "loras": {"house": "tiny:neon"},
                         "caps": {"jobs": 1}},
                "globex": {"output": str(self.prefix["globex"]), "loras": {"ink": "tiny:ink"}},
            },
        }))  # fmt: skip

    def spec(self, name: str, **over) -> Path:
        spec = {"job": name, "tenant": "acme", "loras": ["house"], "preset": "bold",
                "prompts": ["a red circle on a white background"], "seeds": [0],
                "render": RENDER} | over  # fmt: skip
        spec = {k: v for k, v in spec.items() if v is not None}
        path = self.specs / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec))
        return path

    def snapshot(self) -> list[tuple[str, bytes | None]]:
        """Every file and folder below the root, with the files' bytes."""
        found = []
        for dirpath, dirnames, files in os.walk(self.root):
            for name in dirnames + files:
                path = Path(dirpath, name)
                found.append((str(path.relative_to(self.root)),
                              path.read_bytes() if path.is_file() else None))  # fmt: skip
        return sorted(found)


@pytest.fixture
def shared(tmp_path) -> Farm:
    return Farm(tmp_path)


def cli(*args: str, env: dict | None = None):
    """`farm ARGS` in this process, FARM_TENANTS and FARM_TENANT unset unless given."""
    from farm.cli import main

    handler = signal.getsignal(signal.SIGTERM)
    try:
        unset = {"FARM_TENANTS": None, "FARM_TENANT": None}
        return CliRunner().invoke(main, list(args), catch_exceptions=False,
                                  env=unset | (env or {}))  # fmt: skip
    finally:
        signal.signal(signal.SIGTERM, handler)


def refused(shared: Farm, args: list, expected: str, env: dict | None = None) -> str:
    """A command that must be refused: exit 2, one line naming `expected`, nothing written."""
    before = shared.snapshot()
    result = cli(*map(str, args), env=env)
    err = result.stderr.strip()
    assert result.exit_code == 2, (args, result.stdout, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert expected in err, (args, err)
    assert shared.snapshot() == before
    return err


# ---------------------------------------------------------------- farm submit


def test_submitting_a_tenants_job_is_refused(shared):
    # The caps are held by the job's driver, and a submitted driver has no tenants file.
    # Nothing listens at the address: the refusal comes before any contact.
    address = ["--address", "http://127.0.0.1:9"]
    expected = "tenant: acme's jobs run with `farm run --tenants FILE` on the cluster"
    spec = shared.spec("submitted")
    refused(shared, ["submit", spec, *address, "--tenants", shared.tenants], expected)
    # The tenants file from the environment, as an installation sets it.
    refused(shared, ["submit", spec, *address], expected,
            env={"FARM_TENANTS": str(shared.tenants)})  # fmt: skip
    # A spec that names no tenant, submitted acting for one.
    untagged = shared.spec("untagged", tenant=None)
    refused(shared, ["submit", untagged, *address, "--tenants", shared.tenants, "--tenant",
                     "acme"], expected)  # fmt: skip


# ---------------------------------------------------------------- another tenant's job.json


def test_a_job_json_naming_another_tenant_is_out_of_reach(shared):
    """A job folder inside acme's prefix whose job.json is globex's: every command acting
    for acme refuses it, from job.json alone."""
    from farm.plan.sweep import make_plan
    from farm.run.job import open_job
    from farm.spec import load_spec
    from farm.storage.store import LocalStore
    from farm.tenancy.policy import resolver

    spec = shared.spec("borrowed", tenant="globex", loras=["ink"])
    plan = make_plan(load_spec(spec, resolver(load_tenants(str(shared.tenants)))))
    folder = shared.prefix["acme"] / "borrowed"
    store = LocalStore(folder)
    open_job(plan, store, echo=lambda _: None)
    assert json.loads(store.get("job.json"))["spec"]["tenant"] == "globex"
    # What a command would meet past job.json, were it to read on: a damaged part and a
    # damaged metadata file, which would say so in their own words.
    store.put("parts/0123456789abcdef0123.parquet", b"not parquet")
    store.put("metadata.parquet", b"not parquet either")
    item = "0" * 20
    expected = f"{folder}: not a job of tenant acme; a tenant reaches only its own jobs"
    acme = ["--tenants", shared.tenants, "--tenant", "acme"]
    for command in (["status", folder], ["verify", folder], ["report", folder],
                    ["rerender", folder, item], ["resume", folder],
                    ["presets", "suggest", folder]):  # fmt: skip
        refused(shared, [*command, *acme], expected)
    # FARM_TENANT acts for acme just as --tenant does.
    refused(shared, ["status", folder, "--tenants", shared.tenants], expected,
            env={"FARM_TENANT": "acme"})  # fmt: skip


# ---------------------------------------------------------------- the concurrent-jobs lease


class Clock:
    """Stands in for the lease module's `time`: the test sets the time."""

    def __init__(self, now: float):
        self.now = now

    def time(self) -> float:
        return self.now


class Beats:
    """Stands in for the lease module's `threading`: the keep-alive thread's Event.wait
    returns (beat) only when the test lets one heartbeat through, or when the job ends."""

    def __init__(self):
        self.cond = threading.Condition()
        self.tickets = 0
        self.waiting = 0  # times the keep-alive thread has come to wait
        self.let_through = 0  # heartbeats the test has let through
        self.timeouts: list[float] = []
        self.Thread = threading.Thread

    def Event(self):  # noqa: N802 (the name of what it replaces)
        beats = self

        class Stop:
            def __init__(self):
                self.stopped = False

            def set(self) -> None:
                with beats.cond:
                    self.stopped = True
                    beats.cond.notify_all()

            def wait(self, timeout: float) -> bool:
                with beats.cond:
                    beats.timeouts.append(timeout)
                    beats.waiting += 1
                    beats.cond.notify_all()
                    # Bounded: a test that fails must not leave a thread waiting forever.
                    beats.cond.wait_for(lambda: self.stopped or beats.tickets, timeout=60)
                    if self.stopped or not beats.tickets:
                        return True
                    beats.tickets -= 1
                    return False

        return Stop()

    def beat(self) -> None:
        """Let one heartbeat through and wait until it is written: the thread, which waited
        once before its first beat, has come back to wait once after each."""
        with self.cond:
            self.let_through += 1
            self.tickets += 1
            self.cond.notify_all()
            done = self.cond.wait_for(lambda: self.waiting > self.let_through, timeout=30)
            assert done, "the keep-alive thread did not beat"


@pytest.fixture
def lease(shared, monkeypatch):
    clock, beats = Clock(1_000_000.0), Beats()
    monkeypatch.setattr(tenant_leases, "time", clock)
    monkeypatch.setattr(tenant_leases, "threading", beats)
    acme = load_tenants(str(shared.tenants)).tenants["acme"]
    assert acme.caps.jobs == 1
    return SimpleNamespace(clock=clock, beats=beats, acme=acme,
                           folder=shared.prefix["acme"] / ".running")  # fmt: skip


def read_lease(lease, job_id: str) -> dict:
    return json.loads((lease.folder / f"{job_id}.json").read_text())


def test_a_heartbeat_renews_the_lease(lease):
    t0 = lease.clock.now
    with tenant_leases.job_slot(lease.acme, "long"):
        assert read_lease(lease, "long") == {"job_id": "long", "started": t0, "heartbeat": t0}
        lease.clock.now = t0 + HEARTBEAT_S
        lease.beats.beat()
        assert read_lease(lease, "long") == {"job_id": "long", "started": t0,
                                             "heartbeat": t0 + HEARTBEAT_S}  # fmt: skip
        assert set(lease.beats.timeouts) == {HEARTBEAT_S}
        # Past the lapse of its first write, the renewed lease still holds the only slot.
        lease.clock.now = t0 + HEARTBEAT_S + LAPSE_S - 1
        assert tenant_leases.running_jobs(lease.acme) == {"long": t0}
        with (
            pytest.raises(SpecError, match=r"already runs 1 jobs, its cap \(long\)"),
            tenant_leases.job_slot(lease.acme, "other"),
        ):
            pass
    assert not (lease.folder / "long.json").exists()  # deleted when the job ends


def test_a_lapsed_lease_is_taken_over(lease):
    # A driver killed at t0 left its lease, last renewed then.
    t0 = lease.clock.now
    lease.folder.mkdir()
    (lease.folder / "killed.json").write_text(json.dumps(
        {"job_id": "killed", "started": t0 - 500, "heartbeat": t0}))  # fmt: skip
    lease.clock.now = t0 + LAPSE_S - 1
    with (
        pytest.raises(SpecError, match=r"already runs 1 jobs, its cap \(killed\)"),
        tenant_leases.job_slot(lease.acme, "next"),
    ):
        pass
    lease.clock.now = t0 + LAPSE_S + 1
    assert tenant_leases.running_jobs(lease.acme) == {}
    with tenant_leases.job_slot(lease.acme, "next"):
        assert tenant_leases.running_jobs(lease.acme) == {"next": t0 + LAPSE_S + 1}


def test_of_two_racing_leases_the_later_gives_way(lease, monkeypatch):
    """Both jobs count the leases before either writes its own, so both pass the cap of 1;
    the one that started later (named first, so a tie-break by name would keep it) yields."""
    t0 = lease.clock.now
    counted = tenant_leases.running_jobs
    first = []

    def racing(tenant, now=None):
        live = counted(tenant, now)
        if not first:  # the later job has counted: now the earlier one starts and writes
            first.append(tenant_leases.job_slot(lease.acme, "zz-earlier"))
            first[0].__enter__()
            lease.clock.now = t0 + 1
        return live

    monkeypatch.setattr(tenant_leases, "running_jobs", racing)
    try:
        with (
            pytest.raises(SpecError, match="already runs 1 jobs, its cap; wait"),
            tenant_leases.job_slot(lease.acme, "aa-later"),
        ):
            pass
        assert sorted(p.name for p in lease.folder.iterdir()) == ["zz-earlier.json"]
        assert counted(lease.acme) == {"zz-earlier": t0}
    finally:
        for slot in first:
            slot.__exit__(None, None, None)


# ---------------------------------------------------------------- what a preset job refuses


def test_a_preset_job_refuses_alpha_and_combine(shared):
    plan = ["plan", "--json", "--tenants", shared.tenants]
    # Presets alone plan (so what is refused below is the alpha or the combine).
    result = cli(*map(str, [*plan, shared.spec("presets", preset=None,
                                               presets=["subtle", "bold"])]))  # fmt: skip
    assert result.exit_code == 0 and json.loads(result.stdout)["items"] == 2, result.stderr
    alpha = "loras[0].alpha: a preset job takes its strengths from its presets; remove alpha"
    for value in (0.5, [0.2, 0.4]):
        spec = shared.spec("alpha", loras=[{"name": "house", "alpha": value}])
        refused(shared, [*plan, spec], alpha)
    combine = "combine: a preset job takes its combinations from its presets; remove combine"
    spec = shared.spec("combine", preset=None, presets=["subtle", "bold"],
                       combine=[{"house": 0.5}])  # fmt: skip
    refused(shared, [*plan, spec], combine)


def test_two_presets_with_the_same_weights_are_refused(shared):
    plan = ["plan", "--json", "--tenants", shared.tenants]
    spec = shared.spec("twins", preset=None, presets=["subtle", "bold", "light"])
    refused(shared, [*plan, spec], "preset 'light' sets the same weights as 'subtle'")
    # A slider position is a weight too.
    spec = shared.spec("slid", preset=None, presets=["standard", {"name": "style", "at": 0.6}])
    refused(shared, [*plan, spec], "preset 'style' sets the same weights as 'standard'")


def test_a_lease_the_store_cannot_read_refuses_the_job(lease, monkeypatch):
    """The tenant's one slot is held by a running job whose lease cannot be read (the store
    is failing): counting it as absent would let a second job past the cap."""
    from farm.storage.store import LocalStore, StoreError

    now = lease.clock.now
    lease.folder.mkdir()
    running = {"job_id": "running", "started": now, "heartbeat": now}
    (lease.folder / "running.json").write_text(json.dumps(running))
    real, fault = LocalStore.get, {}

    def get(store, key: str) -> bytes:
        if key.startswith(tenant_leases.LEASES) and fault:
            raise fault["error"]
        return real(store, key)

    monkeypatch.setattr(LocalStore, "get", get)
    fault["error"] = StoreError("lease: Input/output error")
    with (
        pytest.raises(StoreError, match="tenant acme: cannot count its running jobs .*try again"),
        tenant_leases.job_slot(lease.acme, "second"),
    ):
        pass
    assert sorted(p.name for p in lease.folder.iterdir()) == ["running.json"]
    # A lease gone between the listing and the read is one job fewer, not a failure.
    fault["error"] = FileNotFoundError("running.json")
    assert tenant_leases.running_jobs(lease.acme) == {}
    fault.clear()
    assert tenant_leases.running_jobs(lease.acme) == {"running": now}
