"""Property tests (hypothesis): whatever a user writes, the spec loader gives a Spec or a
one-line SpecError, and the tag parser a result or a one-line PromptError; never another
exception. Examples are generated around a valid spec, so most reach deep into it."""

from __future__ import annotations

import datetime
import json
import math
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from farm.spec import Spec, SpecError, load_spec, parse_spec
from farm.spec.prompts import PromptError, parse_prompt

# Fast in CI, and no example database written into the repository.
settings.register_profile(
    "farm", max_examples=200, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
settings.load_profile("farm")

BASE = {
    "job": "prop",
    "model": "tiny",
    "prompts": ["a red house", "portrait <lora:neon:0.5>"],
    "negative_prompt": "blurry",
    "seeds": {"start": 0, "count": 2},
    "loras": [{"name": "neon", "path": "tiny:neon", "alpha": "0:1:0.5"}],
    "combine": "product",
    "render": {"steps": 4, "guidance": 7.5, "width": 64, "height": 64, "scheduler": "euler",
               "format": "png", "batch": "auto"},
    "output": "./renders",
}  # fmt: skip
KEYS = {
    (): ["job", "model", "prompts", "catalog", "negative_prompt", "seeds", "loras", "combine",
         "render", "output", "lora_dir", "tenant", "preset", "unknown"],
    ("render",): ["steps", "guidance", "width", "height", "scheduler", "format", "batch", "x"],
    ("seeds",): ["start", "count", "stop"],
    ("loras", 0): ["name", "path", "alpha", "te", "unet", "blocks", "schedule", "weight"],
}  # fmt: skip
WORDS = ["tiny", "tiny:neon", "tiny:nope", "0:1:0.2", "1:0:0.5", "0:1:0", "a:b:c", "1e309",
         "nan", "-inf", "auto", "euler", "pndm", "png", "jpg", "zip", "product", "s3://",
         "s3://b/k.safetensors", "x.ckpt", "x.safetensors", "http://h/x", "../..", "~",
         "org/name", "", " ", "\n", "\0", "MIDD", "0.2@0,1@0.5", "{name}", "é", "🙂",
         # keys of nested mappings: combine entries, blocks dicts, schedules, seeds
         "neon", "weight", "te", "unet", "blocks", "schedule", "text_encoder", "down", "mid",
         "up", "block_0", "block_x", "start", "stop", "count", "path", "template",
         "key"]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(WORDS),
    st.binary(max_size=8),
    st.dates(),
    st.datetimes(),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(st.text(max_size=8), st.sampled_from(WORDS), st.integers()), inner, max_size=4
        ),  # fmt: skip
    ),
    max_leaves=12,
)


@st.composite
def specs(draw) -> object:
    """The valid base spec with a few fields replaced, removed or added, at any depth."""
    if draw(st.integers(0, 19)) == 0:
        return draw(values)  # not even a mapping
    data = json.loads(json.dumps(BASE))
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(sorted(KEYS)))
        target = data
        for step in where:
            try:
                target = target[step]
            except (KeyError, IndexError, TypeError):
                target = None
                break
        if not isinstance(target, dict):
            continue
        key = draw(st.sampled_from(KEYS[where]))
        if draw(st.integers(0, 5)) == 0:
            target.pop(key, None)
        else:
            target[key] = draw(values)
    return data


def assert_one_line(err: Exception) -> None:
    text = str(err)
    assert text.strip() and len(text.splitlines()) == 1, repr(text)


def check_spec(call) -> None:
    try:
        spec = call()
    except SpecError as err:
        assert_one_line(err)
        return
    assert isinstance(spec, Spec)
    # A valid spec survives its own canonical form (what job.json keeps).
    assert isinstance(parse_spec(spec.to_dict()), Spec)


def with_lora(**fields) -> dict:
    return {**BASE, "loras": [{**BASE["loras"][0], **fields}]}


