"""What every grammar element knows about itself: typed parameters, build and cost.

A *kind* is one registered element of the grammar. Ops appear in stems, stage transitions
and heads (``conv(k=7,s=2,c=64)``, ``bn``, ``gap``); blocks fill stages (``bottleneck(e=4)``).
Each kind is a frozen dataclass whose fields are its parameters; the class carries the
analytic cost and the torch build side by side, so they cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Self, TypeVar

import torch
from torch import nn

from lab.errors import SpecError


class Shape(NamedTuple):
    """A feature map entering or leaving an element, per image or clip: channels, spatial grid,
    the prefix tokens (class, distillation) carried in front of the grid's tokens, and the frames
    of a video's grid (1 for images).

    Tensors of a clip: a map travels with its frames folded into the batch, (B*F, C, H, W), so
    that an element working on each frame alone runs unchanged; tokens travel as
    (B, prefix + F*H*W, C), the grid in (frame, row, column) order."""

    c: int
    h: int
    w: int
    t: int = 0
    f: int = 1

    @property
    def tokens(self) -> int:
        """Tokens of the sequence: prefix + frames x grid."""
        return self.t + self.f * self.h * self.w


class Cost(NamedTuple):
    """Parameters, multiply-accumulates and activations (elements written by conv/linear layers)."""

    params: int = 0
    macs: int = 0
    acts: int = 0

    def __add__(self, other: Cost) -> Cost:  # type: ignore[override]
        return Cost(self.params + other.params, self.macs + other.macs, self.acts + other.acts)

    def times(self, n: int) -> Cost:
        return Cost(self.params * n, self.macs * n, self.acts * n)

    def on_frames(self, f: int) -> Cost:
        """The cost of one frame's computation run on each of `f` frames with the same weights."""
        return Cost(self.params, self.macs * f, self.acts * f)


ZERO = Cost()


class Saved(NamedTuple):
    """Elements of one image's tensors that a training forward keeps for backward (what
    torch.autograd.graph.saved_tensors_hooks sees, each storage once), by the dtype they are kept in
    under mixed precision: `low` at the compute dtype (bf16/fp16 under autocast: conv and linear
    inputs, norm inputs on a half-precision stream, activations), `full` in float32 whatever the
    precision (norm inputs on a float32 residual stream, softmax outputs of the attention kernels that
    compute in float32), `int64` as int64 (max-pool indices)."""

    low: int = 0
    full: int = 0
    int64: int = 0

    def __add__(self, other: Saved) -> Saved:  # type: ignore[override]
        return Saved(self.low + other.low, self.full + other.full, self.int64 + other.int64)

    def times(self, n: int) -> Saved:
        return Saved(self.low * n, self.full * n, self.int64 * n)

    @property
    def elements(self) -> int:
        return self.low + self.full + self.int64


class Flow(NamedTuple):
    """What the walk knows about the tensor passed from one element to the next, for `Kind.saved`:
    is it already kept for backward by its producer (a ReLU keeps its output; the next conv saving it
    adds nothing), and is it float32 under mixed precision (a residual stream that a float32
    parameter joined: position embeddings, class tokens, layer scale)?"""

    kept: bool = False
    wide: bool = True   # the input image is float32


def numel(s: Shape) -> int:
    """Elements of one image's (or clip's) tensor of shape `s`."""
    return s.c * s.tokens


def input_saved(s: Shape, flow: Flow, cast: bool = False) -> Saved:
    """An element's input kept for backward, unless its producer keeps it already: at the stream's
    dtype, or (`cast`: a conv or linear, which autocast feeds a half-precision copy) at the low dtype."""
    if flow.kept and not (cast and flow.wide):
        return Saved()
    return Saved(numel(s)) if cast or not flow.wide else Saved(0, numel(s))


@dataclass(frozen=True)
class Context:
    """What an element may need beyond its input shape."""

    num_classes: int = 1000
    in_chans: int = 3
    width: int | None = None  # the stage width, inside a stage transition
    layout: str = "nchw"  # the layout the element receives (for kinds that accept either)
    inplace: bool = False  # may an activation overwrite its input? (its producer does not need it)


# --- cost helpers shared by kinds -------------------------------------------------------


