"""Video models in the grammar: clips through per-frame and frame-mixing elements against
independent references (each frame through the image model, the clip's frames stacked into one
image, torch's conv3d), Video Swin's counts, the text form, errors, and a tiny training run and
study on moving-digits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lab
from lab.cli.main import main
from lab.layers import DropPath
from support import catalog_entries, reference_rows


def _same_weights(video: torch.nn.Module, image: torch.nn.Module) -> None:
    """Copy `video`'s weights into `image` (same keys and shapes: the same grammar point)."""
    image.load_state_dict(video.state_dict())


@pytest.mark.parametrize("body", [
    "conv(c=8,k=3,s=2),bn,relu,maxpool | basic 1x8, 1x16/2 | bottleneck(e=2) 1x32/2",   # per-frame convs
    "patch(p=2,c=16) | nat(k=3,h=2) 2x16, 1x32/merge",   # per-frame tokens: NA and patch merging
    "conv(c=8,s=2),gn(g=4) | convnext(k=3) 1x8 | swin(w=3,h=2) 2x16/patch(p=1)",   # 2D windows (wt = 1)
])
def test_per_frame_elements_see_each_frame_as_an_image(body):
    """A clip through elements that work on each frame gives, frame by frame, what the image model
    with the same weights gives on that frame (eval mode: batch norm statistics are fixed)."""
    torch.manual_seed(0)
    video = lab.build(lab.parse(f"@3x16 | {body} | gap,fc"), num_classes=5).eval()
    image = lab.build(lab.parse(f"@16 | {body} | gap,fc"), num_classes=5).eval()
    _same_weights(video, image)
    clip = torch.randn(2, 3, 3, 16, 16)
    with torch.no_grad():
        feats = video.forward_features(clip)
        per_frame = torch.stack([image.forward_features(clip[:, :, t]) for t in range(3)], 1)  # (B, F, ...)
        if feats.dim() == 3:  # tokens: (B, F*N, C)
            torch.testing.assert_close(feats, per_frame.flatten(1, 2), atol=1e-5, rtol=1e-5)
        else:  # maps travel with the frames folded into the batch: (B*F, C, H, W)
            torch.testing.assert_close(feats, per_frame.flatten(0, 1), atol=1e-5, rtol=1e-5)
        # gap pools the frames too: the logits are the classifier of the clip's mean feature
        pooled = per_frame.mean(1).mean(1) if feats.dim() == 3 else per_frame.mean((1, 3, 4))
        torch.testing.assert_close(video(clip), image.head[-1](pooled), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stages", ["mhsa(h=2) 2x16", "mixer(tok=1) 2x16", "mhsa(h=2) 1x16 | mixer 1x16"])
def test_joint_mixers_attend_over_all_frames(stages):
    """Global attention and the token-mixing MLP span the tokens of every frame, in (frame, row,
    column) order: a clip of 4 frames of 2x2 patches gives what the image model with the same
    weights gives on a 4x4-patch image whose row f holds frame f's patches in row-major order."""
    torch.manual_seed(0)
    video = lab.build(lab.parse(f"@4x8 | patch(p=4,c=16),pos | {stages} | ln,gap,fc"), num_classes=3).eval()
    image = lab.build(lab.parse(f"@16 | patch(p=4,c=16),pos | {stages} | ln,gap,fc"), num_classes=3).eval()
    _same_weights(video, image)
    clip = torch.randn(2, 3, 4, 8, 8)
    tiled = torch.zeros(2, 3, 16, 16)
    for f in range(4):
        for h in range(2):
            for w in range(2):
                c = 2 * h + w
                tiled[:, :, 4 * f:4 * f + 4, 4 * c:4 * c + 4] = clip[:, :, f, 4 * h:4 * h + 4, 4 * w:4 * w + 4]
    with torch.no_grad():
        torch.testing.assert_close(video(clip), image(tiled), atol=1e-5, rtol=1e-5)


def test_3d_conv_is_torch_conv3d():
    """conv(kt=3,st=2) on a clip is torch's conv3d on (B, C, F, H, W), frames folded back after."""
    torch.manual_seed(0)
    spec = lab.parse("@6x12 | conv(c=4,k=3,s=2,kt=3,st=2) | basic(kt=3) 1x4 | gap,fc")
    assert [r.frames for r in lab.cost(spec).rows] == [3, 3, 1]
    net = lab.build(spec, num_classes=2, in_chans=2).eval()
    clip = torch.randn(2, 2, 6, 12, 12)
    conv = net.stem[0]
    want = F.conv3d(clip, conv.weight, None, stride=(2, 2, 2), padding=(1, 1, 1))  # (B, 4, 3, 6, 6)
    with torch.no_grad():
        got = net.stem(clip.transpose(1, 2).reshape(12, 2, 12, 12))
    torch.testing.assert_close(got, want.transpose(1, 2).reshape(6, 4, 6, 6))
    # the inflated basic block's convs are 3 x 3 x 3 over the 3 frames, padded in time
    assert net.stages[0].blocks[0].branch[0].weight.shape == (4, 4, 3, 3, 3)


@pytest.mark.parametrize("text", ["@4x8 | conv(c=8) | basic 6x8 | gap,fc", "@4x8 | conv(c=8) | basic(kt=3) 6x8 | gap,fc",
                                  "@4x8 | patch(p=2,c=8) | nat(k=3,h=2) 6x8 | gap,fc"])
def test_stochastic_depth_drops_whole_clips(text):
    """In a stage whose blocks see a clip's frames in the batch (maps; per-frame token blocks), a
    dropped residual branch is dropped for all the frames of its clip."""
    net = lab.build(lab.parse(text), drop_path=0.5).train()
    drops = [m for m in net.modules() if isinstance(m, DropPath)]
    assert drops and all(m.frames == 4 for m in drops)
    x = torch.ones(64 * 4, 3, 2, 2)
    torch.manual_seed(1)
    kept = drops[-1](x)[:, 0, 0, 0].view(64, 4)
    assert ((kept == 0).all(1) | (kept == 2).all(1)).all() and 0 < (kept[:, 0] == 0).sum() < 64


def test_stochastic_depth_of_joint_blocks_sees_clips():
    """Blocks that mix frames get (B, F*H*W, C) tokens: their drop path draws once per clip as is."""
    net = lab.build(lab.parse("@4x8 | patch(p=2,c=8) | swin(h=2,w=2,wt=2) 2x8 | gap,fc"), drop_path=0.5)
    assert all(m.frames == 1 for m in net.modules() if isinstance(m, DropPath))


def test_video_swin_t_counts_match_the_reference():
    """Video Swin-T on 32 x 224 x 224 clips with a Kinetics-400 head: the paper's configuration."""
    spec = lab.named("video_swin_t")
    assert spec.frames == 32 and spec.res == 224 and catalog_entries()["video_swin_t"].classes == 400
    report = lab.cost(spec, num_classes=400)
    rows = reference_rows()
    if rows is None:
        pytest.skip("reference table not found")
    assert report.params == int(rows["video_swin_t"]["params_reference"]) == 28158070
    assert report.gmacs == pytest.approx(float(rows["video_swin_t"]["gmacs_reference"]), rel=0.01)
    # windows 8 x 7 x 7 over a 16 x 14 x 14 grid (32 frames at 56 px), a (2*8-1)(2*7-1)^2-entry bias per head
    attn = lab.build(lab.resolve("video_swin_t@32x56px"), num_classes=400).stages[0].blocks[1].mixer
    assert attn.window == (8, 7, 7) and attn.shift == (4, 3, 3) and attn.grid == (16, 14, 14)
    assert attn.relative_position_bias_table.shape == (15 * 13 * 13, 3)


def test_video_text_and_multipliers():
    spec = lab.resolve("video_swin_t@8x32px,w=0.5")
    assert (spec.frames, spec.res) == (8, 32) and spec.text.startswith("@8x32 | patch(p=4,c=48,pt=2)")
    assert lab.parse(spec.text) == spec and lab.Spec.from_dict(spec.to_dict()) == spec
    assert spec.input_shape(1) == (1, 8, 32, 32) and lab.named("resnet18").input_shape() == (3, 224, 224)
    assert lab.parse("@1x32 | conv(c=8) | basic 1x8 | gap,fc").text == "@32 | conv(c=8) | basic 1x8 | gap,fc"


@pytest.mark.parametrize("text, message", [
    ("@0x32 | conv(c=8) | basic 1x8 | gap,fc", "col 2 (frames): expected 1..4096"),
    ("@32 | conv(c=8,kt=3) | basic 1x8 | gap,fc", "needs a clip"),
    ("@4x32 | conv(c=8,kt=3,ws=1) | basic 1x8 | gap,fc", "ws=1 is for 2D convs"),
    ("@32 | conv(c=8) | basic(kt=3) 1x8 | gap,fc", "needs a clip"),
    ("@4x32 | conv(c=8) | basic(kt=2) 1x8 | gap,fc", "must be odd"),
    ("@3x32 | patch(p=4,c=16,pt=2) | mhsa 1x16 | gap,fc", "do not divide the 3 frame(s)"),
    ("@4x32 | patch(p=4,c=16),cls | nat 1x16 | ln,token,fc", "works on each frame alone"),
    ("@4x32 | conv(c=8) | basic 1x8 | avgpool(k=32,s=32),fc", "in each of 4 frames"),
])
def test_bad_video_points_are_one_line_errors(text, message):
    with pytest.raises(lab.SpecError) as e:
        lab.parse(text)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_image_models_and_clips_do_not_mix(tmp_path, capsys):
    with pytest.raises(lab.SpecError, match="image model"):
        lab.resolve("resnet18@8x32px")
    rc = main(["train", "resnet18@32px,w=0.25", "--dataset", "moving-digits", "--epochs", "1", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "image model" in err and err.count("\n") == 1


def test_train_a_video_point_on_moving_digits(tmp_path):
    """`lab train` end to end on clips: a bare video name adopts the dataset's 16 frames at 32 px;
    @8x32px samples 8 of them."""
    from lab.train.record import read_records
    from lab.train.run import train

    result = train("video_swin_t@8x32px,w=0.25,d=0.5", "moving-digits", epochs=1, fraction=0.05, batch_size=16,
                   out=tmp_path)
    row = result.record
    assert row["state"] == "complete" and row["frames"] == 8 and row["res"] == 32 and row["n_train"] == 200
    assert 0 <= row["test_top1"] <= 1 and row["macs"] == lab.cost(lab.parse(row["text"]), 10, 1).macs
    assert read_records(tmp_path / "runs.parquet").column("frames").to_pylist() == [8]
    # its checkpoint's frozen features probe clips; images are refused in one line
    from lab.errors import DataError
    from lab.train.probe import probe_checkpoint

    probe = probe_checkpoint(result.checkpoint, "moving-digits", shots=(2,), seeds=(0,))
    assert 0 <= probe["shots"][2]["mean"] <= 1 and probe["features"] == result.model.num_features
    with pytest.raises(DataError, match="mnist5k holds images, but the checkpoint is a video model"):
        probe_checkpoint(result.checkpoint, "mnist5k", shots=(1,), seeds=(0,))
    bare = train("@16x32 | patch(p=4,c=16,pt=2) | swin(h=2,w=4,wt=4) 1x16 | ln,gap,fc", "moving-digits",
                 epochs=1, fraction=0.02, out=None)
    assert bare.record["frames"] == 16


def test_a_tiny_video_study_end_to_end(tmp_path, local_ray):
    from lab.study.config import StudyConfig
    from lab.study.runner import create
    from lab.study.store import StudyStore

    config = StudyConfig(name="video", space="video", dataset="moving-digits", trials=2, fraction=0.03, epochs=1,
                         batch_size=16, concurrency=2, seed=0)
    folder = create(config, root=tmp_path, verbose=0)
    rows = [r for r in StudyStore(folder).trials().to_pylist() if r["state"] != "rejected"]
    assert len(rows) == 2 and all(r["state"] == "complete" for r in rows), rows
    assert all(r["frames"] == 8 and r["text"].startswith("@8x32") and 0 <= r["val_top1"] <= 1 for r in rows)


def test_a_video_space_refuses_an_image_dataset():
    from lab.study.space import SpaceError, load_space

    assert load_space("video").check_feasible(tries=30, frames=16) > 0.5
    with pytest.raises(SpaceError, match="input mismatch: a video model, but the dataset holds images"):
        load_space("video").check_feasible(tries=30, frames=1)
    with pytest.raises(SpaceError, match="an image model, but the dataset holds clips"):
        load_space("conv").check_feasible(tries=30, frames=16)


def test_an_image_swin_inflates_into_a_video_swin():
    """Video Swin starts from ImageNet Swin weights: patches inflated to tubelets (repeated over time,
    divided by pt) and the bias tables repeated over the frame offsets. On a clip of identical
    frames the inflated model gives timm's image Swin's logits on that frame, exactly: each key is
    repeated over the window's frames with the same bias, which softmax cannot tell apart."""
    import timm
    from lab.interop.timm import load_timm

    torch.manual_seed(0)
    ref = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=56, embed_dim=24,
                            depths=(2, 2), num_heads=(1, 2), num_classes=7).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "relative_position_bias_table" in name or "norm" in name:
                p.normal_()  # large enough to matter (timm starts them at 0.02 std / ones)
    spec = lab.parse("@8x56 | patch(p=4,c=24,pt=2),ln(eps=1e-05) | swin(hd=24,wt=2) 2x24, 2x48/merge "
                     "| ln(eps=1e-05),gap,fc")
    video = lab.build(spec, num_classes=7).eval()
    attn = video.stages[0].blocks[1].mixer
    assert attn.window == (2, 7, 7) and attn.shift == (1, 3, 3)   # frames shift too: the masks are 3D
    report = load_timm(video, ref.state_dict(), "swin", adapt=True)
    assert len(report.adapted) == 1 + 4 and not report.reinitialized   # the patch filters and 4 bias tables
    image = torch.randn(2, 3, 56, 56)
    clip = image.unsqueeze(2).expand(-1, -1, 8, -1, -1)
    with torch.no_grad():
        torch.testing.assert_close(video(clip), ref(image), atol=2e-5, rtol=1e-5)
        # and on a clip that moves, the frames matter
        assert not torch.allclose(video(torch.randn(2, 3, 8, 56, 56)), video(clip), atol=1e-3)
    # strict loading without adaptation names the misfits
    from lab.interop.timm import InteropError
    with pytest.raises(InteropError, match=r"patch_embed.proj.weight \(24, 3, 4, 4\) vs \(24, 3, 2, 4, 4\)"):
        load_timm(lab.build(spec, num_classes=7), ref.state_dict(), "swin")


def test_2d_filters_inflate_to_3d_convs():
    """I3D inflation: a 3D ResNet started from a 2D one gives the 2D one's features on a clip of
    identical frames, away from the zero-padded first and last frames."""
    from lab.interop.timm import export_timm, load_timm

    torch.manual_seed(0)
    flat = lab.build(lab.parse("@16 | conv(c=8,k=3,s=2),bn,relu | basic 2x8 | gap,fc"), num_classes=3).eval()
    with torch.no_grad():
        for m in flat.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.normal_(), m.running_mean.normal_()  # zero-initialized last norms would hide the convs
    deep = lab.build(lab.parse("@11x16 | conv(c=8,k=3,s=2,kt=3),bn,relu | basic(kt=3) 2x8 | gap,fc"), num_classes=3)
    report = load_timm(deep.eval(), export_timm(flat, "resnet"), "resnet", adapt=True)
    assert len(report.adapted) == 1 + 4   # the stem conv and both convs of both blocks
    image = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        feats = deep.forward_features(image.unsqueeze(2).expand(-1, -1, 11, -1, -1)).view(2, 11, 8, 8, 8)
        # five 3-tap convs in a row: the middle frame is the only one no zero-padded frame reaches
        torch.testing.assert_close(feats[:, 5], flat.forward_features(image), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(feats[:, 0], flat.forward_features(image), atol=1e-3)
