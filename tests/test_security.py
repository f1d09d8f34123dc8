"""Security: a local Ray listens on loopback only, behind its token, with no dashboard,
Jobs API or metrics exporter; LoRA library names stay inside the library, and URL
credentials are never printed. (That `farm submit` leaves the driver's AWS keys home is
tested in test_scale.py, beside the Ray head it submits to.)"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import FARM, REPO

from farm.loras.demo import demo_lora_path
from farm.plan.sweep import make_plan
from farm.redact import redact
from farm.spec import SpecError, parse_spec

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


# ---------------------------------------------------------------- the private local Ray

# A fresh process starts Ray as `farm run` does, with a worker actor that has a
# runtime_env (as farm's workers have); it reports every socket the run's processes
# listen on, what each answers to plain HTTP requests without and with the token, and how
# three clients fare joining it: without a token, with a wrong one, and with the run's own.
LOCAL_RAY = """
import json, os, secrets, subprocess, sys, time, urllib.error, urllib.request
import ipaddress
import psutil
from farm.run.cluster import start_ray

start_ray(None)
import ray
from ray.experimental import internal_kv

@ray.remote(runtime_env={"env_vars": {"FARM_PROBE": "1"}})
class Probe:
    def pid(self):
        return os.getpid()

actor = Probe.options(name="probe", namespace="probe").remote()
worker = ray.get(actor.pid.remote(), timeout=120)
node = ray._private.worker._global_node
session = node.get_session_dir_path()

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

def settled(procs):
    # Every listener of the run exists once both node agents listen, the dashboard
    # process has published its address (it does so after starting any metrics exporter
    # or HTTP server) and the autoscaler monitor has reported once (after its exporter).
    names = [name for _, name, _, _ in listening(procs)]
    return (all(any(a in n for n in names) for a in ("DashboardAgent", "RuntimeEnvAgent"))
            and internal_kv._internal_kv_get("dashboard", namespace="dashboard") is not None
            and internal_kv._internal_kv_get("__autoscaling_status") is not None)

deadline = time.monotonic() + 120
procs = tree()
while not settled(procs) and time.monotonic() < deadline:
    time.sleep(0.2)
    procs = tree()

def host(ip):
    address = ipaddress.ip_address(ip)
    address = getattr(address, "ipv4_mapped", None) or address
    return str(address) if address.version == 4 else f"[{address}]"

def answer(ip, port, method, path, token):
    request = urllib.request.Request(f"http://{host(ip)}:{port}{path}", method=method,
                                     data=b"{}" if method == "POST" else None,
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status
    except urllib.error.HTTPError as err:
        return err.code
    except Exception:  # not HTTP: a gRPC port answers with a frame HTTP/1.1 cannot read
        return None

# A dashboard answers /api/version, the Jobs API /api/jobs/, a Prometheus exporter
# /metrics (any path, in fact); the node agent's internal job endpoint takes a POST.
asked = [("GET", "/api/version"), ("GET", "/api/jobs/"), ("POST", "/api/job_agent/jobs/"),
         ("GET", "/metrics")]
found = listening(procs)
token = os.environ.get("RAY_AUTH_TOKEN", "")
answers = [(name, port, method, path, answer(ip, port, method, path, None),
            answer(ip, port, method, path, token))
           for _, name, ip, port in found for method, path in asked]

address = ray.get_runtime_context().gcs_address
client = (f"import ray; ray.init(address={address!r}); "
          "probe = ray.get_actor('probe', namespace='probe'); "
          "print('pid', ray.get(probe.pid.remote(), timeout=60))")

def join(refused_fast, **auth):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")} | auth
    if refused_fast:  # one connection attempt, not Ray's twenty a second apart
        env["RAY_gcs_server_port_wait_time_s"] = "1"
    done = subprocess.run([sys.executable, "-c", client], capture_output=True, text=True,
                          env=env, timeout=120)
    return {"code": done.returncode, "stdout": done.stdout, "stderr": done.stderr[-3000:]}

clients = {
    "no token": join(True),
    "a wrong token": join(True, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32)),
    "the token": join(False, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token),
}
print(json.dumps({"worker": worker, "gcs": address, "settled": settled(procs),
                  "pids": sorted(procs), "listening": found, "answers": answers,
                  "clients": clients, "mode": os.environ.get("RAY_AUTH_MODE"),
                  "token_length": len(token), "webui_url": node.address_info["webui_url"]}))
