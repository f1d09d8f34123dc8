"""The A1111 "parameters" infotext: exact layout, quoting, and parsing it back."""

from __future__ import annotations

import a1111
import pytest

from farm.records.infotext import build_infotext, format_number, parse_infotext, quote

BASE = dict(
    prompt="a cat <lora:neon:0.2>",
    negative_prompt="blurry",
    steps=20,
    sampler="Euler",
    cfg_scale=7.5,
    seed=3,
    width=128,
    height=128,
    model_hash="0123456789",
    model="tiny",
    lora_hashes=[("neon", "abc123def456")],
    version="farm 0.1.0",
)


def infotext(**over) -> str:
    return build_infotext(**{**BASE, **over})


def test_layout_matches_a1111_exactly():
    assert infotext() == (
        "a cat <lora:neon:0.2>\n"
        "Negative prompt: blurry\n"
        "Steps: 20, Sampler: Euler, CFG scale: 7.5, Seed: 3, Size: 128x128, "
        'Model hash: 0123456789, Model: tiny, Lora hashes: "neon: abc123def456", '
        "Version: farm 0.1.0"
    )


def test_negative_line_is_omitted_when_empty():
    text = infotext(negative_prompt="", lora_hashes=(), version="")
    assert text == (
        "a cat <lora:neon:0.2>\n"
        "Steps: 20, Sampler: Euler, CFG scale: 7.5, Seed: 3, Size: 128x128, "
        "Model hash: 0123456789, Model: tiny"
    )
    assert "Negative prompt" not in text
    assert "Lora hashes" not in text and "Version" not in text


def test_several_lora_hashes_are_one_quoted_value():
    text = infotext(lora_hashes=[("neon", "abc123def456"), ("ink", "0123456789ab")])
    assert 'Lora hashes: "neon: abc123def456, ink: 0123456789ab", Version' in text


def test_whole_number_cfg_scale():
    assert ", CFG scale: 7, " in infotext(cfg_scale=7.0)


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("plain", "plain"),
        ("DPM++ 2M Karras", "DPM++ 2M Karras"),
        ("a,b", '"a,b"'),
        ("C:/models/x", '"C:/models/x"'),
        ("two\nlines", '"two\\nlines"'),
        ('say "hi", now', '"say \\"hi\\", now"'),
        ("café, crème", '"café, crème"'),  # ensure_ascii=False, as A1111
        (20, "20"),
    ],
)
def test_quote(value, quoted):
    assert quote(value) == quoted


def test_values_with_commas_and_colons_are_quoted_in_place():
    text = infotext(model="my,model", sampler="odd: sampler")
    last = text.split("\n")[-1]
    assert 'Sampler: "odd: sampler", ' in last
    assert 'Model: "my,model", ' in last


@pytest.mark.parametrize(
    ("value", "text"),
    [(1.0, "1"), (0.2, "0.2"), (-0.5, "-0.5"), (7.5, "7.5"), (0.0, "0"), (100.0, "100"),
     (1, "1"), (0.30000000000000004, "0.30000000000000004"), (1e-05, "1e-05")],
)  # fmt: skip
def test_format_number(value, text):
    assert format_number(value) == text
    assert float(format_number(value)) == value


def test_parse_round_trip():
    text = infotext(
        prompt="knight <lora:ink:0.4>, castle <lora:neon:-0.5>",
        negative_prompt="low quality, blurry",
        seed=4294967295,
        width=512,
        height=768,
        lora_hashes=[("ink", "0123456789ab"), ("neon", "abc123def456"), ("x.y-z", "ffffffffffff")],
    )
    parsed = parse_infotext(text)
    assert parsed["prompt"] == "knight <lora:ink:0.4>, castle <lora:neon:-0.5>"
    assert parsed["negative_prompt"] == "low quality, blurry"
    assert parsed["Steps"] == "20"
    assert parsed["Sampler"] == "Euler"
    assert parsed["CFG scale"] == "7.5"
    assert parsed["Seed"] == "4294967295"
    assert parsed["Size"] == "512x768"
    assert (parsed["width"], parsed["height"]) == (512, 768)
    assert parsed["Model hash"] == "0123456789"
    assert parsed["Model"] == "tiny"
    assert parsed["Lora hashes"] == {
        "ink": "0123456789ab",
        "neon": "abc123def456",
        "x.y-z": "ffffffffffff",
    }
    assert parsed["Version"] == "farm 0.1.0"


