"""Built modules run: forward and backward for every named architecture at 32 px, and for random
grammar points; drop_path and the classifier options behave."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lab
from strategies import specs
from support import GIANTS, at_res, n_params


def train_step(spec: lab.Spec, num_classes: int = 10, in_chans: int = 3, drop_path: float = 0.0,
               batch: int = 2) -> torch.nn.Module:
    """Build, run one forward and backward pass in train mode, check shapes and gradients."""
    model = lab.build(spec, num_classes=num_classes, in_chans=in_chans, drop_path=drop_path).train()
    x = torch.randn(batch, *spec.input_shape(in_chans))
    x0 = x.clone()
    out = model(x)
    assert torch.equal(x, x0), "the forward pass overwrote its input"
    outs = out if isinstance(out, tuple) else (out,)  # a distilled model trains two heads
    assert len(outs) == (2 if spec.head[-1].kind == "distill" else 1)
    target = torch.arange(batch) % num_classes
    for y in outs:
        assert y.shape == (batch, num_classes)
        assert torch.isfinite(y).all()
    sum(torch.nn.functional.cross_entropy(y, target) for y in outs).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
    return model


@pytest.mark.parametrize("name", lab.names())
def test_named_train_step(name):
    ref = at_res(name, 32) + (",w=0.25" if name in GIANTS else "")
    spec = lab.resolve(ref)
    model = train_step(spec)
    assert n_params(model) == lab.cost(spec, num_classes=10).params


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in GIANTS if n in lab.names()])
def test_giant_train_step_full_width(name):
    spec = lab.resolve(at_res(name, 32))
    model = train_step(spec)
    assert n_params(model) == lab.cost(spec, num_classes=10).params


def test_giants_are_named():
    assert set(GIANTS) <= set(lab.names())


@settings(max_examples=25, deadline=None)
@given(specs(), st.sampled_from([(10, 3), (3, 1), (5, 4)]), st.sampled_from([0.0, 0.2]))
def test_random_train_step(spec, config, drop_path):
    num_classes, in_chans = config
    train_step(spec, num_classes, in_chans, drop_path)


@pytest.mark.parametrize("text", [
    "@16 | conv(c=8),bn | basic 1x8 | relu,gap,fc",  # an activation after a post-activation block
    "@16 | conv(c=8),relu,relu | basic 1x8 | gap,fc",  # two activations in a row
    "@16 | conv(c=8),bn | basic 1x8, 1x8/relu | gap,fc",  # an activation as a transition
])
def test_activation_after_an_activation_trains(text):
    train_step(lab.parse(text))


@pytest.mark.parametrize("text, in_chans", [
    ("@16 | conv(c=8),bn | basic 1x8/conv(k=1,g=8,ws=1) | gap,fc", 3),  # a depthwise 1x1 transition
    ("@16 | conv(c=8,k=1,ws=1) | basic 1x8 | gap,fc", 1),  # a 1x1 stem on one input channel
    ("@16 | conv(c=8,k=1,ws=1) | mbconv 2x8, 2x8, 3x8 | gap,fc", 1),  # the same, deeper
])
def test_weight_standardized_conv_with_one_weight_per_filter(text, in_chans):
    """Standardizing a filter of one weight leaves zero: such a point is rejected, or its layer is live."""
    try:
        spec = lab.parse(text)
        lab.cost(spec, in_chans=in_chans)
    except lab.SpecError as e:
        assert e.path.endswith(".ws"), str(e)
        return
    model = train_step(spec, in_chans=in_chans)
    dead = []
    hooks = [m.register_forward_hook(lambda m, i, out, name=name: dead.append(name) if not out.any() else None)
             for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(torch.randn(2, *spec.input_shape(in_chans)))
    for h in hooks:
        h.remove()
    assert not dead, f"conv layers output only zeros: {dead}"


def _unzero_residual_branches(model: torch.nn.Module) -> None:
    """Residual branches start as the identity (last norm scale 0); give every norm scale 1."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)):
                m.weight.fill_(1.0)


@pytest.mark.parametrize("text, path", [
    ("@32 | conv(c=8,k=3,s=2) | basic 1x8/2, 1x8/2, 1x8/2, 1x8/2 | gn,gap,fc", "head[0].g"),  # gn on a 1x1 map
    ("@32 | conv(c=8,k=3,s=2) | preact(e=1) 1x8/2, 1x8/2, 1x8/2, 1x8/2, 1x8 | gn,relu,gap,fc",
     "stages[3].block.norm"),  # its last block reaches 1x1
])
def test_group_norm_over_single_values_is_invalid(text, path):
    """GroupNorm with one channel per group on a 1x1 map cannot normalize: the point is rejected."""
    with pytest.raises(lab.SpecError) as err:
        lab.parse(text)
    assert err.value.path == path and "GroupNorm" in err.value.message


@settings(max_examples=25, deadline=None)
@given(specs())
def test_random_inference_on_a_single_image(spec):
    """Every valid point runs in eval mode on a batch of one (no norm is left with a single value)."""
    model = lab.build(spec, num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(1, *spec.input_shape(3))).shape == (1, 10)


def test_inference_on_a_single_image():
    model = lab.build(lab.parse("@32 | conv(c=32,k=3,s=2) | preact(e=1) 1x32/2, 1x32/2 | gn,relu,gap,fc"),
                      num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_drop_path_only_acts_in_training():
    spec = lab.resolve("resnet18@32px,w=0.25")
    torch.manual_seed(1)
    plain = lab.build(spec, num_classes=10)
    torch.manual_seed(1)
    dropped = lab.build(spec, num_classes=10, drop_path=0.5)
    for m in (plain, dropped):
        _unzero_residual_branches(m)
        m.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(plain(x), dropped(x))
        dropped.train()
        torch.manual_seed(2)
        a = dropped(x)
        torch.manual_seed(3)
        b = dropped(x)
    assert not torch.equal(a, b)  # stochastic depth draws differ between calls


def test_build_is_seeded():
    spec = lab.resolve("convnext_t@32px,w=0.25")
    torch.manual_seed(5)
    a = lab.build(spec).state_dict()
    torch.manual_seed(5)
    b = lab.build(spec).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_no_classifier_gives_features():
    spec = lab.resolve("resnet18@32px,w=0.5")
    model = lab.build(spec, num_classes=0).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, model.num_features) == (2, spec.stages[-1].width)
    assert n_params(model) == lab.cost(spec, num_classes=0).params


def test_forward_features_and_head():
    spec = lab.resolve("efficientnet_b0@32px,w=0.5")
    model = lab.build(spec, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape[:2] == (2, model.num_features)
        assert torch.equal(model.forward_head(feats), model(x))
