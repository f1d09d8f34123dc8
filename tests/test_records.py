"""Parts written by an earlier farm (before `flags` and the LoRA block/schedule fields)
stay readable: their new fields are null, and they are never taken for corrupt."""

from __future__ import annotations

import io
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from farm.records import LORA_TYPE, SCHEMA, decode_part, encode_rows

OLD_LORA = pa.struct([f for f in LORA_TYPE if f.name not in ("blocks", "schedule")])
OLD_SCHEMA = pa.schema(
    [pa.field("loras", pa.list_(OLD_LORA)) if f.name == "loras" else f
     for f in SCHEMA if f.name != "flags"]
)  # fmt: skip


def row() -> dict:
    values = {f.name: None for f in SCHEMA}
    values.update(item_id="a" * 20, seed=1, created_at=datetime.now(UTC), flags=["flat"],
                  loras=[{"name": "neon", "weight": 0.5, "te_weight": 0.5,
                          "unet_weight": 0.5, "blocks": "MIDD", "schedule": "1@0"}])  # fmt: skip
    return values


def test_an_old_part_reads_with_null_new_fields():
    old = {k: v for k, v in row().items() if k != "flags"}
    old["loras"] = [{k: v for k, v in old["loras"][0].items() if k not in ("blocks", "schedule")}]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([old], schema=OLD_SCHEMA), buf)
    table = decode_part(buf.getvalue())
    assert table.schema == SCHEMA
    (read,) = table.to_pylist()
    assert read["flags"] is None and read["loras"][0]["blocks"] is None
    assert read["loras"][0]["weight"] == 0.5 and read["item_id"] == "a" * 20


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
        "from farm.records import decode_part, encode_rows\n"
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
