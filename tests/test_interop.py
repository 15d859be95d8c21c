"""timm interop: timm's own models (random weights, no download) against the grammar-built ones.

For every named architecture timm implements, timm's state_dict loads into the lab's model, the
two compute the same logits, and export gives timm's state_dict back. timm is the independent
reference: its modules, its forward.
"""

from __future__ import annotations

import pytest
import timm
import torch

import lab
from lab.catalog import entries
from lab.interop.timm import (DIALECTS, InteropError, detect_dialect, dialect_of, export_timm, init_weights,
                              key_map, load_timm)
from lab.train.checkpoint import read_weights
from lab.errors import TrainError

TIMM_NAMED = [name for name, e in entries().items() if e.timm]
# the smallest of each timm layout, checked in the fast suite; the rest under -m slow
FAST = {"resnet18", "bit_r50x1", "regnetx_4gf", "regnety_4gf", "densenet121", "efficientnet_b0", "convnext_t",
        "vit_ti16", "deit_ti_distilled", "mixer_s16", "swin_t", "vit_r50_b16_384"}


def check_resolution(name: str) -> int | None:
    """A reduced input size where the architecture allows: convnets at 64 px, isotropic token
    models at a 4 x 4 patch grid, the R50 hybrid at an 8 x 8 grid. Swin keeps its own (a window
    must divide every stage's grid for timm's and the lab's padding to agree)."""
    e = entries()[name]
    spec = lab.named(name)
    if e.family in ("swin",):
        return None
    if e.family == "hybrid":
        return 128
    patch = next((el.p for el in spec.stem if el.kind == "patch"), None)
    return 4 * patch if patch else 64


