"""A1111 `<lora:name:weight>` tags: parsed out of prompts, written back by lora_tag."""

from __future__ import annotations

import pytest

from farm.prompts import LoraTag, PromptError, lora_tag, parse_prompt


def test_tags_are_removed_and_returned():
    text, tags = parse_prompt("a cat <lora:neon:0.5> in a hat <lora:ink:-0.25>")
    assert text == "a cat  in a hat "
    assert tags == [LoraTag("neon", 0.5), LoraTag("ink", -0.25)]


def test_prompt_without_tags_is_unchanged():
    assert parse_prompt("a cat, in a hat: studio photo") == ("a cat, in a hat: studio photo", [])


def test_default_weight_is_one():
    text, tags = parse_prompt("<lora:neon> a cat")
    assert text == " a cat"
    assert tags == [LoraTag("neon", 1.0)]


def test_only_the_first_weight_is_used():
    # A1111 reads `<lora:name:te:unet>`; farm uses the first weight for both.
    assert parse_prompt("<lora:neon:0.3:0.7>")[1] == [LoraTag("neon", 0.3)]


@pytest.mark.parametrize("name", ["ink-peft", "my_lora.v2", "x"])
def test_names_with_dots_and_dashes(name):
    assert parse_prompt(f"a <lora:{name}:2>")[1] == [LoraTag(name, 2.0)]


@pytest.mark.parametrize("tag", ["<hypernet:x:1>", "<lyco:y:0.5>", "<embedding:z>"])
def test_other_extra_networks_stay_in_the_text(tag):
    prompt = f"a cat {tag} <lora:neon:0.5>"
    text, tags = parse_prompt(prompt)
    assert text == f"a cat {tag} "
    assert tags == [LoraTag("neon", 0.5)]


def test_angle_brackets_that_are_not_tags_stay():
    prompt = "a <b> c > d < e"
    assert parse_prompt(prompt) == (prompt, [])


@pytest.mark.parametrize("weight", ["abc", "0.5x", "", "1,5"])
def test_non_numeric_weight_raises(weight):
    with pytest.raises(PromptError, match="not a number") as info:
        parse_prompt(f"a cat <lora:neon:{weight}>")
    assert f"<lora:neon:{weight}>" in str(info.value)


@pytest.mark.parametrize("weight", ["nan", "inf", "-inf", "1e400"])
def test_non_finite_weight_raises(weight):
    with pytest.raises(PromptError, match="finite") as info:
        parse_prompt(f"<lora:neon:{weight}> a cat")
    assert f"<lora:neon:{weight}>" in str(info.value)


@pytest.mark.parametrize(
    ("weight", "tag"),
    [(0.2, "<lora:neon:0.2>"), (1.0, "<lora:neon:1>"), (0, "<lora:neon:0>"),
     (-0.5, "<lora:neon:-0.5>"), (1.25, "<lora:neon:1.25>")],
)  # fmt: skip
def test_lora_tag(weight, tag):
    assert lora_tag("neon", weight) == tag
    assert parse_prompt(tag) == ("", [LoraTag("neon", float(weight))])
