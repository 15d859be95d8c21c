"""The textual form, dict/YAML form and arch_id: round trips on random points, golden ids,
and malformed input that must raise SpecError located at the offending column or field."""

from __future__ import annotations

import hashlib
import json
import pickle
import re

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import lab
from lab.kinds import REGISTRY
from strategies import spec_texts, specs, texts_and_specs, verbose_texts

RANDOM = settings(max_examples=40, deadline=None)


def blake(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=5).hexdigest()


# --- round trips --------------------------------------------------------------------------


@RANDOM
@given(specs())
def test_text_round_trip(spec):
    text = lab.format(spec)
    assert spec.text == text
    assert lab.parse(text) == spec
    assert hash(lab.parse(text)) == hash(spec)
    assert lab.format(lab.parse(text)) == text


@RANDOM
@given(st.data())
def test_every_spelling_of_a_point_parses_to_it(data):
    """Spelled-out defaults, shuffled parameters, blanks and one group per stage: the same point,
    the same canonical text."""
    spec = data.draw(specs())
    text = data.draw(verbose_texts(spec))
    assert lab.parse(text) == spec
    assert lab.format(lab.parse(text)) == spec.text


@RANDOM
@given(specs())
def test_dict_round_trip(spec):
    d = spec.to_dict()
    assert lab.Spec.from_dict(d) == spec
    assert json.loads(json.dumps(d)) == d  # plain data
    assert lab.Spec.from_dict(json.loads(json.dumps(d))) == spec


@RANDOM
@given(specs())
def test_yaml_round_trip(spec):
    assert lab.Spec.from_dict(yaml.safe_load(yaml.safe_dump(spec.to_dict()))) == spec


@RANDOM
@given(specs())
def test_pickle_round_trip(spec):
    """Specs travel between processes (trial workers, benchmark runs)."""
    copy = pickle.loads(pickle.dumps(spec))
    assert copy == spec and copy.arch_id == spec.arch_id
    assert lab.cost(copy, num_classes=10) == lab.cost(spec, num_classes=10)


@pytest.mark.parametrize("name", lab.names())
def test_named_round_trips(name):
    spec = lab.named(name)
    assert lab.parse(spec.text) == spec
    assert lab.Spec.from_dict(yaml.safe_load(yaml.safe_dump(spec.to_dict()))) == spec


def test_objects_and_text_agree():
    k = REGISTRY
    block = k["bottleneck"](e=2, g=2)
    spec = lab.Spec(32, (k["conv"](c=16, k=3, s=2), k["bn"](), k["relu"]()),
                    (lab.Stage(block, 2, 32), lab.Stage(block, 1, 64, stride=2),
                     lab.Stage(k["basic"](), 1, 64, down=(k["conv"](k=1),))),
                    (k["gap"](), k["drop"](p=0.5), k["fc"]()))
    text = "@32 | conv(c=16,s=2),bn,relu | bottleneck(e=2,g=2) 2x32, 1x64/2 | basic 1x64/conv(k=1) | gap,drop(p=0.5),fc"
    assert spec.text == text
    assert lab.parse(text) == spec


@pytest.mark.parametrize("make, path", [
    (lambda k: lab.Stage(k["basic"](), 0, 16), "depth"),
    (lambda k: lab.Stage(k["basic"](), 1, 16, stride=2, down=(k["bn"](),)), "stride"),
    (lambda k: lab.Stage(k["bn"](), 1, 16), "block"),
    (lambda k: lab.Spec(32, (k["conv"](c=16),), (), (k["gap"](), k["fc"]())), "stages"),
    (lambda k: lab.Spec(32, (), (lab.Stage(k["basic"](), 1, 16),), (k["gap"](), k["fc"]())), "stem"),
    (lambda k: lab.Spec(32, (k["conv"](c=16),), (lab.Stage(k["basic"](), 1, 16),), (k["gap"](),)), "head[0]"),
    (lambda k: k["bottleneck"](g=2, gw=4), "gw"),
    (lambda k: k["conv"](c=16, k=0), "k"),
])
def test_invalid_objects_name_the_field(make, path):
    with pytest.raises(lab.SpecError) as info:
        make(REGISTRY)
    assert info.value.path == path, str(info.value)


