"""Weights in timm's layout: load a timm state_dict into a grammar-built model, export one back.

A family of timm models (a *dialect*: resnet, resnetv2, vit, swin, ...) names its weights by where
they sit in its module tree. A `Dialect` records that tree: where the elements of the stem, of
the stage transitions and of the head sit, and where each block kind's units sit, as key prefixes
by element kind. Inside an element, the kind itself says how timm names its weights
(`Kind.timm_names`). Together they map every key of a lab state_dict to timm's key, one to one:

    model = lab.build(lab.named("resnet50"))
    load_timm(model, timm_model.state_dict(), "resnet")    # strict: every key, every shape
    export_timm(model, "resnet")                           # back to timm's keys and shapes
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lab.build import Net, Placement
from lab.errors import LabError, first_line
from lab.interop.weights import read_weights

SHOWN = 5  # mismatches named in an error, per category


class InteropError(LabError):
    """Weights that do not fit a model, or a layout the lab cannot map."""


@dataclass(frozen=True)
class Dialect:
    """Where a timm model family keeps each element's weights, keyed by the element's kind.

    Templates may use {s} (stage, from 0), {s1} (stage, from 1), {j} (block in its stage, from 0)
    and {j1} (from 1). An element whose kind a section lacks has no place in this family."""

    name: str
    modules: tuple[str, ...]  # the timm modules whose models use this layout
    stem: Mapping[str, str]
    blocks: Mapping[str, str]
    head: Mapping[str, str]
    down: Mapping[str, str] = field(default_factory=dict)
    conv_classifier: bool = False  # timm's classifier is a 1x1 conv: 4-D weights

    def place(self, p: Placement) -> str:
        table = {"stem": self.stem, "down": self.down, "block": self.blocks, "head": self.head}[p.section]
        kind = p.element.kind
        if kind not in table:
            where = {"stem": "stems", "down": "stage transitions", "block": "stages", "head": "heads"}[p.section]
            raise InteropError(f"timm's {self.name} models have no {kind} in their {where} "
                               f"(at {p.path}): this point has no {self.name} layout")
        s, j = p.stage or 0, p.index
        return table[kind].format(s=s, s1=s + 1, j=j, j1=j + 1)


_VIT_TOKENS = {"patch": "patch_embed", "cls": "cls_token", "dist": "dist_token", "pos": "pos_embed"}

DIALECTS: dict[str, Dialect] = {d.name: d for d in [
    Dialect("resnet", ("timm.models.resnet",), stem={"conv": "conv1", "bn": "bn1"},
            blocks={"basic": "layer{s1}.{j}", "bottleneck": "layer{s1}.{j}"}, head={"fc": "fc"}),
    Dialect("resnetv2", ("timm.models.resnetv2",), stem={"conv": "stem.conv"},
            blocks={"preact": "stages.{s}.blocks.{j}"}, head={"gn": "norm", "fc": "head.fc"}, conv_classifier=True),
    Dialect("regnet", ("timm.models.regnet",), stem={"conv": "stem.conv", "bn": "stem.bn"},
            blocks={"bottleneck": "s{s1}.b{j1}"}, head={"fc": "head.fc"}),
    Dialect("densenet", ("timm.models.densenet",), stem={"conv": "features.conv0", "bn": "features.norm0"},
            blocks={"dense": "features.denseblock{s1}.denselayer{j1}"},
            down={"bn": "features.transition{s}.norm", "conv": "features.transition{s}.conv"},
            head={"bn": "features.norm5", "fc": "classifier"}),
    Dialect("efficientnet", ("timm.models.efficientnet",), stem={"conv": "conv_stem", "bn": "bn1"},
            blocks={"mbconv": "blocks.{s}.{j}"}, head={"conv": "conv_head", "bn": "bn2", "fc": "classifier"}),
    Dialect("convnext", ("timm.models.convnext",), stem={"conv": "stem.0", "ln": "stem.1"},
            blocks={"convnext": "stages.{s}.blocks.{j}"},
            down={"ln": "stages.{s}.downsample.0", "conv": "stages.{s}.downsample.1"},
            head={"ln": "head.norm", "fc": "head.fc"}),
    Dialect("vit", ("timm.models.vision_transformer", "timm.models.deit"), stem=_VIT_TOKENS,
            blocks={"mhsa": "blocks.{j}"}, head={"ln": "norm", "fc": "head", "distill": ""}),
    Dialect("vit_hybrid", ("timm.models.vision_transformer_hybrid",),
            stem={"conv": "patch_embed.backbone.stem.conv", "gn": "patch_embed.backbone.stem.norm"},
            blocks={"bottleneck": "patch_embed.backbone.stages.{s}.blocks.{j}", "mhsa": "blocks.{j}"},
            down=_VIT_TOKENS, head={"ln": "norm", "fc": "head"}),
    Dialect("mixer", ("timm.models.mlp_mixer",), stem={"patch": "stem"}, blocks={"mixer": "blocks.{j}"},
            head={"ln": "norm", "fc": "head"}),
    Dialect("swin", ("timm.models.swin_transformer",), stem={"patch": "patch_embed", "ln": "patch_embed.norm"},
            blocks={"swin": "layers.{s}.blocks.{j}"}, down={"merge": "layers.{s}.downsample"},
            head={"ln": "norm", "fc": "head.fc"}),
]}


def dialect_of(timm_name: str) -> str:
    """The layout of timm model `timm_name` (a name timm can create)."""
    from timm.models import is_model, model_entrypoint

    if not is_model(timm_name):
        raise InteropError(f"timm has no model {timm_name!r}")
    module = model_entrypoint(timm_name).__module__
    for d in DIALECTS.values():
        if module in d.modules:
            return d.name
    raise InteropError(f"timm model {timm_name!r} ({module}) has no lab layout (known: {', '.join(DIALECTS)})")


def _dialect(name: str) -> Dialect:
    if name not in DIALECTS:
        raise InteropError(f"unknown timm layout {name!r} (known: {', '.join(DIALECTS)})")
    return DIALECTS[name]


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _rename(local: str, rules: Mapping[str, str]) -> str | None:
    """`local` under the longest prefix of `rules` it starts with (at a dot), or None."""
    best = None
    for prefix in rules:
        if (prefix == "" or local == prefix or local.startswith(prefix + ".")) and (best is None or len(prefix) > len(best)):
            best = prefix
    if best is None:
        return None
    return _join(rules[best], local[len(best):].lstrip("."))


def ownership(model: Net) -> dict[str, tuple[Placement, str]]:
    """Every key of `model`'s state_dict -> (the placement of the element that owns it, the key
    local to that element)."""
    if not isinstance(model, Net) or not model.placements:
        raise InteropError(f"expected a grammar-built model (lab.build), got a {type(model).__name__}")
    owners = sorted(model.placements, key=lambda p: -len(p.path))  # deepest path first
    out = {}
    for key in model.state_dict():
        p = next((p for p in owners if key.startswith(p.path + ".")), None)
        if p is None:
            raise InteropError(f"{key}: no grammar element owns this weight")  # a builder bug
        out[key] = (p, key[len(p.path) + 1:])
    return out


def key_map(model: Net, dialect: str) -> dict[str, tuple[str, Placement, str]]:
    """Every key of `model`'s state_dict -> (timm's key, its element's placement, the key local to
    the element). Raises InteropError when an element has no place in the dialect, or two keys would
    share a name."""
    d = _dialect(dialect)
    owned = ownership(model)
    _check_unique_kinds({p for p, _ in owned.values()}, d)
    out: dict[str, tuple[str, Placement, str]] = {}
    seen: dict[str, str] = {}
    places: dict[str, tuple[str, Mapping[str, str]]] = {}
    for key, (p, local) in owned.items():
        if p.path not in places:
            names = p.element.timm_names(d.name)
            if names is None:
                raise InteropError(f"timm's {d.name} models have no counterpart of the {p.element.kind} "
                                   f"element at {p.path}")
            places[p.path] = (d.place(p), names)
        prefix, rules = places[p.path]
        renamed = _rename(local, rules)
        if renamed is None:
            raise InteropError(f"{key}: the {p.element.kind} kind names no timm key for {local!r}")  # a rule bug
        theirs = _join(prefix, renamed)
        if theirs in seen:
            raise InteropError(f"{seen[theirs]} and {key} would both be timm's {theirs}")
        seen[theirs] = key
        out[key] = (theirs, p, local)
    return out


def _check_unique_kinds(weighted: set[Placement], d: Dialect) -> None:
    """A section (the stem, one transition, the head) places its elements by kind: two elements of
    one kind with weights in one section cannot both have a place."""
    groups: dict[tuple, list[Placement]] = {}
    for p in weighted:
        if p.section != "block":
            groups.setdefault((p.section, p.stage, p.element.kind), []).append(p)
    for (section, _, kind), ps in groups.items():
        if len(ps) > 1:
            raise InteropError(f"timm's {d.name} layout holds one {kind} per {section}; this point has "
                               f"{len(ps)} ({', '.join(sorted(p.path for p in ps))})")


def export_timm(model: Net, dialect: str) -> dict[str, Tensor]:
    """`model`'s weights under timm's keys (and shapes) of `dialect`, as a state_dict."""
    d = _dialect(dialect)
    state = model.state_dict()
    out = {}
    for key, (theirs, p, _) in key_map(model, dialect).items():
        value = state[key].detach()
        if d.conv_classifier and p.element.classifier and value.dim() == 2:
            value = value[:, :, None, None]
        out[theirs] = value
    return out


@dataclass
class LoadReport:
    """What `load_timm` did: keys loaded, classifier keys left at their fresh initialization, and
    tensors adapted to this model (other input channels, another token grid), with why."""

    loaded: int = 0
    reinitialized: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.loaded} tensors loaded"]
        if self.adapted:
            parts.append("adapted: " + "; ".join(self.adapted))
        if self.reinitialized:
            parts.append(f"classifier re-initialized ({', '.join(self.reinitialized)})")
        return ", ".join(parts)


def _without_trailing_ones(shape: torch.Size) -> tuple[int, ...]:
    dims = list(shape)
    while dims and dims[-1] == 1:
        dims.pop()
    return tuple(dims)


def _fits(value: Tensor, target: Tensor) -> Tensor | None:
    """`value` as `target`'s shape when it differs only by trailing singleton dims (a 1x1-conv
    classifier and a linear one), else None."""
    if value.shape == target.shape:
        return value
    if _without_trailing_ones(value.shape) == _without_trailing_ones(target.shape):
        return value.reshape(target.shape)
    return None


def _misfit(headline: str, missing: list[str], extra: list[str], wrong: list[str]) -> InteropError:
    """One line: the headline, then the first SHOWN keys of each sort of mismatch and how many more."""
    parts = []
    for label, items in (("missing", missing), ("unexpected", extra), ("wrong shape (checkpoint vs model)", wrong)):
        if items:
            more = f", ... {len(items) - SHOWN} more" if len(items) > SHOWN else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:SHOWN])}{more}")
    return InteropError(f"{headline}: " + "; ".join(parts))


def load_timm(model: Net, state: Mapping[str, Tensor], dialect: str, *, adapt: bool = False,
              new_head: bool = False, what: str = "checkpoint") -> LoadReport:
    """Copy a timm-layout `state` into `model` in place. Strict: every key of either side must be
    matched, with equal shapes, else InteropError names the first mismatches of each sort.

    With `adapt`, a pretrained start for another task: a classifier of another class count (or
    none in the checkpoint: timm's feature extractors) is left at its fresh initialization,
    first-layer filters are adapted to the model's input channels and a position embedding is
    resampled to the model's token grid. With `new_head` the classifier keeps its fresh
    initialization whatever its shape (a new task)."""
    mapping = key_map(model, dialect)
    own = model.state_dict()
    missing, wrong = [], []
    report = LoadReport()
    new: dict[str, Tensor] = {}
    first = next((p for p in model.placements if p.section == "stem"), None)
    for key, (theirs, p, local) in mapping.items():
        if p.element.classifier and (new_head or (adapt and theirs not in state)):
            report.reinitialized.append(theirs)  # a new task, or a checkpoint without a classifier
            continue
        if theirs not in state:
            missing.append(theirs)
            continue
        value, target = state[theirs], own[key]
        fitted = _fits(value, target)
        if fitted is None and adapt:
            if p.element.classifier:
                report.reinitialized.append(f"{theirs} {tuple(value.shape)} -> {tuple(target.shape)}")
                continue
            fitted = p.element.adapt_weight(local, value, target.shape, p.shape, receives_image=p is first)
            if fitted is not None and fitted.shape == target.shape:
                report.adapted.append(f"{theirs} {tuple(value.shape)} -> {tuple(target.shape)}")
            else:
                fitted = None
        if fitted is None:
            wrong.append(f"{theirs} {tuple(value.shape)} vs {tuple(target.shape)}")
            continue
        new[key] = fitted
    mapped = {theirs for theirs, _, _ in mapping.values()}
    extra = [k for k in state if k not in mapped]  # in the checkpoint's order
    if missing or extra or wrong:
        raise _misfit(f"{what} does not fit this model in timm's {dialect} layout", missing, extra, wrong)
    with torch.no_grad():
        for key, value in new.items():
            own[key].copy_(value)
    report.loaded = len(new)
    return report


def detect_dialect(model: Net, keys) -> str:
    """The layout whose names for `model`'s weights best match `keys` (a checkpoint's)."""
    keys = set(keys)
    best, best_hits = None, -1
    for name in DIALECTS:
        try:
            names = {theirs for theirs, _, _ in key_map(model, name).values()}
        except InteropError:
            continue
        hits = len(names & keys)
        if hits > best_hits:
            best, best_hits = name, hits
    if best is None or best_hits == 0:
        raise InteropError("the checkpoint's keys match no timm layout of this point")
    return best


# --- where weights come from ------------------------------------------------------------


def _weights_host(timm_name: str) -> str | None:
    """The host timm downloads `timm_name`'s default weights from (None if it has none)."""
    import os
    from urllib.parse import urlparse

    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm_name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    return urlparse(cfg.url).hostname if cfg.url else None