ray.shutdown()
"""


@pytest.mark.slow
def test_the_private_local_ray_is_loopback_only_token_guarded_and_serves_no_dashboard():
    import ipaddress

    # As `farm run` starts it: a fresh process that had not imported Ray.
    # Nothing of Ray's auth inherited: a test earlier in this pytest process may have
    # started a Ray in it, which leaves RAY_AUTH_* in its environment.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    proc = subprocess.run([sys.executable, "-c", LOCAL_RAY], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=clean)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["settled"], found["listening"]
    assert found["worker"] in found["pids"], "the probe saw the run's worker processes"
    assert found["gcs"].startswith("127.0.0.1:"), found["gcs"]
    names = {name for _, name, _, _ in found["listening"]}
    assert any("gcs_server" in n for n in names) and any("raylet" in n for n in names), names

    # 1. Every socket of the run listens on loopback.
    def loopback(ip: str) -> bool:
        address = ipaddress.ip_address(ip)
        mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
        return (mapped or address).is_loopback

    exposed = [entry for entry in found["listening"] if not loopback(entry[2])]
    assert not exposed, f"listening beyond loopback: {exposed}"

    # 2. No dashboard, Jobs API or metrics exporter, even for the token's holders. The
    # only HTTP servers are Ray's node agents', which refuse a request without the token
    # (401): the probe reached real HTTP servers. (What an agent answers a request with
    # the token depends on whether it has finished starting; only 2xx would matter.)
    answers = found["answers"]
    served = [a for a in answers if a[4] not in (None, 401)]
    assert not served, f"answered without the token: {served}"
    assert any(a[4] == 401 for a in answers), answers
    served = [a for a in answers if a[3] != "/api/job_agent/jobs/" and 200 <= (a[5] or 0) < 300]
    assert not served, f"a dashboard, Jobs API or metrics exporter: {served}"
    assert found["webui_url"] == ""

    # 3. A private token, in the environment: a client without it, or with another, is
    # refused for its token; the same client with the run's token joins and reaches the
    # run's actor.
    assert (found["mode"], found["token_length"]) == ("token", 64)
    for who in ("no token", "a wrong token"):
        client = found["clients"][who]
        assert client["code"] != 0 and "pid" not in client["stdout"], (who, client)
        assert "InvalidAuthToken" in client["stderr"], (who, client["stderr"])
    joined = found["clients"]["the token"]
    assert joined["code"] == 0, joined["stderr"]
    assert joined["stdout"].split()[-2:] == ["pid", str(found["worker"])], joined["stdout"]


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
    # Glob characters match only a file that has them in its name: none does here.
    for name in ["*", "ink*", "i?ky", "[i]nky", "**inky"]:
        refused = re.escape(f"prompts[0]: <lora:{name}:…> names no LoRA in `loras` or lora_dir")
        with pytest.raises(SpecError, match=f"^{refused}"):
            library_plan(library, f"a cat <lora:{name}:0.5>")
    # A pattern with a slash is a path first.
    with pytest.raises(SpecError, match=r"^prompts\[0\]: <lora:\*\*/inky:…>: .*not a path"):
        library_plan(library, "a cat <lora:**/inky:0.5>")
    odd = library / "library" / "[i]nky.safetensors"
    odd.write_bytes(demo_lora_path("tiny:neon").read_bytes())
    assert set(library_plan(library, "a cat <lora:[i]nky:0.5>").adapters) == {"[i]nky"}


def test_a_link_out_of_the_library_is_refused(library):
    link = library / "library" / "styles" / "outside.safetensors"
    link.symlink_to(library / "elsewhere" / "x.safetensors")
    with pytest.raises(SpecError, match=r"^prompts\[0\]: <lora:outside:…>: .* links to a file "
                       r"outside lora_dir"):  # fmt: skip
        library_plan(library, "a cat <lora:outside:0.5>")
    # A linked folder: its files are not the library's either. The search does not follow
    # it, so its files are not found at all (x is only there).
    (library / "library" / "linked").symlink_to(library / "elsewhere")
    with pytest.raises(SpecError, match=r"^prompts\[0\]: <lora:x:…> names no LoRA in `loras` "
                       r"or lora_dir"):  # fmt: skip
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
