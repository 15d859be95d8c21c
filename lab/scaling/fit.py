"""Vectorized least-squares fits of the scaling laws, in log space, over a batch of curves.

A batch is three arrays of shape (..., P): log D, log E and a mask of the points present (curves
with fewer sizes are padded). Every fit minimizes the sum of squared log-space residuals
sum (log E_i - log f(D_i))^2, so a 10% miss weighs the same at 40% error as at 2%.

- power: log E = log a - b log D is a straight line: weighted least squares in closed form.
- saturating: c is profiled over a grid in [0, min E): for each c, (log a, b) come in closed form
  from the line through log(E - c), weighted by ((E - c) / E)^2 so that its residual approximates
  the log E residual to first order. The best grid point, and the second-best local minimum of
  that profile where there is one (several starts), each seed a damped Gauss-Newton
  (Levenberg-Marquardt) refinement of (log a, b, c) jointly on the true log-space residual, with
  the bounds enforced by an active set; the better of the two is kept.
- broken: for each break on a grid between the second smallest and second largest size, the two
  slopes and log a are a linear least-squares problem (a hinge in log-log space), in closed form.

Bounds: 0 <= b, b2 <= B_MAX; 0 <= c < min E (the curve cannot level off above its lowest point).
Everything is batched: a chunk of curves (or bootstrap samples) is one set of numpy operations.
Inside, arrays are points-major, (P, N): a sum over a curve's few points is then P - 1 additions
of contiguous rows, where a sum along a short last axis costs numpy a reduction per curve.
"""

from __future__ import annotations

import numpy as np

from lab.scaling.laws import LAWS, Law

B_MAX = 3.0            # upper bound of the exponents b, b2 (a learning curve steeper than D^-3 is not one)
C_CAP = 0.999          # c < C_CAP * min E
SAT_GRID = 16          # c grid points of the saturating profile
SAT_ITERS = 20         # Levenberg-Marquardt iterations per start, at most
BREAK_GRID = 12        # break points tried by the broken law (then 9 around the best)
CHUNK = 4096           # curves per numpy chunk (keeps the arrays in cache-sized pieces)
_TINY = 1e-300