# --- arch_id --------------------------------------------------------------------------------

# Golden ids: blake2b (5-byte digest) of the canonical text, computed outside lab.
RESNET50 = "@224 | conv(c=64,k=7,s=2),bn,relu,maxpool | bottleneck 3x256, 4x512/2, 6x1024/2, 3x2048/2 | gap,fc"
SMALL = "@32 | conv(c=16),bn | bottleneck 1x32, 1x64/2 | gap,fc"
GOLDEN = {RESNET50: "4d39b4a8cf", SMALL: "3f9dacaab2"}


@pytest.mark.parametrize("canonical", GOLDEN)
def test_golden_arch_ids(canonical):
    assert blake(canonical) == GOLDEN[canonical]  # the golden figure is the hash of the text
    assert lab.parse(canonical).text == canonical
    assert lab.parse(canonical).arch_id == GOLDEN[canonical]


def test_golden_arch_id_of_other_spellings():
    assert lab.named("resnet50").arch_id == GOLDEN[RESNET50]
    spelled = "@32|conv(k=3,c=16, s=1),bn|bottleneck(e=4.0) 1x32|bottleneck 1x64/2|gap,fc(bias=1)"
    assert lab.parse(spelled).text == SMALL
    assert lab.parse(spelled).arch_id == GOLDEN[SMALL]


@RANDOM
@given(st.lists(texts_and_specs(), min_size=2, max_size=4))
def test_arch_id_is_a_stable_hash_of_the_canonical_text(drawn):
    ids = {}
    for text, spec in drawn:
        assert re.fullmatch(r"[0-9a-f]{10}", spec.arch_id)
        assert spec.arch_id == blake(lab.format(spec))
        assert lab.parse(text).arch_id == spec.arch_id  # same text, same id
        assert lab.parse(spec.text).arch_id == spec.arch_id
        assert lab.Spec.from_dict(spec.to_dict()).arch_id == spec.arch_id
        ids.setdefault(spec.text, spec.arch_id)
    assert len(set(ids.values())) == len(ids)  # different canonical texts, different ids


def test_named_arch_ids_are_distinct():
    """Different named points have different ids. DeiT is ViT's architecture with another training
    recipe: deit_ti/s/b are the same points as vit_ti16/s16/b16, and the only names that share one."""
    by_id: dict[str, set[str]] = {}
    for n in lab.names():
        by_id.setdefault(lab.named(n).arch_id, set()).add(n)
    assert len(by_id) == len({lab.named(n).text for n in lab.names()})
    shared = sorted(sorted(names) for names in by_id.values() if len(names) > 1)
    assert shared == [["deit_b", "vit_b16"], ["deit_s", "vit_s16"], ["deit_ti", "vit_ti16"]]


# --- malformed text -------------------------------------------------------------------------

END = None  # the error is at the end of the text (something is missing)

