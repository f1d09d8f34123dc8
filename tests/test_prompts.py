"""A1111 `<lora:…>` tags: parsed out of prompts as A1111 parses them, written back by lora_tag."""

from __future__ import annotations

import a1111
import pytest

from farm.spec.prompts import LoraTag, PromptError, lora_tag, parse_prompt
from farm.spec.strength import Strength, parse_blocks, parse_schedule

LBW_17 = "1,0,0,0,1,1,1,0.5,1,1,1,1,0,0,0,0,0"


def summary(tag: LoraTag) -> tuple:
    """(name, te, unet, blocks name, schedule): what a table row states about a tag."""
    s = tag.strength
    return (tag.name, s.te, s.unet, s.blocks.name if s.blocks else None, s.schedule)


def plain(name: str, weight: float) -> tuple:
    return (name, weight, weight, None, None)


# (prompt, text the model sees, tags). The text is A1111's: the tag is cut out, the
# spaces around it stay.
CASES = [
    ("a cat <lora:neon:0.5>", "a cat ", [plain("neon", 0.5)]),
    ("<lora:neon> a cat", " a cat", [plain("neon", 1.0)]),
    # A1111 order: text encoder first, then UNet; the UNet defaults to the text encoder.
    ("<lora:neon:0.3:0.7>", "", [("neon", 0.3, 0.7, None, None)]),
    ("<lora:neon:0.3>", "", [plain("neon", 0.3)]),
    # Named te/unet override the positional ones; unet defaults to te after the override.
    ("<lora:neon:0.3:te=0.8>", "", [plain("neon", 0.8)]),
    ("<lora:neon:0.3:0.7:unet=0.1>", "", [("neon", 0.3, 0.1, None, None)]),
    ("<lora:neon:unet=0.5>", "", [("neon", 1.0, 0.5, None, None)]),
    ("<lora:neon:te=0.2:0.7>", "", [plain("neon", 0.2)]),
    ("<lora:neon:1:te=0.5:te=0.25>", "", [plain("neon", 0.25)]),  # last one wins, as a dict
    # Only positional items count: a named item first leaves the name second.
    ("<lora:te=0.5:neon>", "", [plain("neon", 0.5)]),
    # Spaces: the name keeps them; float() ignores them around a number.
    ("<lora:my lora: 0.5 >", "", [plain("my lora", 0.5)]),
    ("<lora: neon:1>", "", [plain(" neon", 1.0)]),
    ("<lora:neon:1:unet= 0.5 >", "", [("neon", 1.0, 0.5, None, None)]),
    # Numbers as Python's float() reads them.
    ("<lora:neon:-0.5>", "", [plain("neon", -0.5)]),
    ("<lora:neon:1e-1>", "", [plain("neon", 0.1)]),
    ("<lora:neon:+1>", "", [plain("neon", 1.0)]),
    ("<lora:neon:2>", "", [plain("neon", 2.0)]),
    ("<lora:neon:.5>", "", [plain("neon", 0.5)]),
    ("<lora:neon:1_0>", "", [plain("neon", 10.0)]),
    ("<lora:neon:0.5\n>", "", [plain("neon", 0.5)]),
    # Several tags, in order; the same LoRA twice is returned twice (the caller decides).
    ("a <lora:neon:0.5> b <lora:ink:-0.25>", "a  b ", [plain("neon", 0.5), plain("ink", -0.25)]),
    ("<lora:neon:0.5><lora:neon:1>", "", [plain("neon", 0.5), plain("neon", 1.0)]),
    # Names are not resolved here.
    ("<lora:no-such-lora:1>", "", [plain("no-such-lora", 1.0)]),
    ("<lora:my_lora.v2:1>", "", [plain("my_lora.v2", 1.0)]),
    # Where the tag sits: the text is exactly what is left around it.
    ("<lora:neon:1> a cat", " a cat", [plain("neon", 1.0)]),
    ("a <lora:neon:1> cat", "a  cat", [plain("neon", 1.0)]),
    ("a cat, <lora:neon:1>", "a cat, ", [plain("neon", 1.0)]),
    ("a cat\n<lora:neon:0.5>\nin a hat", "a cat\n\nin a hat", [plain("neon", 0.5)]),
    # Not tags: no closing bracket, angle brackets that are not tag-shaped.
    ("a cat <lora:neon:0.5", "a cat <lora:neon:0.5", []),
    ("a <b> c > d < e", "a <b> c > d < e", []),
    ("I <3 cats", "I <3 cats", []),
    ("a <lorax> b", "a <lorax> b", []),
    ("a cat, in a hat: studio photo", "a cat, in a hat: studio photo", []),
    ("<<lora:neon:1>>", "<>", [plain("neon", 1.0)]),
    ("<lora:neon:1>>", ">", [plain("neon", 1.0)]),
    # A1111's Lora extension also answers to its alias `lyco`.
    ("a <lyco:neon:0.5>", "a ", [plain("neon", 0.5)]),
    # farm's extensions: LoRA Block Weight blocks.
    ("<lora:neon:1:lbw=MIDD>", "", [("neon", 1.0, 1.0, "MIDD", None)]),
    ("<lora:neon:1:lbw=midd>", "", [("neon", 1.0, 1.0, "MIDD", None)]),
    (f"<lora:neon:0.8:lbw={LBW_17}>", "", [("neon", 0.8, 0.8, LBW_17, None)]),
    ("<lora:neon:0.5:1:lbw=OUTS>", "", [("neon", 0.5, 1.0, "OUTS", None)]),
    # … and schedules: start/stop windows and keyframes.
    ("<lora:neon:1:start=0.25>", "", [("neon", 1.0, 1.0, None, ((0.0, 0.0), (0.25, 1.0)))]),
    ("<lora:neon:1:stop=0.5>", "", [("neon", 1.0, 1.0, None, ((0.0, 1.0), (0.5, 0.0)))]),
    (
        "<lora:neon:1:start=0.25:stop=0.75>",
        "",
        [("neon", 1.0, 1.0, None, ((0.0, 0.0), (0.25, 1.0), (0.75, 0.0)))],
    ),
    ("<lora:neon:0.5:start=0:stop=1>", "", [plain("neon", 0.5)]),
    ("<lora:neon:1:sched=0.2@0,1@0.5>", "", [("neon", 1.0, 1.0, None, ((0.0, 0.2), (0.5, 1.0)))]),
    ("<lora:neon:1:sched=1@0.5,0.2@0>", "", [("neon", 1.0, 1.0, None, ((0.0, 0.2), (0.5, 1.0)))]),
    (
        "<lora:neon:0.5:1:lbw=MIDD:sched=0@0,1@0.25>",
        "",
        [("neon", 0.5, 1.0, "MIDD", ((0.0, 0.0), (0.25, 1.0)))],
    ),
]


