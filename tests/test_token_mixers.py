"""Token mixers against naive references: window attention (shifted, padded, shrunk) against
explicit masked full attention over the whole map, global attention against an explicit softmax,
and the token ops (class/distillation tokens, DeiT's two heads)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import lab
from lab.kernels import window as win
from lab.kinds import REGISTRY, Shape

torch.set_default_dtype(torch.float32)


def naive_window_attention(m, x: torch.Tensor) -> torch.Tensor:
    """Full attention over the zero-padded f x h x w grid, every pair of tokens masked by the
    definition: two tokens attend iff, after rolling the padded grid by -shift, they fall in the
    same window and no axis separates a token the roll wrapped around from one it did not. The
    bias is looked up from their offset inside the window (frames most significant). Output at
    the original positions."""
    b, n, c = x.shape
    heads, hd = m.heads, c // m.heads
    grid, padded, window, shift = m.grid, m.padded, m.window, m.shift
    full = torch.zeros(b, *padded, c, dtype=x.dtype)
    full[:, :grid[0], :grid[1], :grid[2]] = x.view(b, *grid, c)
    n_pad = math.prod(padded)
    q, k, v = m.qkv(full.view(b, n_pad, c)).view(b, -1, 3, heads, hd).permute(2, 0, 3, 1, 4)
    scores = (q * hd ** -0.5) @ k.transpose(-1, -2)
    table = m.relative_position_bias_table
    pos = list(itertools.product(*(range(p) for p in padded)))
    rolled = [tuple((i - s) % p for i, s, p in zip(ps, shift, padded)) for ps in pos]
    allowed = [[False] * n_pad for _ in range(n_pad)]
    entry = [[0] * n_pad for _ in range(n_pad)]   # the table row of each allowed pair (plain lists: fast to fill)
    for a, (pa, ra) in enumerate(zip(pos, rolled)):
        for bb, (pb, rb) in enumerate(zip(pos, rolled)):
            same_window = all(i // M == j // M for i, j, M in zip(ra, rb, window))
            same_side = all((i < s) == (j < s) for i, j, s in zip(pa, pb, shift))
            if same_window and same_side:
                allowed[a][bb] = True
                (dt, dy, dx), (mt, mh, mw) = ((i % M) - (j % M) for i, j, M in zip(ra, rb, window)), window
                entry[a][bb] = ((dt + mt - 1) * (2 * mh - 1) + dy + mh - 1) * (2 * mw - 1) + dx + mw - 1
    mask = torch.tensor(allowed)
    bias = table[torch.tensor(entry)].permute(2, 0, 1) * mask   # (heads, N, N); 0 where not allowed
    scores = (scores + bias).masked_fill(~mask, float("-inf"))
    out = scores.softmax(-1) @ v  # (B, heads, N, hd)
    out = m.proj(out.transpose(1, 2).reshape(b, n_pad, c)).view(b, *padded, c)
    return out[:, :grid[0], :grid[1], :grid[2]].reshape(b, n, c)


WINDOW_CASES = [  # (frames, h, w, temporal window, window, unit index): odd units shift
    (1, 8, 8, 1, 4, 0), (1, 8, 8, 1, 4, 1),  # plain and shifted
    (1, 12, 8, 1, 4, 1),  # non-square map
    (1, 8, 8, 1, 7, 1),  # padded to 14 x 14, shifted by 3
    (1, 10, 6, 1, 4, 1),  # padded along one axis
    (1, 7, 7, 1, 7, 1),  # map == window: the shift is dropped
    (1, 3, 10, 1, 7, 1),  # window shrinks to 3 along y (no shift there), shifts along x
    (1, 5, 5, 1, 7, 0),  # window shrinks to the map: global attention
    # clips: 3D windows (Video Swin)
    (4, 6, 6, 2, 3, 0), (4, 6, 6, 2, 3, 1),  # plain and shifted along all three axes
    (5, 6, 7, 2, 4, 1),  # padded along every axis, shifted
    (3, 4, 5, 8, 7, 1),  # windows clamp to the grid: one window, no shift
    (6, 5, 9, 4, 4, 1),  # padded along every axis, shifted
    (4, 6, 6, 1, 3, 1),  # wt = 1: each frame's own (shifted) windows
]


@pytest.mark.parametrize("f, h, w, wt, window, index", WINDOW_CASES)
def test_window_attention_matches_masked_full_attention(f, h, w, wt, window, index):
    torch.manual_seed(0)
    dim = 12
    kind = REGISTRY["swin"](w=window, wt=wt, h=3)
    m = kind.build_mixer(Shape(dim, h, w, 0, f), dim, index)
    with torch.no_grad():
        m.relative_position_bias_table.normal_()  # a bias large enough to matter
    x = torch.randn(2, f * h * w, dim)
    out = m(x)  # with autograd on (the CPU training path) ...
    ref = naive_window_attention(m, x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # ... and off (scaled_dot_product_attention)
        torch.testing.assert_close(m(x), ref, atol=1e-5, rtol=1e-5)
    # gradients agree as well
    g = torch.randn_like(out)
    got = torch.autograd.grad((out * g).sum(), [m.qkv.weight, m.relative_position_bias_table])
    want = torch.autograd.grad((naive_window_attention(m, x) * g).sum(), [m.qkv.weight, m.relative_position_bias_table])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_window_shrink_and_shift_rule():
    """As Swin and Video Swin: a grid not larger than the window along an axis shrinks the window
    and drops the shift along it; the bias table has (2P-1)(2wh-1)(2ww-1) entries per head."""
    swin = REGISTRY["swin"](w=7, h=2)
    cases = {(1, 14, 14): ((1, 7, 7), (0, 3, 3)), (1, 7, 7): ((1, 7, 7), (0, 0, 0)),
             (1, 4, 9): ((1, 4, 7), (0, 0, 3)), (1, 1, 1): ((1, 1, 1), (0, 0, 0))}
    video = REGISTRY["swin"](w=7, wt=8, h=2)
    video_cases = {(16, 56, 56): ((8, 7, 7), (4, 3, 3)), (8, 14, 14): ((8, 7, 7), (0, 3, 3)),
                   (4, 7, 9): ((4, 7, 7), (0, 0, 3)), (9, 3, 3): ((8, 3, 3), (4, 0, 0))}
    for kind, table in ((swin, cases), (video, video_cases)):
        for (f, h, w), (window, shift) in table.items():
            s = Shape(8, h, w, 0, f)
            assert kind.window(s) == window and kind.shift_of(s, 1) == shift and kind.shift_of(s, 0) == (0, 0, 0)
            m = kind.build_mixer(s, 8, 1)
            assert m.relative_position_bias_table.shape == (math.prod(2 * n - 1 for n in window), 2)
    assert REGISTRY["swin"](w=7, h=2, shift=False).shift_of(Shape(8, 14, 14), 1) == (0, 0, 0)


def test_swin_stage_alternates_shifts():
    spec = lab.parse("@56 | patch(p=4,c=32) | swin(h=2) 4x32 | ln,gap,fc")
    units = lab.build(spec).stages[0].blocks
    assert [u.mixer.shift for u in units] == [(0, 0, 0), (0, 3, 3), (0, 0, 0), (0, 3, 3)]
    video = lab.parse("@16x56 | patch(p=4,pt=2,c=32) | swin(h=2,wt=4) 2x32 | ln,gap,fc")
    assert [u.mixer.shift for u in lab.build(video).stages[0].blocks] == [(0, 0, 0), (2, 3, 3)]


@pytest.mark.parametrize("grid, window", [((1, 8, 8), (1, 4, 4)), ((1, 14, 21), (1, 7, 7)), ((1, 6, 4), (1, 3, 2)),
                                          ((4, 6, 6), (2, 3, 3)), ((8, 14, 7), (4, 7, 7))])
def test_shift_partition_reverse_unshift_is_exact(grid, window):
    x = torch.randn(2, *grid, 5)
    shift = tuple(m // 2 for m in window)
    rolled = torch.roll(x, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
    windows = win.partition(rolled, window)
    assert windows.shape == (2 * math.prod(g // m for g, m in zip(grid, window)), math.prod(window), 5)
    back = win.reverse(windows, window, grid)
    assert torch.equal(torch.roll(back, shifts=shift, dims=(1, 2, 3)), x)


def test_partition_windows_hold_neighbours():
    """A window's tokens are the block of the grid it covers, in row-major order."""
    x = torch.arange(4 * 6 * 6).view(1, 4, 6, 6, 1)
    windows = win.partition(x, (2, 3, 3))
    assert windows[1, :, 0].tolist() == x[0, 0:2, 0:3, 3:6].flatten().tolist()
    assert windows[4, :, 0].tolist() == x[0, 2:4, 0:3, 0:3].flatten().tolist()