def _reachable(host: str, timeout: float = 5.0) -> bool:
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_cache_only(on: bool):
    """Hugging Face hub downloads answered from the local cache only, while `on` (an unreachable
    hub would otherwise be retried for about a minute before failing)."""
    import huggingface_hub.constants as hub

    before = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = on or before
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = before


def pretrained_state_dict(timm_name: str) -> dict[str, Tensor]:
    """timm's pretrained weights of `timm_name`, through timm's download (Hugging Face hub or URL),
    or its local cache. Offline without a cached copy, or for a model without weights, an
    InteropError saying so."""
    import timm

    dialect_of(timm_name)
    host = _weights_host(timm_name)
    if host is None:
        raise InteropError(f"timm has no pretrained weights for {timm_name}")
    offline = not _reachable(host)
    try:
        with _hub_cache_only(offline):
            model = timm.create_model(timm_name, pretrained=True)
    except Exception as e:  # network, hub and missing-weights errors come in many types
        reason = first_line(e, type(e).__name__)
        why = f"{host} cannot be reached and no copy is cached" if offline else f"{type(e).__name__}: {reason[:200]}"
        raise InteropError(f"could not fetch timm's pretrained {timm_name} ({why}); pass a local checkpoint "
                           "file instead (--init PATH)") from None
    return model.state_dict()


