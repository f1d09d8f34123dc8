"""Bad input found by probing: damaged job.json, empty flags, unplaceable workers, runaway
sweeps, oversized specs, unwritable folders, Click's usage errors and vague messages.

Each is one line on stderr, exit code 2, nothing written and no traceback.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml
from click.testing import CliRunner
from conftest import FARM, REPO

from farm.cli import main
from farm.plan.items import AUTO_UNIT


def write_spec(tmp_path, **over) -> str:
    spec = {
        "job": "bad",
        "prompts": ["a red circle"],
        "seeds": [1],
        "render": {"steps": 1, "width": 64, "height": 64},
        "output": str(tmp_path / "out"),
        **over,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def one_line_error(stderr: str, expected: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in stderr
    return lines[0]


def snapshot(folder) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ---------------------------------------------------------------- a damaged job.json


@pytest.fixture(scope="module")
def opened_job(tmp_path_factory):
    """A job folder as `farm run` leaves it before rendering: a real job.json, no parts."""
    from farm.plan.sweep import make_plan
    from farm.run.job import job_store, open_job
    from farm.spec import load_spec

    tmp = tmp_path_factory.mktemp("opened")
    spec = load_spec(write_spec(tmp))
    store = job_store(spec)
    open_job(make_plan(spec), store, echo=lambda _: None)
    return tmp / "out" / "bad"


def without(key: str):
    def damage(doc: dict):
        del doc[key]
        return doc

    return damage


DAMAGE = {
    "list": lambda doc: [],
    "null": lambda doc: None,
    "empty": lambda doc: {},
    "string": lambda doc: "job",
    "no-plan": without("plan"),
    "no-spec": without("spec"),
    "no-adapters": without("adapters"),
    "no-model": without("model"),
    "plan-items-text": lambda doc: {**doc, "plan": {**doc["plan"], "items": "8"}},
    "model-not-object": lambda doc: {**doc, "model": "tiny"},
    "spec-not-a-spec": lambda doc: {**doc, "spec": {"job": "bad"}},
    "adapter-without-sha": lambda doc: {**doc, "adapters": [{"name": "neon"}]},
    "runs-not-list": lambda doc: {**doc, "runs": {}},
    "not-json": None,
}
EXPECTED = {
    "list": "expected a JSON object, found a list",
    "null": "expected a JSON object, found null",
    "empty": "job_id: missing",
    "string": "expected a JSON object, found a string",
    "no-plan": "plan: missing",
    "no-spec": "spec: missing",
    "no-adapters": "adapters: missing",
    "no-model": "model: missing",
    "plan-items-text": "plan.items: expected a count",
    "model-not-object": "model: expected an object, found a string",
    "spec-not-a-spec": "stored spec is unusable",
    "adapter-without-sha": "adapters[0]: expected {name, sha256, shorthash}",
    "runs-not-list": "runs: expected a list, found an object",
    "not-json": "unreadable",
}


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("command", ["status", "verify", "resume"])
def test_a_damaged_job_json_is_one_line_of_bad_input(opened_job, tmp_path, damage, command):
    job = tmp_path / "bad"
    shutil.copytree(opened_job, job)
    doc = json.loads((job / "job.json").read_text())
    change = DAMAGE[damage]
    (job / "job.json").write_text("{not json" if change is None else json.dumps(change(doc)))
    before = snapshot(tmp_path)
    result = CliRunner().invoke(main, [command, str(job)])
    if damage == "spec-not-a-spec" and command == "status":
        # Status reads counts from the store alone; the spec matters to verify and resume.
        assert result.exit_code == 0 and "0/1 items" in result.stdout
        return
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    line = one_line_error(result.stderr, EXPECTED[damage])
    assert f"{job}/job.json" in line, line
    assert "damaged" in line, line
    assert snapshot(tmp_path) == before


def test_the_job_json_farm_writes_reads_back(opened_job):
    result = CliRunner().invoke(main, ["status", str(opened_job), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["planned"] == 1


# ---------------------------------------------------------------- flags


def test_an_empty_output_is_refused(tmp_path):
    spec = write_spec(tmp_path)
    proc = subprocess.run([*FARM, "run", spec, "--output", ""], cwd=tmp_path,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2
    one_line_error(proc.stderr, "--output: is empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


def _has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        pytest.param(["--gpus-per-worker", "0.5"], "--gpus-per-worker 0.5: this machine has no GPU",
                     marks=pytest.mark.skipif(_has_gpu(), reason="this machine has a GPU")),
        (["--workers", "512"], "--workers 512: this machine has"),
    ],
)  # fmt: skip
def test_workers_a_local_run_cannot_place_are_refused_before_writing(tmp_path, flags, expected):
    spec = write_spec(tmp_path)
    proc = subprocess.run([*FARM, "run", spec, *flags], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    one_line_error(proc.stderr, expected)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- sizes


def huge_sweep(tmp_path, loras: int) -> str:
    axes = [{"name": f"l{i}", "path": "tiny:neon" if i % 2 == 0 else "tiny:ink",
             "alpha": "0:9999:1"} for i in range(loras)]  # fmt: skip
    if loras > 2:
        # A third LoRA file: the demo pair under another name would be refused as a twin.
        from farm.loras.demo import demo_lora_path

        third = tmp_path / "third.safetensors"
        data = bytearray(demo_lora_path("tiny:neon").read_bytes())
        data[-1] ^= 1
        third.write_bytes(bytes(data))
        axes[2]["path"] = str(third)
    return write_spec(tmp_path, loras=axes)


def test_a_sweep_over_the_item_limit_is_refused_with_its_count(tmp_path):
    spec = huge_sweep(tmp_path, 3)  # 10⁴ strengths each: 10¹² items
    result = CliRunner().invoke(main, ["plan", spec])
    assert result.exit_code == 2
    one_line_error(result.stderr, "the sweep has 1,000,000,000,000 items, more than the limit")
    assert "--max-items" in result.stderr


def test_a_product_of_10_to_the_8_combinations_plans_by_arithmetic(tmp_path):
    spec = huge_sweep(tmp_path, 2)
    refused = CliRunner().invoke(main, ["plan", spec])
    assert refused.exit_code == 2 and "100,000,000 items" in refused.stderr
    result = CliRunner().invoke(main, ["plan", spec, "--json", "--max-items", str(10**9)])
    assert result.exit_code == 0, result.output
    counts = json.loads(result.stdout)
    assert counts["combos"] == counts["items"] == 10**8
    assert counts["units"] == 10**8 // AUTO_UNIT and counts["adapter_groups"] == 1


def test_a_runaway_sweep_is_refused_by_run_before_writing(tmp_path):
    spec = huge_sweep(tmp_path, 2)
    proc = subprocess.run([*FARM, "run", spec], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2
    one_line_error(proc.stderr, "100,000,000 items")
    assert not (tmp_path / "out").exists()


def test_a_spec_too_large_to_read_points_to_a_catalog(tmp_path):
    from farm.limits import MAX_SPEC_BYTES

    prompts = [f"a red circle number {i}" for i in range(MAX_SPEC_BYTES // 20)]
    spec = write_spec(tmp_path, prompts=prompts)
    result = CliRunner().invoke(main, ["plan", spec])
    assert result.exit_code == 2
    line = one_line_error(result.stderr, "MiB a spec may hold; put long prompt lists in a catalog")
    assert "(catalog: {path: prompts.csv, template: '{prompt}', key: id})" in line


# ---------------------------------------------------------------- folders farm writes


@pytest.mark.parametrize("command", [["lora", "demo"], ["model", "tiny"]])
def test_an_unwritable_folder_is_bad_input(tmp_path, command):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    proc = subprocess.run([*FARM, *command, str(blocker / "sub")], capture_output=True, text=True)
    assert proc.returncode == 2
    one_line_error(proc.stderr, f"{blocker / 'sub'}: cannot write there")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# ---------------------------------------------------------------- Click's usage errors


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", "spec.yaml", "--outptu", "x"], "Did you mean '--output'?"),
        (["rn"], "No such command 'rn'. Did you mean 'run'?"),
        (["plan"], "Missing argument 'SPEC'"),
        (["run", "spec.yaml", "--workers", "0"], "Invalid value for '--workers'"),
    ],
)
def test_usage_errors_are_one_line_with_the_suggestion(argv, expected):
    proc = subprocess.run([*FARM, *argv], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    line = one_line_error(proc.stderr, expected)
    assert line.endswith("--help`)")
    assert proc.stdout == ""


def test_a_group_alone_prints_its_help():
    result = CliRunner().invoke(main, ["lora"])
    assert result.exit_code == 0 and "inspect" in result.stdout


# ---------------------------------------------------------------- messages that say what


LBW = "presets: NONE, ALL, INS, IND, INALL, MIDD, OUTD, OUTS, OUTALL, ALL0.5"
NEON = {"name": "neon", "path": "tiny:neon", "alpha": [0.5]}


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({"loras": [{**NEON, "blocks": "FOO"}]}, f"loras[0].blocks: 'FOO' is not a block "
         f"preset ({LBW}; SDXL-… and FLUX-… ones for those families"),
        ({"loras": [{**NEON, "blocks": "MIDDD"}]}, "did you mean MIDD?"),
        ({"loras": [{**NEON, "blocks": [1] * 16 + ["abc"]}]},
         "loras[0].blocks: block OUT11: 'abc' is not a number"),
        ({"loras": [{**NEON, "blocks": ["ALL", "FOO"]}]}, "loras[0].blocks[1]: 'FOO' is not"),
        ({"prompts": ["a cat <lora:neon:1:lbw=FOO>"], "loras": [{"name": "neon",
          "path": "tiny:neon"}]}, f"prompts[0]: <lora:neon:1:lbw=FOO>: lbw: 'FOO' is not a "
         f"block preset ({LBW};"),
        ({"model": "http://example.com/model"}, "model: http:// URLs are not a model source"),
    ],
)  # fmt: skip
def test_messages_name_the_value_and_the_choices(tmp_path, over, expected):
    result = CliRunner().invoke(main, ["plan", write_spec(tmp_path, **over)])
    assert result.exit_code == 2, result.output
    one_line_error(result.stderr, expected)


@pytest.fixture(scope="module")
def not_s3():
    """A plain web server on loopback, given where an S3 endpoint belongs."""
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize("command", ["status", "verify", "run"])
def test_an_endpoint_that_is_not_s3_says_so(tmp_path, not_s3, command, monkeypatch):
    for key, value in {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    target = write_spec(tmp_path) if command == "run" else "s3://bucket/renders/bad"
    args = [command, target, "--s3-endpoint", not_s3]
    if command == "run":
        args += ["--output", "s3://bucket/renders"]
    proc = subprocess.run([*FARM, *args], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    one_line_error(proc.stderr, f"the endpoint {not_s3} answered HTTP 404 with no S3 error")


def test_a_missing_bucket_on_real_s3_is_still_a_missing_bucket(s3):
    result = CliRunner().invoke(main, ["status", "s3://no-such-bucket-here/renders/bad"])
    assert result.exit_code == 2
    one_line_error(result.stderr, "s3://no-such-bucket-here: the bucket does not exist")


def test_a_spec_just_under_the_size_limit_plans(tmp_path):
    from farm.limits import MAX_SPEC_BYTES

    count = MAX_SPEC_BYTES // 60
    prompts = [f"a red circle on a white background, take {i}" for i in range(count)]
    spec = write_spec(tmp_path, prompts=prompts)
    assert (tmp_path / "spec.yaml").stat().st_size < MAX_SPEC_BYTES
    result = CliRunner().invoke(main, ["plan", spec, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["items"] == count
