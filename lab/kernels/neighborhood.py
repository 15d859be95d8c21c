"""Neighbourhood attention (NA): each query attends to a k x k window of keys around it.

Semantics are those of NATTEN's 2D NA, as used by the NAT / DiNAT classification models. Along an
axis of length L with kernel k (odd) and dilation d, position i belongs to dilation group
g = i % d, the positions g, g + d, g + 2d, ...; the group holds L_g = (L - g + d - 1) // d of them
and i is the ig = i // d-th. Its window inside the group starts at

    start = clamp(ig - k // 2, 0, L_g - k)

so windows are shifted inward at the borders (never padded): every query sees exactly k positions,
(start + j) * d + g for j = 0..k-1. The 2D neighbourhood is the product of the two axes (k * k
keys). With a relative position bias rpb of shape (heads, 2k - 1, 2k - 1), the score of a key is

    (q * scale) . key + rpb[head, k - 1 + (key_gy - ig_y), k - 1 + (key_gx - ig_x)]

(key_g* being the key's index inside its group), softmaxed over the k * k neighbours. Maps must be
at least k * d along both axes (NAT pads smaller maps before calling).

Two implementations:

- "portable": plain PyTorch on any device. Scores are computed per kernel offset by gathering one
  shifted copy of K (or V) at a time, so memory is O(N k^2) for the scores plus O(N hd) of
  temporaries, never O(N^2). A hand-written backward recomputes the gathers instead of letting
  autograd save k^2 gathered copies of K and V. Tokens are laid out first, (N, B, heads, hd), so
  each gather / scatter moves contiguous rows. float16/bfloat16 inputs are computed in float32.
- "dense": for small maps (the "auto" choice on CPU when N <= 4 k^2 tokens, e.g. a 14x14 map with
  k = 7, and every later stage of a NAT): full N x N scores in one matmul with the neighbourhood as
  an additive mask (the bias inside it, -inf outside), softmax, one more matmul. It
  does up to 4x the portable path's arithmetic, but in a few large BLAS calls instead of k^2 small
  gathers, which is several times faster on small maps (BENCHMARKS.md); memory O(N^2) per head.
- "flex": torch's FlexAttention with a block mask of the same neighbourhood and a score_mod that
  adds the bias. It needs torch.compile (compiled once, lazily); on CPU torch supports its forward
  only (no backward). "auto" picks flex on CUDA, and dense or portable elsewhere.
"""

from __future__ import annotations

import functools
import importlib.util

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["neighborhood_attention"]

BACKENDS = ("auto", "portable", "dense", "flex")
DENSE_FACTOR = 4     # "auto" on CPU: dense attention up to N <= DENSE_FACTOR * k^2 tokens


def neighborhood_attention(q: Tensor, k: Tensor, v: Tensor, kernel: int, dilation: int = 1,
                           rpb: Tensor | None = None, scale: float | None = None,
                           backend: str = "auto") -> Tensor:
    """2D neighbourhood attention. q, k, v: (B, heads, H, W, head_dim); rpb: (heads, 2k-1, 2k-1).

    Returns (B, heads, H, W, head_dim) in q's dtype (the portable path returns a permuted view of
    a tokens-first buffer; call .contiguous() if a contiguous tensor is needed).
    """
    _check(q, k, v, kernel, dilation, rpb, backend)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if backend == "auto":
        if q.device.type == "cuda" and _has_flex():
            backend = "flex"
        else:
            backend = "dense" if q.shape[2] * q.shape[3] <= DENSE_FACTOR * kernel * kernel else "portable"
    if backend == "flex":
        return _flex(q, k, v, kernel, dilation, rpb, scale)
    if backend == "dense":
        return _dense(q, k, v, kernel, dilation, rpb, scale)
    return _portable(q, k, v, kernel, dilation, rpb, scale)


def _check(q: Tensor, k: Tensor, v: Tensor, kernel: int, dilation: int, rpb: Tensor | None,
           backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if q.dim() != 5 or q.shape != k.shape or v.shape[:-1] != q.shape[:-1]:
        raise ValueError("q, k, v must have shape (B, heads, H, W, head_dim) (v may differ in "
                         "head_dim), got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel must be an odd integer >= 1, got {kernel!r}")
    if not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"dilation must be an integer >= 1, got {dilation!r}")
    _, heads, height, width, _ = q.shape
    if height < kernel * dilation or width < kernel * dilation:
        raise ValueError(f"feature map {height}x{width} is smaller than kernel * dilation = "
                         f"{kernel}*{dilation} = {kernel * dilation}; pad it first")
    if rpb is not None and tuple(rpb.shape) != (heads, 2 * kernel - 1, 2 * kernel - 1):
        raise ValueError(f"rpb must have shape {(heads, 2 * kernel - 1, 2 * kernel - 1)}, "
                         f"got {tuple(rpb.shape)}")


