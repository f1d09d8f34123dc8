"""Security: a local Ray listens on loopback only, LoRA library names stay inside the
library, URL credentials are never printed, and the driver's AWS keys stay home."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import FARM, REPO

from farm.demo_loras import demo_lora_path
from farm.spec import SpecError, parse_spec
from farm.sweep import make_plan
from farm.urls import redact

KEY = "AKIAFARMLEAK" + secrets.token_hex(4).upper()
SECRET = "leaked-secret-" + secrets.token_hex(8)
DEAD_ENDPOINT = f"http://{KEY}:{SECRET}@127.0.0.1:1"  # nothing listens on port 1


def small_spec(folder: Path, name: str = "sec", **over) -> Path:
    spec = {
        "job": name,
        "model": "tiny",
        "prompts": ["a red house"],
        "seeds": [1],
        "loras": [{"name": "neon", "path": "tiny:neon", "alpha": [0.5]}],
        "render": {"steps": 2, "width": 64, "height": 64},
        "output": str(folder / "out"),
    } | over
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def farm(*args: str, env: dict | None = None, timeout: float = 120):
    return subprocess.run([*FARM, *args], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=timeout)  # fmt: skip


def fake_aws_env(**over) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return env | {"AWS_ACCESS_KEY_ID": "AKIAFAKE", "AWS_SECRET_ACCESS_KEY": "fake",
                  "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": os.devnull,
                  "AWS_SHARED_CREDENTIALS_FILE": os.devnull} | over  # fmt: skip


def assert_one_line_without_secret(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    said = proc.stdout + proc.stderr
    assert proc.returncode == 2, said
    assert SECRET not in said and KEY not in said, said
    assert "Traceback" not in said and len(proc.stderr.strip().splitlines()) == 1, said
    for fragment in fragments:
        assert fragment in proc.stderr, said


# ---------------------------------------------------------------- loopback-only Ray

LISTENERS = """
import json, os, sys, time
import psutil
from farm.cluster import start_ray

start_ray(None)
import ray

# Ready once a worker actor with a runtime_env (as farm's workers have) answers, and the
# node's agents are up: every listener of the run exists by then.
@ray.remote(runtime_env={"env_vars": {"FARM_PROBE": "1"}})
class Probe:
    def pid(self):
        return os.getpid()

worker = ray.get(Probe.remote().pid.remote(), timeout=120)
session = ray._private.worker._global_node.get_session_dir_path()

def tree():
    me = psutil.Process()
    found = {p.pid: p for p in [me, *me.children(recursive=True)]}
    for p in psutil.process_iter():  # and any process of this session that moved away
        try:
            if any(session in part for part in p.cmdline()):
                found[p.pid] = p
        except psutil.Error:
            pass
    return found