# (id, text, where the column must point: a substring of the text that is unique in it (or END),
#  the field path when the error is about a field)
MALFORMED = [
    ("empty", "", END, None),
    ("blank", "   ", END, None),
    ("missing-at", "32 | conv(c=16),bn | basic 1x16 | gap,fc", "32 |", None),
    ("double-at", "@@32 | conv(c=16),bn | basic 1x16 | gap,fc", "@@", None),
    ("fractional-res", "@32.5 | conv(c=16),bn | basic 1x16 | gap,fc", ".5", None),
    ("res-zero", "@0 | conv(c=16),bn | basic 1x16 | gap,fc", "0 |", "res"),
    ("res-huge", "@100000 | conv(c=16),bn | basic 1x16 | gap,fc", "100000", "res"),
    ("no-bar-after-res", "@32 conv(c=16),bn | basic 1x16 | gap,fc", "conv", None),
    ("unclosed-params", "@32 | conv(c=16,k=3,bn,relu | basic 1x16 | gap,fc", "k=3,bn,", None),
    ("extra-close", "@32 | conv(c=16,k=3)),bn | basic 1x16 | gap,fc", "))", None),
    ("unclosed-before-bar", "@32 | conv(c=16 | basic 1x16 | gap,fc", "=16 |", None),
    ("unclosed-transition", "@32 | conv(c=16),bn | basic 1x16/(bn,conv(k=1) | gap,fc", ") | gap", None),
    ("empty-transition", "@32 | conv(c=16),bn | basic 1x16/() | gap,fc", "()", None),
    ("dangling-slash", "@32 | conv(c=16),bn | basic 1x16/ | gap,fc", "/ | gap", None),
    ("two-transitions", "@32 | conv(c=16),bn | basic 1x16/3/2 | gap,fc", "/3/2", None),
    ("unknown-op", "@32 | conv(c=16),frob | basic 1x16 | gap,fc", "frob", "stem[1]"),
    ("unknown-block", "@32 | conv(c=16),bn | resblock 1x16 | gap,fc", "resblock", "stages[0].block"),
    ("unknown-head-op", "@32 | conv(c=16),bn | basic 1x16 | gap,softmax", "softmax", "head[1]"),
    ("case-sensitive-kind", "@32 | conv(c=16),bn | BASIC 1x16 | gap,fc", "BASIC", "stages[0].block"),
    ("block-as-op", "@32 | basic 1x16 | gap,fc", "basic", "stem[0]"),
    ("block-as-transition", "@32 | conv(c=16),bn | basic 1x16/basic | gap,fc", "/basic", "stages[0].down[0]"),
    ("unknown-param", "@32 | conv(c=16,q=3),bn | basic 1x16 | gap,fc", "q=3", "stem[0].q"),
    ("param-of-paramless-block", "@32 | conv(c=16),bn | basic(e=4) 1x16 | gap,fc", "e=4", "stages[0].block.e"),
    ("float-for-int", "@32 | conv(c=16,k=2.5),bn | basic 1x16 | gap,fc", "k=2.5", "stem[0].k"),
    ("name-for-int", "@32 | conv(c=16,k=abc),bn | basic 1x16 | gap,fc", "k=abc", "stem[0].k"),
    ("hex-number", "@32 | conv(c=0x10),bn | basic 1x16 | gap,fc", "0x10", None),
    ("negative-kernel", "@32 | conv(c=16,k=-3),bn | basic 1x16 | gap,fc", "k=-3", "stem[0].k"),
    ("nan", "@32 | conv(c=16),bn | bottleneck(e=nan) 1x16 | gap,fc", "e=nan", "stages[0].block.e"),
    ("bool-not-01", "@32 | conv(c=16),bn | basic 1x16 | gap,fc(bias=2)", "bias=2", "head[1].bias"),
    ("bad-choice", "@32 | conv(c=16),bn | bottleneck(norm=ln) 1x16 | gap,fc", "norm=ln", "stages[0].block.norm"),
    ("prob-above-1", "@32 | conv(c=16),bn | basic 1x16 | gap,drop(p=1.5),fc", "p=1.5", "head[1].p"),
    ("duplicate-param", "@32 | conv(c=16,k=3,k=5),bn | basic 1x16 | gap,fc", "k=5", None),
    ("c-and-r", "@32 | conv(c=16,r=0.5),bn | basic 1x16 | gap,fc", "r=0.5", "stem[0].r"),
    ("conv-without-channels", "@32 | conv,bn | basic 1x16 | gap,fc", "conv", "stem[0].c"),
    ("channels-absurd", "@32 | conv(c=1000000000),bn | basic 1x16 | gap,fc", "1000000000", "stem[0].c"),
    ("missing-head", "@32 | conv(c=16),bn | basic 1x16", END, None),
    ("empty-head", "@32 | conv(c=16),bn | basic 1x16 |", END, None),
    ("empty-stem", "@32 | | basic 1x16 | gap,fc", "| | basic", None),
    ("missing-stage-group", "@32 | conv(c=16),bn | gap,fc", "gap,fc", None),
    ("stage-without-block", "@32 | conv(c=16),bn | 1x16 | gap,fc", "1x16", None),
    ("depth-zero", "@32 | conv(c=16),bn | basic 0x16 | gap,fc", "0x16", "stages[0].depth"),
    ("depth-huge", "@32 | conv(c=16),bn | basic 100000x16 | gap,fc", "100000x16", "stages[0].depth"),
    ("width-huge", "@32 | conv(c=16),bn | basic 1x100000000 | gap,fc", "100000000", "stages[0].width"),
    ("fractional-depth", "@32 | conv(c=16),bn | basic 2.5x16 | gap,fc", "basic 2.5x16", None),
    ("stride-zero", "@32 | conv(c=16),bn | basic 1x16/0 | gap,fc", "/0", "stages[0].stride"),
    ("stride-huge", "@32 | conv(c=16),bn | basic 1x16/9 | gap,fc", "/9", "stages[0].stride"),
    ("stages-without-comma", "@32 | conv(c=16),bn | basic 1x16 1x32 | gap,fc", "1x32", None),
    ("double-comma-stages", "@32 | conv(c=16),bn | basic 1x16,, 1x32 | gap,fc", ",,", None),
    ("double-comma-ops", "@32 | conv(c=16),bn | basic 1x16 | gap,,fc", ",,", None),
    ("ops-without-comma", "@32 | conv(c=16)bn | basic 1x16 | gap,fc", ")bn", None),
    ("groups-not-dividing", "@32 | conv(c=16),bn | basic 1x16 | bottleneck(e=2,g=3) 1x32/2 | gap,fc",
     "g=3", "stages[1].block.g"),
    ("groups-not-dividing-later-stage", "@32 | conv(c=16),bn | bottleneck(e=1,g=3) 1x24, 1x32/2 | gap,fc",
     "g=3", "stages[1].block.g"),
    ("group-width-not-dividing", "@32 | conv(c=16),bn | bottleneck(e=1,gw=6) 1x18, 1x32/2 | gap,fc",
     "gw=6", "stages[1].block.gw"),
    ("g-and-gw", "@32 | conv(c=16),bn | bottleneck(g=2,gw=4) 1x16 | gap,fc", "gw=4", "stages[0].block.gw"),
    ("expansion-not-dividing", "@32 | conv(c=16),bn | bottleneck(e=3) 1x16 | gap,fc", "e=3", "stages[0].block.e"),
    ("transition-conv-groups", "@32 | conv(c=16),bn | basic 1x16, 1x32/conv(k=1,g=3) | gap,fc",
     "g=3", "stages[1].down[0].g"),
    ("even-depthwise-kernel", "@32 | conv(c=16),bn | mbconv(k=4) 1x16 | gap,fc", "k=4", "stages[0].block.k"),
    ("convnext-width-change", "@32 | conv(c=16),bn | convnext 1x16, 1x32 | gap,fc",
     "convnext 1x16, 1x32", "stages[1].block"),
    ("convnext-stride", "@32 | conv(c=16),ln | convnext 1x16, 1x16/2 | gap,fc",
     "convnext 1x16, 1x16/2", "stages[1].block"),
    ("dense-stride", "@32 | conv(c=16),bn | dense 2x8, 2x8/2 | gap,fc", "dense 2x8, 2x8/2", "stages[1].block"),
    ("fc-without-gap", "@32 | conv(c=16),bn | basic 1x16 | fc", "| fc", "head[0]"),
    ("fc-after-ln-not-gap", "@32 | conv(c=16),bn | basic 1x16 | ln,fc", "fc", "head[1]"),
    ("head-not-ending-in-fc", "@32 | conv(c=16),bn | basic 1x16 | gap,fc,relu", "relu", "head[2]"),
    ("collapse-unpadded-stem", "@4 | conv(c=16,k=7,p=0),maxpool(k=7,p=0) | basic 1x16 | gap,fc",
     "conv(c=16,k=7,p=0)", "stem[0]"),
    ("collapse-after-pools", "@8 | conv(c=8,k=3,s=2),maxpool(k=3,s=2,p=0),avgpool(k=2,s=2) | basic 1x16 | gap,fc",
     "avgpool(k=2,s=2)", "stem[2]"),
    ("collapse-in-transition", "@16 | conv(c=16,k=3,s=2),bn | basic 1x16, 1x32/(conv(k=4,s=4),avgpool(k=4,s=4)) | gap,fc",
     "avgpool(k=4,s=4)", "stages[1].down[1]"),
    ("collapse-in-head", "@32 | conv(c=16),bn | basic 1x16 | gap,conv(c=8,k=3,p=0),fc", "conv(c=8,k=3,p=0)", "head[1]"),
    ("pool-padding", "@32 | conv(c=16),maxpool(k=3,p=2) | basic 1x16 | gap,fc", "p=2", "stem[1].p"),
    ("trailing-garbage", "@32 | conv(c=16),bn | basic 1x16 | gap,fc extra", "extra", None),
    ("trailing-bar", "@32 | conv(c=16),bn | basic 1x16 | gap,fc |", "fc |", None),
    ("trailing-paren", "@32 | conv(c=16),bn | basic 1x16 | gap,fc)", "fc)", None),
    ("comment", "@32 | conv(c=16),bn | basic 1x16 | gap,fc # resnet", "# resnet", None),
    ("head-split", "@32 | conv(c=16),bn | basic 1x16 | gap | fc", "| fc", None),
    ("newline-inside", "@32 | conv(c=16),bn\n | basic 1x16 | gap,fc", "\n", None),
    ("carriage-return-inside", "@32 | conv(c=16),bn\r| basic 1x16 | gap,fc", "\r", None),
    ("nul-byte", "@32 | conv(c=16),bn | basic 1x16 | gap,fc\x00", "\x00", None),
    # token mixers
    ("heads-not-dividing", "@32 | patch(p=4,c=64),cls,pos | mhsa(h=5) 1x64 | ln,token,fc", "h=5", "stages[0].block.h"),
    ("head-width-not-dividing", "@32 | patch(p=4,c=64) | swin(hd=20) 1x64 | ln,gap,fc", "hd=20",
     "stages[0].block.hd"),
    ("h-and-hd", "@32 | patch(p=4,c=64) | mhsa(h=3,hd=16) 1x64 | ln,gap,fc", "hd=16", "stages[0].block.hd"),
    ("even-na-kernel", "@32 | patch(p=4,c=64) | nat(k=4) 1x64 | ln,gap,fc", "k=4", "stages[0].block.k"),
    ("oversized-na-kernel", "@32 | patch(p=4,c=64) | nat(k=65) 1x64 | ln,gap,fc", "k=65", "stages[0].block.k"),
    ("patch-not-dividing", "@32 | patch(p=5,c=64),cls,pos | mhsa 1x64 | ln,token,fc", "p=5", "stem[0].p"),
    ("patch-without-size", "@32 | patch(c=64),cls,pos | mhsa 1x64 | ln,token,fc", "patch(c=64)", "stem[0].p"),
    ("patch-without-width", "@32 | patch(p=4),cls,pos | mhsa 1x64 | ln,token,fc", "patch(p=4)", "stem[0].c"),
    ("pos-length-mismatch", "@32 | patch(p=4,c=64),cls,pos(n=64) | mhsa 1x64 | ln,token,fc", "n=64", "stem[2].n"),
    ("token-pool-without-cls", "@32 | patch(p=4,c=64),pos | mhsa 1x64 | ln,token,fc", "token", "head[1]"),
    ("distill-without-dist", "@32 | patch(p=4,c=64),cls,pos | mhsa 1x64 | ln,distill", "distill", "head[1]"),
    ("two-classifiers", "@32 | patch(p=4,c=64),cls,dist,pos | mhsa 1x64 | ln,distill,fc", "distill", "head[1]"),
    ("windows-with-cls", "@32 | patch(p=4,c=64),cls | swin 1x64 | ln,token,fc", "swin 1x64", "stages[0].block"),
    ("map-from-prefixed-tokens", "@32 | patch(p=4,c=64),cls | mhsa 1x64 | ln,conv(c=8,k=1),gap,fc", "conv(c=8,k=1)",
     "head[1]"),
    ("mhsa-width-change", "@32 | patch(p=4,c=64) | mhsa 1x64, 1x128 | ln,gap,fc", "mhsa 1x64, 1x128",
     "stages[1].block"),
    ("merge-with-cls", "@32 | patch(p=4,c=64),cls | mhsa 1x64, 1x128/merge | ln,token,fc", "merge",
     "stages[1].down[0]"),
    ("leading-space", "  @32 | conv(c=16,k=abc),bn | basic 1x16 | gap,fc", "abc", "stem[0].k"),
    # digits are ASCII (Python's int() reads '@2𝟗4' as 294) and numbers are short
    ("non-ascii-digit", "@2𝟗4 | conv(c=16),bn | basic 1x16 | gap,fc", "𝟗", None),
    ("fullwidth-digit", "@32 | conv(c=1６),bn | basic 1x16 | gap,fc", "６", None),
    ("arabic-indic-depth", "@32 | conv(c=16),bn | basic ٣x16 | gap,fc", "٣x16", None),
    ("overlong-width", "@32 | conv(c=16),bn | basic 1x" + "6" * 41 + " | gap,fc", "6" * 41, None),
]