def randomize_(model: torch.nn.Module, seed: int = 1) -> None:
    """Perturb every floating tensor that timm initializes to a constant (zero biases, unit norm
    scales, zero-initialized last norms and layer scales, running statistics): a constant would let
    two tensors of equal shape trade places unnoticed."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if value.is_floating_point() and value.numel() > 1 and bool((value == value.flatten()[0]).all()):
                value.add_(0.1 * torch.randn(value.shape, generator=gen))
                if key.endswith("running_var"):
                    value.abs_()


def pair(name: str):
    """(timm model with random weights, eval; lab model of the same point, eval; input)."""
    e = entries()[name]
    res = check_resolution(name)
    spec = lab.named(name) if res is None else lab.scale(lab.named(name), res=res)
    kwargs = {"img_size": res} if res is not None and e.family in ("vit", "deit", "mixer", "hybrid") else {}
    reference = timm.create_model(e.timm, pretrained=False, num_classes=1000, **kwargs).eval()
    randomize_(reference)
    ours = lab.build(spec).eval()
    x = torch.randn(2, 3, spec.res, spec.res, generator=torch.Generator().manual_seed(2))
    return reference, ours, x


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in TIMM_NAMED])
def test_timm_weights_give_timm_logits_and_export_round_trips(name):
    reference, ours, x = pair(name)
    dialect = dialect_of(entries()[name].timm)
    state = reference.state_dict()
    load_timm(ours, state, dialect)
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= 1e-4
    assert float(expected.std()) > 1e-2  # the logits carry signal: a mismatch would show
    exported = export_timm(ours, dialect)
    assert sorted(exported) == sorted(state)
    for key, value in state.items():
        assert exported[key].shape == value.shape and torch.equal(exported[key], value), key


def test_every_named_timm_architecture_has_a_layout():
    assert len(TIMM_NAMED) >= 50
    layouts = {dialect_of(entries()[n].timm) for n in TIMM_NAMED}
    assert layouts == set(DIALECTS)
    assert FAST <= set(TIMM_NAMED)
    assert {dialect_of(entries()[n].timm) for n in FAST} == set(DIALECTS)


def test_a_weight_in_the_wrong_place_changes_the_logits():
    """The logits test can fail: two same-shaped norms traded between places give other logits."""
    reference, ours, x = pair("resnet18")
    state = dict(reference.state_dict())
    state["layer3.1.bn1.weight"], state["layer3.1.bn2.weight"] = state["layer3.1.bn2.weight"], state["layer3.1.bn1.weight"]
    load_timm(ours, state, "resnet")
    with torch.no_grad():
        assert float((ours(x) - reference(x)).abs().max()) > 1e-2


def _message(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


def test_another_architectures_checkpoint_is_refused_naming_the_first_mismatches():
    state = timm.create_model("resnet50", pretrained=False).state_dict()
    model = lab.build(lab.named("resnet18"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InteropError) as e:
        load_timm(model, state, "resnet")
    text = _message(e)
    assert "unexpected: layer1.0.conv3.weight" in text
    assert "wrong shape (checkpoint vs model): layer1.0.conv1.weight (64, 64, 1, 1) vs (64, 64, 3, 3)" in text
    assert "more" in text
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing half-loaded


def test_missing_keys_and_wrong_shapes_are_listed():
    model = lab.build(lab.named("vit_ti16"))
    state = export_timm(model, "vit")
    del state["blocks.3.attn.qkv.weight"]
    state["pos_embed"] = torch.zeros(1, 5, 192)
    with pytest.raises(InteropError) as e:
        load_timm(model, state, "vit")
    text = _message(e)
    assert "1 missing: blocks.3.attn.qkv.weight" in text
    assert "1 wrong shape (checkpoint vs model): pos_embed (1, 5, 192) vs (1, 197, 192)" in text


def test_a_point_outside_the_layout_is_refused():
    with pytest.raises(InteropError, match="no counterpart of the nat element"):
        key_map(lab.build(lab.parse("@32 | patch(p=4,c=32),ln | nat(k=3) 2x32 | ln,gap,fc")), "swin")
    with pytest.raises(InteropError, match=r"timm's resnet models have no patch in their stage transitions \(at stages.1.down.0\)"):
        key_map(lab.build(lab.parse("@32 | conv(c=16,k=3),bn | basic 1x16 | mhsa(h=2) 1x16/(patch(p=4)) | ln,gap,fc")), "resnet")
    with pytest.raises(InteropError, match="one conv per stem"):
        key_map(lab.build(lab.parse("@32 | conv(c=16,k=3),conv(c=16,k=3),bn | basic 1x16 | gap,fc")), "resnet")
    with pytest.raises(InteropError, match="unknown timm layout 'foo'"):
        key_map(lab.build(lab.named("resnet18")), "foo")
    with pytest.raises(InteropError, match="timm has no model"):
        dialect_of("no_such_model")


def test_scaled_points_keep_the_layout():
    """A scaled variant of a named point maps to timm's keys of the same family (a timm model of
    those widths and depths loads into it)."""
    model = lab.build(lab.resolve("resnet50@32px,w=0.25,d=0.5"), num_classes=10)
    names = {theirs for theirs, _, _ in key_map(model, "resnet").values()}
    assert "layer4.0.downsample.0.weight" in names and "fc.weight" in names
    reference = timm.create_model("resnet50", pretrained=False, layers=[2, 2, 3, 2], base_width=16, stem_width=16,
                                  num_classes=10)
    assert detect_dialect(model, reference.state_dict()) == "resnet"


def test_pretrained_start_adapts_head_channels_and_grid(tmp_path):
    """--init semantics: a 1000-class, RGB, 224 px ViT checkpoint starts a 10-class, grey, 64 px
    model: the head keeps its fresh initialization, the patch filters are summed over RGB, the
    position grid is resampled (14x14 -> 4x4); the body's weights arrive unchanged."""
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    randomize_(source)
    src = source.state_dict()
    path = tmp_path / "vit.pth"
    torch.save(src, path)
    model = lab.build(lab.resolve("vit_ti16@64px"), num_classes=10, in_chans=1)
    head_before = model.head[-1].weight.clone()
    summary = init_weights(model, str(path))
    assert "(vit layout)" in summary and "classifier re-initialized (head.weight (1000, 192) -> (10, 192)" in summary
    own = model.state_dict()
    assert torch.equal(own["stages.0.blocks.5.mixer.qkv.weight"], src["blocks.5.attn.qkv.weight"])
    assert torch.equal(model.head[-1].weight, head_before)
    assert torch.allclose(own["stem.0.proj.weight"], src["patch_embed.proj.weight"].sum(1, keepdim=True))
    assert own["stem.2.pos"].shape == (1, 17, 192) and torch.equal(own["stem.2.pos"][:, 0], src["pos_embed"][:, 0])
    # filters of another patch size cannot be adapted: the error names them
    with pytest.raises(InteropError, match=r"patch_embed.proj.weight \(192, 3, 16, 16\) vs \(192, 1, 4, 4\)"):
        init_weights(lab.build(lab.resolve("vit_ti16@32px,p=4"), num_classes=10, in_chans=1), str(path))