@given(specs())
# Found by hypothesis: keys of mixed types in a schedule could not be sorted for the message.
@example(with_lora(schedule={"": None, 0: None}))
@example(with_lora(**{"\r": None}))
def test_parse_spec_gives_a_spec_or_one_line_spec_error(data):
    check_spec(lambda: parse_spec(data, base_dir=Path(tempfile.gettempdir())))


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory(prefix="farm-props-") as name:
        yield Path(name)


def _yaml(data) -> str:
    try:
        return yaml.safe_dump(data, allow_unicode=True)
    except yaml.YAMLError:  # values safe_dump cannot write (none here, but be sure)
        return str(data)


def _json(data) -> str:
    def default(value):
        if isinstance(value, bytes):
            return value.decode("latin-1")
        if isinstance(value, datetime.date):
            return value.isoformat()
        raise TypeError(type(value).__name__)

    # Python's json writes NaN and Infinity, which JSON has not: the loader must cope.
    return json.dumps(data, default=default, ensure_ascii=False)


yaml_noise = st.lists(
    st.sampled_from(
        [
            "job: x",
            "\n",
            "  ",
            "- ",
            ": ",
            "{",
            "}",
            "[",
            "]",
            "&a ",
            "*a",
            "!!str ",
            "!!python/object:os.system ",
            "!!binary ",
            "!!set ",
            "? ",
            "|",
            ">",
            "#",
            "'",
            '"',
            "%YAML 1.2\n",
            "---\n",
            "...\n",
            "job: a\njob: b\n",
            "<<: *a\n",
            "\t",
            "\ufeff",
            "0:1:0.2",
            "1_000",
            "0x1f",
            "~",
            "null",
        ]
    ),  # fmt: skip
    max_size=20,
).map("".join)
texts = st.one_of(
    specs().map(_yaml).map(lambda t: ("yaml", t)),
    specs().map(_json).map(lambda t: ("json", t)),
    yaml_noise.map(lambda t: ("yaml", t)),
    st.text(max_size=200).map(lambda t: ("yaml", t)),
    st.text(max_size=200).map(lambda t: ("json", t)),
)


@given(texts, st.booleans())
# Found by hypothesis: `!!set` on a scalar crashed the duplicate-key check; a "\r" key
# made a two-line message.
@example(("yaml", "!!set ---\n"), False)
@example(("yaml", _yaml(with_lora(**{"\r": None}))), False)
def test_load_spec_gives_a_spec_or_one_line_spec_error(folder, case, as_bytes):
    suffix, text = case
    path = folder / f"spec.{suffix}"
    if as_bytes:  # bytes that are not UTF-8 text, now and then
        path.write_bytes(text.encode("utf-8") + b"\xff\xfe")
    else:
        path.write_text(text, encoding="utf-8")
    check_spec(lambda: load_spec(path))


TAG_PARTS = ["<", ">", "<lora:", "<lyco:", "<LORA:", "<hypernet:", ":", "=", "te=", "unet=",
             "lbw=", "start=", "stop=", "sched=", "dyn=", "blocks=", "neon", " ", "\n", "0.5",
             "1", "-2", "1e309", "nan", "inf", "1_0", "@", ",", "MIDD", "ALL", "0.2@0,1@0.5",
             "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0", "é"]  # fmt: skip
prompts = st.lists(st.one_of(st.sampled_from(TAG_PARTS), st.text(max_size=5)), max_size=16).map(
    "".join
)


@given(prompts)
@example("<lora:\n>")  # found by hypothesis: the tag, line break included, in the message
@example("<lora:neon:\r1>")
def test_parse_prompt_gives_a_result_or_one_line_prompt_error(prompt):
    try:
        text, tags = parse_prompt(prompt)
    except PromptError as err:
        assert_one_line(err)
        return
    assert isinstance(text, str) and len(text) <= len(prompt)
    for tag in tags:
        assert tag.name.strip()
        assert math.isfinite(tag.strength.te) and math.isfinite(tag.strength.unet)
    if "<lora:" not in prompt and "<lyco:" not in prompt:
        assert (text, tags) == (prompt, [])