@pytest.mark.parametrize(("prompt", "text", "tags"), CASES, ids=[c[0] for c in CASES])
def test_parse_prompt(prompt, text, tags):
    got_text, got_tags = parse_prompt(prompt)
    assert got_text == text
    assert [summary(t) for t in got_tags] == tags


@pytest.mark.parametrize(("prompt", "text", "tags"), CASES, ids=[c[0] for c in CASES])
def test_a1111s_own_tag_parser_agrees(prompt, text, tags):
    # A1111's regex and its Lora extension's reading of each tag (tests/a1111.py), on the
    # same prompts: the same text for the model, and each tag's name, te and unet weight.
    # (lbw, sched, start and stop are farm's; A1111 passes them by as named arguments.)
    seen, found = a1111.parse_prompt(prompt)
    assert {kind for kind, _ in found} <= {"lora", "lyco"}
    assert seen == text
    assert [a1111.lora_weights(items) for _, items in found] == [t[:3] for t in tags]


# (tag, fragments its error must hold): every message names the tag as written.
ERRORS = [
    ("<lora::1>", ["no LoRA name"]),
    ("<lora: :1>", ["no LoRA name"]),
    ("<lora:te=1>", ["no LoRA name"]),
    ("<lyco::1>", ["no LoRA name"]),
    # `a=b=c` splits in three: positional, so it is the te weight.
    ("<lora:neon:a=b=c>", ["te weight 'a=b=c' is not a number"]),
    ("<lora:neon:abc>", ["te weight 'abc' is not a number"]),
    ("<lora:neon:0.5x>", ["te weight '0.5x' is not a number"]),
    ("<lora:neon:1,5>", ["te weight '1,5' is not a number"]),
    ("<lora:neon:>", ["te weight '' is not a number"]),
    ("<lora:neon::0.5>", ["te weight '' is not a number"]),
    ("<lora:neon:1:abc>", ["unet weight 'abc' is not a number"]),
    ("<lora:neon:1:unet=x>", ["unet weight 'x' is not a number"]),
    ("<lora:neon:nan>", ["te weight 'nan'", "finite"]),
    ("<lora:neon:inf>", ["te weight 'inf'", "finite"]),
    ("<lora:neon:-inf>", ["te weight '-inf'", "finite"]),
    ("<lora:neon:1e400>", ["te weight '1e400'", "finite"]),
    ("<lora:neon:1:te=nan>", ["te weight 'nan'", "finite"]),
    ("<lora:neon:1:NaN>", ["unet weight 'NaN'", "finite"]),
    ("<lora:neon:1:1:8>", ["dyn '8'", "not supported"]),
    ("<lora:neon:1:dyn=8>", ["dyn '8'", "not supported"]),
    ("<lora:neon:1:unte=0.5>", ["unknown argument 'unte'", "te, unet, lbw, start, stop, sched"]),
    ("<lora:neon:1: te=0.5>", ["unknown argument ' te'", "without spaces"]),
    ("<lora:neon:=0.5>", ["unknown argument ''", "supported"]),
    ("<lora:neon:1:blocks=dict>", ["blocks=", "spec", "lbw="]),
    ("<lora:neon:1:lbw=" + ",".join(["1"] * 59) + ">", ["lbw", "59 block values", "17"]),
    ("<lora:neon:1:lbw=FOO>", ["lbw", "17", "preset"]),
    ("<lora:neon:1:lbw=>", ["lbw", "0 block values"]),
    (f"<lora:neon:1:lbw={LBW_17.replace('0.5', 'x')}>", ["lbw", "block M00", "not a number"]),
    ("<lora:neon:1:start=10>", ["start=10", "fraction of the steps", "step numbers"]),
    ("<lora:neon:1:stop=-0.5>", ["stop=-0.5", "fraction of the steps"]),
    ("<lora:neon:1:start=abc>", ["start=abc", "not a finite number"]),
    ("<lora:neon:1:start=nan>", ["start=nan", "not a finite number"]),
    ("<lora:neon:1:start=0.6:stop=0.4>", ["start=0.6 must come before stop=0.4"]),
    ("<lora:neon:1:start=0.5:stop=0.5>", ["start=0.5 must come before stop=0.5"]),
    ("<lora:neon:1:sched=0@0,1@0.5:start=0.2>", ["either sched= or start=/stop="]),
    ("<lora:neon:1:stop=0.5:sched=1@0>", ["either sched= or start=/stop="]),
    ("<lora:neon:1:sched=1>", ["sched", "value@fraction"]),
    ("<lora:neon:1:sched=1@2>", ["sched", "[0, 1]"]),
    ("<lora:neon:1:sched=1@0,0@0>", ["sched", "same fraction"]),
    # Other tag kinds would reach the model as words: refused, saying what farm acts on.
    ("<hypernet:x:1>", ["'hypernet' tags are not supported", "<lora:NAME:WEIGHT>", "<lyco:"]),
    ("<embedding:z>", ["'embedding' tags are not supported", "remove it"]),
    ("<lora-xyz:0.5>", ["'lora-xyz' tags are not supported"]),
    ("<style_x:1>", ["'style_x' tags are not supported"]),
    # A1111 takes any <\w+:…> for a tag and cuts it out, digits too.
    ("<3:2>", ["'3' tags are not supported"]),
    ("< hypernet : x >", ["'hypernet' tags are not supported"]),
    # A1111 matches the type case-sensitively, so <LORA:…> would load nothing there.
    ("<LORA:neon:1>", ["lower case", "<lora:…>"]),
    ("<Lora:neon:1>", ["lower case", "<lora:…>"]),
    ("<LyCo:neon:1>", ["lower case", "<lyco:…>"]),
    # LoRA tags gone wrong: no arguments, spaces for colons.
    ("<lora:>", ["not a LoRA tag", "<lora:NAME:WEIGHT>"]),
    ("<lora neon 0.5>", ["not a LoRA tag", "<lora:NAME:WEIGHT>"]),
    ("<lora>", ["not a LoRA tag"]),
]


