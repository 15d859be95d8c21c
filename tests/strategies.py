"""Hypothesis strategies for random grammar points.

`spec_texts()` draws raw grammar text: a random stem, one to four stage groups of random block
kinds, depths, widths, strides and transitions, and a random head. A draw is a conv network, a
token network (a patchify stem, maybe class/distillation tokens and position embeddings, then
attention / window / neighbourhood / token-MLP stages) or a hybrid (conv stages, then token ones).
A fifth of the draws are video models (clips of 2-4 frames: 3D conv stems, inflated basic blocks,
tubelets and 3D windows beside per-frame elements). The text is deliberately not canonical (parameters shuffled, defaults sometimes spelled out, spacing varied, runs of the
same block split into separate groups) so that parsing and formatting have work to do.
`specs()` parses it and rejects the draws that are not valid points (SpecError): the strategy
aims at valid points, and the grammar is the judge. Resolutions (16..64) and widths (8..96)
stay small so that every drawn point builds into a tiny model.
"""

from __future__ import annotations

import dataclasses

from hypothesis import assume
from hypothesis import strategies as st

import lab
import lab.kinds

WIDTHS = (8, 16, 24, 32, 48, 64, 96)


def _value(v) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    return repr(v) if isinstance(v, float) else str(v)


@st.composite
def _call(draw, name: str, params: dict, defaults: dict | None = None) -> str:
    """`name(k=v,...)` with the parameters shuffled, defaults sometimes written out, spacing varied."""
    items = [(k, v) for k, v in params.items() if v is not None]
    for k, v in (defaults or {}).items():
        if k not in params and draw(st.integers(0, 3)) == 0:
            items.append((k, v))  # an explicit default: canonical text leaves it out
    if not items:
        return name
    items = draw(st.permutations(items))
    sp = draw(st.sampled_from(["", "", " "]))
    return f"{name}({f',{sp}'.join(f'{k}={_value(v)}' for k, v in items)})"


def _maybe(draw, strategy, p_none: int = 1):
    """None with probability about 1 / (p_none + 1)."""
    return None if draw(st.integers(0, p_none)) == 0 else draw(strategy)


