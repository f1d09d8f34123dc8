"""Bad input: one line naming the field or file, exit code 2, nothing written, no traceback."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest
import yaml
from conftest import FARM, REPO

IMPORT_CHECK = (
    "import sys, runpy\n"
    "sys.argv = {argv!r}\n"
    "try:\n"
    "    runpy.run_module('farm', run_name='__main__')\n"
    "except SystemExit:\n"
    "    pass\n"
    "heavy = sorted({{m.split('.')[0] for m in sys.modules}} & {{'torch', 'ray', 'diffusers'}})\n"
    "assert not heavy, heavy\n"
)


@pytest.mark.parametrize(
    "argv",
    [
        ["farm", "--help"],
        ["farm", "run", "--help"],
        ["farm", "plan", "jobs/examples/neon-sweep.yaml"],
    ],
)
def test_help_and_plan_import_neither_torch_nor_ray(argv):
    code = "import farm\n" + IMPORT_CHECK.format(argv=argv)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def write_spec(tmp_path, **over) -> str:
    spec = {
        "job": "bad",
        "prompts": ["a cat"],
        "seeds": [1],
        "loras": [{"name": "neon", "path": "tiny:neon", "alpha": [0.5]}],
        "render": {"steps": 2, "width": 64, "height": 64},
        "output": str(tmp_path / "out"),
        **over,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def pickled_lora(tmp_path):
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"lora_unet_x.lora_down.weight": [1.0]}))
    return str(path)


def truncated_lora(tmp_path):
    from farm.loras.demo import demo_lora_path

    data = demo_lora_path("tiny:neon").read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) // 2])
    return str(path)


CASES = [
    ("alpha", lambda t: {"loras": [{"name": "n", "path": "tiny:neon", "alpha": "abc"}]},
     "loras[0].alpha: 'abc' is not a number"),
    ("missing-lora", lambda t: {"loras": [{"name": "n", "path": "nope.safetensors", "alpha": 1}]},
     "loras[0].path"),
    ("ckpt-lora", lambda t: {"loras": [{"name": "n", "path": "x.ckpt", "alpha": 1}]},
     "pickle"),
    ("pickle-as-safetensors",
     lambda t: {"loras": [{"name": "n", "path": pickled_lora(t), "alpha": 1}]},
     "not a safetensors file"),
    ("truncated-lora", lambda t: {"loras": [{"name": "n", "path": truncated_lora(t), "alpha": 1}]},
     "truncated"),
    ("unknown-key", lambda t: {"render": {"stpes": 3}}, "render.stpes: unknown key"),
    ("unknown-tag", lambda t: {"prompts": ["a <lora:ghost:1> cat"]}, "prompts[0]: <lora:ghost:…>"),
    ("output-under-file", lambda t: {"output": str(REPO / "pyproject.toml" / "x")}, "cannot write"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "over", "expected"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("command", ["run", "plan"])
def test_bad_input_exits_2_with_one_line(tmp_path, name, over, expected, command):
    spec = write_spec(tmp_path, **over(tmp_path))
    if command == "plan":
        # In this process: the same parsing, without a process start per case (`run` shows
        # the exit code and stderr of a real process).
        from click.testing import CliRunner

        from farm.cli import main

        result = CliRunner().invoke(main, ["plan", spec])
        proc = subprocess.CompletedProcess([], result.exit_code, result.stdout, result.stderr)
    else:
        proc = subprocess.run([*FARM, command, spec], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
    if command == "plan" and name == "output-under-file":
        assert proc.returncode == 0  # plan writes nothing, so it does not check the output
        return
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_same_job_name_with_a_changed_spec_is_refused(tmp_path, tiny_dir):
    out = tmp_path / "out"
    first = write_spec(tmp_path, render={"steps": 1, "width": 64, "height": 64})
    assert subprocess.run([*FARM, "run", first, "--local"], capture_output=True,
                          timeout=600).returncode == 0  # fmt: skip
    changed = write_spec(tmp_path, render={"steps": 2, "width": 64, "height": 64})
    proc = subprocess.run([*FARM, "run", changed], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "exists with a different spec" in proc.stderr and "Traceback" not in proc.stderr
    assert len(list((out / "bad" / "images").iterdir())) == 1


def test_resume_of_a_missing_job_is_bad_input(tmp_path):
    proc = subprocess.run(
        [*FARM, "resume", str(tmp_path / "nojob")], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "no job here" in proc.stderr


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:CLOSED", "no Ray cluster answers at"),
        ("http://127.0.0.1:8265", "that is a Jobs API address; `farm submit"),
        ("head-without-port", "expected HOST:PORT"),
    ],
)
def test_a_cluster_address_that_cannot_be_joined_is_bad_input(tmp_path, address, expected):
    # The port is picked here, not at collection: every test process collects the same ids.
    address = address.replace("CLOSED", str(_closed_port()))
    spec = write_spec(tmp_path)
    proc = subprocess.run([*FARM, "run", spec, "--address", address], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --address {address}: "), lines
    assert expected in lines[0]
    assert not (tmp_path / "out").exists()
