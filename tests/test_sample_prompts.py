"""Trainers' sample prompts: sd-scripts' prompt file and ai-toolkit's config, read as the
trainers read them; every bad input is one SpecError line naming the file and the line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from farm.spec.errors import SpecError
from farm.spec.parse import MAX_SEED
from farm.spec.sample_prompts import SamplePrompt, load_sample_prompts


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def refused(path: Path, fmt: str) -> str:
    with pytest.raises(SpecError) as err:
        load_sample_prompts(path, fmt)
    message = str(err.value)
    assert "\n" not in message
    return message


def plain(text: str, line: int, **fields) -> SamplePrompt:
    unset = dict(negative=None, width=None, height=None, seed=None, guidance=None, steps=None)
    return SamplePrompt(text=text, line=line, **{**unset, **fields})


# --- sd-scripts ---------------------------------------------------------------------------

SD_FILE = """\
# sample prompts for neon
a cat in neon light --n blurry, low quality --w 768 --h 512 --d 42 --l 7.5 --s 28

  a dog  --W 1024 --H 1024 --D 0 --S 1
  # indented: a prompt, as sd-scripts reads it
a fox --g 3.5 --l 1
"""


def test_sd_scripts_every_option(tmp_path):
    path = write(tmp_path, "samples.txt", SD_FILE)
    assert load_sample_prompts(path, "sd-scripts") == [
        plain("a cat in neon light", 2, negative="blurry, low quality", width=768, height=512,
              seed=42, guidance=7.5, steps=28),
        plain("a dog", 4, width=1024, height=1024, seed=0, steps=1),
        plain("# indented: a prompt, as sd-scripts reads it", 5),
        plain("a fox", 6, guidance=3.5),
    ]  # fmt: skip


def test_sd_scripts_guidance(tmp_path):
    lines = ["a --l 4", "b --g 2.5", "c --g 0 --l 1", "d --l 0"]
    path = write(tmp_path, "g.txt", "\n".join(lines))
    assert [p.guidance for p in load_sample_prompts(path, "sd-scripts")] == [4.0, 2.5, 0.0, 0.0]
    path = write(tmp_path, "both.txt", "a cat --l 4 --g 3.5")
    assert "both.txt line 1: --l 4 and --g 3.5: farm renders with one guidance" in refused(
        path, "sd-scripts"
    )


def test_sd_scripts_line_endings_and_bom(tmp_path):
    path = write(tmp_path, "crlf.txt", b"\xef\xbb\xbf# c\r\n\r\na cat --w 64\r\nb\rc\n")
    got = load_sample_prompts(path, "sd-scripts")
    assert [(p.text, p.line, p.width) for p in got] == [
        ("a cat", 3, 64),
        ("b", 4, None),
        ("c", 5, None),
    ]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("a cat --w abc", "--w 'abc' is not a width (use a multiple of 8, 8 to 4096)"),
        ("a cat --w 513", "--w 513 is not a multiple of 8 (try 512 or 520)"),
        ("a cat --h 0", "--h 0 is not a height (use a multiple of 8, 8 to 4096)"),
        ("a cat --h 8192", "--h 8192 is not a height"),
        ("a cat --w 512px", "--w '512px' is not a width"),
        ("a cat --d -1", f"--d '-1' is not a seed (use a whole number, 0 to {MAX_SEED})"),
        (f"a cat --d {MAX_SEED + 1}", f"--d {MAX_SEED + 1} is not a seed"),
        ("a cat --d 4.5", "--d '4.5' is not a seed"),
        ("a cat --s 0", "--s 0 is not a step count (use 1 to 1000)"),
        ("a cat --s 1001", "--s 1001 is not a step count"),
        ("a cat --s many", "--s 'many' is not a step count"),
        ("a cat --l x", "--l 'x' is not a guidance scale (use a finite number, 0 or more)"),
        ("a cat --l -1", "--l '-1' is not a guidance scale"),
        ("a cat --l nan", "--l 'nan' is not a guidance scale"),
        ("a cat --g inf", "--g 'inf' is not a guidance scale"),
        ("a cat --n", "--n has no value"),
        ("a cat --w 512 --w 768", "--w is given twice (give it once)"),
        ("a cat --ss euler_a", "--ss 'euler_a': a per-prompt sampler is not supported"),
        ("a cat --cn pose.png", "--cn 'pose.png': a ControlNet image is not supported"),
        ("a cat --wh 512", "unknown option --wh (did you mean 'w'?)"),
        ("a cat --seed 5", "unknown option --seed"),
        ("a cat --", "' --' with no option name after it"),
        ("--w 512 a cat", "starts with an option; write the prompt first"),
        ("a cat --d 1 " + "x" * 30_000, "--d '1 xxxx"),
        ("x" * 20_001, "the prompt has 20,001 characters, more than 20,000"),
    ],
)
def test_sd_scripts_bad_line(tmp_path, line, expected):
    path = write(tmp_path, "samples.txt", f"# first\n\n{line}\n")
    message = refused(path, "sd-scripts")
    assert message.startswith(f"prompts.file: {path} line 3: ")
    assert expected in message


def test_sd_scripts_first_bad_line_is_named(tmp_path):
    path = write(tmp_path, "samples.txt", "a cat --w 512\na dog --h 7\na fox --s 0\n")
    assert refused(path, "sd-scripts").startswith(f"prompts.file: {path} line 2: --h 7 ")


def test_sd_scripts_other_prompt_files(tmp_path):
    for name in ("prompts.toml", "prompts.json"):
        path = write(tmp_path, name, "[prompt]\n")
        assert "prompt files are not supported; use its .txt form" in refused(path, "sd-scripts")


# --- ai-toolkit ---------------------------------------------------------------------------

AIT_CONFIG = """\
job: extension
config:
  name: neon_v1
  process:
    - type: sd_trainer
      trigger_word: n30n
      sample:
        sampler: flowmatch
        sample_every: 250
        width: 1024
        height: 768
        prompts:
          - "[trigger] cat, in a [name] style"
          - "a dog --n ugly, [trigger] --w 512 --h 640 --seed 7 --cfg 2.5 --steps 12"
          - "a fox --d 9 --l 0 --s 4 --n"
        neg: "blurry"
        seed: 42
        walk_seed: true
        guidance_scale: 4
        sample_steps: 20