def test_parse_round_trips_quoted_values():
    model = 'my "best", model: v2'
    parsed = parse_infotext(infotext(model=model, sampler="a,b"))
    assert parsed["Model"] == model
    assert parsed["Sampler"] == "a,b"
    assert parsed["Seed"] == "3"


def test_multi_line_prompts_round_trip():
    prompt = "line one <lora:neon:1>\nline two, with a comma"
    negative = "neg one\nneg two"
    text = infotext(prompt=prompt, negative_prompt=negative)
    assert text.startswith(prompt + "\nNegative prompt: neg one\nneg two\nSteps: 20, ")
    parsed = parse_infotext(text)
    assert parsed["prompt"] == prompt
    assert parsed["negative_prompt"] == negative
    assert parsed["width"] == 128


def test_parse_without_negative_prompt():
    parsed = parse_infotext(infotext(negative_prompt=""))
    assert parsed["prompt"] == "a cat <lora:neon:0.2>"
    assert parsed["negative_prompt"] == ""
    assert parsed["Lora hashes"] == {"neon": "abc123def456"}


def test_parse_text_without_parameters_is_all_prompt():
    parsed = parse_infotext("just a prompt\nover two lines")
    assert parsed["prompt"] == "just a prompt\nover two lines"
    assert parsed["negative_prompt"] == ""
    assert "Steps" not in parsed and "width" not in parsed


# What A1111's own parser (tests/a1111.py) reads from farm's infotext, field by field.
A1111_READS = [
    ({}, {"Prompt": "a cat <lora:neon:0.2>", "Negative prompt": "blurry", "Steps": "20",
          "Sampler": "Euler", "CFG scale": "7.5", "Seed": "3", "Size-1": "128", "Size-2": "128",
          "Model hash": "0123456789", "Model": "tiny", "Lora hashes": "neon: abc123def456",
          "Version": "farm 0.1.0"}),
    ({"negative_prompt": "", "lora_hashes": (), "version": "", "cfg_scale": 7.0},
     {"Prompt": "a cat <lora:neon:0.2>", "Negative prompt": "", "Steps": "20",
      "Sampler": "Euler", "CFG scale": "7", "Seed": "3", "Size-1": "128", "Size-2": "128",
      "Model hash": "0123456789", "Model": "tiny"}),
    # Commas, colons, quotes and non-ASCII in values; several LoRA hashes; two-line prompts.
    ({"prompt": "knight <lora:ink:0.4>, castle\nsecond line <lora:neon:-0.5>",
      "negative_prompt": "low quality,\nblurry", "model": 'my "best", model: v2',
      "sampler": "DPM++ 2M Karras", "seed": 4294967295, "width": 512, "height": 768,
      "lora_hashes": [("ink", "0123456789ab"), ("x.y-z", "ffffffffffff")],
      "version": "farm 0.1.0 (café)"},
     {"Prompt": "knight <lora:ink:0.4>, castle\nsecond line <lora:neon:-0.5>",
      "Negative prompt": "low quality,\nblurry", "Steps": "20", "Sampler": "DPM++ 2M Karras",
      "CFG scale": "7.5", "Seed": "4294967295", "Size-1": "512", "Size-2": "768",
      "Model hash": "0123456789", "Model": 'my "best", model: v2',
      "Lora hashes": "ink: 0123456789ab, x.y-z: ffffffffffff", "Version": "farm 0.1.0 (café)"}),
]  # fmt: skip


@pytest.mark.parametrize(("over", "fields"), A1111_READS, ids=["base", "plain", "quoted"])
def test_a1111s_own_parser_reads_every_field(over, fields):
    text = infotext(**over)
    assert a1111.parse_generation_parameters(text) == fields
    # farm's reader agrees with A1111's, and so do the LoRA hashes A1111's Lora extension
    # reads back to find each LoRA file.
    ours = parse_infotext(text)
    assert (ours["prompt"], ours["negative_prompt"]) == (fields["Prompt"],
                                                          fields["Negative prompt"])  # fmt: skip
    assert {k: ours[k] for k in fields if k in ours and k != "Lora hashes"} == {
        k: v for k, v in fields.items() if k in ours and k != "Lora hashes"}  # fmt: skip
    if "Lora hashes" in fields:
        assert ours["Lora hashes"] == a1111.lora_hashes(fields["Lora hashes"])