def test_lab_checkpoints_and_wrapped_state_dicts_are_read(tmp_path):
    model = lab.build(lab.named("resnet18"), num_classes=10)
    torch.save({"state_dict": export_timm(model, "resnet")}, tmp_path / "wrapped.pth")
    state, meta = read_weights(tmp_path / "wrapped.pth")
    assert meta is None and "fc.weight" in state
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TrainError, match="not readable"):
        read_weights(tmp_path / "junk.pt")
    with pytest.raises(TrainError, match="does not exist"):
        read_weights(tmp_path / "absent.pt")


def test_timm_download_offline_is_a_clear_error(monkeypatch):
    """Tested up to the download: with the hub unreachable (as on the lab's CI machine, or forced
    here) and nothing cached, one clear line, without a minute of retries."""
    import lab.interop.timm as interop

    monkeypatch.setattr(interop, "_reachable", lambda host, timeout=5.0: False)
    model = lab.build(lab.named("resnet18"))
    with pytest.raises(InteropError, match="could not fetch timm's pretrained resnet18 .huggingface.co cannot be "
                                           "reached and no copy is cached.; pass a local checkpoint"):
        init_weights(model, "timm:resnet18")
    with pytest.raises(InteropError, match="timm has no model 'resnet18x'"):
        init_weights(model, "timm:resnet18x")


@pytest.mark.parametrize("size", [7, 8, 9, 16])
@pytest.mark.parametrize("k, s", [(3, 2), (7, 2), (3, 1), (1, 2)])
def test_same_padding_matches_timm(size, k, s):
    """conv(same=1) and maxpool(same=1) against timm's Conv2dSame / StdConv2dSame / MaxPool2dSame,
    at odd and even sizes; the analytic output size is ceil(in / s)."""
    from timm.layers import Conv2dSame, StdConv2dSame
    from timm.layers.pool2d_same import MaxPool2dSame

    from lab.layers import MaxPool2dSame as OurPool, make_conv

    x = torch.randn(2, 4, size, size)
    for ws, reference in ((False, Conv2dSame(4, 6, k, stride=s, bias=False)),
                          (True, StdConv2dSame(4, 6, k, stride=s, eps=1e-8))):
        ours = make_conv(4, 6, k, s, ws=ws, same=True)
        ours.load_state_dict(reference.state_dict())
        with torch.no_grad():
            assert torch.allclose(ours(x), reference(x), rtol=1e-5, atol=1e-5)
    if k > 1:
        assert torch.equal(OurPool(k, s)(x), MaxPool2dSame(k, s)(x))
    spec = lab.parse(f"@{size} | conv(c=6,k={k},s={s},same=1),maxpool(same=1) | basic 1x6 | gap,fc")
    (stem,) = [r for r in lab.cost(spec).rows if r.name == "stem"]
    pooled = -(-size // s)
    assert (stem.h, stem.w) == (-(-pooled // 2), -(-pooled // 2))


def test_a_checkpoint_without_classifier_starts_a_fresh_head():
    """timm's feature extractors (vit_huge_patch14_224's default weights) have no head: a pretrained
    start keeps the model's fresh classifier; a strict load names the head as missing."""
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0).state_dict()
    model = lab.build(lab.named("vit_ti16"), num_classes=10)
    report = load_timm(model, source, "vit", adapt=True)
    assert report.reinitialized == ["head.weight", "head.bias"] and report.loaded == len(source)
    with pytest.raises(InteropError, match="2 missing: head.weight, head.bias"):
        load_timm(model, source, "vit")