@pytest.mark.parametrize(("tag", "fragments"), ERRORS, ids=[e[0] for e in ERRORS])
def test_bad_tag_raises_naming_tag_and_problem(tag, fragments):
    with pytest.raises(PromptError) as info:
        parse_prompt(f"a cat {tag} in a hat")
    message = str(info.value)
    assert message.startswith(f"{tag}: ")
    for fragment in fragments:
        assert fragment in message


def test_an_unsupported_tag_is_refused_wherever_it_sits():
    # Beside a good LoRA tag, or left over once the LoRA tags are cut out.
    for prompt, tag in [("a <lora:neon:0.5> <hypernet:x:1>", "<hypernet:x:1>"),
                        ("<hypernet:x:1> a <lora:neon:0.5>", "<hypernet:x:1>"),
                        ("<hyper<lora:neon:1>net:x>", "<hypernet:x>")]:  # fmt: skip
        with pytest.raises(PromptError, match=f"^{tag}: 'hypernet' tags are not supported"):
            parse_prompt(prompt)


def test_unclosed_tag_runs_into_the_next_one():
    # A1111's [^>]+ runs on to the next '>': the first tag swallows the second.
    prompt = "a <lora:neon:1 cat <lora:ink:2>"
    with pytest.raises(PromptError) as info:
        parse_prompt(prompt)
    tag = "<lora:neon:1 cat <lora:ink:2>"
    assert str(info.value) == f"{tag}: te weight '1 cat <lora' is not a number"