def test_shift_mask_counts():
    """Each query of a shifted 8x8 map with 4x4 windows sees 16, 8 or 4 keys, as the regions say;
    of a shifted 4x4x4 clip with 2x2x2 windows, 8, 4, 2 or 1."""
    mask = win.shift_mask((1, 8, 8), (1, 4, 4), (0, 2, 2))
    visible = (mask == 0).sum(-1)
    assert sorted(set(visible.flatten().tolist())) == [4, 8, 16]
    assert (visible[0] == 16).all()  # the top-left window holds no wrapped token
    assert win.shift_mask((1, 8, 8), (1, 4, 4), (0, 0, 0)) is None
    visible = (win.shift_mask((4, 4, 4), (2, 2, 2), (1, 1, 1)) == 0).sum(-1)
    assert sorted(set(visible.flatten().tolist())) == [1, 2, 4, 8]
    assert (visible[0] == 8).all() and (visible[-1] == 1).all()


def test_relative_position_index_is_the_offset():
    idx = win.relative_position_index((1, 3, 4))
    assert torch.equal(idx, win.relative_position_index((3, 4)))  # a one-frame window: Swin's 2D index
    ys, xs = torch.meshgrid(torch.arange(3), torch.arange(4), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    for a in range(12):
        for b in range(12):
            assert idx[a, b] == (ys[a] - ys[b] + 2) * 7 + (xs[a] - xs[b] + 3)
    idx = win.relative_position_index((2, 2, 3))  # Video Swin: (2P-1)(2M-1)(2M-1) entries
    ts, ys, xs = (a.flatten() for a in torch.meshgrid(torch.arange(2), torch.arange(2), torch.arange(3), indexing="ij"))
    for a in range(12):
        for b in range(12):
            assert idx[a, b] == ((ts[a] - ts[b] + 1) * 3 + ys[a] - ys[b] + 1) * 5 + xs[a] - xs[b] + 2
    assert idx.max() == 3 * 3 * 5 - 1


def test_global_attention_matches_explicit_softmax():
    torch.manual_seed(0)
    spec = lab.parse("@16 | patch(p=4,c=24),cls,pos | mhsa(h=3) 1x24 | ln,token,fc")
    m = lab.build(spec).stages[0].blocks[0].mixer
    x = torch.randn(2, 17, 24)
    q, k, v = m.qkv(x).view(2, 17, 3, 3, 8).permute(2, 0, 3, 1, 4)
    attn = (q @ k.transpose(-1, -2) / math.sqrt(8)).softmax(-1)
    ref = m.proj((attn @ v).transpose(1, 2).reshape(2, 17, 24))
    torch.testing.assert_close(m(x), ref, atol=1e-5, rtol=1e-5)


def test_prefix_tokens_sit_in_front_in_order():
    spec = lab.parse("@16 | patch(p=4,c=8),cls,dist | mhsa(h=2) 1x8 | ln,distill")
    model = lab.build(spec, num_classes=5)
    patch, cls, dist = model.stem
    x = torch.randn(3, 3, 16, 16)
    tokens = dist(cls(patch(x)))
    assert tokens.shape == (3, 2 + 16, 8)
    assert torch.equal(tokens[:, 0], cls.token[0, 0].expand(3, -1))
    assert torch.equal(tokens[:, 1], dist.token[0, 0].expand(3, -1))
    assert torch.equal(tokens[:, 2:], patch(x))


def test_distilled_head_trains_two_logits_and_evaluates_their_average():
    torch.manual_seed(0)
    spec = lab.named("deit_ti_distilled")
    small = lab.resolve("deit_ti_distilled@32px,p=8,w=0.25")
    model = lab.build(small, num_classes=7)
    x = torch.randn(2, 3, 32, 32)
    model.train()
    logits, logits_dist = model(x)
    assert logits.shape == logits_dist.shape == (2, 7)
    model.eval()
    with torch.no_grad():
        tokens = model.head[0](model.forward_features(x))
        head = model.head[1]
        want = (head.head(tokens[:, 0]) + head.head_dist(tokens[:, 1])) / 2
        torch.testing.assert_close(model(x), want)
    assert spec.head[-1].kind == "distill"


def test_gap_on_tokens_leaves_prefix_tokens_out():
    spec = lab.parse("@16 | patch(p=4,c=8),cls | mhsa(h=2) 1x8 | gap,fc")
    model = lab.build(spec, num_classes=0).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        feats = model.forward_features(x)
        torch.testing.assert_close(model(x), feats[:, 1:].mean(1))


def test_patch_merging_gathers_2x2_neighbours():
    """The 4C features of an output token are its 2x2 block, in Swin's order: (0,0), (1,0), (0,1), (1,1)."""
    spec = lab.parse("@8 | patch(p=2,c=3) | swin(h=1) 1x3, 1x6/merge | ln,gap,fc")
    merge = lab.build(spec).stages[1].down[0]
    x = torch.arange(16 * 3, dtype=torch.float32).view(1, 16, 3)
    with torch.no_grad():
        merge.norm = torch.nn.Identity()
        merge.reduction = torch.nn.Identity()
        out = merge(x)
    grid = x.view(4, 4, 3)
    assert out.shape == (1, 4, 12)
    want = torch.cat([grid[0, 0], grid[1, 0], grid[0, 1], grid[1, 1]])
    assert torch.equal(out[0, 0], want)


def test_neighborhood_kernel_is_invisible_to_the_counter():
    """The cost tests add NA's attention MACs analytically: that is right only while torch's
    counter sees none of them (else they would count twice)."""
    from torch.utils.flop_counter import FlopCounterMode

    from lab.kernels.neighborhood import neighborhood_attention

    q = torch.empty(2, 2, 9, 9, 8, device="meta")
    with FlopCounterMode(display=False) as counter:
        neighborhood_attention(q, q, q, 3, 1, torch.empty(2, 5, 5, device="meta"), backend="portable")
    assert counter.get_total_flops() == 0


@pytest.mark.parametrize("h, w, kernel, dilation", [(3, 3, 7, 1), (2, 9, 5, 1), (4, 4, 3, 2), (9, 9, 7, 1)])
def test_nat_pads_small_maps_like_nat(h, w, kernel, dilation):
    """A map smaller than k*d is zero-padded (bottom/right) for the attention and cropped after,
    as NAT and NATTEN do: the result is neighbourhood attention on the padded map."""
    from lab.kernels.neighborhood import neighborhood_attention

    torch.manual_seed(0)
    dim = 8
    m = REGISTRY["nat"](k=kernel, d=dilation, h=2).build_mixer(Shape(dim, h, w), dim, 0)
    x = torch.randn(2, h * w, dim)
    hp, wp = max(h, kernel * dilation), max(w, kernel * dilation)
    grid = torch.zeros(2, hp, wp, dim)
    grid[:, :h, :w] = x.view(2, h, w, dim)
    q, k, v = m.qkv(grid).view(2, hp, wp, 3, 2, dim // 2).permute(3, 0, 4, 1, 2, 5)
    ref = neighborhood_attention(q, k, v, kernel, dilation, m.rpb).permute(0, 2, 3, 1, 4)[:, :h, :w]
    torch.testing.assert_close(m(x), m.proj(ref.reshape(2, h * w, dim)), atol=1e-5, rtol=1e-5)
