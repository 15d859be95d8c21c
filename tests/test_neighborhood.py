"""Neighbourhood attention (lab.kernels.neighborhood) against a naive reference written here.

The reference is full attention over all N = H*W tokens with an N x N mask built key by key in
plain Python from NATTEN's definition (clamped windows inside each dilation group), plus the
relative position bias looked up from the offsets, softmax over the allowed keys only.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from lab.kernels.neighborhood import neighborhood_attention

F64 = dict(dtype=torch.float64)


def window(i: int, length: int, kernel: int, dilation: int) -> list[int]:
    """The positions query i sees along one axis, straight from the definition."""
    group, ig = i % dilation, i // dilation
    group_len = (length - group + dilation - 1) // dilation
    start = min(max(ig - kernel // 2, 0), group_len - kernel)
    return [(start + j) * dilation + group for j in range(kernel)]


@pytest.mark.parametrize("kernel,dilation", [(1, 1), (3, 1), (5, 2), (7, 1), (3, 3)])
def test_reference_window_is_the_most_centred_run(kernel, dilation):
    # a second reading of the definition: among the runs of k consecutive same-group positions,
    # the one whose middle is nearest the query (clamping shifts border windows inward)
    for length in range(kernel * dilation, kernel * dilation + 2 * dilation + 3):
        for i in range(length):
            group = list(range(i % dilation, length, dilation))
            runs = [group[s:s + kernel] for s in range(len(group) - kernel + 1)]
            best = min(runs, key=lambda run: abs(run[kernel // 2] - i))
            assert window(i, length, kernel, dilation) == best, (length, i)


@functools.lru_cache(maxsize=None)
def reference_mask(height: int, width: int, kernel: int, dilation: int):
    """(N, N) allowed-key mask and (N, N) bias row / column indices (0 where not allowed)."""
    n = height * width
    mask = np.zeros((n, n), dtype=bool)
    rel_y = np.zeros((n, n), dtype=np.int64)
    rel_x = np.zeros((n, n), dtype=np.int64)
    for y in range(height):
        for x in range(width):
            query = y * width + x
            for ky in window(y, height, kernel, dilation):
                for kx in window(x, width, kernel, dilation):
                    key = ky * width + kx
                    mask[query, key] = True
                    rel_y[query, key] = kernel - 1 + ky // dilation - y // dilation
                    rel_x[query, key] = kernel - 1 + kx // dilation - x // dilation
    return torch.from_numpy(mask), torch.from_numpy(rel_y), torch.from_numpy(rel_x)


def naive(q, k, v, kernel, dilation=1, rpb=None, scale=None):
    batch, heads, height, width, dim = q.shape
    mask, rel_y, rel_x = reference_mask(height, width, kernel, dilation)
    scale = dim ** -0.5 if scale is None else scale
    scores = (q * scale).flatten(2, 3) @ k.flatten(2, 3).transpose(-1, -2)  # (B, h, N, N)
    if rpb is not None:
        scores = scores + rpb[:, rel_y, rel_x]
    weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    return (weights @ v.flatten(2, 3)).view(batch, heads, height, width, dim)


def inputs(batch, heads, height, width, dim, kernel, rpb=True, dtype=torch.float64):
    q, k, v = (torch.randn(batch, heads, height, width, dim, dtype=dtype) for _ in range(3))
    bias = torch.randn(heads, 2 * kernel - 1, 2 * kernel - 1, dtype=dtype) if rpb else None
    return q, k, v, bias


def grads(fn, q, k, v, rpb, grad_out):
    leaves = [t.detach().requires_grad_() for t in (q, k, v) + (() if rpb is None else (rpb,))]
    out = fn(*leaves[:3], leaves[3] if rpb is not None else None)
    return out, torch.autograd.grad(out, leaves, grad_out)


# (H, W, kernel, dilation, heads, rpb): the minimum map k*d (every query at a border), non-square
# maps, lengths that are not multiples of the dilation, kernel 1.
CASES = [
    (1, 1, 1, 1, 1, True),
    (4, 6, 1, 1, 2, False),
    (5, 7, 1, 2, 1, True),
    (3, 3, 3, 1, 1, True),
    (6, 6, 3, 2, 2, True),
    (9, 9, 3, 3, 3, False),
    (8, 11, 3, 1, 2, True),
    (11, 8, 3, 2, 3, True),
    (10, 13, 3, 3, 1, True),
    (5, 5, 5, 1, 2, True),
    (7, 9, 5, 1, 1, False),
    (11, 10, 5, 2, 2, True),
    (16, 17, 5, 3, 1, True),
    (7, 7, 7, 1, 3, True),
    (9, 12, 7, 1, 2, True),
    (15, 14, 7, 2, 1, True),
]


CPU_BACKENDS = ("portable", "dense")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("height,width,kernel,dilation,heads,rpb", CASES)
def test_forward_and_gradients_match_naive_float64(height, width, kernel, dilation, heads, rpb, backend):
    q, k, v, bias = inputs(2, heads, height, width, 4, kernel, rpb)
    grad_out = torch.randn_like(q)
    out, got = grads(lambda *a: neighborhood_attention(*a[:3], kernel, dilation, a[3], backend=backend),
                     q, k, v, bias, grad_out)
    ref, want = grads(lambda *a: naive(*a[:3], kernel, dilation, a[3]), q, k, v, bias, grad_out)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("height,width,kernel,dilation,heads,rpb",
                         [CASES[i] for i in (2, 4, 7, 11, 14, 15)])
def test_float32_matches_naive(height, width, kernel, dilation, heads, rpb, backend):
    q, k, v, bias = inputs(2, heads, height, width, 16, kernel, rpb, dtype=torch.float32)
    grad_out = torch.randn_like(q)
    out, got = grads(lambda *a: neighborhood_attention(*a[:3], kernel, dilation, a[3], scale=0.3, backend=backend),
                     q, k, v, bias, grad_out)
    ref, want = grads(lambda *a: naive(*a[:3], kernel, dilation, a[3], scale=0.3),
                      q, k, v, bias, grad_out)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


@settings(max_examples=30, deadline=None)
@given(kernel=st.sampled_from([1, 3, 5, 7]), dilation=st.integers(1, 3),
       extra_h=st.integers(0, 4), extra_w=st.integers(0, 4), heads=st.integers(1, 3),
       rpb=st.booleans(), seed=st.integers(0, 2**16))
def test_random_maps_match_naive(kernel, dilation, extra_h, extra_w, heads, rpb, seed):
    torch.manual_seed(seed)
    height, width = kernel * dilation + extra_h, kernel * dilation + extra_w
    q, k, v, bias = inputs(2, heads, height, width, 3, kernel, rpb)
    for backend in CPU_BACKENDS:
        torch.testing.assert_close(neighborhood_attention(q, k, v, kernel, dilation, bias, backend=backend),
                                   naive(q, k, v, kernel, dilation, bias), atol=1e-10, rtol=1e-10)


def attention_weights(height, width, kernel, dilation, rpb=True):
    """(N, N) weights the kernel gives each key, probed with one-hot position codes as values."""
    n = height * width
    q, k, _, bias = inputs(1, 1, height, width, 4, kernel, rpb)
    one_hot = torch.eye(n, **F64).view(1, 1, height, width, n)
    return neighborhood_attention(q, k, one_hot, kernel, dilation, bias).reshape(n, n)


@pytest.mark.parametrize("height,width,kernel,dilation",
                         [(7, 7, 7, 1), (9, 11, 3, 1), (11, 9, 3, 2), (10, 11, 3, 3),
                          (12, 10, 5, 2)])
def test_weights_are_zero_outside_the_neighbourhood(height, width, kernel, dilation):
    weights = attention_weights(height, width, kernel, dilation)
    mask, _, _ = reference_mask(height, width, kernel, dilation)
    assert (weights[~mask] == 0).all()
    assert (weights[mask] > 0).all()
    assert (mask.sum(1) == kernel * kernel).all()
    torch.testing.assert_close(weights.sum(1), torch.ones(height * width, **F64))


@pytest.mark.parametrize("kernel,dilation", [(3, 1), (5, 1), (3, 2), (5, 3)])
def test_interior_queries_see_the_symmetric_window(kernel, dilation):
    size = 2 * kernel * dilation + 1
    weights = attention_weights(size, size, kernel, dilation).view(size, size, size, size)
    half = kernel // 2 * dilation
    for y in range(half, size - half):
        for x in range(half, size - half):
            seen = weights[y, x].nonzero().tolist()
            expected = [[y + a * dilation, x + b * dilation]
                        for a in range(-(kernel // 2), kernel // 2 + 1)
                        for b in range(-(kernel // 2), kernel // 2 + 1)]
            assert seen == expected, (y, x)


@pytest.fixture
def one_thread():
    # gradcheck makes ~1000 tiny calls; with two threads each op's thread hand-off dominates (and
    # costs milliseconds when the other core is busy)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_gradcheck_float64(one_thread):
    q, k, v, bias = (t.requires_grad_() for t in inputs(1, 2, 6, 7, 2, 3))
    assert torch.autograd.gradcheck(
        lambda q, k, v, b: neighborhood_attention(q, k, v, 3, 2, b), (q, k, v, bias))
    q, k, v = (t.requires_grad_() for t in inputs(2, 1, 5, 6, 1, 5, rpb=False)[:3])
    assert torch.autograd.gradcheck(lambda q, k, v: neighborhood_attention(q, k, v, 5), (q, k, v))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(dtype):
    q, k, v, bias = inputs(2, 2, 9, 10, 8, 3, dtype=torch.float32)
    q, k, v, bias = q.to(dtype), k.to(dtype), v.to(dtype), bias.to(dtype)
    out = neighborhood_attention(q, k, v, 3, 2, bias)
    assert out.dtype == dtype and out.shape == q.shape
    ref = naive(q.double(), k.double(), v.double(), 3, 2, bias.double())
    torch.testing.assert_close(out.double(), ref, atol=2e-2, rtol=2e-2)
    q.requires_grad_()
    neighborhood_attention(q, k, v, 3, 2, bias).sum().backward()
    assert q.grad.dtype == dtype


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op produces."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def test_never_materializes_n_by_n_scores():
    height = width = 32  # N = 1024: N*N = 1M elements, far above N * k^2 * heads = 150K
    q, k, v, bias = inputs(1, 3, height, width, 8, 7, dtype=torch.float32)
    q, k, v, bias = (t.requires_grad_() for t in (q, k, v, bias))
    with LargestTensor() as probe:
        neighborhood_attention(q, k, v, 7, 1, bias).sum().backward()
    assert probe.numel <= height * width * 49 * 3


@pytest.mark.parametrize("kwargs,message", [
    (dict(kernel=4), "odd"),
    (dict(kernel=0), "odd"),
    (dict(kernel=3, dilation=0), "dilation"),
    (dict(kernel=5, dilation=2), "smaller than kernel"),   # 9 < 10
    (dict(kernel=11), "smaller than kernel"),               # 9 x 12 map, 9 < 11
    (dict(kernel=3, rpb=torch.zeros(2, 3, 3)), "rpb"),
    (dict(kernel=3, backend="cuda"), "backend"),
])
def test_invalid_arguments_raise(kwargs, message):
    q = torch.randn(1, 2, 9, 12, 4)
    with pytest.raises(ValueError, match=message):
        neighborhood_attention(q, q, q, **kwargs)
    with pytest.raises(ValueError, match="shape"):
        neighborhood_attention(q, q[..., :2], q, 3)


def test_auto_on_cpu_is_dense_on_small_maps_and_portable_on_large_ones():
    from lab.kernels.neighborhood import DENSE_FACTOR

    q, k, v, bias = inputs(2, 2, 6, 6, 4, 3)              # 36 tokens <= 4 x 3^2
    assert 36 <= DENSE_FACTOR * 9 and torch.equal(neighborhood_attention(q, k, v, 3, 2, bias),
                                                 neighborhood_attention(q, k, v, 3, 2, bias, backend="dense"))
    q, k, v, bias = inputs(2, 2, 8, 9, 4, 3)              # 72 tokens > 4 x 3^2
    assert torch.equal(neighborhood_attention(q, k, v, 3, 2, bias),
                       neighborhood_attention(q, k, v, 3, 2, bias, backend="portable"))


def check_flex_matches_portable(height, width, kernel, dilation, rpb):
    # FlexAttention runs on CPU only through torch.compile (inductor; each new geometry compiles,
    # 5-10 s here) and forward only: torch raises NotImplementedError for its CPU backward.
    pytest.importorskip("torch.nn.attention.flex_attention")
    q, k, v, bias = inputs(2, 2, height, width, 16, kernel, rpb, dtype=torch.float32)
    with torch.no_grad():
        flex = neighborhood_attention(q, k, v, kernel, dilation, bias, backend="flex")
        portable = neighborhood_attention(q, k, v, kernel, dilation, bias, backend="portable")
    torch.testing.assert_close(flex, portable, atol=1e-5, rtol=1e-5)


def test_flex_matches_portable_on_cpu():
    check_flex_matches_portable(11, 13, 3, 2, rpb=True)


@pytest.mark.slow
@pytest.mark.parametrize("height,width,kernel,dilation,rpb",
                         [(14, 14, 7, 1, False), (7, 9, 7, 1, True), (16, 17, 5, 3, True)])
def test_flex_matches_portable_on_cpu_more_geometries(height, width, kernel, dilation, rpb):
    check_flex_matches_portable(height, width, kernel, dilation, rpb)