def out_size(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def conv_cost(cin: int, cout: int, k: int, h_out: int, w_out: int, groups: int = 1, bias: bool = False,
              kt: int = 1, f_out: int = 1) -> Cost:
    """A k x k conv (kt x k x k over `f_out` output frames, for a 3D one)."""
    per_out = (cin // groups) * k * k * kt
    params = cout * per_out + (cout if bias else 0)
    n_out = cout * h_out * w_out * f_out
    return Cost(params, n_out * per_out, n_out)


def check_clip(s: Shape, what: str, field: str) -> None:
    """A temporal kernel or stride (`what`) needs frames to work across."""
    if s.f == 1:
        raise SpecError(f"{what} needs a clip, but one frame arrives (start the text @FRAMESxRES)", field)


def linear_cost(fin: int, fout: int, tokens: int = 1, bias: bool = True) -> Cost:
    return Cost(fin * fout + (fout if bias else 0), tokens * fin * fout, tokens * fout)


def norm_cost(c: int) -> Cost:
    """BatchNorm, GroupNorm and LayerNorm all carry a scale and a shift per channel."""
    return Cost(2 * c, 0, 0)


def gn_groups(c: int, groups: int = 32) -> int:
    """GroupNorm groups on `c` channels: gcd(c, groups), so 32 for every multiple of 32 (BiT)
    and still a valid split for the narrow channel counts of scaled variants."""
    return math.gcd(c, groups)


def check_gn(c: int, hw: int, groups: int = 32) -> None:
    """GroupNorm normalizes each group over its channels and pixels: it needs more than one value."""
    if (c // gn_groups(c, groups)) * hw < 2:
        raise SpecError(f"GroupNorm on {c} channels in {gn_groups(c, groups)} groups at {hw} pixel(s) "
                        "normalizes single values: widen the stage or keep a larger map", "norm")


def block_norm_cost(norm: str, c: int, hw: int) -> Cost:
    """A block's norm (bn or gn) on `c` channels over `hw` pixels."""
    if norm == "gn":
        check_gn(c, hw)
    return norm_cost(c)


def se_cost(c: int, rd: int) -> Cost:
    """Squeeze-excitation on a pooled vector: two 1x1 convs with bias."""
    return Cost(c * rd + rd + rd * c + c, 2 * c * rd, rd + c)


# --- parameters --------------------------------------------------------------------------


def param(default: Any, lo: float | None = None, hi: float | None = None, choices: tuple | None = None,
          doc: str = "") -> Any:
    """Declare a kind parameter: default, inclusive bounds or choices, and a one-line doc."""
    return field(default=default, metadata={"lo": lo, "hi": hi, "choices": choices, "doc": doc})


def _type_of(f: dataclasses.Field) -> type:
    t = f.type if isinstance(f.type, str) else f.type.__name__
    return {"int": int, "float": float, "bool": bool, "str": str, "int | None": int, "float | None": float}[t]


def coerce(value: Any, f: dataclasses.Field, where: str) -> Any:
    """Check one parameter value against its declaration; return it in its canonical type."""
    t = _type_of(f)
    meta = f.metadata
    if value is None and f.default is None:
        return None
    if t is bool:
        if isinstance(value, bool) or value in (0, 1):
            return bool(value)
        raise SpecError(f"expected 0 or 1, got {value!r}", where)
    if t is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
            raise SpecError(f"expected an integer, got {value!r}", where)
        value = int(value)
    elif t is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SpecError(f"expected a number, got {value!r}", where)
        value = float(value)
    elif t is str:
        if not isinstance(value, str):
            raise SpecError(f"expected a name, got {value!r}", where)
    if meta.get("choices") and value not in meta["choices"]:
        raise SpecError(f"expected one of {', '.join(map(str, meta['choices']))}, got {value!r}", where)
    if meta.get("lo") is not None and value < meta["lo"]:
        raise SpecError(f"expected >= {meta['lo']}, got {value!r}", where)
    if meta.get("hi") is not None and value > meta["hi"]:
        raise SpecError(f"expected <= {meta['hi']}, got {value!r}", where)
    return value


REGISTRY: dict[str, type[Kind]] = {}

KindT = TypeVar("KindT", bound="Kind")


def register(cls: type[KindT]) -> type[KindT]:
    """Make a kind a frozen dataclass and add it to the grammar under its ``kind`` name."""
    cls = dataclass(frozen=True)(cls)
    if cls.kind in REGISTRY:
        raise RuntimeError(f"kind {cls.kind!r} registered twice")
    if issubclass(cls, Block) and cls.mixer_family not in MIXER_FAMILIES:
        raise RuntimeError(f"kind {cls.kind!r}: mixer_family {cls.mixer_family!r} is not one of "
                           f"{', '.join(MIXER_FAMILIES)}")
    if issubclass(cls, Block) and cls.token_mixer != (cls.mixer_family != "conv"):
        raise RuntimeError(f"kind {cls.kind!r}: a token mixer's mixer_family is not conv, and a conv "
                           f"block's is (token_mixer={cls.token_mixer}, mixer_family={cls.mixer_family!r})")
    REGISTRY[cls.kind] = cls
    return cls


def unregister(kind: str) -> None:
    """Remove a kind from the grammar (a kind registered for a while, as a test's throwaway kind)."""
    REGISTRY.pop(kind, None)


TRAITS = ("layout", "classifier", "per_frame", "patchifies", "inplace_after", "needs_grid", "token_mixer",
          "mixer_family")
# the families of token mixing a block may declare (the lecture's table of token mixers)
MIXER_FAMILIES = ("conv", "global-attention", "window-attention", "neighbourhood-attention", "mlp", "other")


def traits(cls: type[Kind]) -> dict[str, Any]:
    """What the rest of the lab may ask about a kind, by name (search spaces select kinds by these):
    kind, role, layout, classifier, per_frame, patchifies, inplace_after, needs_grid, and for blocks
    token_mixer and mixer_family (False and "" for ops). A trait a kind computes from its
    parameters (per_frame of basic and conv) is read off the kind with its defaults."""
    out: dict[str, Any] = {"kind": cls.kind, "role": cls.role, "token_mixer": False, "mixer_family": ""}
    for name in TRAITS:
        if not hasattr(cls, name):
            continue
        value = getattr(cls, name)
        if isinstance(value, property):
            try:
                value = getattr(cls(), name)
            except SpecError:   # a kind without defaults for every parameter: the trait is unknown
                value = None
        out[name] = value
    return out


NCHW, NLC, ANY = "nchw", "nlc", "any"


class Kind:
    """Base of every grammar element. Subclasses declare fields with :func:`param`.

    `layout` is the tensor layout the element works in: ``nchw`` maps (B, C, H, W), ``nlc``
    tokens (B, prefix + H*W, C), or ``any`` (it adapts). The walk converts between layouts
    where needed, free of cost; a map cannot be made of tokens that carry prefix tokens.
    `per_frame` says how it treats the frames of a clip (see Shape).
    """

    kind: ClassVar[str]
    role: ClassVar[str]  # "op" or "block"
    # --- traits: what the rest of the lab asks about a kind, declared here and nowhere else ---
    layout: ClassVar[str] = NCHW  # the layout it takes (`layout_out` gives the one it hands on)
    classifier: ClassVar[bool] = False  # does it produce the logits (a head ends with one)?
    # Does it work on each frame of a clip alone? Then the walk costs it on one frame (times the
    # frames) and the builder hands it one frame's shape; frames ride in the batch. Kinds that mix
    # frames (3D convs and windows, global attention, pooling), or act on each position alone
    # whatever the arrangement (norms, activations), set it False and handle `Shape.f` themselves.
    per_frame: ClassVar[bool] = True
    # Does it patchify (a map in, tokens of p x p patches out)? Such a kind has a patch size `p`,
    # which the patch multiplier (`vit_s16@32px,p=4`) sets.
    patchifies: ClassVar[bool] = False
    # Does its backward need none of its output? Then an activation right after it may overwrite
    # that output in place (norms and convs; a ReLU's or a block's output is saved for backward).
    inplace_after: ClassVar[bool] = False
    # Does it work on the token grid only (windows, neighbourhoods, 2x2 merging)? The walk refuses
    # it on tokens that carry class/distillation tokens, which belong to no grid position.
    needs_grid: ClassVar[bool] = False
    if TYPE_CHECKING:  # `register` makes each kind a dataclass: dataclasses.fields() and replace() take it
        __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, coerce(getattr(self, f.name), f, f.name))
        self.check()

    def check(self) -> None:
        """Checks across parameters (raise SpecError with the field name as path)."""

    def args(self) -> dict[str, Any]:
        """Parameters that differ from their defaults, in declaration order (the canonical form)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != f.default}

    def layout_out(self, layout_in: str) -> str:
        """The layout this element hands on, given the one it received."""
        return layout_in if self.layout == ANY else self.layout

    def widen(self, m: float, channels: Callable[[int], int]) -> Self:
        """This element under width multiplier `m`; `channels` maps an absolute channel count to
        its scaled value, the same one everywhere in the spec (kinds with channel counts override)."""
        return self

    def saved(self, s: Shape, out: Shape, ctx: Context, flow: Flow) -> tuple[Saved, Flow]:
        """What one image's training forward of this element (`s` in, `out` out, after the walk's
        frame handling) keeps for backward, given what the walk knows of its input (`flow`), and the
        flow of its output. The default: a layer whose backward needs its input and nothing else
        (conv, norm, pooling, linear), its output neither kept nor float32 unless its input was."""
        return input_saved(s, flow), Flow(False, flow.wide)

    def timm_names(self, dialect: str) -> dict[str, str] | None:
        """How timm's models of `dialect` (see lab.interop.timm) name this element's weights:
        {local prefix: timm's local prefix}; each state_dict key takes its longest matching prefix
        ("" matches every key). None when those models have no counterpart of this element. The
        default keeps every name: the element's modules are named as timm names them."""
        return {"": ""}

    def adapt_weight(self, local: str, value: torch.Tensor, shape: torch.Size, s: Shape,
                     receives_image: bool = False) -> torch.Tensor | None:
        """`value`, a pretrained tensor for this element's `local` key, made to fit the model's
        `shape` where the element knows how (another token grid; other input channels, for the
        element that `receives_image`), given its input shape `s`; None where it does not."""
        return None

    @classmethod
    def params_doc(cls) -> list[tuple[str, Any, str]]:
        return [(f.name, f.default, f.metadata.get("doc", "")) for f in dataclasses.fields(cls)]


class Op(Kind):
    """An element of a stem, a stage transition or a head: one shape in, one shape out."""

    role: ClassVar[str] = "op"

    def shape(self, s: Shape, ctx: Context) -> tuple[Shape, Cost]:
        raise NotImplementedError

    def build(self, s: Shape, ctx: Context) -> nn.Module:
        raise NotImplementedError


class Block(Kind):
    """A stage's repeated unit: token mixer + channel mixer + normalization + residual rule.

    A stage is ``depth`` units at ``width``; the first takes the stage's stride. Kinds whose
    units differ beyond the first (DenseNet's growing input) override the stage methods.
    """

    role: ClassVar[str] = "block"
    # Do units after the second keep what the second keeps (the same input shape and flow)? Kinds whose
    # units grow (DenseNet) say no, and each unit is counted.
    uniform_units: ClassVar[bool] = True
    # Does it mix tokens by attention or an MLP rather than a convolution (the lecture's token
    # mixers; the dashboard colours each one apart, every conv kind as "conv")?
    token_mixer: ClassVar[bool] = False
    mixer_family: ClassVar[str] = "conv"  # one of MIXER_FAMILIES

    def unit(self, s: Shape, width: int, stride: int) -> tuple[Shape, Cost]:
        raise NotImplementedError

    def build_unit(self, s: Shape, width: int, stride: int, drop_path: float) -> nn.Module:
        raise NotImplementedError

    def width_quantum(self) -> int:
        """Stage widths must be multiples of this (width multipliers round to it)."""
        return 1

    def stage(self, s: Shape, width: int, depth: int, stride: int) -> tuple[Shape, Cost]:
        s1, first = self.unit(s, width, stride)
        if depth == 1:
            return s1, first
        s2, rest = self.unit(s1, width, 1)
        return s2, first + rest.times(depth - 1)

    def saved_unit(self, s: Shape, width: int, stride: int, flow: Flow) -> tuple[Saved, Flow]:
        """What one unit keeps for backward per image (see Kind.saved). The default counts a chain of
        conv -> norm -> ReLU for each conv output (the norm keeps the conv's output, the ReLU its own,
        the next conv saves that again at no cost): twice the unit's activations, plus its input."""
        _, cost = self.unit(s, width, stride)
        return input_saved(s, flow, cast=True) + Saved(2 * cost.acts), Flow(True, False)

    def saved_stage(self, s: Shape, width: int, depth: int, stride: int, flow: Flow) -> tuple[Saved, Flow]:
        """What the stage's `depth` units keep for backward, unit after unit (as `stage`)."""
        total = Saved()
        for i in range(depth):
            step = stride if i == 0 else 1
            kept, flow = self.saved_unit(s, width, step, flow)
            total = total + kept
            if i == 1 and self.uniform_units:   # units 2..depth repeat unit 2
                return total + kept.times(depth - 2), flow
            s, _ = self.unit(s, width, step)
        return total, flow

    def saved(self, s: Shape, out: Shape, ctx: Context, flow: Flow) -> tuple[Saved, Flow]:
        raise TypeError("a block's saved tensors are counted by saved_stage")

    def build_stage(self, s: Shape, width: int, depth: int, stride: int, drop_paths: list[float]) -> list[nn.Module]:
        units = []
        for i in range(depth):
            units.append(self.build_unit(s, width, stride if i == 0 else 1, drop_paths[i]))
            s, _ = self.unit(s, width, stride if i == 0 else 1)
        return units


def round_channels(c: float, quantum: int = 8) -> int:
    """Round a scaled channel count to a multiple of `quantum` (at least one quantum)."""
    return max(quantum, round(c / quantum) * quantum)