def init_weights(model: Net, source: str, *, dialect: str | None = None, new_head: bool = False) -> str:
    """Start `model` from pretrained weights: `timm:NAME` (timm's download) or a checkpoint file
    (a lab checkpoint, or a timm layout: `dialect`, else detected from its keys). The classifier
    keeps its fresh initialization when the class count differs (always, with `new_head`);
    first-layer filters and position embeddings are adapted. Returns a one-line account."""
    if source.startswith("timm:"):
        name = source[len("timm:"):]
        d = dialect_of(name)
        state = pretrained_state_dict(name)
        report = load_timm(model, state, d, adapt=True, new_head=new_head, what=f"timm's {name}")
        return f"timm {name}: {report.summary()}"
    state, meta = read_weights(source)
    if meta is not None:
        return f"{source}: " + load_lab(model, state, new_head=new_head, what=f"checkpoint {source}").summary()
    d = dialect or detect_dialect(model, state)
    report = load_timm(model, state, d, adapt=True, new_head=new_head, what=f"checkpoint {source}")
    return f"{source} ({d} layout): {report.summary()}"


def load_lab(model: Net, state: Mapping[str, Tensor], *, new_head: bool = False,
             what: str = "checkpoint") -> LoadReport:
    """A lab checkpoint's weights into `model` (same keys), the classifier left at its fresh
    initialization when its class count differs (always, with `new_head`). Mismatches are an
    InteropError naming the first of each sort."""
    own = model.state_dict()
    classifier = {key for key, (p, _) in ownership(model).items() if p.element.classifier}
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape and k not in classifier]
    if missing or extra or wrong:
        raise _misfit(f"{what} does not fit this model", missing, extra, wrong)
    report = LoadReport()
    with torch.no_grad():
        for k, v in own.items():
            if k in classifier and (new_head or state[k].shape != v.shape):
                report.reinitialized.append(k)
                continue
            v.copy_(state[k])
            report.loaded += 1
    return report