def listening(procs):
    out = []
    for p in procs.values():
        try:
            name = p.name()
            out += [(p.pid, name, c.laddr.ip, c.laddr.port)
                    for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        except psutil.NoSuchProcess:
            pass
    return out

agents = ("DashboardAgent", "RuntimeEnvAgent")
procs = tree()
while not all(any(a in n for _, n, _, _ in listening(procs)) for a in agents):
    time.sleep(0.2)  # the agents bind their ports while starting; wait for both
    procs = tree()
print(json.dumps({"worker": worker, "gcs": ray.get_runtime_context().gcs_address,
                  "pids": sorted(procs), "listening": listening(procs)}))
ray.shutdown()
"""


@pytest.mark.slow
def test_a_local_run_listens_on_loopback_only():
    import ipaddress

    # As `farm run` starts it: a fresh process that had not imported Ray.
    proc = subprocess.run([sys.executable, "-c", LISTENERS], cwd=REPO, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["worker"] in found["pids"], "the probe saw the run's worker processes"
    assert found["gcs"].startswith("127.0.0.1:"), found["gcs"]
    names = {name for _, name, _, _ in found["listening"]}
    assert any("gcs_server" in n for n in names) and any("raylet" in n for n in names), names

    def loopback(ip: str) -> bool:
        address = ipaddress.ip_address(ip)
        mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
        return (mapped or address).is_loopback

    exposed = [entry for entry in found["listening"] if not loopback(entry[2])]
    assert not exposed, f"listening beyond loopback: {exposed}"


# ---------------------------------------------------------------- lora_dir lookups


def library_plan(base: Path, prompt: str):
    spec = {"job": "lib", "model": "tiny", "prompts": [prompt], "seeds": [1], "loras": [],
            "lora_dir": "library", "render": {"steps": 2, "width": 64, "height": 64}}  # fmt: skip
    return make_plan(parse_spec(spec, base_dir=base))


@pytest.fixture
def library(tmp_path) -> Path:
    lib = tmp_path / "library" / "styles"
    lib.mkdir(parents=True)
    (lib / "inky.safetensors").write_bytes(demo_lora_path("tiny:ink").read_bytes())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.safetensors").write_bytes(demo_lora_path("tiny:neon").read_bytes())
    return tmp_path


def test_tag_names_are_literal_file_stems_not_patterns_or_paths(library):
    assert set(library_plan(library, "a cat <lora:inky:0.5>").adapters) == {"inky"}
    # A path, even one that resolves to a real LoRA file, is not a name.
    outside = str(library / "elsewhere" / "x")
    for name in ["../elsewhere/x", "../../elsewhere/x", "styles/inky", outside]:
        with pytest.raises(SpecError, match=r"^prompts\[0\]: .*not a path"):
            library_plan(library, f"a cat <lora:{name}:0.5>")
    # Glob characters match only a file that has them in its name.
    for name in ["*", "ink*", "i?ky", "[i]nky", "**/inky"]:
        with pytest.raises(SpecError, match=r"names no LoRA in `loras` or lora_dir|not a path"):
            library_plan(library, f"a cat <lora:{name}:0.5>")
    odd = library / "library" / "[i]nky.safetensors"
    odd.write_bytes(demo_lora_path("tiny:neon").read_bytes())
    assert set(library_plan(library, "a cat <lora:[i]nky:0.5>").adapters) == {"[i]nky"}


def test_a_link_out_of_the_library_is_refused(library):
    link = library / "library" / "styles" / "outside.safetensors"
    link.symlink_to(library / "elsewhere" / "x.safetensors")
    with pytest.raises(SpecError, match=r"^prompts\[0\]: <lora:outside:…>: .* links to a file "
                       r"outside lora_dir"):  # fmt: skip
        library_plan(library, "a cat <lora:outside:0.5>")
    # A linked folder: its files are not the library's either.
    (library / "library" / "linked").symlink_to(library / "elsewhere")
    with pytest.raises(SpecError, match=r"outside lora_dir|names no LoRA"):
        library_plan(library, "a cat <lora:x:0.5>")
    # A link that stays inside the library is fine.
    (library / "library" / "alias.safetensors").symlink_to(Path("styles/inky.safetensors"))
    assert set(library_plan(library, "a cat <lora:alias:0.5>").adapters) == {"alias"}


# ---------------------------------------------------------------- credentials in URLs


def test_redact_cuts_userinfo_from_every_url_in_a_text():
    assert redact(f"cannot reach {DEAD_ENDPOINT}/bucket/key now") == (
        "cannot reach http://***@127.0.0.1:1/bucket/key now"
    )
    assert redact("ray://user:pw@head:10001 and https://tok@h/x") == (
        "ray://***@head:10001 and https://***@h/x"
    )
    assert redact("--address user:pw@10.0.0.1:6379: no") == "--address ***@10.0.0.1:6379: no"
    assert redact("http://u:p@ss@h:9/x?y=a@b") == "http://***@h:9/x?y=a@b"
    for plain in ["s3://bucket/key", "http://127.0.0.1:9000", "HOST:6379", "a@b.com",
                  "http://host/a@b"]:  # fmt: skip
        assert redact(plain) == plain


def test_an_endpoint_with_credentials_is_never_printed_by_run(tmp_path):
    spec = small_spec(tmp_path, output="s3://farm-test/sec")
    for args, env in [
        (["--s3-endpoint", DEAD_ENDPOINT], fake_aws_env()),
        ([], fake_aws_env(AWS_ENDPOINT_URL=DEAD_ENDPOINT)),
    ]:
        proc = farm("run", str(spec), *args, env=env)
        assert_one_line_without_secret(proc, "cannot reach the S3 endpoint http://***@127.0.0.1:1")
    assert not (tmp_path / "out").exists()


def test_an_endpoint_with_credentials_is_never_printed_by_status():
    for args, env in [
        (["--s3-endpoint", DEAD_ENDPOINT], fake_aws_env()),
        ([], fake_aws_env(AWS_ENDPOINT_URL=DEAD_ENDPOINT)),
    ]:
        # Read commands probe the endpoint first, so this fails in seconds, not after
        # the outage ride-out.
        proc = farm("status", "s3://farm-test/job", *args, env=env)
        assert_one_line_without_secret(proc, "cannot reach the S3 endpoint http://***@127.0.0.1:1")


def test_credentials_in_an_s3_url_are_refused_without_printing_them(tmp_path):
    proc = farm("status", f"s3://{KEY}:{SECRET}@farm-test/job", env=fake_aws_env())
    assert_one_line_without_secret(proc, "credentials do not go in an S3 URL")
    spec = small_spec(tmp_path, output=f"s3://{KEY}:{SECRET}@farm-test/sec")
    assert_one_line_without_secret(farm("run", str(spec), env=fake_aws_env()),
                                   "credentials do not go in an S3 URL")  # fmt: skip


def test_a_ray_address_with_credentials_is_never_printed(tmp_path):
    spec = str(small_spec(tmp_path))
    cases = [
        (["run", spec, "--address", f"{KEY}:{SECRET}@127.0.0.1:1"], "--address ***@127.0.0.1:1"),
        (["run", spec, "--address", DEAD_ENDPOINT], "a Jobs API address"),
        (["submit", spec, "--address", DEAD_ENDPOINT], "no Ray Jobs API answers"),
        (["logs", "farm-x", "--address", DEAD_ENDPOINT], "no Ray Jobs API answers"),
    ]
    for args, fragment in cases:
        assert_one_line_without_secret(farm(*args, env=fake_aws_env()), fragment)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- submit


@pytest.mark.slow
def test_submit_leaves_the_drivers_aws_keys_behind(ray_head, tmp_path):
    keys = {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_SESSION_TOKEN": "leaked-session-" + secrets.token_hex(8)}  # fmt: skip
    spec = small_spec(tmp_path, "keys-stay")
    proc = farm("submit", str(spec), "--address", ray_head.jobs_url, "--wait",
                env={**ray_head.env, **keys}, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    submission = proc.stdout.split()[1]
    # What the cluster was given, as its Jobs API keeps it.
    request = urllib.request.Request(
        f"{ray_head.jobs_url}/api/jobs/{submission}",
        headers={"Authorization": f"Bearer {ray_head.token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        info = json.loads(response.read())
    assert info["status"] == "SUCCEEDED", info
    given = json.dumps({k: info.get(k) for k in ("entrypoint", "runtime_env", "metadata")})
    assert "env_vars" in given  # the runtime env was there to look at
    for name, value in keys.items():
        assert value not in given, f"{name} travelled with the job"
        assert name not in json.dumps(info.get("runtime_env")), f"{name} travelled with the job"
    job = tmp_path / "out" / "keys-stay"
    for path in [*job.rglob("*.json"), *job.rglob("*.parquet")]:
        text = path.read_bytes().decode("latin-1")
        assert all(value not in text for value in keys.values()), path
