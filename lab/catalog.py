"""Named architectures are data: ``search_spaces/named.yaml`` maps each name to grammar text.

A reference to a point may carry multipliers: ``resnet50@32px,w=0.25,d=0.5`` is ResNet-50 at
32 px input with a quarter of its widths and half its depths; ``vit_s16@32px,p=4`` is ViT-S with
4 px patches at 32 px (an 8 x 8 token grid). Each is a grammar point like any other.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import yaml

from lab.errors import LabError, SpecError
from lab.grammar import generators
from lab.grammar.scale import scale
from lab.grammar.spec import Spec
from lab.grammar.text import parse
from lab.kinds import in_order
from lab.resources import named_file

GENERATORS: dict[str, Callable[..., str]] = {"regnet": generators.regnet, "efficientnet": generators.efficientnet}


@dataclass(frozen=True)
class Entry:
    name: str
    family: str
    text: str
    timm: str | None = None  # the timm model it reproduces, where timm has one
    reference: str | None = None  # else the implementation its counts come from
    published_params_m: float | None = None
    published_gmacs: float | None = None
    classes: int = 1000  # the classes of its published head (ImageNet's 1000; Kinetics-400's 400)


@functools.cache
def entries() -> dict[str, Entry]:
    path = named_file()   # the shipped search_spaces folder, or LAB_SPACES (read at the first call: cached)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise LabError(f"named architectures not found at {path} (set LAB_SPACES to the search_spaces folder)") from None
    out = {}
    for name, e in raw.items():
        gens = [g for g in GENERATORS if g in e]
        if "text" in e:
            text = e["text"]
        elif len(gens) == 1:
            text = GENERATORS[gens[0]](**e[gens[0]])
        else:
            raise LabError(f"{path}: {name}: give text or one generator ({', '.join(GENERATORS)})")
        pub = e.get("published") or {}
        if not (e.get("timm") or e.get("reference")):
            raise LabError(f"{path}: {name}: give the timm model it reproduces, or a reference")
        out[name] = Entry(name, e["family"], text, e.get("timm"), e.get("reference"), pub.get("params_m"),
                          pub.get("gmacs"), e.get("classes", 1000))
    return out


def names() -> list[str]:
    return list(entries())


@functools.cache
def named(name: str) -> Spec:
    """The named architecture `name` at its native resolution."""
    e = entries().get(name)
    if e is None:
        close = difflib.get_close_matches(name, names(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else " (see `lab arch list`)"
        raise SpecError(f"unknown architecture {name!r}{hint}")
    return parse(e.text)


_MOD = re.compile(r"^(?:(?:(\d+)x)?(\d+)px|([wd])=([0-9]*\.?[0-9]+)|p=(\d+))$")


def resolve(ref: str) -> Spec:
    """A Spec from grammar text (``@224 | ...``) or a name with optional multipliers
    (``swin_t``, ``resnet50@32px``, ``resnet50@32px,w=0.25,d=0.5``, ``vit_s16@32px,p=4``;
    ``video_swin_t@8x32px``: clips of 8 frames at 32 px)."""
    ref = ref.strip()
    if ref.startswith("@"):
        return parse(ref)
    name, _, mods = ref.partition("@")
    spec = named(name.strip())
    if not mods:
        return spec
    res, frames, w, d, p = None, None, 1.0, 1.0, None
    seen: set[str] = set()
    for mod in mods.split(","):
        m = _MOD.match(mod.strip())
        if not m:
            raise SpecError(f"bad multiplier {mod.strip()!r} in {ref!r} (expected NNpx, FFxNNpx, w=F, d=F or p=N)")
        which = "px" if m.group(2) else "p" if m.group(5) else m.group(3)
        if which in seen:
            raise SpecError(f"multiplier {which!r} given twice in {ref!r}")
        seen.add(which)
        if m.group(2):
            res, frames = int(m.group(2)), (int(m.group(1)) if m.group(1) else None)
        elif m.group(5):
            p = int(m.group(5))
        elif m.group(3) == "w":
            w = float(m.group(4))
        else:
            d = float(m.group(4))
    return scale(spec, width=w, depth=d, res=res, patch=p, frames=frames)


def kinds_family(kinds: Iterable[str]) -> str:
    """The family of a point no name describes: its distinct block kinds in the lab's order of
    token mixing (lab.kinds.in_order: conv kinds, then global, window and neighbourhood attention,
    MLP; by name within one), joined by '+': ``basic``, ``mbconv+mhsa``, ``bottleneck+swin+mixer``."""
    return "+".join(in_order(set(kinds)))


def family_of(spec: Spec, name: str | None = None) -> str:
    """What `family` means in every lab table: the catalog family of a named point (``resnet`` for
    ``resnet18``, also scaled: ``resnet18@32px,w=0.25``; `name` is the reference the point was
    resolved from, grammar text or None when there is none), or of grammar text equal to a named
    point at its native size; else `kinds_family` of its block kinds."""
    if name is not None and not name.lstrip().startswith("@"):
        entry = entries().get(name.partition("@")[0].strip())
        if entry is not None:
            return entry.family
    native = _native_families().get(spec.arch_id)
    return native if native is not None else kinds_family(st.block.kind for st in spec.stages)


@functools.cache
def _native_families() -> dict[str, str]:
    """arch_id -> family of every named point at its native size (as `named` parses its text)."""
    out: dict[str, str] = {}
    for e in entries().values():
        try:
            out.setdefault(named(e.name).arch_id, e.family)
        except LabError:
            continue
    return out


def migrated_family(old: str | None, text: str | None) -> str | None:
    """The `family` of a row written before the lab had one vocabulary (README "Result schema"):
    a named family other than ``hybrid`` stays (the row named its point: a native named point or
    a scaling arm); any other word (a kind, or ``hybrid`` for every mixed point) is recomputed from
    the row's grammar text (`family_of`); a row whose text does not parse keeps its word."""
    if old is not None and old != "hybrid" and old in {e.family for e in entries().values()}:
        return old
    if not text:
        return old
    try:
        return _family_of_text(text)
    except (LabError, ValueError):
        return old


@functools.lru_cache(maxsize=4096)
def _family_of_text(text: str) -> str:
    return family_of(parse(text))


@functools.cache
def named_ids(resolutions: tuple[int, ...]) -> dict[str, str]:
    """arch_id -> name of every named architecture, natively and rescaled to each of
    `resolutions` at widths 1, 0.5 and 0.25 (what studies on a CPU train: swin_t@28px,w=0.25)."""
    ids: dict[str, str] = {}
    for n in names():
        try:
            spec = named(n)
        except LabError:
            continue
        ids.setdefault(spec.arch_id, n)
        for res in resolutions:
            for w in (1.0, 0.5, 0.25):
                try:
                    point = scale(spec, width=w, res=res)
                except (LabError, ValueError):
                    continue
                ids.setdefault(point.arch_id, f"{n}@{res}px" + (f",w={w:g}" if w != 1 else ""))
    return ids
