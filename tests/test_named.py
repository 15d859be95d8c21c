"""Named architectures: analytic cost against timm and the reference table; multipliers."""

from __future__ import annotations

import math

import pytest
import timm
import torch

import lab
from support import REFERENCE_CSV, at_res, catalog_entries, measured_cost, n_params, reference_rows

NAMES = lab.names()
ROWS = reference_rows()
if ROWS is None:
    CSV_CASES = [pytest.param("-", marks=pytest.mark.skip(reason=f"reference table not found at {REFERENCE_CSV}"))]
else:
    CSV_CASES = [n for n in NAMES if n in ROWS]


TIMM_NAMES = [n for n in NAMES if catalog_entries()[n].timm]


def test_catalog():
    assert len(NAMES) == len(set(NAMES)) > 0
    entries = catalog_entries()
    for name in NAMES:
        e = entries[name]
        assert e.timm or e.reference, f"{name} names neither a timm model nor a reference"
        if e.timm:
            assert e.timm in timm.list_models(), e.timm
        elif ROWS is not None:  # without timm, the reference table is what its counts are checked against
            assert name in ROWS, f"{name} has no timm model and no row in the reference table"


@pytest.mark.parametrize("num_classes, in_chans", [(1000, 3), (10, 1)], ids=["imagenet", "10cls-gray"])
@pytest.mark.parametrize("name", TIMM_NAMES)
def test_cost_matches_timm(name, num_classes, in_chans):
    """Analytic params equal timm's model exactly; MACs and activations equal torch's count on it."""
    spec = lab.named(name)
    report = lab.cost(spec, num_classes=num_classes, in_chans=in_chans)
    with torch.device("meta"):
        ref = timm.create_model(catalog_entries()[name].timm, pretrained=False, num_classes=num_classes,
                                in_chans=in_chans).eval()
    macs, acts = measured_cost(ref, in_chans, spec.res)
    assert report.params == n_params(ref)
    assert report.macs == pytest.approx(macs, rel=0.005)
    assert report.acts == acts


def test_reference_table_covers_named():
    if ROWS is None:
        pytest.skip(f"reference table not found at {REFERENCE_CSV}")
    assert CSV_CASES, "no named architecture appears in the reference table"


@pytest.mark.parametrize("name", CSV_CASES)
def test_cost_matches_reference_table(name):
    row = ROWS[name]
    spec = lab.named(name)
    report = lab.cost(spec, num_classes=catalog_entries()[name].classes)  # its published head (Kinetics-400: 400)
    timm_name = catalog_entries()[name].timm
    if timm_name:
        assert row["reference_impl"].split()[0] == timm_name
    assert int(row["resolution"]) == spec.res
    assert report.params == int(row["params_reference"])
    if row["gmacs_reference"]:
        assert report.gmacs == pytest.approx(float(row["gmacs_reference"]), rel=0.01)


# --- multipliers --------------------------------------------------------------------------


def test_resnet50_at_quarter_width():
    full, small = lab.named("resnet50"), lab.resolve("resnet50@32px,w=0.25")
    assert small.res in (28, 32)
    assert [st.depth for st in small.stages] == [st.depth for st in full.stages]
    # conv weights scale with width squared: the backbone (no classifier) is about 16x smaller
    backbone = lab.cost(full, num_classes=0).params / lab.cost(small, num_classes=0).params
    assert backbone == pytest.approx(16, rel=0.1)
    assert lab.cost(small).params < lab.cost(full).params / 10  # the 1000-way fc only shrinks 4x


def _nearest_multiple_of_8(target: float, width: int) -> bool:
    return width % 8 == 0 and width >= 8 and (abs(width - target) <= 4 or (target < 8 and width == 8))