@st.composite
def _stem(draw, video: bool = False) -> str:
    k = draw(st.sampled_from([1, 2, 3, 4, 5, 7]))
    s = draw(st.sampled_from(sorted({1, 2, k if k <= 4 else 2})))
    p = _maybe(draw, st.integers(0, k // 2), 2)
    temporal = {"kt": draw(st.sampled_from([1, 2, 3])), "st": draw(st.sampled_from([1, 1, 2]))} if video else {}
    planar = not temporal or temporal == {"kt": 1, "st": 1}  # ws and same=1 are for 2D convs
    conv = draw(_call("conv", {"c": draw(st.sampled_from(WIDTHS)), "k": k, "s": s, "p": p,
                               "bias": draw(st.booleans()), "ws": planar and k > 1 and draw(st.booleans()),
                               "same": planar and p is None and draw(st.booleans()), **temporal}, {"g": 1}))
    ops = [op for op in (draw(st.sampled_from([None, None, None, "bn", "relu", "pad", "ln"])), conv) if op]
    norm = draw(st.sampled_from([None, "bn", "ln", "gn"]))
    if norm == "gn":
        norm = draw(_call("gn", {"g": draw(st.sampled_from([1, 2, 4, 8]))}))
    act = draw(st.sampled_from([None, "relu", "silu", "gelu"]))
    pool = draw(st.sampled_from([None, None, "maxpool", "maxpool(k=2,p=0)", "avgpool", "pad,maxpool(p=0)",
                                 "maxpool(same=1)"]))
    return ",".join(op for op in ops + [norm, act, pool] if op)


def conv_kinds() -> list[str]:
    """Every registered block that is not a token mixer (the registry decides, not a list here)."""
    return lab.kinds.select(role="block", token_mixer=False)


def token_kinds(prefix: bool = False) -> list[str]:
    """Every registered token mixer; with `prefix`, those that take class/distillation tokens."""
    return [k for k in lab.kinds.token_mixers() if not (prefix and lab.kinds.REGISTRY[k].needs_grid)]


@st.composite
def _block(draw, kind: str, video: bool = False) -> str:
    if kind not in CONV_PARAMS:   # a kind without a distribution of its own here: its defaults
        return kind
    if kind == "basic":
        return draw(_call("basic", {"kt": draw(st.sampled_from([1, 3]))} if video else {}, {"kt": 1}))
    if kind == "bottleneck":
        params = {"e": draw(st.sampled_from([1, 2, 4, 2.0, 0.5])), "se": draw(st.sampled_from([None, 0.25, 0.5])),
                  "norm": draw(st.sampled_from([None, None, "gn"])), "ws": draw(st.sampled_from([None, True])),
                  "same": draw(st.sampled_from([None, None, True]))}
        grouping = draw(st.sampled_from(["none", "g", "gw"]))
        if grouping == "g":
            params["g"] = draw(st.sampled_from([2, 4]))
        elif grouping == "gw":
            params["gw"] = draw(st.sampled_from([2, 4, 8]))
        return draw(_call("bottleneck", params, {"e": 4.0, "se": 0.0}))
    if kind == "preact":
        return draw(_call("preact", {"e": draw(st.sampled_from([1, 2, 4])), "norm": draw(st.sampled_from([None, "bn"])),
                                     "ws": draw(st.sampled_from([None, False]))}, {"norm": "gn", "ws": True}))
    if kind == "dense":
        return draw(_call("dense", {"bn": draw(st.sampled_from([None, 1, 2]))}, {"bn": 4}))
    if kind == "convnext":
        return draw(_call("convnext", {"k": draw(st.sampled_from([None, 3, 5])), "mlp": draw(st.sampled_from([None, 1, 2.5])),
                                       "ls": draw(st.sampled_from([None, 0.0, 0.1]))}, {"k": 7, "ls": 1e-6}))
    return draw(_call("mbconv", {"e": draw(st.sampled_from([None, 1, 2, 3, 1.5])), "k": draw(st.sampled_from([None, 1, 5])),
                                 "se": draw(st.sampled_from([None, 0.0, 0.5]))}, {"e": 6.0, "se": 0.25}))


CONV_PARAMS = ("basic", "bottleneck", "preact", "dense", "convnext", "mbconv")   # kinds _block draws parameters for


TRANSITIONS = ("/(bn,relu,conv(k=1,r=0.5),avgpool)", "/avgpool", "/(ln,conv(k=2,s=2))", "/conv(k=1)",
               "/(bn,conv(k=3,s=2))", "/maxpool")


@st.composite
def _stage(draw, kind: str, first: bool, prev_width: int | None) -> tuple[str, int]:
    depth = draw(st.integers(1, 3))
    if kind == "dense":
        width = draw(st.sampled_from([4, 8, 12]))
    elif kind == "convnext" and not first and draw(st.booleans()):
        return f"{depth}x{prev_width}", prev_width  # same width, no transition
    else:
        width = draw(st.sampled_from(WIDTHS))
    if kind == "convnext":  # a convnext stage changes width only through a transition op
        trans = draw(st.sampled_from(["/(ln,conv(k=2,s=2))", "/conv(k=1)", "/(bn,conv(k=3,s=2))"]))
    elif kind == "dense":  # dense stages keep their resolution
        trans = draw(st.sampled_from(["", "", "/(bn,relu,conv(k=1,r=0.5),avgpool)", "/avgpool", "/conv(k=1)"]))
    else:
        trans = draw(st.sampled_from(["", "", "/2", "/2", "/3"] + list(TRANSITIONS)))
    return f"{depth}x{width}{trans}", width


@st.composite
def _group(draw, video: bool = False) -> str:
    kind = draw(st.sampled_from(conv_kinds()))
    block = draw(_block(kind, video))
    stages, width = [], None
    for i in range(draw(st.integers(1, 2))):
        text, width = draw(_stage(kind, i == 0, width))
        stages.append(text)
    sep = draw(st.sampled_from([", ", ",", " , "]))
    return f"{block} {sep.join(stages)}"


@st.composite
def _head(draw) -> str:
    pre = draw(st.lists(st.sampled_from(["bn", "relu", "gn(g=1)", "conv(c=16,k=1)", "silu"]), max_size=2))
    post = draw(st.lists(st.sampled_from(["ln", "drop(p=0.2)", "drop", "conv(c=8,k=1)", "gelu"]), max_size=2))
    fc = draw(st.sampled_from(["fc", "fc", "fc(bias=0)", "fc(bias=1)"]))
    return ",".join(pre + ["gap"] + post + [fc])


@st.composite
def _token_block(draw, kind: str, video: bool = False) -> str:
    if kind not in ("mixer", "mhsa", "swin", "nat"):   # a kind without a distribution of its own here
        return kind
    common = {"mlp": draw(st.sampled_from([None, 1, 2.5])), "ls": draw(st.sampled_from([None, 0.1])),
              "act": draw(st.sampled_from([None, None, "relu", "silu"]))}
    if kind == "mixer":
        return draw(_call("mixer", {"tok": draw(st.sampled_from([None, 0.25, 1])), **common}, {"tok": 0.5, "mlp": 4.0}))
    heads = draw(st.sampled_from([{"h": 1}, {"h": 2}, {"h": 4}, {"hd": 4}, {"hd": 8}]))
    params = {**heads, **common}
    if kind == "mhsa":
        params["qkv_bias"] = draw(st.sampled_from([None, False]))
    elif kind == "swin":
        params.update(w=draw(st.sampled_from([None, 2, 3, 4])), shift=draw(st.sampled_from([None, False])))
        if video:
            params["wt"] = draw(st.sampled_from([None, 1, 2, 3]))
    else:
        params.update(k=draw(st.sampled_from([None, 1, 3, 5])), d=draw(st.sampled_from([None, 1, 2])))
    return draw(_call(kind, params, {"mlp": 4.0, "qkv_bias": True}))


TOKEN_ENTRIES = ("/patch(p=1)", "/conv(k=1)", "/(conv(k=3,s=2),ln)", "/merge", "/(patch(p=2),pos)", "/(merge,ln)")


@st.composite
def _token_group(draw, first_entry: bool, prefix: bool = False, width: int | None = None,
                 video: bool = False) -> str:
    """Token stages: the first enters through a width-setting transition (unless it directly
    follows a patchify stem: `first_entry` False), later ones keep the width or merge (not
    after class/distillation tokens: `prefix`)."""
    kind = draw(st.sampled_from(token_kinds(prefix)))
    width = width or draw(st.sampled_from([8, 16, 32]))
    stages = [f"{draw(st.integers(1, 3))}x{width}{draw(st.sampled_from(TOKEN_ENTRIES)) if first_entry else ''}"]
    if draw(st.booleans()):
        trans = draw(st.sampled_from([""] if prefix else ["", "/merge", "/(conv(k=3,s=2),ln)"]))
        stages.append(f"{draw(st.integers(1, 2))}x{width * (2 if trans else 1)}{trans}")
    return f"{draw(_token_block(kind, video))} {', '.join(stages)}"


@st.composite
def _token_net(draw, frames: int = 1) -> list[str]:
    """Stem, groups and head of a patchify network (ViT/DeiT, Mixer, Swin, NAT-like; on clips of
    `frames` > 1, tubelets of one or two frames)."""
    p = draw(st.sampled_from([1, 2, 4]))
    res = draw(st.integers(2, 8)) * p * draw(st.sampled_from([1, 2]))
    pt = draw(st.sampled_from([1, 2] if frames % 2 == 0 else [1]))
    prefix = draw(st.sampled_from(["", "", ",cls", ",cls,dist"]))
    width = draw(st.sampled_from([8, 16, 32]))
    group = draw(_token_group(False, bool(prefix), width, video=frames > 1))
    tokens = len(prefix.split(",")) - 1 + frames // pt * (res // p) ** 2
    patch = draw(_call("patch", {"p": p, "c": width, "pt": pt if frames > 1 else None}, {"pt": 1}))
    stem = f"{patch}{prefix}{draw(st.sampled_from(['', ',pos', ',pos(n=%d)' % tokens]))}"
    stem += draw(st.sampled_from(["", ",ln"]))
    heads = {"": ["ln,gap,fc", "gap,fc(bias=0)"], ",cls": ["ln,token,fc", "ln,gap,fc"], ",cls,dist": ["ln,distill"]}
    return [f"@{frames}x{res}" if frames > 1 else f"@{res}", stem, group, draw(st.sampled_from(heads[prefix]))]


@st.composite
def spec_texts(draw) -> str:
    """Raw (non-canonical) grammar text of a small point; it may be invalid."""
    sep = draw(st.sampled_from([" | ", "|", "  |  "]))
    family = draw(st.sampled_from(["conv", "conv", "tokens", "hybrid", "video"]))
    frames = draw(st.sampled_from([2, 3, 4])) if family == "video" else 1
    if family == "video":
        family = draw(st.sampled_from(["conv", "tokens", "hybrid"]))
    if family == "tokens":
        return sep.join(draw(_token_net(frames)))
    res = draw(st.integers(16, 48 if frames > 1 else 64))
    groups = draw(st.lists(_group(frames > 1), min_size=1, max_size=3 if family == "hybrid" else 4))
    head = draw(_head())
    if family == "hybrid":
        groups.append(draw(_token_group(True, video=frames > 1)))
        head = draw(st.sampled_from(["ln,gap,fc", "gap,fc", head]))
    start = f"@{frames}x{res}" if frames > 1 else f"@{res}"
    return sep.join([start, draw(_stem(frames > 1)), *groups, head])


@st.composite
def texts_and_specs(draw) -> tuple[str, lab.Spec]:
    """A raw text and the valid point it parses to (invalid draws are rejected)."""
    text = draw(spec_texts())
    try:
        spec = lab.parse(text)
    except lab.SpecError:
        assume(False)
    return text, spec


def specs() -> st.SearchStrategy[lab.Spec]:
    return texts_and_specs().map(lambda ts: ts[1])


@st.composite
def verbose_texts(draw, spec: lab.Spec) -> str:
    """Another spelling of `spec`, written without lab's formatter: every parameter spelled out
    (defaults included) in shuffled order, every stage in a group of its own, random blanks."""

    def blank() -> str:
        return draw(st.sampled_from(["", "", " ", "  "]))

    def element(kind) -> str:
        items = [(f.name, getattr(kind, f.name)) for f in dataclasses.fields(kind)
                 if getattr(kind, f.name) is not None]  # None (no value) cannot be written
        if not items:
            return kind.kind
        items = draw(st.permutations(items))
        return f"{kind.kind}({blank()}{f',{blank()}'.join(f'{k}{blank()}={blank()}{_value(v)}' for k, v in items)})"

    def ops(seq) -> str:
        return f"{blank()},{blank()}".join(element(op) for op in seq)

    groups = []
    for st_ in spec.stages:
        trans = f"/{st_.stride}" if st_.stride != 1 else ""
        if st_.down:
            trans = f"/({ops(st_.down)})" if len(st_.down) > 1 or draw(st.booleans()) else f"/{element(st_.down[0])}"
        groups.append(f"{element(st_.block)} {st_.depth}x{st_.width}{blank()}{trans}")
    sep = f"{blank()}|{blank()}"
    start = f"@{blank()}{spec.frames}x{spec.res}" if spec.frames > 1 else f"@{blank()}{spec.res}"
    return sep.join([start, ops(spec.stem), *groups, ops(spec.head)])
