"""A run's checkpoints: found in a folder, a list or {dir, every, last}, put in training
order (metadata over names, the final save last), thinned, and refused in one line when
they are not one run's or cannot be ordered. Tiny LoRA files, headers only: no torch."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from farm.errors import FarmError
from farm.loras import checkpoints
from farm.loras.checkpoints import Checkpoint, CheckpointError, find_checkpoints
from farm.loras.files import LoraError

WHERE = "loras[0].checkpoints"
SD1, SDXL = 768, 2048
_KOHYA = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
_PEFT = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"


def lora(path: Path, layout: str = "kohya", context: int = SD1, **meta: object) -> Path:
    """A one-layer LoRA whose cross-attention width says its family (768: SD1.x)."""
    down = np.zeros((1, context), np.float16)
    up = np.zeros((8, 1), np.float16)
    if layout == "kohya":
        tensors = {f"{_KOHYA}.lora_down.weight": down, f"{_KOHYA}.lora_up.weight": up,
                   f"{_KOHYA}.alpha": np.array(1.0, np.float16)}  # fmt: skip
    else:
        tensors = {f"{_PEFT}.lora_A.weight": down, f"{_PEFT}.lora_B.weight": up}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={k: str(v) for k, v in meta.items()} or None)
    return path


def run(folder: Path, names: list[str], **kwargs: object) -> Path:
    for name in names:
        lora(folder / name, **kwargs)
    return folder


def names(found: list[Checkpoint]) -> list[str]:
    return [c.name for c in found]


def refusal(value: object, base: Path) -> str:
    with pytest.raises(CheckpointError) as err:
        find_checkpoints(value, base, WHERE)
    message = str(err.value)
    assert "\n" not in message and message.startswith(WHERE)
    return message


# ---------------------------------------------------------------- order


def test_kohya_epochs_in_order_with_the_final_save_last(tmp_path: Path) -> None:
    run(tmp_path / "out", ["mystyle.safetensors", "mystyle-000010.safetensors",
                           "mystyle-000004.safetensors", "mystyle-000008.safetensors",
                           "notes.txt"])  # fmt: skip
    found = find_checkpoints("out", tmp_path, WHERE)
    assert names(found) == ["mystyle-000004.safetensors", "mystyle-000008.safetensors",
                            "mystyle-000010.safetensors", "mystyle.safetensors"]  # fmt: skip
    assert [c.epoch for c in found] == [4, 8, 10, None]
    assert [c.step for c in found] == [None] * 4
    assert found[0].path == str((tmp_path / "out" / "mystyle-000004.safetensors").resolve())
    assert found[-1].order == (1, 0, 1)


def test_ai_toolkit_steps_with_the_final_save_last(tmp_path: Path) -> None:
    # By name alone "mystyle.safetensors" sorts first ('.' < '_'): the final save goes last.
    run(tmp_path, ["mystyle_000001500.safetensors", "mystyle.safetensors",
                   "mystyle_000000500.safetensors", "mystyle_000001000.safetensors"],
        layout="peft")  # fmt: skip
    found = find_checkpoints(str(tmp_path), Path("/nowhere"), WHERE)
    assert names(found) == ["mystyle_000000500.safetensors", "mystyle_000001000.safetensors",
                            "mystyle_000001500.safetensors", "mystyle.safetensors"]  # fmt: skip
    assert [c.step for c in found] == [500, 1000, 1500, None]


def test_kohya_step_saves_order_by_number_not_text(tmp_path: Path) -> None:
    run(tmp_path, ["a-step00010000.safetensors", "a-step00002000.safetensors", "a.safetensors"])
    assert names(find_checkpoints(tmp_path, tmp_path, WHERE)) == [
        "a-step00002000.safetensors", "a-step00010000.safetensors", "a.safetensors"]  # fmt: skip


def test_metadata_steps_win_over_names(tmp_path: Path) -> None:
    # Renamed files: ss_steps, written by the trainer at save time, says the real order.
    lora(tmp_path / "mystyle-000001.safetensors", ss_steps=300, ss_epoch=3)
    lora(tmp_path / "mystyle-000002.safetensors", ss_steps=100, ss_epoch=1)
    lora(tmp_path / "mystyle-000003.safetensors", ss_steps=200, ss_epoch=2)
    lora(tmp_path / "mystyle.safetensors", ss_steps=400, ss_epoch=4, ss_max_train_steps=400)
    found = find_checkpoints(tmp_path, tmp_path, WHERE)
    assert names(found) == ["mystyle-000002.safetensors", "mystyle-000003.safetensors",
                            "mystyle-000001.safetensors", "mystyle.safetensors"]  # fmt: skip
    assert [c.step for c in found] == [100, 200, 300, 400]
    # The epoch is the name's; the final save's is its ss_epoch.
    assert [c.epoch for c in found] == [2, 3, 1, 4]


def test_metadata_orders_epoch_and_step_saves_together(tmp_path: Path) -> None:
    # kohya with both save_every_n_epochs and save_every_n_steps; a step save's ss_epoch
    # counts the epoch in progress from 0, so it is not reported as the file's epoch.
    lora(tmp_path / "r-step00000150.safetensors", ss_steps=150, ss_epoch=1)
    lora(tmp_path / "r-000001.safetensors", ss_steps=100, ss_epoch=1)
    lora(tmp_path / "r-000002.safetensors", ss_steps=200, ss_epoch=2)
    lora(tmp_path / "r-step00000300.safetensors", ss_steps=300, ss_epoch=2)
    lora(tmp_path / "r.safetensors", ss_steps=300, ss_epoch=3)
    found = find_checkpoints(tmp_path, tmp_path, WHERE)
    assert names(found) == ["r-000001.safetensors", "r-step00000150.safetensors",
                            "r-000002.safetensors", "r-step00000300.safetensors",
                            "r.safetensors"]  # fmt: skip
    assert [c.epoch for c in found] == [1, None, 2, None, 3]
    # The final save shares step 300 with the last step save (kohya writes both) and goes after.
    assert found[-2].order == (0, 300, 0) and found[-1].order == (0, 300, 1)


def test_ai_toolkit_training_info_is_metadata_too(tmp_path: Path) -> None:
    lora(tmp_path / "late.safetensors", training_info=json.dumps({"step": 2000}))
    lora(tmp_path / "early.safetensors", training_info=json.dumps({"step": 1000}))
    found = find_checkpoints(tmp_path, tmp_path, WHERE)
    assert names(found) == ["early.safetensors", "late.safetensors"]
    assert [c.step for c in found] == [1000, 2000]


def test_repeated_ss_steps_leave_the_order_to_the_names(tmp_path: Path) -> None:
    # A version that wrote the planned total, or a resumed run that restarted its count.
    for epoch in (1, 2, 3):
        lora(tmp_path / f"m-{epoch:06d}.safetensors", ss_steps=900, ss_max_train_steps=900)
    lora(tmp_path / "m.safetensors", ss_steps=900)
    found = find_checkpoints(tmp_path, tmp_path, WHERE)
    assert names(found) == ["m-000001.safetensors", "m-000002.safetensors",
                            "m-000003.safetensors", "m.safetensors"]  # fmt: skip
    assert [c.step for c in found] == [None] * 4


def test_names_decide_when_not_every_file_has_metadata(tmp_path: Path) -> None:
    lora(tmp_path / "m-000002.safetensors", ss_steps=5)
    lora(tmp_path / "m-000001.safetensors")
    assert names(find_checkpoints(tmp_path, tmp_path, WHERE)) == [
        "m-000001.safetensors", "m-000002.safetensors"]  # fmt: skip


def test_hidden_files_and_subfolders_are_not_checkpoints(tmp_path: Path) -> None:
    run(tmp_path, ["m-000001.safetensors", "m-000002.safetensors"])
    (tmp_path / "._m-000001.safetensors").write_bytes(b"\0" * 4096)  # macOS's copy
    lora(tmp_path / "sub" / "m-000003.safetensors")
    lora(tmp_path / "m-state" / "m-000004.safetensors")
    assert names(find_checkpoints(tmp_path, tmp_path, WHERE)) == [
        "m-000001.safetensors", "m-000002.safetensors"]  # fmt: skip


def test_folder_names_are_literal(tmp_path: Path) -> None:
    folder = run(tmp_path / "run [v2]*", ["x-000001.safetensors", "x-000002.safetensors"])
    lora(tmp_path / "run 2" / "x-000003.safetensors")
    assert names(find_checkpoints("run [v2]*", tmp_path, WHERE)) == [
        "x-000001.safetensors", "x-000002.safetensors"]  # fmt: skip
    assert folder.exists()


def test_a_link_inside_the_folder_is_followed(tmp_path: Path) -> None:
    lora(tmp_path / "store.bin.safetensors.real")  # not a checkpoint by name
    os.symlink("store.bin.safetensors.real", tmp_path / "m-000001.safetensors")
    lora(tmp_path / "m-000002.safetensors")
    assert names(find_checkpoints(tmp_path, tmp_path, WHERE)) == [
        "m-000001.safetensors", "m-000002.safetensors"]  # fmt: skip


# ---------------------------------------------------------------- every / last


def test_every_counts_back_from_the_final_save(tmp_path: Path) -> None:
    run(tmp_path / "out", [f"m-{e:06d}.safetensors" for e in range(1, 11)] + ["m.safetensors"])
    found = find_checkpoints({"dir": "out", "every": 3}, tmp_path, WHERE)
    # 11 checkpoints: the final one, and every third before it.
    assert names(found) == ["m-000002.safetensors", "m-000005.safetensors",
                            "m-000008.safetensors", "m.safetensors"]  # fmt: skip
    found = find_checkpoints({"dir": "out", "every": 3, "last": 2}, tmp_path, WHERE)
    assert names(found) == ["m-000008.safetensors", "m.safetensors"]
    found = find_checkpoints({"dir": "out", "last": 3}, tmp_path, WHERE)
    assert names(found) == ["m-000009.safetensors", "m-000010.safetensors", "m.safetensors"]
    assert len(find_checkpoints({"dir": "out", "every": 1}, tmp_path, WHERE)) == 11
    assert len(find_checkpoints({"dir": "out", "every": 50, "last": 9}, tmp_path, WHERE)) == 1
    assert len(find_checkpoints({"dir": "out", "every": None}, tmp_path, WHERE)) == 11


@pytest.mark.parametrize("key", ["every", "last"])
@pytest.mark.parametrize("bad", [0, -2, 1.5, "2", True, [2]])
def test_every_and_last_must_be_positive_whole_numbers(tmp_path: Path, key: str,
                                                       bad: object) -> None:  # fmt: skip
    run(tmp_path, ["m-000001.safetensors"])
    message = refusal({"dir": ".", key: bad}, tmp_path)
    assert message.startswith(f"{WHERE}.{key}: expected a positive whole number, got ")


def test_mapping_keys(tmp_path: Path) -> None:
    run(tmp_path, ["m-000001.safetensors"])
    assert refusal({"dir": ".", "evry": 2}, tmp_path) == (
        f"{WHERE}.evry: unknown key (did you mean 'every'?)")  # fmt: skip
    assert refusal({"dir": ".", "glob": "*"}, tmp_path) == (
        f"{WHERE}.glob: unknown key (known: dir, every, last)")  # fmt: skip
    assert refusal({"every": 2}, tmp_path).startswith(f"{WHERE}.dir: missing")
    assert refusal({"dir": 5}, tmp_path).startswith(f"{WHERE}.dir: expected the path")
    assert refusal({"dir": "nope"}, tmp_path).startswith(f"{WHERE}.dir: no folder ")


# ---------------------------------------------------------------- lists


def test_a_list_is_put_in_training_order(tmp_path: Path) -> None:
    run(tmp_path / "a", ["m-000004.safetensors", "m-000002.safetensors", "m.safetensors"])
    found = find_checkpoints(["a/m.safetensors", "a/m-000004.safetensors",
                              "a/m-000002.safetensors"], tmp_path, WHERE)  # fmt: skip
    assert names(found) == ["m-000002.safetensors", "m-000004.safetensors", "m.safetensors"]


def test_a_list_farm_cannot_order_keeps_its_written_order(tmp_path: Path) -> None:
    run(tmp_path, ["late.safetensors", "early.safetensors", "mid.safetensors"])
    found = find_checkpoints(["early.safetensors", "mid.safetensors", "late.safetensors"],
                             tmp_path, WHERE)  # fmt: skip
    assert names(found) == ["early.safetensors", "mid.safetensors", "late.safetensors"]
    assert [c.order for c in found] == [(0, 0, 0), (0, 1, 0), (0, 2, 0)]


def test_list_refusals(tmp_path: Path) -> None:
    lora(tmp_path / "m-000001.safetensors")
    (tmp_path / "m.ckpt").write_bytes(b"x")
    assert refusal([], tmp_path).startswith(f"{WHERE}: the list is empty")
    assert refusal(["m.ckpt"], tmp_path).startswith(
        f"{WHERE}[0]: m.ckpt is not a .safetensors file"
    )
    assert refusal(["m-000001.safetensors", "gone.safetensors"], tmp_path).startswith(
        f"{WHERE}[1]: no file {tmp_path.resolve()}/gone.safetensors"
    )
    assert refusal(["m-000001.safetensors", "./m-000001.safetensors"], tmp_path) == (
        f"{WHERE}[1]: m-000001.safetensors is listed twice (also {WHERE}[0]): give each "
        "checkpoint once"
    )
    assert refusal(["m-000001.safetensors", 3], tmp_path).startswith(
        f"{WHERE}[1]: expected the path of a checkpoint, got 3")  # fmt: skip


def test_a_stray_in_a_list_is_taken_out_of_it(tmp_path: Path) -> None:
    run(tmp_path, ["m-000001.safetensors", "m-000002.safetensors"])
    lora(tmp_path / "x.safetensors", context=SDXL)
    message = refusal(["m-000001.safetensors", "x.safetensors", "m-000002.safetensors"],
                      tmp_path)  # fmt: skip
    assert message == (
        f"{WHERE}: x.safetensors is a kohya-layout SDXL LoRA; the run's other 2 files are "
        "kohya-layout SD1.x LoRAs: take it out of the list"
    )


# ---------------------------------------------------------------- one run


def test_a_stray_file_is_named(tmp_path: Path) -> None:
    run(tmp_path, [f"mystyle_{s:09d}.safetensors" for s in range(100, 901, 100)], layout="peft")
    lora(tmp_path / "other-run.safetensors", layout="kohya", context=SDXL)
    assert refusal(tmp_path, tmp_path) == (
        f"{WHERE}: other-run.safetensors is a kohya-layout SDXL LoRA; the run's other 9 files "
        "are peft-layout SD1.x LoRAs: move it out of the folder or list the files"
    )


def test_strays_of_layout_alone_and_of_family_alone(tmp_path: Path) -> None:
    run(tmp_path, [f"m-{e:06d}.safetensors" for e in range(1, 5)])
    lora(tmp_path / "p.safetensors", layout="peft")
    lora(tmp_path / "q.safetensors", context=SDXL)
    lora(tmp_path / "r.safetensors", context=SDXL)
    assert refusal(tmp_path, tmp_path) == (
        f"{WHERE}: p.safetensors is a peft-layout SD1.x LoRA, and 2 more files are not from "
        "the run either (q.safetensors, r.safetensors); the run's other 4 files are "
        "kohya-layout SD1.x LoRAs: move them out of the folder or list the files"
    )


def test_two_runs_of_one_size(tmp_path: Path) -> None:
    run(tmp_path, ["a-000001.safetensors", "a-000002.safetensors"])
    run(tmp_path, ["b-000001.safetensors", "b-000002.safetensors"], context=SDXL)
    assert refusal(tmp_path, tmp_path) == (
        f"{WHERE}: the files are from more than one run: 2 are kohya-layout SD1.x LoRAs "
        "(a-000001.safetensors, a-000002.safetensors); 2 are kohya-layout SDXL LoRAs "
        "(b-000001.safetensors, b-000002.safetensors): keep one run's files there or list them"
    )


def test_unrecognised_widths_are_spelled_out(tmp_path: Path) -> None:
    run(tmp_path, ["a-000001.safetensors", "a-000002.safetensors"], context=512)
    lora(tmp_path / "a-000003.safetensors", context=640)
    assert refusal(tmp_path, tmp_path) == (
        f"{WHERE}: a-000003.safetensors is a kohya-layout LoRA for an unrecognised model "
        "(context 640); the run's other 2 files are kohya-layout LoRAs for an unrecognised "
        "model (context 512): move it out of the folder or list the files"
    )


# ---------------------------------------------------------------- cannot order


def test_files_without_numbers_or_metadata(tmp_path: Path) -> None:
    run(tmp_path, [f"{n}.safetensors" for n in "abcde"])
    assert refusal(tmp_path, tmp_path) == (
        f"{WHERE}: cannot tell the training order of a.safetensors, b.safetensors, "
        "c.safetensors and 2 more: their names have no step or epoch number (only the final "
        "save may lack one) and the files carry no ss_steps metadata: list the files in "
        "training order"
    )


def test_some_without_metadata(tmp_path: Path) -> None:
    lora(tmp_path / "a.safetensors", ss_steps=10)
    lora(tmp_path / "b.safetensors")
    lora(tmp_path / "b-000001.safetensors", ss_steps=5)
    message = refusal(tmp_path, tmp_path)
    assert message.startswith(f"{WHERE}: cannot tell the training order of a.safetensors, "
                              "b.safetensors: ")  # fmt: skip
    assert "1 of the 3 files carries no ss_steps metadata" in message


def test_epochs_against_steps_without_metadata(tmp_path: Path) -> None:
    run(tmp_path, ["m-000001.safetensors", "m-000002.safetensors", "m-step00000500.safetensors"])
    assert refusal(tmp_path, tmp_path) == (
        f"{WHERE}: cannot tell the training order of m-000001.safetensors, "
        "m-000002.safetensors: their names count epochs while 1 other counts steps, and "
        "without ss_steps metadata on every file epochs cannot be set against steps: list the "
        "files in training order"
    )


def test_two_files_at_one_epoch(tmp_path: Path) -> None:
    run(tmp_path, ["mystyle-000004.safetensors", "mystyle-v2-000004.safetensors",
                   "mystyle-000008.safetensors"])  # fmt: skip
    assert refusal(tmp_path, tmp_path) == (
        f"{WHERE}: cannot tell the training order of mystyle-000004.safetensors, "
        "mystyle-v2-000004.safetensors: their names put both at epoch 4: list the files in "
        "training order"
    )


def test_a_metadata_clash_the_names_cannot_settle(tmp_path: Path) -> None:
    lora(tmp_path / "copy.safetensors", ss_steps=700)
    lora(tmp_path / "m.safetensors", ss_steps=700)
    lora(tmp_path / "m-000001.safetensors", ss_steps=350)
    assert refusal(tmp_path, tmp_path) == (
        f"{WHERE}: cannot tell the training order of copy.safetensors, m.safetensors: their "
        "ss_steps metadata puts both at step 700, and their names do not tell them apart: "
        "list the files in training order"
    )


# ---------------------------------------------------------------- folders refused


def test_folder_refusals(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "pickles").mkdir()
    for name in ("m-000001.ckpt", "m-000002.pt", "notes.txt"):
        (tmp_path / "pickles" / name).write_bytes(b"x")
    (tmp_path / "file.safetensors").write_bytes(b"x")
    folder = tmp_path.resolve()
    assert refusal("empty", tmp_path) == (
        f"{WHERE}: folder {folder}/empty is empty: point it at the folder the trainer saved "
        "the run to"
    )
    assert refusal("missing", tmp_path) == (
        f"{WHERE}: no folder {folder}/missing: check the path (a relative one is read from "
        f"{tmp_path})"
    )
    assert refusal("pickles", tmp_path) == (
        f"{WHERE}: {folder}/pickles holds no .safetensors files (3 other files: "
        "m-000001.ckpt, m-000002.pt, notes.txt): convert the checkpoints to .safetensors "
        "(pickle files can run code when loaded)"
    )
    assert refusal("file.safetensors", tmp_path).startswith(
        f"{WHERE}: {folder}/file.safetensors is a file, not a folder"
    )
    assert refusal("", tmp_path).startswith(f"{WHERE}: expected the path of the run's folder")
    assert refusal(7, tmp_path) == (
        f"{WHERE}: expected the run's folder, a list of its files or {{dir, every, last}}, got 7"
    )


def test_only_text_files(tmp_path: Path) -> None:
    (tmp_path / "readme.md").write_text("x")
    assert refusal(tmp_path, tmp_path).endswith(
        "(1 other file: readme.md): point it at the folder the trainer saved the run to"
    )


def test_a_link_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    lora(tmp_path / "elsewhere" / "m-000002.safetensors")
    lora(tmp_path / "run" / "m-000001.safetensors")
    os.symlink("../elsewhere/m-000002.safetensors", tmp_path / "run" / "m-000002.safetensors")
    real = (tmp_path / "elsewhere" / "m-000002.safetensors").resolve()
    assert refusal("run", tmp_path) == (
        f"{WHERE}: m-000002.safetensors links to {real}, outside {(tmp_path / 'run').resolve()}: "
        "copy the file into the folder or list it"
    )


def test_a_link_to_a_file_of_the_folder_is_refused(tmp_path: Path) -> None:
    lora(tmp_path / "m-000001.safetensors")
    os.symlink("m-000001.safetensors", tmp_path / "m-000002.safetensors")
    assert refusal(tmp_path, tmp_path) == (
        f"{WHERE}: m-000001.safetensors and m-000002.safetensors are the same file (one links "
        "to the other): remove the link or list the files"
    )


def test_a_broken_file_is_named(tmp_path: Path) -> None:
    lora(tmp_path / "m-000001.safetensors")
    (tmp_path / "m-000002.safetensors").write_bytes(b"\x10" + b"\0" * 7 + b"{}")
    message = refusal(tmp_path, tmp_path)
    assert message.startswith(f"{WHERE}: {tmp_path.resolve()}/m-000002.safetensors: not a "
                              "safetensors file")  # fmt: skip


def test_too_many_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoints, "MAX_CHECKPOINTS", 3)
    run(tmp_path, [f"m-{e:06d}.safetensors" for e in range(1, 5)])
    assert refusal(tmp_path, tmp_path) == (
        f"{WHERE}: {tmp_path.resolve()} holds 4 .safetensors files, more than the 3 checkpoints "
        "farm takes from one run: move older saves out or list the files to sweep"
    )
    assert refusal([f"m-{e:06d}.safetensors" for e in range(1, 5)], tmp_path).startswith(
        f"{WHERE}: 4 files, more than the 3 checkpoints"
    )


def test_refusals_are_farm_errors() -> None:
    assert issubclass(CheckpointError, LoraError) and issubclass(CheckpointError, FarmError)