"""


def test_ai_toolkit_block_and_flags(tmp_path):
    path = write(tmp_path, "train.yaml", AIT_CONFIG)
    assert load_sample_prompts(path, "ai-toolkit") == [
        plain("n30n cat, in a neon_v1 style", 1, negative="blurry", width=1024, height=768,
              seed=42, guidance=4.0, steps=20),
        plain("a dog", 2, negative="ugly, n30n", width=512, height=640, seed=7, guidance=2.5,
              steps=12),
        plain("a fox", 3, negative="", width=1024, height=768, seed=9, guidance=0.0, steps=4),
    ]  # fmt: skip


def test_ai_toolkit_json_and_unset_fields(tmp_path):
    config = {"config": {"process": [{"sample": {"prompts": ["a cat", "a dog"]}}]}}
    path = write(tmp_path, "train.json", json.dumps(config))
    assert load_sample_prompts(path, "ai-toolkit") == [plain("a cat", 1), plain("a dog", 2)]


def test_ai_toolkit_seeds(tmp_path):
    def seeds(sample: dict) -> list[int | None]:
        config = {"config": {"process": [{"sample": sample}]}}
        path = write(tmp_path, "seeds.json", json.dumps(config))
        return [p.seed for p in load_sample_prompts(path, "ai-toolkit")]

    three = ["a", "b", "c"]
    assert seeds({"prompts": three, "seed": 10, "walk_seed": True}) == [10, 11, 12]
    assert seeds({"prompts": three, "walk_seed": True}) == [0, 1, 2]  # ai-toolkit's seed 0
    assert seeds({"prompts": three, "seed": 10}) == [10, 10, 10]
    assert seeds({"prompts": three}) == [None, None, None]
    # An item's own seed holds for the items after it until walk_seed moves on, as there.
    items = [{"prompt": "a"}, {"prompt": "b", "seed": 5}, {"prompt": "c"}]
    assert seeds({"samples": items, "seed": 1}) == [1, 5, 5]
    assert seeds({"samples": items, "seed": 1, "walk_seed": True}) == [1, 5, 3]
    # An inline flag sets its own prompt's seed only.
    assert seeds({"prompts": ["a --d 8", "b"], "seed": 1}) == [8, 1]


def test_ai_toolkit_samples_items(tmp_path):
    config = """\
