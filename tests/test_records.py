"""Parts written by an earlier farm (before `flags`, `threads` and the LoRA block/schedule
fields, with `catalog` as an Arrow map) stay readable: their new fields are null, the
catalog reads as {key, value} pairs, and they are never taken for corrupt. Rows record
the torch thread count, and `farm rerender` renders with it."""

from __future__ import annotations

import io
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from farm.plan.sweep import expand, group_units, make_plan
from farm.records.parts import LORA_TYPE, SCHEMA, decode_part, encode_rows, part_key, read_rows
from farm.run.job import job_context, open_job
from farm.spec import parse_spec
from farm.storage.store import LocalStore

OLD_LORA = pa.struct([f for f in LORA_TYPE if f.name not in ("blocks", "schedule")])
OLD_TYPES = {"loras": pa.list_(OLD_LORA), "catalog": pa.map_(pa.string(), pa.string())}
OLD_SCHEMA = pa.schema(
    [pa.field(f.name, OLD_TYPES[f.name]) if f.name in OLD_TYPES else f
     for f in SCHEMA if f.name not in ("flags", "threads")]
)  # fmt: skip


def row() -> dict:
    values = {f.name: None for f in SCHEMA}
    values.update(item_id="a" * 20, seed=1, created_at=datetime.now(UTC), flags=["flat"],
                  loras=[{"name": "neon", "weight": 0.5, "te_weight": 0.5,
                          "unet_weight": 0.5, "blocks": "MIDD", "schedule": "1@0"}])  # fmt: skip
    return values


def test_an_old_part_reads_with_null_new_fields():
    old = {k: v for k, v in row().items() if k not in ("flags", "threads")}
    old["loras"] = [{k: v for k, v in old["loras"][0].items() if k not in ("blocks", "schedule")}]
    old["catalog"] = [("sku", "A1"), ("color", "red")]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([old], schema=OLD_SCHEMA), buf)
    table = decode_part(buf.getvalue())
    assert table.schema == SCHEMA
    (read,) = table.to_pylist()
    assert read["flags"] is None and read["threads"] is None
    assert read["loras"][0]["blocks"] is None
    assert read["loras"][0]["weight"] == 0.5 and read["item_id"] == "a" * 20
    assert read["catalog"] == [{"key": "sku", "value": "A1"}, {"key": "color", "value": "red"}]
    (only,) = decode_part(buf.getvalue(), ["catalog"]).to_pylist()
    assert only["catalog"] == read["catalog"]


def test_a_current_part_round_trips():
    (read,) = decode_part(encode_rows([row()])).to_pylist()
    assert read["flags"] == ["flat"] and read["loras"][0]["blocks"] == "MIDD"
    assert read["loras"][0]["schedule"] == "1@0"


def test_reading_parts_starts_no_arrow_threads():
    # Arrow's decoding threads can still be running when the interpreter exits, and abort
    # it after the work is done (`farm verify` exiting -6, apache/arrow#34314): parts are
    # small, so they are read on the calling thread. A fresh process: nothing started yet.
    script = (
        "import os\n"
        "from test_records import row\n"
        "from farm.records.parts import decode_part, encode_rows\n"
        "data = encode_rows([row() for _ in range(64)])\n"
        "before = len(os.listdir('/proc/self/task'))\n"
        "for _ in range(20):\n"
        "    decode_part(data)\n"
        "    decode_part(data, ['item_id'])\n"
        "print(before, len(os.listdir('/proc/self/task')))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=Path(__file__).parent, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    before, after = map(int, out.stdout.split())
    assert after == before


def render_job(worker, tmp_path: Path, threads: int) -> LocalStore:
    """A tiny job (one prompt, two seeds, 2 steps at 64x64) rendered at `threads`."""

    data = {"job": f"threads-{threads}", "prompts": ["a lighthouse"], "seeds": [1, 2],
            "render": {"steps": 2, "width": 64, "height": 64}}  # fmt: skip
    plan = make_plan(parse_spec(data, base_dir=tmp_path))
    store = LocalStore(tmp_path / data["job"])
    open_job(plan, store, echo=lambda _: None)
    with worker.cpu_threads(threads):  # the count of the worker's torch thread
        for unit in group_units(expand(plan)):
            worker.render(unit, job_context(plan, store))
    return store


def test_rows_record_the_torch_thread_count(cpu_worker, tmp_path):
    for threads in (1, 2):
        store = render_job(cpu_worker, tmp_path, threads)
        (key,) = store.list("parts/")
        column = decode_part(store.get(key), ["threads"]).column("threads")
        assert column.to_pylist() == [threads, threads]


def test_rerender_uses_the_rows_thread_count(cpu_worker, tmp_path):
    # A CPU image is bit-identical only at the same thread count; rerender runs this
    # process at a different count to begin with, and gives it back afterwards.
    import torch

    from farm.audit.rerender import rerender

    store = render_job(cpu_worker, tmp_path, threads=1)
    rows = read_rows(store).to_pylist()
    assert {r["threads"] for r in rows} == {1}
    # The control: in this setting, 2 threads give other bytes than 1, image by image, so
    # a rerender that ignored the row's count would not match.
    at_two = read_rows(render_job(cpu_worker, tmp_path, threads=2)).to_pylist()
    two = {r["item_id"]: r["image_sha256"] for r in at_two}
    assert all(two[r["item_id"]] != r["image_sha256"] for r in rows)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for r in rows:
            result = rerender(store, r["item_id"], device="cpu")
            assert result.match and result.image == store.get(r["image_key"])
            assert result.threads == 1
            assert "with 1 thread" in result.original
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert not store.exists(part_key("rerender-" + rows[0]["item_id"]))  # job untouched
