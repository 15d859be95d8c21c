"""The analytic cost model against the module the builder makes: params exactly, MACs against
torch's FlopCounterMode (which counts 2 FLOPs per multiply-accumulate), activations against the
outputs of the built conv and linear layers. All on the meta device."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lab
from strategies import specs
from support import at_res, measured_cost, meta_model, n_params

CONFIGS = pytest.mark.parametrize("num_classes, in_chans", [(1000, 3), (10, 1)], ids=["imagenet", "10cls-gray"])


def output_shapes(parts: list[torch.nn.Module], model: torch.nn.Module, spec: lab.Spec, in_chans: int) -> list[tuple]:
    """Per-input output shape of each part during one meta forward pass of `model`, with the
    frames a clip's map carries in its batch dimension in front: (frames, C, H, W)."""
    shapes = {}
    hooks = [p.register_forward_hook(lambda m, i, out, k=k: shapes.__setitem__(
        k, tuple(out.shape[1:]) if out.dim() == 3 or out.shape[0] == 2 else (out.shape[0] // 2, *out.shape[1:])))
             for k, p in enumerate(parts)]
    try:
        with torch.no_grad():
            model(torch.empty(2, *spec.input_shape(in_chans), device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return [shapes[k] for k in range(len(parts))]


def assert_cost_matches_build(spec: lab.Spec, num_classes: int, in_chans: int) -> None:
    report = lab.cost(spec, num_classes=num_classes, in_chans=in_chans)
    model = meta_model(spec, num_classes, in_chans)
    macs, acts = measured_cost(model, in_chans, spec.res, spec.frames)
    assert report.params == n_params(model)
    assert report.macs == pytest.approx(macs, rel=0.005)
    assert report.acts == acts
    # the per-section rows add up, and each matches its part of the module
    assert sum(r.params for r in report.rows) == report.params
    assert sum(r.macs for r in report.rows) == report.macs
    parts = [model.stem, *model.stages, model.head]
    assert [r.name for r in report.rows] == ["stem", *[f"stage {i + 1}" for i in range(len(spec.stages))], "head"]
    assert [r.params for r in report.rows] == [n_params(p) for p in parts]
    shapes = output_shapes(parts, model, spec, in_chans)
    expected = [(r.prefix + r.frames * r.h * r.w, r.channels) if r.tokens
                else (r.channels, r.h, r.w) if r.frames == 1 else (r.frames, r.channels, r.h, r.w)
                for r in report.rows[:-1]]
    assert expected == shapes[:-1]
    assert (report.rows[-1].channels,) == shapes[-1] and report.rows[-1].h == report.rows[-1].w == 1


@CONFIGS
@pytest.mark.parametrize("name", lab.names())
def test_named_cost_matches_build(name, num_classes, in_chans):
    assert_cost_matches_build(lab.resolve(at_res(name, 64)), num_classes, in_chans)


@settings(max_examples=40, deadline=None)
@given(specs(), st.sampled_from([(1000, 3), (10, 1), (7, 4), (1, 3)]))
def test_random_cost_matches_build(spec, config):
    assert_cost_matches_build(spec, *config)


@settings(max_examples=15, deadline=None)   # giants at w, d up to 2 take seconds each
@given(st.sampled_from(lab.names()), st.floats(0.05, 2.0), st.floats(0.1, 2.0), st.sampled_from([32, 40, 64]))
def test_scaled_variants_are_valid_and_costed_right(name, w, d, res):
    ref = at_res(name, res)
    spec = lab.resolve(f"{ref},w={w:.3f},d={d:.3f}")
    assert spec.res == int(ref.split("@")[1][:-2])
    assert_cost_matches_build(spec, 10, 3)


def test_cost_scales_with_resolution():
    """Params do not depend on the input size; MACs of a conv net grow with the pixel count."""
    a, b = lab.resolve("resnet50@64px"), lab.resolve("resnet50@128px")
    assert lab.cost(a).params == lab.cost(b).params
    assert lab.cost(b).macs / lab.cost(a).macs == pytest.approx(4, rel=0.05)
