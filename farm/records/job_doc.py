"""job.json: the record of a job, its required fields, and reading it whole or refusing it
(JobError, exit 2) with the field that is wrong."""

from __future__ import annotations

import json

from farm.errors import FarmError
from farm.storage.store import Store

JOB_JSON = "job.json"


class JobError(FarmError, ValueError):
    """A job that cannot be opened as asked (exit 2): say why and what to do."""


def read_job(store: Store) -> dict:
    """job.json of a job, checked once here: a JobError for no job or a damaged file."""
    # A wrong or unreachable endpoint or bucket says so at once, not after the outage
    # ride-out, and is not mistaken for "no job here".
    store.probe()
    return load_job(store)


def load_job(store: Store) -> dict:
    if not store.exists(JOB_JSON):
        raise JobError(f"{store.url}: no job here (no {JOB_JSON}); check the job URL")
    where = f"{store.url}/{JOB_JSON}"
    try:
        doc = json.loads(store.get(JOB_JSON))
    except json.JSONDecodeError as err:
        raise JobError(f"{where}: unreadable ({err.msg}); {DAMAGED_HINT}") from None
    except UnicodeDecodeError:
        raise JobError(f"{where}: not UTF-8 text; {DAMAGED_HINT}") from None
    check_job_doc(doc, where)
    return doc


DAMAGED_HINT = "the file is damaged: restore it from a copy, or render the sweep as a new job"
# What every reader of job.json relies on: field -> (type, what it holds).
_REQUIRED = {
    "job_id": (str, "the job's name"),
    "fingerprint": (str, "the plan's fingerprint"),
    "spec": (dict, "the resolved spec"),
    "plan": (dict, "the plan's counts"),
    "model": (dict, "the model's reference and fingerprint"),
    "adapters": (list, "the LoRA files' hashes"),
    "runs": (list, "the runs so far"),
}


def check_job_doc(doc: object, where: str) -> None:
    """Every field status, verify, resume and rerender read, with its type."""
    if not isinstance(doc, dict):
        raise JobError(f"{where}: expected a JSON object, found {_kind(doc)}; {DAMAGED_HINT}")

    def bad(field: str, problem: str) -> JobError:
        return JobError(f"{where}: {field}: {problem}; {DAMAGED_HINT}")

    for key, (kind, what) in _REQUIRED.items():
        if key not in doc:
            raise bad(key, f"missing ({what})")
        if not isinstance(doc[key], kind):
            raise bad(key, f"expected {_kind(kind())}, found {_kind(doc[key])}")
    items = doc["plan"].get("items")
    if isinstance(items, bool) or not isinstance(items, int) or items < 0:
        raise bad("plan.items", f"expected a count, found {_kind(items)}")
    fingerprint = doc["model"].get("fingerprint")
    if not isinstance(fingerprint, str):
        raise bad("model.fingerprint", f"expected a string, found {_kind(fingerprint)}")
    for i, adapter in enumerate(doc["adapters"]):
        if not isinstance(adapter, dict) or not all(
            isinstance(adapter.get(k), str) for k in ("name", "sha256", "shorthash")
        ):
            raise bad(f"adapters[{i}]", "expected {name, sha256, shorthash}")
    for i, run in enumerate(doc["runs"]):
        if not isinstance(run, dict):
            raise bad(f"runs[{i}]", f"expected an object, found {_kind(run)}")


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)  # fmt: skip


def write_job(store: Store, doc: dict) -> None:
    store.put(JOB_JSON, json.dumps(doc, indent=2, sort_keys=False).encode())