def _wline(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted least-squares line y ~ y_mean + m (x - x_mean) over axis 0: (m, x_mean, y_mean)."""
    sw = np.maximum(w.sum(0), _TINY)
    mx = (w * x).sum(0) / sw
    my = (w * y).sum(0) / sw
    dx = x - mx
    wdx = w * dx
    return (wdx * (y - my)).sum(0) / np.maximum((wdx * dx).sum(0), _TINY), mx, my


def fit_power(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Power law on (P, N) arrays: params (N, 2) = (a, b) and the log-space residual sums (N,)."""
    m, mx, my = _wline(x, y, w)
    b = np.clip(-m, 0.0, B_MAX)
    log_a = my + b * mx          # the best intercept for the (possibly clipped) slope
    r = y - (log_a - b * x)
    return np.stack([np.exp(log_a), b], axis=-1), (w * r * r).sum(0)


def _sat_ssr(xc, y, w, alpha, b, c):
    r = y - np.log(np.maximum(np.exp(alpha - b * xc) + c, _TINY))
    return (w * r * r).sum(0)


def _solve3(a11, a12, a13, a22, a23, a33, g1, g2, g3):
    """Batched solution of a symmetric 3x3 system by cofactors (no per-matrix LAPACK call)."""
    c11 = a22 * a33 - a23 * a23
    c12 = a13 * a23 - a12 * a33
    c13 = a12 * a23 - a13 * a22
    c22 = a11 * a33 - a13 * a13
    c23 = a12 * a13 - a11 * a23
    c33 = a11 * a22 - a12 * a12
    det = a11 * c11 + a12 * c12 + a13 * c13
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / det
        return ((c11 * g1 + c12 * g2 + c13 * g3) * inv, (c12 * g1 + c22 * g2 + c23 * g3) * inv,
                (c13 * g1 + c23 * g2 + c33 * g3) * inv)


def _lm_saturating(xc, y, w, cap, alpha, b, c, iters: int = SAT_ITERS):
    """Levenberg-Marquardt on (alpha = log a at the centred x, b, c), steps projected on the bounds.
    A parameter that a step would push through its bound is held there for that step (the
    others move on the reduced system). A fit leaves the batch once converged (a step gains less
    than 1e-7 of its residual, or the damping has grown past any useful step); the arrays shrink
    when a third of them has left. The model's values at an accepted step are kept for the next
    iteration's Jacobian (no second exp/log)."""
    alpha, b, c = alpha.copy(), b.copy(), c.copy()
    lam = np.full_like(alpha, 1e-3)
    act = np.arange(len(alpha))              # the fits still iterating, as columns of the arrays below
    X, Y, W, CAP = xc, y, w, cap
    A, B, C, L = alpha, b, c, lam
    e = np.exp(A - B * X)
    f = e + C
    r = W * (Y - np.log(np.maximum(f, _TINY)))
    S = (r * r).sum(0)
    ssr = S.copy()
    live = np.ones(len(S), dtype=bool)
    for _ in range(iters):
        j3 = W / f                       # d log f / d c (masked here; r carries the mask too)
        j1 = e * j3                      # d log f / d alpha (masked)
        j2 = -X * j1                     # d log f / d b (masked)
        a11, a12, a13 = (j1 * j1).sum(0), (j1 * j2).sum(0), (j1 * j3).sum(0)
        a22, a23, a33 = (j2 * j2).sum(0), (j2 * j3).sum(0), (j3 * j3).sum(0)
        g1, g2, g3 = (j1 * r).sum(0), (j2 * r).sum(0), (j3 * r).sum(0)
        # a parameter held at a bound by the descent direction (g) leaves the step: its row and
        # column of the damped system become the identity's, its gradient 0 (an active set)
        hold_b = ((B <= 0.0) & (g2 < 0)) | ((B >= B_MAX) & (g2 > 0))
        hold_c = ((C <= 0.0) & (g3 < 0)) | ((C >= CAP) & (g3 > 0))
        fb, fc = ~hold_b, ~hold_c
        d = 1.0 + L
        d1, d2, d3 = _solve3(a11 * d + 1e-12, a12 * fb, a13 * fc, np.where(fb, a22 * d + 1e-12, 1.0), a23 * fb * fc,
                             np.where(fc, a33 * d + 1e-12, 1.0), g1, g2 * fb, g3 * fc)
        at, bt, ct = A + d1, np.clip(B + d2, 0.0, B_MAX), np.clip(C + d3, 0.0, CAP)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            et = np.exp(at - bt * X)
            ft = et + ct
            rt = W * (Y - np.log(ft))
            st = (rt * rt).sum(0)
            ok = (st < S) & live         # NaN (a singular step) is never accepted; a finished fit stays
        gain = np.where(ok, (S - st) / np.maximum(S, 1e-30), 0.0)
        A, B, C, S = np.where(ok, at, A), np.where(ok, bt, B), np.where(ok, ct, C), np.where(ok, st, S)
        e, f, r = np.where(ok, et, e), np.where(ok, ft, f), np.where(ok, rt, r)
        L = np.where(ok, L * 0.3, L * 10.0)
        # finished fits are frozen, so a fit's result never depends on the others in its batch
        live &= ~((ok & (gain < 1e-7)) | (L > 1e8) | (S < 1e-28))
        alpha[act], b[act], c[act], ssr[act] = A, B, C, S
        if not live.any():
            break
        if (~live).sum() * 3 >= len(live):       # compact: keep iterating the rest only
            act = act[live]
            X, Y, W, CAP = X[:, live], Y[:, live], W[:, live], CAP[live]
            A, B, C, S, L = A[live], B[live], C[live], S[live], L[live]
            e, f, r = e[:, live], f[:, live], r[:, live]
            live = live[live]
    return alpha, b, c, ssr


def fit_saturating(x: np.ndarray, y: np.ndarray, w: np.ndarray, grid: int = SAT_GRID, starts: int = 2,
                   iters: int = SAT_ITERS) -> tuple[np.ndarray, np.ndarray]:
    """Saturating law on (P, N) arrays: params (N, 3) = (a, b, c) and the log-space residual sums."""
    big = np.exp(y)
    cap = C_CAP * np.where(w > 0, big, np.inf).min(0)
    x0 = (w * x).sum(0) / np.maximum(w.sum(0), _TINY)
    xc = x - x0
    # the profile: for each grid value of c, the closed-form weighted line through log(E - c); its
    # weighted residual approximates the log E residual to first order, so it ranks the grid
    t = np.linspace(0.0, 1.0, grid) ** 0.5       # denser near min E, where the profile bends
    cg = t[:, None] * cap                                           # (G, N)
    rest = np.maximum(big[:, None, :] - cg, _TINY)                  # (P, G, N)
    z = np.log(rest)
    rest *= (w / big)[:, None, :]
    ww = rest * rest
    xw = ww * xc[:, None, :]
    zw = ww * z
    s0, sx, sz = ww.sum(0), xw.sum(0), zw.sum(0)
    sxx, sxz, szz = (xw * xc[:, None, :]).sum(0), (xw * z).sum(0), (zw * z).sum(0)
    s0 = np.maximum(s0, _TINY)
    vxx = np.maximum(sxx - sx * sx / s0, _TINY)
    vxz = sxz - sx * sz / s0
    vzz = szz - sz * sz / s0
    bg = np.clip(-vxz / vxx, 0.0, B_MAX)
    ag = (sz + bg * sx) / s0
    prof = vzz + 2 * bg * vxz + bg * bg * vxx       # residual of z about the line with slope -bg
    prof = np.where(np.isfinite(prof), prof, np.inf)                # (G, N)
    # starts: the best local minima of the profile along the grid
    inf = np.full_like(prof[:1], np.inf)
    left, right = np.concatenate([inf, prof[:-1]]), np.concatenate([prof[1:], inf])
    score = np.where((prof <= left) & (prof <= right), prof, np.inf)
    order = np.argsort(score, axis=0)[:starts]                      # (starts, N)
    cols = np.arange(x.shape[1])
    best = None
    for j in range(len(order)):
        g = order[j]
        sel = cols if j == 0 else cols[np.isfinite(score[g, cols]) & (score[g, cols] > score[order[0], cols])]
        if not len(sel):
            continue
        gs = g[sel]
        a, b, c, s = _lm_saturating(xc[:, sel], y[:, sel], w[:, sel], cap[sel], ag[gs, sel], bg[gs, sel],
                                    cg[gs, sel], iters)
        if best is None:
            best = [a, b, c, s]
            continue
        better = s < best[3][sel]
        for k, v in enumerate((a, b, c, s)):
            best[k][sel] = np.where(better, v, best[k][sel])
    assert best is not None  # the first start fits every curve
    alpha, b, c, ssr = best
    return np.stack([np.exp(alpha + b * x0), b, c], axis=-1), ssr


def _hinge(xc, y, w, xb):
    """Least-squares hinge y ~ alpha + m1 xc + m2 max(xc - xb, 0) for each break in xb (G, N):
    (alpha, m1, m2, residual sum), each (G, N); the residual before any bound is applied."""
    h = np.maximum(xc[:, None, :] - xb, 0.0)                  # (P, G, N)
    hw = w[:, None, :] * h
    # the sums without h are the same for every break: (N,), broadcast over G
    wx, wy = w * xc, w * y
    s0, s1, s11 = w.sum(0), wx.sum(0), (wx * xc).sum(0)
    t0, t1, tyy = wy.sum(0), (wx * y).sum(0), (wy * y).sum(0)
    s2, s12, s22, t2 = hw.sum(0), (hw * xc[:, None, :]).sum(0), (hw * h).sum(0), (hw * y[:, None, :]).sum(0)
    alpha, m1, m2 = _solve3(s0, s1, s2, s11, s12, s22, t0, t1, t2)
    ssr = tyy - (alpha * t0 + m1 * t1 + m2 * t2)
    return alpha, m1, m2, np.where(np.isfinite(ssr), ssr, np.inf)


def fit_broken(x: np.ndarray, y: np.ndarray, w: np.ndarray, grid: int = BREAK_GRID) -> tuple[np.ndarray, np.ndarray]:
    """Broken power law on (P, N) arrays: params (N, 4) = (a, b, b2, d_break), residual sums.
    The break is searched on a grid between the second smallest and second largest size (so that
    each slope rests on two sizes at least), then on a finer grid around the best one."""
    n_obs = w.sum(0).astype(int)
    xs = np.sort(np.where(w > 0, x, np.inf), axis=0)
    cols = np.arange(x.shape[1])
    lo = xs[1]
    hi = xs[np.maximum(n_obs - 2, 1), cols]
    x0 = (w * x).sum(0) / np.maximum(w.sum(0), _TINY)
    xc = x - x0
    step = (hi - lo) / (grid - 1)
    xb = (lo - x0) + step * np.arange(grid)[:, None]                # (G, N)
    _, _, _, ssr = _hinge(xc, y, w, xb)
    centre = xb[ssr.argmin(0), cols]
    fine = np.clip(centre + step * np.linspace(-1.0, 1.0, 9)[:, None], lo - x0, hi - x0)
    alpha, m1, m2, ssr = _hinge(xc, y, w, fine)
    g = ssr.argmin(0)
    m1, m2, xb = m1[g, cols], m2[g, cols], fine[g, cols]
    b = np.clip(-m1, 0.0, B_MAX)
    b2 = np.clip(-(m1 + m2), 0.0, B_MAX)
    shape = -b * xc - (b2 - b) * np.maximum(xc - xb, 0.0)
    alpha = (w * (y - shape)).sum(0) / np.maximum(w.sum(0), _TINY)   # the intercept for clipped slopes
    r = y - alpha - shape
    return np.stack([np.exp(alpha + b * x0), b, b2, np.exp(xb + x0)], axis=-1), (w * r * r).sum(0)


FITTERS = {"power": fit_power, "saturating": fit_saturating, "broken": fit_broken}


def fit_batch(law: Law | str, log_d: np.ndarray, log_e: np.ndarray, mask: np.ndarray | None = None,
              chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Fit `law` to every curve of a batch: arrays (..., P) of log D, log E and the points present.

    Returns the parameters (..., k) and the log-space residual sums (...). A curve with fewer
    points than the law needs, or a non-finite log E at a present point, gets NaN."""
    law = LAWS[law] if isinstance(law, str) else law
    x = np.asarray(log_d, dtype=float)
    y = np.asarray(log_e, dtype=float)
    m = np.ones(np.broadcast_shapes(x.shape, y.shape), dtype=bool) if mask is None else np.asarray(mask, bool)
    shape = np.broadcast_shapes(x.shape, y.shape, m.shape)
    x, y, m = (np.broadcast_to(a, shape).reshape(-1, shape[-1]) for a in (x, y, m))
    ok = (m & np.isfinite(x) & np.isfinite(y)) | ~m
    good = ok.all(-1) & (m.sum(-1) >= law.min_sizes)
    w = m.astype(float)
    # absent points sit at the curve's mean (x, y): finite, and weightless
    sw = np.maximum(w.sum(-1, keepdims=True), 1.0)
    x = np.where(m, x, (np.where(m, x, 0.0).sum(-1, keepdims=True) / sw))
    y = np.where(m, y, (np.where(m, y, 0.0).sum(-1, keepdims=True) / sw))
    params = np.full((len(x), law.k), np.nan)
    ssr = np.full(len(x), np.nan)
    idx = np.flatnonzero(good)
    fitter = FITTERS[law.name]
    with np.errstate(over="ignore", under="ignore"):
        for s in range(0, len(idx), chunk):
            i = idx[s:s + chunk]
            params[i], ssr[i] = fitter(x[i].T.copy(), y[i].T.copy(), w[i].T.copy())
    return params.reshape(*shape[:-1], law.k), ssr.reshape(shape[:-1])
