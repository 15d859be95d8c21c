"""Backbones (timm's conventions): features_only / out_indices at build, forward_intermediates and
feature_info, for every grammar point; checked against timm's own features_only models.

Where timm's feature points and the grammar's stages differ, the comparison maps them (no faked
agreement; README, "Backbones"):
- resnet, resnext, wide_resnet, regnet, bit, densenet: timm's first map is the stem's, at reduction 2
  (act1, stem, stem.conv, features.norm0), where the grammar's stem goes on to reduction 4 and hands
  out no map: timm's maps 1.. are the grammar's stages 0.. . timm's densenet's last map is after its
  final norm (features.norm5), the grammar's stage 3 before its head's bn,relu: same shape.
- efficientnet: timm hands out the last stage at each reduction (blocks.0,1,2,4,6), the grammar
  every stage: the last grammar stage at each reduction is timm's map.
- vit, deit, mixer: one stage, so the grammar's points are its blocks, as timm's (timm's
  features_only default takes the last 3; the grammar's takes all).
- the R50 + ViT hybrid: timm's points are the 12 transformer blocks only, the grammar's the 4
  stages (3 ResNet stages, the transformer): the last maps are the same.
- swin: timm's features_only maps are NHWC (its forward_intermediates' are NCHW), the grammar's NCHW.
"""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import timm
import torch
from hypothesis import given, settings
from strategies import specs

from lab.build import Backbone, backbone, build
from lab.catalog import entries, resolve
from lab.cost import cost
from lab.errors import LabError, SpecError
from lab.grammar import parse
from lab.interop.timm import dialect_of, load_timm

TIMM_NAMED = [name for name, e in entries().items() if e.timm]
# fast: timm builds these in about a second; the other layouts are checked fast below on
# width-reduced timm models (swin, convnext) and under -m slow at full width
FAST = {"resnet18", "densenet121", "efficientnet_b0", "vit_ti16", "deit_ti_distilled"}
STEM_FIRST = {"resnet", "resnext", "wide_resnet", "regnet", "bit", "densenet"}
ISOTROPIC = {"vit", "deit", "mixer"}
ROOT = Path(__file__).resolve().parents[1]


def small_res(name: str) -> int:
    """Convnets at 64 px, isotropic token models at a 4 x 4 patch grid, the hybrid at 128 px."""
    spec = resolve(name)
    family = entries()[name].family
    if family == "hybrid":
        return 128
    patch = next((op.p for op in spec.stem if op.patchifies), None)
    return 4 * patch if patch and family in ISOTROPIC else 64


def image(res: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, res, res, generator=torch.Generator().manual_seed(seed))


def pairs(name: str, ours: list[dict], theirs: list[dict]) -> list[tuple[int, int]]:
    """(our map's index, timm's) of the maps that correspond (the mapping in the module doc)."""
    family = entries()[name].family
    if family in STEM_FIRST:
        assert theirs[0]["reduction"] == 2 and len(theirs) == len(ours) + 1
        return [(i, i + 1) for i in range(len(ours))]
    if family == "efficientnet":
        last_ours = {d["reduction"]: i for i, d in enumerate(ours)}
        last_theirs = {d["reduction"]: i for i, d in enumerate(theirs)}
        assert last_ours.keys() == last_theirs.keys()
        return [(last_ours[r], last_theirs[r]) for r in sorted(last_theirs)]
    if family == "hybrid":
        return [(len(ours) - 1, len(theirs) - 1)]
    assert len(ours) == len(theirs)
    return [(i, i) for i in range(len(ours))]


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in TIMM_NAMED])
def test_feature_maps_match_timms_features_only(name):
    e, res = entries()[name], small_res(name)
    spec = resolve(f"{name}@{res}px")
    kwargs = {"img_size": res} if e.family in ISOTROPIC | {"hybrid", "swin"} else {}
    if e.family in ISOTROPIC:  # every block, as the grammar's default
        kwargs["out_indices"] = tuple(range(spec.stages[0].depth))
    reference = timm.create_model(e.timm, pretrained=False, features_only=True, **kwargs).eval()
    ours = build(spec, features_only=True).eval()
    x = image(res, batch=1)
    with torch.no_grad():
        theirs_maps, our_maps = reference(x), ours(x)
    if e.family == "swin":
        theirs_maps = [m.permute(0, 3, 1, 2) for m in theirs_maps]
    theirs = reference.feature_info.get_dicts()
    matched = pairs(name, list(ours.feature_info), theirs)
    for i, j in matched:
        assert ours.feature_info[i]["num_chs"] == theirs[j]["num_chs"], (i, j)
        assert ours.feature_info[i]["reduction"] == theirs[j]["reduction"], (i, j)
        assert our_maps[i].shape == theirs_maps[j].shape, (i, j)
    assert [tuple(m.shape[1:2]) for m in our_maps] == [(c,) for c in ours.feature_info.channels()]