@pytest.mark.parametrize("name", NAMES)
def test_quarter_width_variant(name):
    full, small = lab.named(name), lab.resolve(at_res(name, 32) + ",w=0.25")  # valid: no SpecError
    assert small.res in (28, 32)
    assert len(small.stages) == len(full.stages)
    for a, b in zip(full.stages, small.stages):
        assert b.depth == a.depth and b.stride == a.stride and b.block.kind == a.block.kind
        assert b.width % 8 == 0 and b.width <= a.width
        block = b.block
        if block.kind == "bottleneck" and (block.g != 1 or block.gw):
            mid = b.width / block.e  # grouped 3x3: the rounded width still splits into whole groups
            assert mid == int(mid)
            assert int(mid) % (block.gw or block.g) == 0
        else:
            assert _nearest_multiple_of_8(a.width * 0.25, b.width), (a.width, b.width)


@pytest.mark.parametrize("name", [n for n in NAMES if n.startswith("resnext")])
def test_resnext_quarter_width_keeps_its_groups(name):
    full, small = lab.named(name), lab.resolve(at_res(name, 32) + ",w=0.25")
    assert [st.block for st in small.stages] == [st.block for st in full.stages]  # g=32 kept
    assert lab.cost(small).params < lab.cost(full).params


@pytest.mark.parametrize("name", NAMES)
def test_half_depth_variant(name):
    full, half = lab.named(name), lab.resolve(at_res(name, 32) + ",d=0.5")
    assert half.res in (28, 32)
    assert [st.depth for st in half.stages] == [math.ceil(st.depth / 2) for st in full.stages]
    assert [(st.width, st.block, st.stride, st.down) for st in half.stages] == \
        [(st.width, st.block, st.stride, st.down) for st in full.stages]
    assert (half.stem, half.head) == (full.stem, full.head)


@pytest.mark.parametrize("name", NAMES)
def test_native_reference_is_the_named_point(name):
    spec = lab.named(name)
    assert lab.resolve(name) == spec
    assert lab.resolve(f"{name}@{spec.res}px") == spec
    assert lab.resolve(f"{name}@{spec.res}px,w=1,d=1") == spec
    assert lab.resolve(spec.text) == spec


def test_resolve_agrees_with_scale():
    spec = lab.named("resnext50_32x4d")
    assert lab.resolve("resnext50_32x4d@48px,w=0.5,d=0.5") == lab.scale(spec, width=0.5, depth=0.5, res=48)
    assert lab.resolve("resnext50_32x4d@48px,d=0.5,w=0.5") == lab.resolve("resnext50_32x4d@48px,w=0.5,d=0.5")


@pytest.mark.parametrize("ref", ["resnet5", "resnet50@32", "resnet50@32px,w=", "resnet50@32px,w=abc",
                                 "resnet50@32px,q=2", "resnet50@32px,w=0", "resnet50@32px,d=0", "resnet50@0px",
                                 "resnet50@32px,w=1000", "resnet50@32px,,w=0.5"])
def test_bad_references(ref):
    with pytest.raises(lab.SpecError):
        lab.resolve(ref)


def test_bad_multiplier_names_its_field():
    with pytest.raises(lab.SpecError) as info:
        lab.scale(lab.named("resnet50"), width=0)
    assert info.value.path == "w"
    with pytest.raises(lab.SpecError) as info:
        lab.scale(lab.named("resnet50"), depth=-1)
    assert info.value.path == "d"
    with pytest.raises(lab.SpecError) as info:
        lab.scale(lab.named("resnet50"), res=0)
    assert info.value.path == "res"


@pytest.mark.parametrize("ref, which", [("resnet50@32px,w=0.5,w=0.25", "w"), ("resnet50@32px,64px", "px"),
                                        ("vit_s16@32px,p=4,d=0.5,p=8", "p"), ("resnet50@32px,d=0.5,d=0.5", "d")])
def test_a_repeated_multiplier_is_an_error(ref, which):
    with pytest.raises(lab.SpecError, match=f"multiplier '{which}' given twice"):
        lab.resolve(ref)