# ---------------------------------------------------------------------------------------------
# Neighbourhood tables


def _axis(length: int, kernel: int, dilation: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Per-axis neighbours (L, k) and their bias index k - 1 + (key group index - query's)."""
    i = torch.arange(length, device=device)
    group, ig = i % dilation, i // dilation
    group_len = (length - group + dilation - 1) // dilation
    start = torch.minimum((ig - kernel // 2).clamp(min=0), group_len - kernel)
    j = torch.arange(kernel, device=device)
    neighbours = (start[:, None] + j) * dilation + group[:, None]
    rel = kernel - 1 + start[:, None] + j - ig[:, None]
    return neighbours, rel


@functools.lru_cache(maxsize=64)
def _tables(height: int, width: int, kernel: int, dilation: int,
            device: torch.device) -> tuple[Tensor, Tensor]:
    """(k*k, N) flat key index and flat rpb index, one row per kernel offset (row-major)."""
    ny, ry = _axis(height, kernel, dilation, device)
    nx, rx = _axis(width, kernel, dilation, device)
    # offset (a, b) of query (y, x) -> key (ny[y, a], nx[x, b]); laid out [a, b, y, x]
    idx = ny.T[:, None, :, None] * width + nx.T[None, :, None, :]
    ridx = ry.T[:, None, :, None] * (2 * kernel - 1) + rx.T[None, :, None, :]
    n = height * width
    return idx.reshape(kernel * kernel, n), ridx.reshape(kernel * kernel, n)


# ---------------------------------------------------------------------------------------------
# Portable path


def _portable(q: Tensor, k: Tensor, v: Tensor, kernel: int, dilation: int, rpb: Tensor | None,
              scale: float) -> Tensor:
    batch, heads, height, width, _ = q.shape
    dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    idx, ridx = _tables(height, width, kernel, dilation, q.device)

    def tokens_first(x: Tensor) -> Tensor:  # (B, h, H, W, D) -> contiguous (N, B, h, D), one copy
        shape = (height * width, batch, heads, x.shape[-1])
        return x.new_empty(shape, dtype=dtype).copy_(x.permute(2, 3, 0, 1, 4).flatten(0, 1))

    flat_rpb = None if rpb is None else rpb.to(dtype).flatten(1)
    out = _NeighborhoodAttention.apply(tokens_first(q), tokens_first(k), tokens_first(v),
                                       flat_rpb, idx, ridx, scale)
    return out.view(height, width, batch, heads, -1).permute(2, 3, 0, 1, 4).to(q.dtype)


class _NeighborhoodAttention(torch.autograd.Function):
    """q, k, v: (N, B, h, D) contiguous; rpb: (h, (2k-1)^2) or None; idx, ridx: (k*k, N)."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, rpb: Tensor | None, idx: Tensor,
                ridx: Tensor, scale: float) -> Tensor:
        scores = q.new_empty(idx.shape[0], *q.shape[:-1])  # (k*k, N, B, h)
        for s, i in zip(scores, idx):
            torch.linalg.vecdot(q, k.index_select(0, i), out=s)
        scores *= scale
        if rpb is not None:
            scores += rpb[:, ridx].permute(1, 2, 0).unsqueeze(2)
        p = scores.softmax(0)
        del scores
        out = q.new_zeros(*q.shape[:-1], v.shape[-1])
        for pj, i in zip(p, idx):
            out.addcmul_(pj.unsqueeze(-1), v.index_select(0, i))
        ctx.save_for_backward(q, k, v, p, idx, ridx)
        ctx.scale = scale
        ctx.rpb_shape = None if rpb is None else rpb.shape
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        q, k, v, p, idx, ridx = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        dp = torch.empty_like(p)
        for dpj, i in zip(dp, idx):
            torch.linalg.vecdot(grad_out, v.index_select(0, i), out=dpj)
        ds = p * (dp - (p * dp).sum(0, keepdim=True))  # softmax backward, over the k*k offsets
        del dp
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for dsj, pj, i in zip(ds.unsqueeze(-1), p.unsqueeze(-1), idx):
            dq.addcmul_(dsj, k.index_select(0, i))
            # several queries share a key at clamped borders: scatter-add, not assignment
            dk.index_add_(0, i, dsj * q)
            dv.index_add_(0, i, pj * grad_out)
        drpb = None
        if ctx.needs_input_grad[3]:
            per_offset = ds.sum(2).permute(2, 0, 1).flatten(1)  # (h, k*k*N)
            drpb = ds.new_zeros(ctx.rpb_shape).index_add_(1, ridx.flatten(), per_offset)
        return dq * ctx.scale, dk * ctx.scale, dv, drpb, None, None, None


# ---------------------------------------------------------------------------------------------
# Dense path


@functools.lru_cache(maxsize=64)
def _dense_tables(height: int, width: int, kernel: int, dilation: int,
                  device: torch.device) -> tuple[Tensor, Tensor]:
    """(N, N) flat rpb index of each (query, key) pair (0 outside the neighbourhood) and the
    neighbourhood mask. A query's k*k neighbours are distinct keys."""
    idx, ridx = _tables(height, width, kernel, dilation, device)
    n = height * width
    queries = torch.arange(n, device=device).expand_as(idx)
    rel = torch.zeros(n, n, dtype=torch.long, device=device)
    inside = torch.zeros(n, n, dtype=torch.bool, device=device)
    rel[queries, idx] = ridx
    inside[queries, idx] = True
    return rel, inside


def _dense(q: Tensor, k: Tensor, v: Tensor, kernel: int, dilation: int, rpb: Tensor | None,
           scale: float) -> Tensor:
    batch, heads, height, width, _ = q.shape
    rel, inside = _dense_tables(height, width, kernel, dilation, q.device)
    dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    if rpb is None:
        bias = torch.zeros(1, *inside.shape, dtype=dtype, device=q.device)
    else:
        bias = rpb.to(dtype).flatten(1)[:, rel]                        # (h, N, N)
    bias = bias.masked_fill(~inside, float("-inf"))
    q, k, v = (x.flatten(2, 3).to(dtype) for x in (q, k, v))
    # plain matmuls: SDPA's CPU math path adds checks for fully masked rows (none here) costing ~15%
    bias = bias.expand(heads, *inside.shape).repeat(batch, 1, 1)         # (B*h, N, N)
    weights = torch.baddbmm(bias, q.flatten(0, 1), k.flatten(0, 1).transpose(1, 2),
                            alpha=scale).softmax(-1)
    out = torch.bmm(weights, v.flatten(0, 1))
    return out.view(batch, heads, height, width, -1).to(q.dtype)


# ---------------------------------------------------------------------------------------------
# FlexAttention path


@functools.cache
def _has_flex() -> bool:
    return importlib.util.find_spec("torch.nn.attention.flex_attention") is not None


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention
    # dynamic=False: a second geometry would otherwise be recompiled with symbolic sizes, which
    # inductor's CPU flex template fails to build (torch 2.14)
    return torch.compile(flex_attention, dynamic=False)


def _flex_axis(qi: Tensor, ki: Tensor, length: int, kernel: int,
               dilation: int) -> tuple[Tensor, Tensor]:
    """Whether key position ki is in query position qi's window along one axis, and the bias
    index k - 1 + (key group index - query group index), clamped in range for masked-out keys."""
    group = qi % dilation
    qg, kg = qi // dilation, ki // dilation
    group_len = (length - group + dilation - 1) // dilation
    start = torch.minimum((qg - kernel // 2).clamp(min=0), group_len - kernel)
    inside = (ki % dilation == group) & (kg >= start) & (kg < start + kernel)
    return inside, (kernel - 1 + kg - qg).clamp(0, 2 * kernel - 2)


@functools.lru_cache(maxsize=32)
def _block_mask(height: int, width: int, kernel: int, dilation: int, device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        in_y, _ = _flex_axis(q_idx // width, kv_idx // width, height, kernel, dilation)
        in_x, _ = _flex_axis(q_idx % width, kv_idx % width, width, kernel, dilation)
        return in_y & in_x

    n = height * width
    return create_block_mask(mask_mod, None, None, n, n, device=device)


def _flex(q: Tensor, k: Tensor, v: Tensor, kernel: int, dilation: int, rpb: Tensor | None,
          scale: float) -> Tensor:
    batch, heads, height, width, _ = q.shape
    score_mod = None
    if rpb is not None:
        bias = rpb.to(q.dtype)

        def score_mod(score, b, h, q_idx, kv_idx):
            _, ry = _flex_axis(q_idx // width, kv_idx // width, height, kernel, dilation)
            _, rx = _flex_axis(q_idx % width, kv_idx % width, width, kernel, dilation)
            return score + bias[h, ry, rx]

    block_mask = _block_mask(height, width, kernel, dilation, q.device)
    out = _compiled_flex()(*(x.flatten(2, 3) for x in (q, k, v)), score_mod=score_mod,
                           block_mask=block_mask, scale=scale)
    return out.view(batch, heads, height, width, -1)