def _timm_pair(arch: str, text: str, dialect: str, res: int, **kwargs):
    """A timm model with random weights and the grammar point built with them, both eval."""
    reference = timm.create_model(arch, pretrained=False, **kwargs).eval()
    with torch.no_grad():
        for p in reference.parameters():  # no constant norm scales or biases: a swap would show
            p.add_(0.05 * torch.randn_like(p))
    ours = build(parse(text)).eval()
    load_timm(ours, reference.state_dict(), dialect)
    return reference, ours, image(res)


TIMM_VALUES = {
    "resnet18": ("resnet18", "@64 | conv(c=64,k=7,s=2),bn,relu,maxpool | basic 2x64, 2x128/2, 2x256/2, 2x512/2 | gap,fc",
                 "resnet", 64, {}, 1),
    "convnext": ("convnext_tiny", "@64 | conv(c=16,k=4,s=4,bias=1),ln | convnext 1x16, 1x32/(ln,conv(k=2,s=2,bias=1)), "
                 "2x64/(ln,conv(k=2,s=2,bias=1)), 1x128/(ln,conv(k=2,s=2,bias=1)) | gap,ln,fc",
                 "convnext", 64, {"dims": (16, 32, 64, 128), "depths": (1, 1, 2, 1)}, 0),
    "swin": ("swin_tiny_patch4_window7_224", "@64 | patch(p=4,c=32),ln(eps=1e-05) | swin(w=2) 2x32, 2x64/merge, "
             "2x128/merge, 2x256/merge | ln(eps=1e-05),gap,fc", "swin", 64,
             {"img_size": 64, "window_size": 2, "embed_dim": 32, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 4, 8)}, 0),
    "vit": ("vit_tiny_patch16_224", "@64 | patch(p=16,c=64),cls,pos | mhsa 4x64 | ln,token,fc", "vit", 64,
            {"img_size": 64, "embed_dim": 64, "depth": 4, "num_heads": 1}, 0),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", "@64 | patch(p=16,c=64),cls,dist,pos | mhsa 4x64 | ln,distill",
                       "vit", 64, {"img_size": 64, "embed_dim": 64, "depth": 4, "num_heads": 1}, 0),
}


@pytest.mark.parametrize("case", list(TIMM_VALUES))
@pytest.mark.parametrize("norm", [False, True])
def test_maps_equal_timms_forward_intermediates_with_its_weights(case, norm):
    """With timm's weights loaded, the grammar's maps are timm's forward_intermediates maps, value
    for value: the token grid's order, the dropped class/distillation tokens, the final norm (ViT:
    on every block's map; Swin: on the last stage's; ResNet and ConvNeXt have none before pooling).
    timm's ResNet counts its stem as map 0: the grammar's map i is timm's i + 1."""
    arch, text, dialect, res, kwargs, offset = TIMM_VALUES[case]
    reference, ours, x = _timm_pair(arch, text, dialect, res, **kwargs)
    with torch.no_grad():
        theirs = reference.forward_intermediates(x, norm=norm, intermediates_only=True)[offset:]
        mine = ours.forward_intermediates(x, norm=norm, intermediates_only=True)
    assert len(mine) == len(theirs)
    for a, b in zip(mine, theirs):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_named_timm_points_have_a_timm_layout():
    """Every named point the comparison above covers is one timm builds (no silent skip)."""
    for name in TIMM_NAMED:
        assert dialect_of(entries()[name].timm)


