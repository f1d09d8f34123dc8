"""`farm rerender` says when the bytes differ, not only when they match.

README: `farm rerender JOB_URL ITEM_ID` "renders a row again and reports whether the
bytes match". A mismatch is a result the job's record cannot explain, so the command
exits 1 (README's exit codes: 1 is a failed check or job, 2 bad input).
"""

from __future__ import annotations

import hashlib

from jobrun import farm_here

from farm.plan.sweep import make_plan, unit_streams
from farm.records.parts import decode_part, encode_rows, part_key
from farm.run.job import job_context, open_job
from farm.spec import parse_spec
from farm.storage.store import LocalStore


def test_rerender_reports_a_mismatch_and_exits_1(cpu_worker, tmp_path):
    # Two strengths of one prompt and seed, one pipeline call, rendered in this process.
    data = {"job": "tampered", "prompts": ["a red circle on a white background"], "seeds": [0],
            "loras": [{"name": "neon", "path": "tiny:neon", "alpha": [0, 1]}],
            "render": {"steps": 2, "width": 64, "height": 64}}  # fmt: skip
    plan = make_plan(parse_spec(data, base_dir=tmp_path))
    store = LocalStore(tmp_path / "tampered")
    open_job(plan, store, echo=lambda _: None)
    (unit,) = [u for stream in unit_streams(plan) for u in stream.units]
    cpu_worker.render(unit, job_context(plan, store))
    key = part_key(unit.unit_id)
    rows = decode_part(store.get(key)).to_pylist()
    off, on = sorted(rows, key=lambda r: r["alpha"])
    rendered = store.get(off["image_key"])
    assert rendered != store.get(on["image_key"])  # the LoRA shows: the two images differ
    # The stored image and its row now say item `off` looks like item `on`: consistent
    # with each other (verify passes), but not what rendering `off` gives.
    store.put(off["image_key"], store.get(on["image_key"]))
    off["image_sha256"] = on["image_sha256"]
    store.put(key, encode_rows([r if r["item_id"] != off["item_id"] else off for r in rows]))
    assert farm_here("verify", str(store.root)).returncode == 0

    out = tmp_path / "again.png"
    result = farm_here("rerender", str(store.root), off["item_id"], "--device", "cpu",
                       "--out", str(out), check=False)  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    line = result.stdout.strip().splitlines()[-1]
    # It names both hashes: the row's, and that of the image it rendered, which is the
    # image first rendered for this item.
    new = hashlib.sha256(rendered).hexdigest()
    assert line.startswith(f"differs: {off['item_id']} stored sha256 {on['image_sha256']}, "
                           f"now {new}"), line  # fmt: skip
    assert "match:" not in result.stdout
    assert out.read_bytes() == rendered