config:
  process:
    - sample:
        width: 512
        neg: false
        prompts: ["ignored: samples wins, as in ai-toolkit"]
        samples:
          - prompt: a cat
            width: 1024
            height: 1024
            neg: dark
            seed: 3
            guidance_scale: 3.5
            sample_steps: 30
            network_multiplier: 1
          - prompt: a dog --w 256
"""
    path = write(tmp_path, "train.yml", config)
    assert load_sample_prompts(path, "ai-toolkit") == [
        plain("a cat", 1, negative="dark", width=1024, height=1024, seed=3, guidance=3.5,
              steps=30),
        plain("a dog", 2, width=256, seed=3),
    ]  # fmt: skip


def sample_config(tmp_path: Path, sample: str, trigger: str = "") -> Path:
    text = f"config:\n  process:\n    - {trigger}sample:\n" + "".join(
        f"        {line}\n" for line in sample.splitlines()
    )
    return write(tmp_path, "train.yaml", text)


AT = "config.process[0].sample"


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        ("prompts: [a cat]\nwidth: abc", f"{AT}.width: 'abc' is not a width"),
        ("prompts: [a cat]\nwidth: 513", f"{AT}.width: 513 is not a multiple of 8 (try 512 or"),
        ("prompts: [a cat]\nheight: 512.0", f"{AT}.height: 512.0 is not a height"),
        ("prompts: [a cat]\nseed: -1", f"{AT}.seed: -1 is not a seed"),
        ("prompts: [a cat]\nseed: true", f"{AT}.seed: true is not a seed"),
        ("prompts: [a, b]\nseed: 4294967295\nwalk_seed: true", "walk_seed takes prompt 2 past"),
        ("prompts: [a cat]\nwalk_seed: 1", f"{AT}.walk_seed: 1 is not true or false"),
        ("prompts: [a cat]\nguidance_scale: -2", f"{AT}.guidance_scale: -2 is not a guidance"),
        ("prompts: [a cat]\nguidance_scale: .nan", f"{AT}.guidance_scale: nan is not a guid"),
        ("prompts: [a cat]\nsample_steps: 0", f"{AT}.sample_steps: 0 is not a step count"),
        ("prompts: [a cat]\nneg: 5", f"{AT}.neg: expected a string, got 5"),
        ("prompts: [a cat --w abc]", f"{AT}.prompts[0]: --w 'abc' is not a width"),
        ("prompts: [a, b --h 100]", f"{AT}.prompts[1]: --h 100 is not a multiple of 8"),
        ("prompts: [a cat --seed x]", f"{AT}.prompts[0]: --seed 'x' is not a seed"),
        ("prompts: [a cat --cfg x]", f"{AT}.prompts[0]: --cfg 'x' is not a guidance scale"),
        ("prompts: [a cat --steps 2000]", f"{AT}.prompts[0]: --steps 2000 is not a step"),
        ("prompts: [a cat --d 1 --seed 2]", "--seed sets the seed a second time"),
        ("prompts: [a cat --W 512]", "unknown flag --W (flags are lower case: write --w)"),
        ("prompts: [a cat --m 0.5]", "--m '0.5': farm's sweep sets the LoRA strength"),
        ("prompts: [a cat --ctrl_img x.png]", "a control image is not supported"),
        ("prompts: [a cat --]", f"{AT}.prompts[0]: '--' with no flag name after it"),
        ("prompts: [--w 512]", f"{AT}.prompts[0]: the prompt is empty"),
        ("prompts: [a cat, 5]", f"{AT}.prompts[1]: expected a string, got 5"),
        ("prompts: []", f"{AT}.prompts: the list is empty"),
        ("prompts: a cat", f"{AT}.prompts: expected a list, got 'a cat'"),
        ("width: 512", f"{AT}: no prompts (give prompts: a list of strings, or samples:)"),
        ("samples: [a cat]", f"{AT}.samples[0]: expected a mapping with prompt:"),
        ("samples: [{seed: 1}]", f"{AT}.samples[0].prompt: required"),
        ("samples: [{prompt: a, seed: x}]", f"{AT}.samples[0].seed: 'x' is not a seed"),
        ("samples: [{prompt: a, network_multiplier: 0.5}]", "network_multiplier: 0.5: farm's"),
        ("samples: [{prompt: a, ctrl_img: c.png}]", "ctrl_img: a control image is not"),
        ("prompts: [a]\nnum_frames: 41", f"{AT}.num_frames: 41: a frame count is not supp"),
        ("prompts: [a]\nguidance_rescale: 0.7", f"{AT}.guidance_rescale: 0.7: guidance resc"),
        ("prompts: ['[trigger] cat']", f"{AT}.prompts[0]: [trigger] but the config has no tri"),
        ("prompts: [a]\nneg: '[trigger]'", "[trigger] but the config has no trigger word"),
    ],
)
def test_ai_toolkit_bad_value(tmp_path, sample, expected):
    path = sample_config(tmp_path, sample)
    message = refused(path, "ai-toolkit")
    assert message.startswith(f"prompts.file: {path}: "), message
    assert expected in message


def test_ai_toolkit_trigger_word(tmp_path):
    path = sample_config(tmp_path, "prompts: ['[trigger], [name]']", "trigger_word: neon\n      ")
    assert load_sample_prompts(path, "ai-toolkit")[0].text == "neon, neon"
    path = sample_config(tmp_path, "prompts: [a]", "trigger_word: 5\n      ")
    assert "config.process[0].trigger_word: expected a string, got 5" in refused(path, "ai-toolkit")


@pytest.mark.parametrize(
    "text",
    [
        "job: extension\n",
        "config:\n  name: x\n",
        "config:\n  process: []\n",
        "config:\n  process:\n    - type: sd_trainer\n",
        "- a list\n",
    ],
)
def test_ai_toolkit_no_sample_block(tmp_path, text):
    path = write(tmp_path, "train.yaml", text)
    assert refused(path, "ai-toolkit") == (
        f"prompts.file: {path}: no sample block at config.process[0].sample; give an "
        "ai-toolkit training config whose process samples prompts"
    )


def test_ai_toolkit_bad_files(tmp_path):
    path = write(tmp_path, "train.yaml", "config: [\n")
    assert refused(path, "ai-toolkit").startswith(f"prompts.file: {path}: invalid YAML at line")
    path = write(tmp_path, "train.json", '{"config": 1,\n "config": 2}')
    assert "invalid JSON: duplicate key 'config'" in refused(path, "ai-toolkit")
    path = write(tmp_path, "bad.json", "{\n")
    assert refused(path, "ai-toolkit").startswith(f"prompts.file: {path}: invalid JSON at line")
    path = write(tmp_path, "train.toml", "a = 1\n")
    assert refused(path, "ai-toolkit") == (
        f"prompts.file: {path}: not an ai-toolkit config (use its .yaml, .yml or .json file)"
    )


# --- both ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "name"), [("sd-scripts", "p.txt"), ("ai-toolkit", "p.yaml")])
def test_unreadable_files(tmp_path, fmt, name):
    path = tmp_path / name
    assert refused(path, fmt) == f"prompts.file: {path}: file not found"
    write(tmp_path, name, "")
    assert refused(path, fmt) == f"prompts.file: {path}: is empty"
    write(tmp_path, name, "\n  \n")
    assert refused(path, fmt) == f"prompts.file: {path}: is empty"
    write(tmp_path, name, b"\x89PNG\r\n\x1a\n\xff\xfe")
    assert refused(path, fmt) == f"prompts.file: {path}: not UTF-8 text (is it a binary file?)"
    write(tmp_path, name, b"a cat\x00\x00")
    assert refused(path, fmt) == f"prompts.file: {path}: has NUL bytes; not a text file"
    folder = tmp_path / "folder.txt"
    folder.mkdir()
    assert (
        refused(folder, "sd-scripts") == f"prompts.file: {folder}: is a folder, not a prompt file"
    )


def test_only_comments(tmp_path):
    path = write(tmp_path, "p.txt", "# one\n\n#two\n")
    assert refused(path, "sd-scripts") == (
        f"prompts.file: {path}: no prompts (every line is blank or a # comment)"
    )


def test_unknown_format(tmp_path):
    path = write(tmp_path, "p.txt", "a cat\n")
    assert refused(path, "sd_scripts") == (
        "prompts.format: 'sd_scripts' is not a sample prompt format (did you mean "
        "'sd-scripts'?) (known: sd-scripts, ai-toolkit)"
    )
    assert refused(path, "kohya") == (
        "prompts.format: 'kohya' is not a sample prompt format (known: sd-scripts, ai-toolkit)"
    )