POINTS = ["resnet18@32px,w=0.25", "densenet121@32px,w=0.25", "efficientnet_b0@32px,w=0.25", "convnext_t@32px,w=0.25",
          "swin_t@32px,w=0.25", "nat_mini@32px,w=0.25", "vit_ti16@32px,p=8", "deit_ti_distilled@32px,p=8",
          "mixer_s16@32px,p=8", "vit_r50_b16_384@64px,w=0.25,d=0.25", "bit_r50x1@32px,w=0.25"]


@pytest.mark.parametrize("ref", POINTS)
def test_maps_have_the_costed_shapes_and_the_final_one_feeds_the_head(ref):
    """feature_info and the maps agree with lab.cost's per-stage rows (channels, grid), and the
    features returned alongside the maps are what forward_head takes."""
    spec = resolve(ref)
    net = build(spec, num_classes=10).eval()
    x = image(spec.res)
    with torch.no_grad():
        final, maps = net.forward_intermediates(x)
        logits = net(x)
        early = net.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
        nhwc = net.forward_intermediates(x, output_fmt="NHWC", intermediates_only=True)
    assert torch.equal(net.forward_head(final), logits)
    rows = [r for r in cost(spec, num_classes=10).rows if r.name.startswith("stage")]
    info = net.feature_info
    if len(spec.stages) == 1:  # the blocks of an isotropic stage: all at the stage's shape
        assert len(info) == spec.stages[0].depth
        rows = rows * len(info)
    assert [(d["num_chs"], d["module"]) for d in info] == [
        (r.channels, m) for r, m in zip(rows, [d["module"] for d in info])]
    assert [tuple(m.shape) for m in maps] == [(2, r.channels, r.h, r.w) for r in rows]
    assert all(spec.res // d["reduction"] == m.shape[-1] or spec.res % d["reduction"] for d, m in zip(info, maps))
    assert torch.equal(early[0], maps[0])
    assert all(torch.equal(a.permute(0, 3, 1, 2), b) for a, b in zip(nhwc, maps))


@settings(max_examples=8, deadline=None)
@given(specs())
def test_every_sampled_point_hands_out_its_costed_maps(spec):
    net = build(spec, num_classes=3).eval()
    with torch.no_grad():
        maps = net.forward_intermediates(torch.randn(1, *spec.input_shape(3)), intermediates_only=True)
    rows = [r for r in cost(spec, num_classes=3).rows if r.name.startswith("stage")]
    if len(spec.stages) == 1:  # one map per block (a block may change the channels: dense): the last is the stage's
        assert len(maps) == spec.stages[0].depth
        maps = maps[-1:]
    shapes = [(1, r.channels, *((r.frames,) if spec.frames > 1 else ()), r.h, r.w) for r in rows]
    assert [tuple(m.shape) for m in maps] == shapes
    assert [m.shape[1] for m in maps] == net.feature_info.channels()[-len(maps):]


def test_out_indices_select_and_cut_the_net():
    spec = resolve("resnet18@32px,w=0.25")
    full = build(spec)
    net = build(spec, features_only=True, out_indices=(0, -3))
    assert isinstance(net, Backbone) and net.out_indices == (0, 1)
    assert net.feature_info.channels() == [16, 32] and net.feature_info.reduction() == [4, 8]
    assert net.feature_info.module_name() == ["stages.0", "stages.1"]
    # cut after stage 1, no head: exactly the stem's and the first two stages' parameters
    rows = {r.name: r.params for r in cost(spec).rows}
    assert sum(p.numel() for p in net.parameters()) == rows["stem"] + rows["stage 1"] + rows["stage 2"]
    assert set(net.state_dict()) < set(full.state_dict())  # timm interop's keys, unchanged
    maps = net(image(32))
    assert [tuple(m.shape) for m in maps] == [(2, 16, 8, 8), (2, 32, 4, 4)]
    assert build(spec, features_only=True, out_indices=2).out_indices == (2, 3)  # an int: the last n


def test_a_backbone_cut_from_a_net_shares_its_weights():
    spec = resolve("vit_ti16@32px,p=8")
    net = build(spec).eval()
    cut = backbone(net, out_indices=[3, 7])
    assert len(cut.stages[0].blocks) == 8 and cut.feature_info.module_name() == ["stages.0.blocks.3",
                                                                               "stages.0.blocks.7"]
    x = image(32)
    with torch.no_grad():
        expected = net.forward_intermediates(x, indices=[3, 7], intermediates_only=True)
        got = cut(x)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert cut.stem[0] is net.stem[0]


@pytest.mark.parametrize("ref, out_indices, message", [
    ("resnet18@32px,w=0.25", (4,), "out_indices: index 4 is out of range: this model has 4 feature points (its 4 stages)"),
    ("resnet18@32px,w=0.25", (-5,), "out_indices: index -5 is out of range"),
    ("resnet18@32px,w=0.25", 5, "out_indices: last 5 feature points asked, but this model has 4 feature points"),
    ("resnet18@32px,w=0.25", (), "out_indices: no feature point selected"),
    ("vit_ti16@32px,p=8", (12,), "this model has 12 feature points (the blocks of its one stage)"),
])
def test_a_bad_out_index_is_a_one_line_error(ref, out_indices, message):
    with pytest.raises(SpecError) as info:
        build(resolve(ref), features_only=True, out_indices=out_indices)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_other_misuses_are_one_line_errors():
    spec = resolve("resnet18@32px,w=0.25")
    with pytest.raises(LabError, match=r"out_indices: .*features_only=True"):
        build(spec, out_indices=(1,))
    with pytest.raises(LabError, match="output_fmt"):
        build(spec).forward_intermediates(image(32), output_fmt="NLC")
    with pytest.raises(LabError, match="norm: a backbone has no head"):
        build(spec, features_only=True).forward_intermediates(image(32), norm=True)


def test_video_maps_are_ncthw_and_per_frame_stages_see_each_frame():
    """A clip's maps are (B, C, F, H, W). Reference: a per-frame conv net's map of frame f is the
    image net's map of that frame alone, with the same weights."""
    body = "conv(c=8,k=3,s=2),bn,relu | basic 1x8, 1x16/2 | gap,fc"
    video, still = build(parse(f"@3x32 | {body}")).eval(), build(parse(f"@32 | {body}")).eval()
    still.load_state_dict(video.state_dict())
    clip = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        maps = video.forward_intermediates(clip, intermediates_only=True)
        frames = [still.forward_intermediates(clip[:, :, f], intermediates_only=True) for f in range(3)]
    assert [tuple(m.shape) for m in maps] == [(2, 8, 3, 16, 16), (2, 16, 3, 8, 8)]
    assert [d["frames"] for d in video.feature_info] == [3, 3]
    for i, m in enumerate(maps):
        torch.testing.assert_close(m, torch.stack([fr[i] for fr in frames], dim=2))
    swin = build(resolve("video_swin_t@4x32px,w=0.25"), features_only=True).eval()
    with torch.no_grad():
        shapes = [tuple(m.shape) for m in swin(torch.randn(1, 3, 4, 32, 32))]
    assert shapes == [(1, 24, 2, 8, 8), (1, 48, 2, 4, 4), (1, 96, 2, 2, 2), (1, 192, 2, 1, 1)]


def test_backbone_trains():
    net = build(resolve("convnext_t@32px,w=0.25"), features_only=True, out_indices=(-2, -1)).train()
    loss = sum(m.square().mean() for m in net(image(32)))
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())  # no unused weights (DDP-safe): head gone


def test_fpn_example_trains_one_step():
    result = runpy.run_path(str(ROOT / "examples" / "fpn_backbone.py"))["main"](steps=1)
    assert result["levels"] == [(2, 64, 8, 8), (2, 64, 4, 4), (2, 64, 2, 2)]
    assert torch.isfinite(torch.tensor(result["losses"])).all() and result["changed"]