@pytest.mark.parametrize("text, where, path", [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_text(text, where, path):
    with pytest.raises(lab.SpecError) as info:
        lab.parse(text)
    err = info.value
    assert err.col is not None, f"no column in {err}"
    if where is END:
        assert err.col >= len(text.rstrip()), f"column {err.col} is not at the end of {text!r}: {err}"
    else:
        assert text.count(where) == 1, "test case: the marker must be unique"
        start = text.index(where)
        assert start < err.col <= start + len(where), \
            f"column {err.col} ({text[err.col - 1:err.col + 5]!r}) is not within {where!r}: {err}"
    if path is not None:
        assert err.path == path, str(err)
    assert str(err)  # the message says what was expected


def test_malformed_cases_are_distinct():
    assert len(MALFORMED) >= 30
    assert len({c[1] for c in MALFORMED}) == len(MALFORMED)
    assert len({c[0] for c in MALFORMED}) == len(MALFORMED)


@pytest.mark.parametrize("pad", [" ", "   ", "\t "])
def test_column_counts_leading_whitespace(pad):
    """The column is a column of the text as given, even when it starts with blanks."""
    text = "@32 | conv(c=16),bn | basic 1x16 | gap,frob,fc"
    with pytest.raises(lab.SpecError) as plain:
        lab.parse(text)
    with pytest.raises(lab.SpecError) as padded:
        lab.parse(pad + text)
    assert plain.value.col == text.index("frob") + 1
    assert padded.value.col == plain.value.col + len(pad)


@pytest.mark.parametrize("value", [None, 224, b"@32 | conv(c=16),bn | basic 1x16 | gap,fc", ["@32"]])
def test_parse_rejects_non_text(value):
    with pytest.raises(lab.SpecError):
        lab.parse(value)


MUTATIONS = "@|(),=/x0123456789.e-+ abcgkprsw_"


@st.composite
def mutated_texts(draw):
    text = draw(spec_texts())
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(text)))
        ch = draw(st.sampled_from(MUTATIONS))
        text = draw(st.sampled_from([text[:i] + text[i + 1:], text[:i] + ch + text[i:], text[:i] + ch + text[i + 1:]]))
    return text


