"""A stored job seen from planning: the plan's fingerprint, the plan rebuilt from job.json,
and what a job folder holds before anything is written to it."""

from __future__ import annotations

from dataclasses import dataclass

from farm.plan.items import Adapter, content_id
from farm.plan.sweep import Plan, make_plan
from farm.records.job_doc import JOB_JSON, JobError, load_job
from farm.records.parts import scan_parts
from farm.spec import Spec, SpecError, parse_spec
from farm.storage.store import Store


def plan_fingerprint(plan: Plan) -> str:
    """Changes when anything that decides the items changes (spec, model, LoRA files).

    File contents count, not paths: a job submitted to a cluster (where its files land
    in another folder) or moved to another machine is still the same job.
    """
    spec = {k: v for k, v in plan.spec.to_dict().items()
            if k not in ("output", "catalog", "lora_dir")}  # fmt: skip
    spec["loras"] = [{k: v for k, v in x.items() if k != "path"} for x in spec["loras"]]
    if isinstance(spec.get("prompts"), dict):  # a prompt file's lines count, not its path
        spec["prompts"] = {k: v for k, v in spec["prompts"].items() if k != "file"}
    adapters = sorted((a.name, a.sha256) for a in plan.adapters.values())
    sources = [(s.prompt, s.catalog) for s in plan.sources]
    parts = [spec, plan.model_fingerprint, adapters, sources]
    if plan.spec.catalog is not None and plan.spec.catalog.name:
        parts.append(plan.spec.catalog.name)  # friendly names are outputs too
    return content_id(parts)


def spec_from_job(doc: dict, job_url: str) -> Spec:
    """The resolved spec a job was started with, for resume and verify."""
    try:
        return parse_spec(doc["spec"], source=f"{job_url}/{JOB_JSON}")
    except (KeyError, SpecError) as err:
        raise JobError(f"{job_url}/{JOB_JSON}: stored spec is unusable ({err})") from None


def stored_plan(store: Store, doc: dict) -> Plan:
    """The job's plan rebuilt from job.json, without reading the model or LoRA files."""
    spec = spec_from_job(doc, store.url)
    frozen = {a["name"]: Adapter(a["name"], "", a["sha256"], a["shorthash"], **run_of(a))
              for a in doc["adapters"]}  # fmt: skip
    return make_plan(spec, frozen=(doc["model"]["fingerprint"], frozen))


def run_of(adapter: dict) -> dict:
    """A checkpoint's run, step and epoch as job.json recorded them (rows carry them)."""
    c = adapter.get("checkpoint")
    if not isinstance(c, dict) or not isinstance(c.get("run"), str):
        return {}
    whole = [c.get(k) if isinstance(c.get(k), int) and not isinstance(c.get(k), bool) else None
             for k in ("step", "epoch")]  # fmt: skip
    return {"run": c["run"], "step": whole[0], "epoch": whole[1]}


@dataclass
class Inspected:
    """What a job folder holds, read before anything is written to it."""

    doc: dict | None  # job.json, or None for a new job
    done: set[str]  # item_ids with a row in parts/
    corrupt: list[str]  # parts that cannot be read


def inspect_job(plan: Plan, store: Store) -> Inspected:
    """Read the job folder without writing: its links stay inside it, an existing
    job.json is this plan's, and parts/ is readable. A refusal here leaves nothing behind."""
    store.probe()
    store.check_links()
    doc = None
    if store.exists(JOB_JSON):
        doc = load_job(store)
        if doc.get("fingerprint") != plan_fingerprint(plan):
            raise JobError(
                f"{store.url}: job {plan.spec.job!r} exists with a different spec, model or "
                "LoRA files; give the new sweep its own `job:` name"
            )
    done, corrupt = scan_parts(store)
    return Inspected(doc, done, corrupt)
