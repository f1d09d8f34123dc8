"""The deployment files in docker/ and infra/: they parse, fit together, and keep the
security defaults (token auth, loopback-only control plane, no literal secrets).

No Docker daemon or cluster is needed: the files are read as data, and every `farm`
command they mention is run with --help.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
INFRA = REPO / "infra"
DOCKERFILE = DOCKER / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
RAYCLUSTER = INFRA / "kuberay" / "raycluster.yaml"
RAYJOB = INFRA / "kuberay" / "rayjob.yaml"
SECRETS_EXAMPLE = INFRA / "kuberay" / "secrets.example.yaml"
AUTOSCALER = INFRA / "autoscaler" / "cluster.yaml"
INFRA_README = INFRA / "README.md"

EXPECTED = [DOCKERFILE, DOCKERIGNORE, COMPOSE, ENV_EXAMPLE, INFRA_README]
EXPECTED += [RAYCLUSTER, RAYJOB, SECRETS_EXAMPLE, AUTOSCALER]
# docker/.env is a local, git-ignored copy of .env.example with real secrets: not ours to read.
DEPLOY_FILES = sorted(
    {p for folder in (DOCKER, INFRA) for p in folder.rglob("*") if p.is_file() and p.name != ".env"}
    | {DOCKERIGNORE}
)
YAML_FILES = [p for p in DEPLOY_FILES if p.suffix in {".yaml", ".yml"}]
EXAMPLE_FILES = {p for p in DEPLOY_FILES if ".example" in p.name}

# Public images the deployment may pull; everything else must be a farm image built here.
WELL_KNOWN_IMAGES = {"minio/minio", "minio/mc", "nvidia/cuda", "python"}
# Environment variables whose values are secrets.
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|ACCESS_KEY", re.I)
SUBSTITUTION = re.compile(r"^\$\{(\w+):\?[^}]*\}$")  # ${VAR:?message}: refuses empty values


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def load_docs(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def load_one(path: Path) -> dict:
    (doc,) = load_docs(path)
    return doc


def walk(node):
    """Every dict and list inside node, node included."""
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def strings(node):
    """Every string scalar in node, plus each list of strings joined (command arrays)."""
    for item in walk(node):
        if isinstance(item, dict):
            yield from (v for v in item.values() if isinstance(v, str))
        elif isinstance(item, list):
            yield from (v for v in item if isinstance(v, str))
            if item and all(isinstance(v, str) for v in item):
                yield " ".join(item)
    if isinstance(node, str):
        yield node


# ---------------------------------------------------------------------------------------
# Dockerfile and .dockerignore


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):  # Docker drops these even inside continuations
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        instruction, _, args = (buf + line).partition(" ")
        out.append((instruction.upper(), args.strip()))
        buf = ""
    assert not buf, "Dockerfile ends inside a line continuation"
    return out


def dockerfile_stages() -> tuple[dict[str, str], list[dict]]:
    """Global ARG defaults, and per stage: base, name, args, instructions."""
    global_args: dict[str, str] = {}
    stages: list[dict] = []
    for instruction, args in dockerfile_instructions(DOCKERFILE.read_text()):
        if instruction == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append({"base": words[0], "name": name, "args": {}, "body": []})
        elif instruction == "ARG":
            key, _, default = args.partition("=")
            target = stages[-1]["args"] if stages else global_args
            target[key] = default.strip('"')
        else:
            assert stages, f"{instruction} before the first FROM"
            stages[-1]["body"].append((instruction, args))
    return global_args, stages


def flavors() -> set[str]:
    _, stages = dockerfile_stages()
    names = [s["name"] or "" for s in stages]
    return {name.removeprefix("base-") for name in names if name.startswith("base-")}


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    excluded = False
    for line in DOCKERIGNORE.read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        regex = _glob_regex(pattern.lstrip("!").strip("/"))
        parts = path.strip("/").split("/")
        if any(regex.fullmatch("/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def _glob_regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def test_deploy_files_exist():
    missing = [rel(p) for p in EXPECTED if not p.is_file()]
    assert not missing, f"missing: {missing}"


def test_dockerfile_base_images_come_from_args():
    global_args, stages = dockerfile_stages()
    assert flavors() == {"cpu", "cuda"}
    assert global_args.get("FLAVOR") in flavors(), "FLAVOR's default must name a flavor stage"
    assert global_args["CUDA_BASE"].startswith("nvidia/cuda:")
    assert global_args["CPU_BASE"].startswith("python:3.11")
    defined: set[str] = set()
    for stage in stages:
        base = stage["base"]
        arg = re.fullmatch(r"\$\{?(\w+)\}?", base)
        if arg:  # FROM ${ARG}: declared before the first FROM, with a default
            assert global_args.get(arg.group(1)), f"FROM {base}: no global ARG default"
        else:  # FROM a stage, possibly picked by FLAVOR
            for flavor in flavors():
                assert base.replace("${FLAVOR}", flavor) in defined, f"FROM {base}: no such stage"
        if stage["name"]:
            defined.add(stage["name"])
    assert stages[-1]["base"] == "base-${FLAVOR}", "the final image must be the FLAVOR's stage"


def test_dockerfile_installs_torch_from_the_flavors_index_then_the_repo():
    global_args, stages = dockerfile_stages()
    by_name = {s["name"]: s for s in stages}
    for flavor in flavors():
        stage = by_name[f"base-{flavor}"]
        index = stage["args"]["TORCH_INDEX"]
        assert index.startswith("https://download.pytorch.org/whl/"), index
        runs = " ".join(args for instruction, args in stage["body"] if instruction == "RUN")
        assert '--index-url "${TORCH_INDEX}"' in runs, f"base-{flavor} ignores TORCH_INDEX"
    assert by_name["base-cpu"]["args"]["TORCH_INDEX"].endswith("/cpu")
    # The CUDA base and the torch wheels must agree on the CUDA version (12.8.x -> cu128).
    cuda = re.search(r":(\d+)\.(\d+)", global_args["CUDA_BASE"])
    assert by_name["base-cuda"]["args"]["TORCH_INDEX"].endswith(f"/cu{cuda[1]}{cuda[2]}")
    final_runs = [args for instruction, args in stages[-1]["body"] if instruction == "RUN"]
    assert any(
        "pip install" in run and "." in shlex.split(run.split("pip install", 1)[1])
        for run in final_runs
    ), "the final stage must `pip install .` the repository"


def test_dockerfile_runtime_settings():
    _, stages = dockerfile_stages()
    final = stages[-1]
    env: dict[str, str] = {}
    for instruction, args in final["body"]:
        if instruction == "ENV":
            env.update(word.split("=", 1) for word in shlex.split(args))
    assert env.get("FARM_HOME") == "/var/lib/farm"
    assert env.get("RAY_USAGE_STATS_ENABLED") == "0"
    assert "HF_HUB_OFFLINE" not in env, "hub downloads must stay possible where reachable"
    users = [args for instruction, args in final["body"] if instruction == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "the image must not run as root"
    # Token authentication (RAY_AUTH_MODE=token) exists from Ray 2.52 on.
    ray_version = tuple(int(x) for x in final["args"]["RAY_VERSION"].split("."))
    assert ray_version >= (2, 52, 0)


def test_dockerfile_copies_exist_and_survive_dockerignore():
    _, stages = dockerfile_stages()
    sources = []
    for stage in stages:
        for instruction, args in stage["body"]:
            if instruction in {"COPY", "ADD"} and "--from=" not in args:
                sources += [w for w in args.split() if not w.startswith("--")][:-1]
    assert sources, "the Dockerfile copies nothing from the repository"
    for source in sources:
        path = REPO / source
        assert path.exists(), f"COPY {source}: no such path in the repository"
        files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
        for f in files:
            if "__pycache__" not in f.parts:
                assert not dockerignore_excludes(rel(f)), f"{rel(f)} is excluded by .dockerignore"


@pytest.mark.parametrize(
    "path",
    [".venv/bin/python", ".git/HEAD", "renders/neon-sweep/job.json", "docker/.env",
     ".pytest_cache/v/cache", ".ruff_cache/x", "farm/__pycache__/cli.cpython-311.pyc"],
)  # fmt: skip
def test_dockerignore_keeps_out(path):
    assert dockerignore_excludes(path)


# ---------------------------------------------------------------------------------------
# YAML everywhere


@pytest.mark.parametrize("path", YAML_FILES, ids=rel)
def test_yaml_parses(path):
    docs = load_docs(path)
    assert docs and all(isinstance(doc, dict) for doc in docs)


# ---------------------------------------------------------------------------------------
# docker/compose.yaml


def compose_services() -> dict:
    return load_one(COMPOSE)["services"]


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def command_of(service: dict) -> str:
    command = service.get("command") or ""
    return " ".join(command) if isinstance(command, list) else command


def image_parts(image: str) -> tuple[str, str]:
    repo, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
    return repo, tag


def is_farm_image(image: str) -> bool:
    return image_parts(image)[0].split("/")[-1] == "farm"


def test_compose_has_the_services():
    assert {"ray-head", "ray-worker", "s3", "createbuckets", "farm"} <= set(compose_services())


def test_compose_farm_images_are_built_from_the_dockerfile():
    farm_services = {n: s for n, s in compose_services().items() if is_farm_image(s["image"])}
    assert {"ray-head", "ray-worker", "farm"} <= set(farm_services)
    for name, service in farm_services.items():
        build = service.get("build")
        assert build, f"{name}: a farm image must be built here"
        assert (DOCKER / build["context"]).resolve() == REPO, f"{name}: context must be the repo"
        assert build["dockerfile"] == "docker/Dockerfile"
        assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        flavor = (build.get("args") or {}).get("FLAVOR", dockerfile_stages()[0]["FLAVOR"])
        assert image_parts(service["image"])[1] == flavor, f"{name}: tag and FLAVOR differ"


def published_ports(service: dict) -> list[tuple[str | None, str]]:
    """(host ip, container port) for each published port, short or long syntax."""
    out = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            out.append((port.get("host_ip"), str(port["target"])))
        else:
            parts = str(port).split(":")
            out.append((parts[0] if len(parts) == 3 else None, parts[-1].split("/")[0]))
    return out


def test_compose_publishes_only_on_loopback():
    services = compose_services()
    for name, service in services.items():
        assert service.get("network_mode") != "host", f"{name}: host networking skips the binds"
        for host_ip, target in published_ports(service):
            assert host_ip == "127.0.0.1", f"{name}: port {target} published beyond loopback"
            assert target != "6379", f"{name}: the GCS port must not leave the compose network"
    assert ("127.0.0.1", "8265") in published_ports(services["ray-head"])


def test_compose_ray_commands_and_driver():
    services = compose_services()
    assert "ray start --head" in command_of(services["ray-head"])
    for name in ("ray-worker", "ray-worker-gpu"):
        assert "ray start --address=ray-head:6379" in command_of(services[name])
    driver = command_of(services["farm"])
    # A Ray driver needs a Ray node on its own machine: join first, then run.
    join = driver.find("ray start --address=ray-head:6379")
    run = driver.find("farm run /jobs/examples/neon-sweep.yaml --address ray-head:6379")
    assert 0 <= join < run, driver
    output = re.search(r"--output s3://([^/\s]+)/", driver)
    assert output, "the demo driver must write to the compose S3 store"
    assert f"mc mb --ignore-existing local/{output[1]}" in command_of(services["createbuckets"])
    # The spec path in the container is a real file in the repository.
    mounts = dict(v.rsplit(":", 2)[:2] for v in services["farm"]["volumes"] if ":/" in v)
    jobs = (DOCKER / next(src for src, dst in mounts.items() if dst == "/jobs")).resolve()
    assert (jobs / "examples" / "neon-sweep.yaml").is_file()


def test_compose_gpu_variant_reserves_nvidia_gpus():
    services = compose_services()
    cpu, gpu = services["ray-worker"], services["ray-worker-gpu"]
    assert image_parts(cpu["image"])[1] == "cpu" and "deploy" not in cpu
    assert image_parts(gpu["image"])[1] == "cuda"
    assert "gpu" in gpu.get("profiles", []), "the GPU worker must be opt-in"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)


def test_compose_secrets_are_required_substitutions():
    used = {v for s in strings(load_one(COMPOSE)) for v in re.findall(r"\$\{(\w+)", s)}
    defined = set(env_example())
    assert used <= defined, f"not in .env.example: {sorted(used - defined)}"
    for name, service in compose_services().items():
        for key, value in env_of(service).items():
            if SECRET_NAME.search(key):
                assert value and SUBSTITUTION.match(value), f"{name}: {key} must be ${{VAR:?}}"


def env_example() -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    return {k.strip(): v.strip() for k, v in pairs}


def test_env_example_leaves_secrets_empty():
    values = env_example()
    secrets_ = {k: v for k, v in values.items() if re.search(r"TOKEN|SECRET|PASSWORD", k)}
    assert {"RAY_AUTH_TOKEN", "FARM_S3_SECRET_KEY", "MINIO_ROOT_PASSWORD"} <= set(secrets_)
    # Empty, so a copied-but-unedited .env fails `${VAR:?}` instead of using a known value.
    assert all(v == "" for v in secrets_.values()), secrets_
    assert "secrets.token_hex(32)" in ENV_EXAMPLE.read_text()
    assert ".env" in (DOCKER / ".gitignore").read_text().split()


# ---------------------------------------------------------------------------------------
# infra/kuberay


def kind(path: Path, name: str) -> list[dict]:
    return [doc for doc in load_docs(path) if doc.get("kind") == name]


def cluster_specs() -> list[tuple[str, dict]]:
    (cluster,) = kind(RAYCLUSTER, "RayCluster")
    (job,) = kind(RAYJOB, "RayJob")
    return [("RayCluster", cluster["spec"]), ("RayJob", job["spec"]["rayClusterSpec"])]


def ray_containers() -> list[tuple[str, dict]]:
    """Every container that runs Ray or talks to it, named by where it is."""
    out = []
    for where, spec in cluster_specs():
        for c in spec["headGroupSpec"]["template"]["spec"]["containers"]:
            out.append((f"{where} head {c['name']}", c))
        for group in spec["workerGroupSpecs"]:
            for c in group["template"]["spec"]["containers"]:
                out.append((f"{where} {group['groupName']} {c['name']}", c))
        if spec.get("enableInTreeAutoscaling"):
            out.append((f"{where} autoscaler", spec.get("autoscalerOptions") or {}))
    (job,) = kind(RAYJOB, "RayJob")
    for c in job["spec"]["submitterPodTemplate"]["spec"]["containers"]:
        out.append((f"RayJob submitter {c['name']}", c))
    return out


def test_kuberay_kinds():
    for path, name in ((RAYCLUSTER, "RayCluster"), (RAYJOB, "RayJob")):
        (doc,) = kind(path, name)
        assert doc["apiVersion"] == "ray.io/v1"


@pytest.mark.parametrize("where", ["RayCluster", "RayJob"])
def test_kuberay_gpu_worker_group(where):
    spec = dict(cluster_specs())[where]
    head = spec["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"
    assert head["rayStartParams"]["num-gpus"] == "0", "nothing renders on the head"
    (group,) = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu-workers"]
    assert 1 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    pod = group["template"]["spec"]
    assert pod["nodeSelector"]
    assert any(
        t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in pod["tolerations"]
    )
    (container,) = pod["containers"]
    resources = container["resources"]
    assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
    for part in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[part]), f"{part} needs cpu and memory"
    assert is_farm_image(container["image"])
    # FARM_HOME sits on a cache volume, not in the container's writable layer.
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[env["FARM_HOME"]])
    assert "emptyDir" in volume or "hostPath" in volume


def test_kuberay_token_auth_and_secret_refs():
    stored = {
        (doc["metadata"]["name"], key)
        for doc in kind(SECRETS_EXAMPLE, "Secret")
        for key in doc["stringData"]
    }
    containers = ray_containers()
    assert len(containers) >= 6
    for where, container in containers:
        env = {e["name"]: e for e in container.get("env", [])}
        assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", where
        assert "RAY_AUTH_TOKEN" in env, where
        for name, entry in env.items():
            if SECRET_NAME.search(name):
                assert "value" not in entry, f"{where}: {name} is a literal"
                ref = entry["valueFrom"]["secretKeyRef"]
                assert (ref["name"], ref["key"]) in stored, f"{where}: {name} -> unknown Secret"


def test_rayjob_runs_the_spec_from_its_configmap(tmp_path):
    (job,) = kind(RAYJOB, "RayJob")
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    entrypoint = spec["entrypoint"]
    assert entrypoint.startswith("farm run /jobs/spec.yaml --address auto --output s3://")
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    (mount,) = [m for m in head["containers"][0]["volumeMounts"] if m["mountPath"] == "/jobs"]
    (volume,) = [v for v in head["volumes"] if v["name"] == mount["name"]]
    configmaps = {doc["metadata"]["name"]: doc for doc in kind(RAYJOB, "ConfigMap")}
    text = configmaps[volume["configMap"]["name"]]["data"]["spec.yaml"]
    (tmp_path / "spec.yaml").write_text(text)
    done = subprocess.run(
        [sys.executable, "-m", "farm", "plan", str(tmp_path / "spec.yaml")],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_secrets_example_holds_only_placeholders():
    secrets_ = kind(SECRETS_EXAMPLE, "Secret")
    assert {s["metadata"]["name"] for s in secrets_} == {"farm-ray-token", "farm-s3"}
    for secret in secrets_:
        for key, value in secret["stringData"].items():
            assert str(value).startswith("REPLACE_ME"), f"{key}: not an obvious placeholder"
    assert "kubectl create secret generic" in SECRETS_EXAMPLE.read_text()


def test_no_public_services_anywhere():
    for path in YAML_FILES:
        for doc in load_docs(path):
            assert doc.get("kind") not in {"Ingress", "Route", "Gateway"}, rel(path)
            for item in walk(doc):
                if isinstance(item, dict):
                    service_type = item.get("serviceType") or (
                        item.get("type") if doc.get("kind") == "Service" else None
                    )
                    assert service_type in {None, "ClusterIP"}, f"{rel(path)}: {service_type}"


# ---------------------------------------------------------------------------------------
# infra/autoscaler


def test_autoscaler_config_fits_rays_schema():
    import jsonschema

    ray_dir = Path(importlib.util.find_spec("ray").submodule_search_locations[0])
    schema = json.loads((ray_dir / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(load_one(AUTOSCALER), schema)


def test_autoscaler_node_types_and_security():
    config = load_one(AUTOSCALER)
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"].get("GPU") == 0
    gpu = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu, "no GPU worker node type"
    for node_type in gpu:
        assert 1 <= node_type["min_workers"] <= node_type["max_workers"]
    for name, node_type in types.items():
        assert node_type["node_config"].get("IamInstanceProfile"), f"{name}: S3 via IAM role"
    docker = config["docker"]
    assert is_farm_image(docker["image"]) and image_parts(docker["image"])[1] == "cuda"
    assert "--gpus all" in docker.get("worker_run_options", []) + docker.get("run_options", [])
    assert "--env RAY_AUTH_MODE=token" in docker["run_options"]
    assert "~/.ray/auth_token" in config["file_mounts"], "the nodes need the token file"
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    text = AUTOSCALER.read_text()
    assert "0.0.0.0" not in text.replace("0.0.0.0/0", "")
    assert "AWS_SECRET_ACCESS_KEY" not in text and "AWS_ACCESS_KEY_ID" not in text
    # Ray's defaults would pip-install into the image as its non-root user, and fail.
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
        assert config[key] == [], key


# ---------------------------------------------------------------------------------------
# Security across all files


def test_every_ray_start_uses_token_auth():
    starts = 0
    for name, service in compose_services().items():
        if "ray " in command_of(service) or "ray" in str(service.get("healthcheck", "")):
            starts += command_of(service).count("ray start")
            env = env_of(service)
            assert env.get("RAY_AUTH_MODE") == "token", f"compose {name}"
            assert SUBSTITUTION.match(env.get("RAY_AUTH_TOKEN") or ""), f"compose {name}"
    config = load_one(AUTOSCALER)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for command in config[key]:
            if "ray start" in command:
                starts += 1
                assert "RAY_AUTH_MODE=token ray start" in command, command
    assert starts >= 6  # head, worker, GPU worker, driver node; autoscaler head and worker
    # KubeRay starts Ray in these containers itself: test_kuberay_token_auth_and_secret_refs.


def test_control_plane_ports_never_public():
    for path in DEPLOY_FILES:
        text = path.read_text()
        assert not re.search(r"0\.0\.0\.0:(8265|6379|10001)\b", text), rel(path)
        assert not re.search(r"^\s*-\s*[\"']?(8265|6379)(:\d+)?[\"']?\s*$", text, re.M), rel(path)


LITERAL_SECRETS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # an AWS access key id
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\b[0-9a-f]{32,}\b"),  # a hex token, such as secrets.token_hex(32)
]
ASSIGNMENT = re.compile(
    r"\b(RAY_AUTH_TOKEN|AWS_SECRET_ACCESS_KEY|MINIO_ROOT_PASSWORD|FARM_S3_SECRET_KEY)"
    r"\s*[=:][ \t]*([^\s#]*)"
)


@pytest.mark.parametrize(
    "path", [p for p in DEPLOY_FILES if p not in EXAMPLE_FILES and p.name != ".gitignore"], ids=rel
)
def test_no_literal_secrets(path):
    text = path.read_text()
    for pattern in LITERAL_SECRETS:
        assert not pattern.search(text), f"{rel(path)}: looks like a secret: {pattern.pattern}"
    for name, value in ASSIGNMENT.findall(text):
        ok = value in {"", "...", "token"} or value.startswith(("$", '"$'))
        assert ok, f"{rel(path)}: {name} is given a literal value"


def test_images_are_farm_builds_or_well_known():
    images = {s["image"] for s in compose_services().values()}
    for path in (RAYCLUSTER, RAYJOB):
        images |= {
            item["image"]
            for doc in load_docs(path)
            for item in walk(doc)
            if isinstance(item, dict) and isinstance(item.get("image"), str)
        }
    docker = load_one(AUTOSCALER)["docker"]
    images |= {docker[k] for k in ("image", "head_image", "worker_image") if k in docker}
    global_args, _ = dockerfile_stages()
    images |= {global_args["CUDA_BASE"], global_args["CPU_BASE"]}
    for image in sorted(images):
        repo, tag = image_parts(image)
        if is_farm_image(image):
            assert tag in flavors(), f"{image}: docker/Dockerfile builds only {sorted(flavors())}"
        else:
            assert repo in WELL_KNOWN_IMAGES, f"{image}: neither built here nor well known"


# ---------------------------------------------------------------------------------------
# Every `farm ...` command in these files exists


# `farm` as a command word (not farm:cpu, farm-s3, /var/lib/farm), then the subcommand words:
# lowercase words up to the first argument (a path, URL, placeholder, option, number...).
FARM_COMMAND = re.compile(
    r"(?=(?<![\w./:@=$-])farm(?=[ \t]|$)((?:[ \t]+[a-z]+(?:-[a-z]+)*(?=[ \t]|$))*))", re.M
)


def command_fragments(path: Path) -> list[str]:
    """The places of a file where commands are written, not prose."""
    text = path.read_text()
    lines = text.splitlines()
    comments = [ln.strip()[1:].strip() for ln in lines if ln.strip().startswith("#")]
    fragments = [c.removeprefix("$ ") for c in comments if c.startswith(("farm ", "$ farm "))]
    fragments += re.findall(r"`([^`\n]+)`", "\n".join(comments))
    if path.suffix in {".yaml", ".yml"}:
        fragments += [s for doc in load_docs(path) for s in strings(doc)]
    elif path == DOCKERFILE:
        for instruction, args in dockerfile_instructions(text):
            if instruction in {"RUN", "CMD", "ENTRYPOINT"}:
                fragments.append(" ".join(json.loads(args)) if args.startswith("[") else args)
    elif path.suffix == ".md":
        fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S)
        fragments += fenced
        prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.M | re.S)
        fragments += re.findall(r"`([^`\n]+)`", prose)
    return fragments


def farm_commands() -> list[tuple[str, ...]]:
    found = set()
    for path in DEPLOY_FILES:
        for fragment in command_fragments(path):
            for match in FARM_COMMAND.finditer(fragment):
                words = tuple(match.group(1).split())[:3]
                if words[:1] != ("farm",):  # `compose run farm farm status`: the 2nd counts
                    found.add(words)
    return sorted(found)


FARM_COMMANDS = farm_commands() if all(p.is_file() for p in EXPECTED) else []


def test_farm_commands_are_found():
    expected = {("run",), ("submit",), ("logs",), ("cancel",), ("status",), ("verify",)}
    assert expected <= set(FARM_COMMANDS), sorted(expected - set(FARM_COMMANDS))


@pytest.mark.parametrize("words", FARM_COMMANDS, ids=lambda w: " ".join(("farm", *w)))
def test_farm_command_exists(words):
    done = subprocess.run(
        [sys.executable, "-m", "farm", *words, "--help"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, f"farm {' '.join(words)}: {done.stderr.strip()}"
    assert "Usage:" in done.stdout
