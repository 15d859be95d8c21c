"""One builder for every grammar point: ``build(spec) -> Net``. No per-architecture classes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from lab.cost import steps
from lab.errors import SpecError
from lab.grammar.spec import Spec
from lab.grammar.trace import frame_of
from lab.kinds.base import NCHW, NLC, Kind, Shape
from lab.layers import DropPath, fold_frames


class Placement(NamedTuple):
    """Where one grammar element sits in a built Net: its module path, the element, its section
    (stem, down, block, head), its stage (None in the stem and head), its index in the section
    (the block's index within its stage; the element's among the section's elements otherwise)
    and the shape it receives (a stage's input, for its blocks)."""

    path: str
    element: Kind
    section: str
    stage: int | None
    index: int  # type: ignore[assignment]  # a field that shadows tuple.index, on purpose
    shape: Shape


class FeaturePoint(NamedTuple):
    """A place where a backbone hands out a feature map: the end of a stage, or (in a net of one
    stage: ViT, DeiT, Mixer, as timm lists theirs) the end of each of its blocks. `shape` and
    `layout` are what the stage hands on there (tokens keep their class/distillation prefix);
    `reduction` is the input size over the map's, per step rounded (timm's nominal stride)."""

    module: str  # "stages.2" or "stages.0.blocks.5"
    stage: int
    block: int | None  # None: the stage's output
    shape: Shape
    layout: str
    reduction: int


class FeatureInfo(list):
    """timm's feature_info: one dict per feature map, `num_chs`, `reduction`, `module` (and `index`
    among the net's feature points, `stage`; `frames` for a video model)."""

    def channels(self) -> list[int]:
        return [d["num_chs"] for d in self]

    def reduction(self) -> list[int]:
        return [d["reduction"] for d in self]

    def module_name(self) -> list[str]:
        return [d["module"] for d in self]


def take_indices(n: int, indices: int | Sequence[int] | None, what: str, points: str) -> list[int]:
    """timm's selection of feature points: None takes all `n`, an int the last that many, a sequence
    those indices (negative ones from the end); sorted, without repeats. A bad one is a SpecError
    naming `what` and the `points` the model has."""
    if indices is None:
        return list(range(n))
    if isinstance(indices, bool):
        raise SpecError(f"expected an int or a list of indices, got {indices!r}", what)
    if isinstance(indices, int):
        if not 0 < indices <= n:
            raise SpecError(f"last {indices} feature points asked, but this model has {points}", what)
        return list(range(n - indices, n))
    picked = set()
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n:
            raise SpecError(f"index {i!r} is out of range: this model has {points} (indices {-n}..{n - 1})", what)
        picked.add(i % n)
    if not picked:
        raise SpecError(f"no feature point selected (this model has {points})", what)
    return sorted(picked)


def _as_map(x: torch.Tensor, s: Shape, layout: str, fmt: str, video: bool = False) -> torch.Tensor:
    """A stage's output as a map: (B, C, H, W), or (B, C, F, H, W) for a clip (`video`: a video
    model's maps keep their frame axis, also where a tubelet left one frame); tokens lose their
    class/distillation prefix and take the grid's (frame, row, column) order. `fmt` NHWC puts the
    channels last."""
    if layout == NLC:
        x = x[:, s.t:].reshape(x.shape[0], s.f, s.h, s.w, s.c).permute(0, 4, 1, 2, 3)
    else:  # a clip's maps travel as (B*F, C, H, W)
        x = x.reshape(-1, s.f, s.c, s.h, s.w).transpose(1, 2)
    if not video:
        x = x.squeeze(2)
    if fmt == "NHWC":
        x = x.movedim(1, -1)
    return x.contiguous()


class Net(nn.Module):
    """stem -> stages -> head, with timm's forward_features / forward_head split. `placements`
    says which grammar element built which submodule (weight interop names keys by it).

    Backbone use follows timm: `feature_info` and `forward_intermediates` over the feature
    `points` (stage ends; block ends in a net of one stage); `head_norm` is how many of the head's
    first modules normalize the last stage's output in place (ln, bn,relu: `norm=True`)."""

    def __init__(self, stem: nn.Sequential, stages: nn.Sequential, head: nn.Sequential, num_features: int,
                 placements: tuple[Placement, ...] = (), frames: int = 1, points: tuple[FeaturePoint, ...] = (),
                 head_norm: int = 0):
        super().__init__()
        self.stem = stem
        self.stages = stages
        self.head = head
        self.num_features = num_features
        self.placements = placements
        self.frames = frames  # > 1: a video model, whose input is a clip (B, C, frames, H, W)
        self.points = points
        self.head_norm = head_norm

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        if self.frames > 1:  # frames travel folded into the batch (see lab.kinds.base.Shape)
            if x.dim() != 5 or x.shape[2] != self.frames:
                raise ValueError(f"this video model takes clips (B, C, {self.frames}, H, W), got {tuple(x.shape)}")
            x = fold_frames(x)
        return self.stem(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self._stem(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def _describe_points(self) -> str:
        n, stages = len(self.points), len(self.stages)
        if self.points and self.points[0].block is not None:
            return f"{n} feature points (the blocks of its one stage)"
        return f"{n} feature points (its {stages} stage{'s' if stages != 1 else ''})"

    def info(self, indices: Sequence[int] | None = None) -> FeatureInfo:
        """feature_info of the points at `indices` (all by default)."""
        out = FeatureInfo()
        for i in range(len(self.points)) if indices is None else indices:
            p = self.points[i]
            d: dict[str, Any] = {"num_chs": p.shape.c, "reduction": p.reduction, "module": p.module,
                                 "index": i, "stage": p.stage}
            if self.frames > 1:
                d["frames"] = p.shape.f
            out.append(d)
        return out

    @property
    def feature_info(self) -> FeatureInfo:
        return self.info()

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's forward_intermediates: the feature maps at `indices` (see take_indices), each
        (B, C, H, W) -- tokens reshaped to their grid, class/distillation tokens dropped; a video
        model's (B, C, F, H, W). `norm` passes the last stage's maps through the head's leading
        norm (and activation); `stop_early` stops after the last map taken. Returns the maps, or
        (the features forward_head takes, the maps)."""
        take = take_indices(len(self.points), indices, "indices", self._describe_points())
        if output_fmt not in ("NCHW", "NHWC"):
            raise SpecError(f"output_fmt must be NCHW or NHWC, got {output_fmt!r}", "output_fmt")
        wanted = {(self.points[i].stage, self.points[i].block): self.points[i] for i in take}
        last = self.points[take[-1]]
        out: list[torch.Tensor] = []

        def tap(y: torch.Tensor, p: FeaturePoint) -> None:
            if norm and p.stage == len(self.stages) - 1:
                y = self.head[:self.head_norm](y)
            out.append(_as_map(y, p.shape, p.layout, output_fmt, video=self.frames > 1))

        x = self._stem(x)
        for si, stage in enumerate(self.stages):
            assert isinstance(stage, StageModule)  # built by build()
            if any(s == si and b is not None for s, b in wanted):
                y = stage.enter(x)
                for j, block in enumerate(stage.blocks):
                    y = block(y)
                    if (si, j) in wanted:
                        tap(stage.leave(y), wanted[(si, j)])
                    if stop_early and (si, j) == (last.stage, last.block):
                        break
                x = stage.leave(y)
            else:
                x = stage(x)
                if (si, None) in wanted:
                    tap(x, wanted[(si, None)])
            if stop_early and si == last.stage:
                break
        return out if intermediates_only else (x, out)


class Backbone(Net):
    """A Net cut after its last selected feature point, without its head: its forward returns the
    maps at `out_indices` (timm's features_only). It shares its modules, and their state_dict
    keys, with the Net it was cut from."""

    def __init__(self, *args: Any, out_indices: Sequence[int] = (), **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.out_indices = tuple(out_indices)

    @property
    def feature_info(self) -> FeatureInfo:
        return self.info(self.out_indices)

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        if norm:
            raise SpecError("a backbone has no head, so no final norm: call forward_intermediates(norm=True) "
                            "on the full model (lab.build without features_only)", "norm")
        return super().forward_intermediates(x, indices, False, stop_early, output_fmt, intermediates_only)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = self.forward_intermediates(x, self.out_indices, stop_early=True, intermediates_only=True)
        assert isinstance(maps, list)
        return maps


def backbone(net: Net, out_indices: int | Sequence[int] | None = None) -> Backbone:
    """`net` as a backbone handing out the maps at `out_indices` (timm's selection: None all, an
    int the last n, indices, negative from the end): cut after the last one, its head dropped.
    The modules (so the weights, loaded or trained) are `net`'s own, under the same keys."""
    take = take_indices(len(net.points), out_indices, "out_indices", net._describe_points())
    last = net.points[take[-1]]
    stages = list(net.stages[:last.stage + 1])
    cut = stages[-1]
    assert isinstance(cut, StageModule)  # built by build()
    if last.block is not None and last.block + 1 < len(cut.blocks):
        stages[-1] = StageModule(cut.down, nn.Sequential(*list(cut.blocks)[:last.block + 1]), cut.fold)
    out = Backbone(net.stem, nn.Sequential(*stages), nn.Sequential(), last.shape.c, (), net.frames,
                   net.points[:take[-1] + 1], 0, out_indices=take)
    present = {name for name, _ in out.named_modules()}
    out.placements = tuple(p for p in net.placements if p.path in present)
    return out


class ToTokens(nn.Module):
    """(B, C, H, W) map -> (B, H*W, C) tokens; a clip's (B*F, C, H, W) -> (B, F*H*W, C)."""

    def __init__(self, frames: int = 1):
        super().__init__()
        self.frames = frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)
        return x if self.frames == 1 else x.reshape(-1, self.frames * x.shape[1], x.shape[2])


class ToMap(nn.Module):
    """(B, H*W, C) tokens -> (B, C, H, W) map; a clip's (B, F*H*W, C) -> (B*F, C, H, W)."""

    def __init__(self, h: int, w: int):
        super().__init__()
        self.h, self.w = h, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[2]
        return x.reshape(-1, self.h * self.w, c).transpose(1, 2).reshape(-1, c, self.h, self.w)


def _converter(step) -> list[nn.Module]:
    if step.convert is None:
        return []
    s = step.shape_in
    return [ToTokens(s.f)] if step.convert == "nchw->nlc" else [ToMap(s.h, s.w)]


def _takes_frame_tokens(step) -> bool:
    """Does a per-frame element receive or hand on a clip's tokens (which must be folded into frames)?"""
    return (step.shape_in.f > 1 and step.element.per_frame
            and NLC in (step.ctx.layout, step.element.layout_out(step.ctx.layout)))


def _frames_in_batch(step) -> bool:
    """Does the element's input carry a clip's frames in its batch dimension? Maps always do;
    tokens do when a per-frame stage gets them folded."""
    return step.shape_in.f > 1 and (step.ctx.layout == NCHW or _takes_frame_tokens(step))


class StageModule(nn.Module):
    """A stage: its transition, then its blocks. Blocks that work on each frame of a clip's tokens
    (`fold` = the frames) get them as (B*F, H*W, C), and hand them back as (B, F*H*W, C)."""

    def __init__(self, down: nn.Module, blocks: nn.Sequential, fold: int = 1):
        super().__init__()
        self.down = down
        self.blocks = blocks
        self.fold = fold

    def enter(self, x: torch.Tensor) -> torch.Tensor:
        """The transition, and a clip's tokens folded into frames for per-frame blocks."""
        x = self.down(x)
        return x if self.fold == 1 else x.reshape(x.shape[0] * self.fold, -1, x.shape[2])

    def leave(self, x: torch.Tensor) -> torch.Tensor:
        """A block's output as the stage hands it on (a clip's tokens unfolded)."""
        return x if self.fold == 1 else x.reshape(-1, self.fold * x.shape[1], x.shape[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.leave(self.blocks(self.enter(x)))


def _reduction(step) -> int:
    """The step's stride, read off its shapes (7 -> 4 pixels is a stride of 2)."""
    return max(1, round(step.shape_in.h / step.shape_out.h))


def feature_points(spec: Spec, walk: Sequence) -> tuple[FeaturePoint, ...]:
    """Where `spec`'s backbone hands out maps: every stage's end, or in a net of one stage (ViT,
    DeiT, Mixer: timm lists their blocks) every block's end. `walk` is the spec's trace."""
    one_stage = len(spec.stages) == 1
    points: list[FeaturePoint] = []
    reduction = 1
    for step in walk:
        if step.section == "head":
            break
        if step.section != "stage":
            reduction *= _reduction(step)
            continue
        si = step.stage
        layout = step.element.layout_out(step.ctx.layout)
        if not one_stage:
            reduction *= _reduction(step)
            points.append(FeaturePoint(f"stages.{si}", si, None, step.shape_out, layout, reduction))
            continue
        st, s = spec.stages[si], step.shape_in
        for j in range(st.depth):  # the first unit takes the stride (Block.build_stage)
            out, _ = st.block.unit(frame_of(st.block, s), st.width, st.stride if j == 0 else 1)
            out = out._replace(f=s.f)
            reduction *= max(1, round(s.h / out.h))
            points.append(FeaturePoint(f"stages.{si}.blocks.{j}", si, j, out, layout, reduction))
            s = out
    return tuple(points)


# what a head may do to the last stage's output before pooling it: normalize it and activate it
# (timm's final norm: ln; densenet's bn,relu; BiT's gn,relu); norm=True applies them to the maps
NORM_KINDS = frozenset({"ln", "bn", "gn", "relu", "gelu", "silu"})


def head_norm(walk: Sequence) -> int:
    """How many of the head's first elements are its final norm and activation (NORM_KINDS),
    working on the last stage's output in its layout."""
    n = 0
    for step in walk:
        if step.section != "head":
            continue
        if step.convert or step.element.kind not in NORM_KINDS:
            break
        n += 1
    return n


def build(spec: Spec, num_classes: int = 1000, in_chans: int = 3, drop_path: float = 0.0,
          features_only: bool = False, out_indices: int | Sequence[int] | None = None) -> Net:
    """Build `spec` as a torch module. `drop_path` is the stochastic-depth rate of the last block
    (rising linearly from 0 over all blocks). With `features_only`, a Backbone (timm's
    convention): its forward returns the maps at `out_indices` (all feature points by default)."""
    if out_indices is not None and not features_only:
        raise SpecError("out_indices selects a backbone's maps: give features_only=True with it", "out_indices")
    net = _build(spec, num_classes, in_chans, drop_path)
    return backbone(net, out_indices) if features_only else net


def _build(spec: Spec, num_classes: int, in_chans: int, drop_path: float) -> Net:
    total_blocks = sum(st.depth for st in spec.stages)
    rates = [drop_path * i / max(1, total_blocks - 1) for i in range(total_blocks)]
    stem: list[nn.Module] = []
    head: list[nn.Module] = []
    stages: list[nn.Module] = []
    down: list[nn.Module] = []
    placed: list[Placement] = []
    counts = {"stem": 0, "down": 0, "head": 0}
    num_features = 0
    done = 0

    def add(modules: list[nn.Module], path: str, step) -> None:
        if _takes_frame_tokens(step):  # a kind's bug, not a user's: ops fold a clip's tokens themselves (merge)
            raise RuntimeError(f"{step.element.kind} works on each frame but receives or hands on tokens: "
                               "it must handle Shape.f itself (set per_frame = False)")
        modules += _converter(step)
        placed.append(Placement(f"{path}.{len(modules)}", step.element, step.section,
                                None if step.section != "down" else len(stages), counts[step.section],
                                step.shape_in))
        counts[step.section] += 1
        modules.append(step.element.build(frame_of(step.element, step.shape_in), step.ctx))

    walk = steps(spec, num_classes, in_chans)
    for step in walk:
        if step.section == "stem":
            add(stem, "stem", step)
        elif step.section == "down":
            add(down, f"stages.{len(stages)}.down", step)
        elif step.section == "stage":
            assert step.stage is not None  # a stage's step has its index
            st = spec.stages[step.stage]
            down += _converter(step)
            units = nn.Sequential(*st.block.build_stage(frame_of(st.block, step.shape_in), st.width, st.depth,
                                                        st.stride, rates[done:done + st.depth]))
            if _frames_in_batch(step):  # stochastic depth drops a clip's branch, not single frames
                for m in units.modules():
                    if isinstance(m, DropPath):
                        m.frames = step.shape_in.f
            placed += [Placement(f"stages.{len(stages)}.blocks.{j}", st.block, "block", len(stages), j, step.shape_in)
                       for j in range(st.depth)]
            done += st.depth
            stages.append(StageModule(nn.Sequential(*down) if down else nn.Identity(), units,
                                      step.shape_in.f if _takes_frame_tokens(step) else 1))
            down, counts["down"] = [], 0
            num_features = step.shape_out.c
        else:
            add(head, "head", step)
    return Net(nn.Sequential(*stem), nn.Sequential(*stages), nn.Sequential(*head), num_features, tuple(placed),
               spec.frames, feature_points(spec, walk), head_norm(walk))