def test_weight_is_the_unet_weight():
    (tag,) = parse_prompt("<lora:neon:0.3:0.7>")[1]
    assert tag.weight == 0.7
    assert tag == LoraTag("neon", Strength(0.3, 0.7))


def test_start_stop_is_the_spec_window():
    _, (tag,) = parse_prompt("<lora:neon:1:start=0.25:stop=0.75>")
    assert tag.strength.schedule == parse_schedule({"start": 0.25, "stop": 0.75})
    _, (tag,) = parse_prompt("<lora:neon:1:start=0.4>")
    assert tag.strength.schedule == parse_schedule({"start": 0.4})


@pytest.mark.parametrize(
    ("strength", "tag"),
    [
        (0.2, "<lora:neon:0.2>"),
        (1.0, "<lora:neon:1>"),
        (0, "<lora:neon:0>"),
        (-0.5, "<lora:neon:-0.5>"),
        (1.25, "<lora:neon:1.25>"),
        (0.1 + 0.2, "<lora:neon:0.30000000000000004>"),
        (Strength.plain(0.5), "<lora:neon:0.5>"),
        (Strength(0.5, 1.0), "<lora:neon:0.5:1>"),
        (Strength(1.0, 1.0, parse_blocks("MIDD")), "<lora:neon:1:lbw=MIDD>"),
        (Strength(1.0, 1.0, parse_blocks(LBW_17)), f"<lora:neon:1:lbw={LBW_17}>"),
        (
            Strength(1.0, 1.0, None, parse_schedule("0.2@0,1@0.5")),
            "<lora:neon:1:sched=0.2@0,1@0.5>",
        ),
        (
            Strength(0.5, 1.0, parse_blocks("OUTS"), parse_schedule({"start": 0.2, "stop": 0.8})),
            "<lora:neon:0.5:1:lbw=OUTS:sched=0@0,1@0.2,0@0.8>",
        ),
    ],
)
def test_lora_tag_round_trip(strength, tag):
    assert lora_tag("neon", strength) == tag
    expected = strength if isinstance(strength, Strength) else Strength.plain(float(strength))
    assert parse_prompt(tag) == ("", [LoraTag("neon", expected)])
    # A1111 reads the tag farm writes with the same weights.
    ((_, items),) = a1111.parse_prompt(tag)[1]
    assert a1111.lora_weights(items) == ("neon", expected.te, expected.unet)


@pytest.mark.parametrize(
    "prompt",
    ["<lora:neon:0.3:te=0.8>", "<lora:neon:1:start=0.25:stop=0.75>", "<lora:neon:1:lbw=midd>"],
)
def test_parsed_tag_written_back_parses_the_same(prompt):
    (tag,) = parse_prompt(prompt)[1]
    assert parse_prompt(lora_tag(tag.name, tag.strength))[1] == [tag]


def test_dict_blocks_are_written_but_refused_in_a_prompt():
    blocks = parse_blocks({"unet": {"mid": 0.5}})
    tag = lora_tag("neon", Strength(1.0, 1.0, blocks))
    assert tag == "<lora:neon:1:blocks=dict>"
    with pytest.raises(PromptError, match="belong|spec"):
        parse_prompt(tag)


@pytest.mark.parametrize("name", ["", " ", "a:b", "a>b", "a=b"])
def test_lora_tag_refuses_names_a_tag_cannot_hold(name):
    with pytest.raises(PromptError, match="cannot be written in a tag"):
        lora_tag(name, 1.0)