@settings(max_examples=300, deadline=None)
@given(st.one_of(mutated_texts(), st.text(max_size=40), st.text(alphabet=MUTATIONS, max_size=60)))
def test_garbled_text_is_a_spec_error_with_a_column(text):
    """Any text either parses or raises SpecError pointing inside (or just past) the text."""
    try:
        spec = lab.parse(text)
    except lab.SpecError as err:
        assert err.col is not None and 1 <= err.col <= len(text) + 1, str(err)
    else:
        assert lab.parse(spec.text) == spec


# --- malformed dicts ------------------------------------------------------------------------

GOOD = {"res": 32, "stem": [{"kind": "conv", "c": 16}, "bn"],
        "stages": [{"block": "basic", "depth": 1, "width": 16},
                   {"block": {"kind": "bottleneck", "e": 2, "g": 2}, "depth": 2, "width": 32, "stride": 2}],
        "head": ["gap", "fc"]}


def with_(path: tuple, value=...):
    """GOOD with the item at `path` replaced by `value` (deleted when no value is given)."""
    d = json.loads(json.dumps(GOOD))
    node = d
    for key in path[:-1]:
        node = node[key]
    if value is ...:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return d


BAD_DICTS = [
    ("missing-res", with_(("res",)), "res"),
    ("missing-head", with_(("head",)), "head"),
    ("unknown-field", {**GOOD, "tail": []}, "tail"),
    ("res-string", with_(("res",), "32"), "res"),
    ("res-bool", with_(("res",), True), "res"),
    ("stem-not-list", with_(("stem",), "conv"), "stem"),
    ("empty-stem", with_(("stem",), []), "stem"),
    ("stem-op-no-kind", with_(("stem", 0), {"c": 16}), "stem[0]"),
    ("stem-unknown-op", with_(("stem", 1), "batchnorm"), "stem[1]"),
    ("stem-unknown-param", with_(("stem", 0, "q"), 1), "stem[0].q"),
    ("stem-float-kernel", with_(("stem", 0, "k"), 2.5), "stem[0].k"),
    ("stages-not-list", with_(("stages",), {"block": "basic"}), "stages"),
    ("no-stages", with_(("stages",), []), "stages"),
    ("stage-not-mapping", with_(("stages", 1), "basic"), "stages[1]"),
    ("stage-missing-width", with_(("stages", 1, "width")), "stages[1].width"),
    ("stage-unknown-field", with_(("stages", 1, "blocks"), 3), "stages[1].blocks"),
    ("stage-float-depth", with_(("stages", 1, "depth"), 2.0), "stages[1].depth"),
    ("stage-depth-zero", with_(("stages", 0, "depth"), 0), "stages[0].depth"),
    ("stage-stride-huge", with_(("stages", 1, "stride"), 100), "stages[1].stride"),
    ("stride-and-down", with_(("stages", 1, "down"), ["bn"]), "stages[1].stride"),
    ("down-unknown-param", with_(("stages", 0, "down"), [{"kind": "conv", "k": 1, "z": 1}]), "stages[0].down[0].z"),
    ("block-is-op", with_(("stages", 0, "block"), "bn"), "stages[0].block"),
    ("block-unknown-param", with_(("stages", 0, "block"), {"kind": "basic", "e": 4}), "stages[0].block.e"),
    ("groups-not-dividing", with_(("stages", 1, "block", "g"), 3), "stages[1].block.g"),
    ("bad-choice", with_(("stages", 1, "block", "norm"), "ln"), "stages[1].block.norm"),
    ("head-not-ending-fc", with_(("head",), ["gap", "fc", "relu"]), "head[2]"),
    ("fc-without-gap", with_(("head",), ["fc"]), "head[0]"),
]


@pytest.mark.parametrize("d, path", [c[1:] for c in BAD_DICTS], ids=[c[0] for c in BAD_DICTS])
def test_malformed_dict_names_the_path(d, path):
    assert lab.Spec.from_dict(GOOD).to_dict()  # the base case is valid
    with pytest.raises(lab.SpecError) as info:
        lab.Spec.from_dict(d)
    assert info.value.path == path, str(info.value)


@pytest.mark.parametrize("value", [None, "@32 | conv(c=16),bn | basic 1x16 | gap,fc", [GOOD], 3])
def test_from_dict_rejects_non_mappings(value):
    with pytest.raises(lab.SpecError):
        lab.Spec.from_dict(value)
