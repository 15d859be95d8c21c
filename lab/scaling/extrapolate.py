"""The honest extrapolation check: fit a law on every size but the largest, predict the largest,
and compare with what was measured there. A law that fits the sizes it saw but misses the next
one is an interpolation, not a scaling law."""

from __future__ import annotations

import numpy as np

from lab.scaling.fit import fit_batch
from lab.scaling.laws import Law


def holdout_largest(law: Law, log_d: np.ndarray, means: np.ndarray, mask: np.ndarray,
                    sizes: np.ndarray | None = None) -> list[dict]:
    """For each curve (rows of (N, P) arrays: log sizes, mean errors, present points), the fit on
    all sizes but its largest and its prediction there: {size, predicted, observed, rel_error}
    with rel_error = predicted / observed - 1; or {reason} when the curve has too few sizes.
    `sizes` (N, P), when given, are the sizes reported (exactly as recorded, not exp(log D))."""
    log_d, means, mask = np.asarray(log_d, float), np.asarray(means, float), np.asarray(mask, bool)
    n = mask.sum(-1)
    last = np.where(mask, log_d, -np.inf).argmax(-1)            # the largest present size
    rows = np.arange(len(log_d))
    train = mask.copy()
    train[rows, last] = False
    params, _ = fit_batch(law, log_d, np.log(np.where(mask, means, 1.0)), train)
    size = np.exp(log_d[rows, last]) if sizes is None else np.asarray(sizes, float)[rows, last]   # exact sizes
    predicted = np.exp(law.log_error(params, log_d[rows, last][:, None])[:, 0])
    observed = means[rows, last]
    out = []
    for i in range(len(log_d)):
        if n[i] < law.min_sizes + 1:
            out.append({"size": float(size[i]), "reason": f"the {law.name} law needs {law.min_sizes + 1} sizes to "
                                                            f"hold the largest out, the curve has {int(n[i])}"})
        elif not np.isfinite(predicted[i]):
            out.append({"size": float(size[i]), "reason": f"the {law.name} fit without the largest size failed"})
        else:
            out.append({"size": float(size[i]), "predicted": float(predicted[i]), "observed": float(observed[i]),
                        "rel_error": float(predicted[i] / observed[i] - 1)})
    return out
