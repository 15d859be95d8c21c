"""Asynchronous successive halving on the Pareto rank of a study's objectives (MO-ASHA, as in
Schmucker et al. 2021): at each rung a trial goes on when at most 1/reduction_factor of the trials
recorded at that rung before it are on a better non-dominated front than it.

With one objective this is ASHA's own rule (continue when at most a third of the earlier trials
at the rung did strictly better). Ranking on the first objective alone would stop the cheap,
slightly less accurate points that form the front's low-MAC end; on the Pareto rank they go on.
Objectives that epoch results do not carry (test accuracy, images/s) cannot rank a rung and are
left out of it; when none is left the trial goes on. An epoch that was not validated (long runs
validate every k-th epoch) decides nothing: the next validated one decides the rung.

SizeASHA runs the same rule over a --target-size study's ladder of data sizes (lab.study.fidelity):
its rungs are sizes, and the accuracy it ranks by is the optimistic bound of the accuracy predicted
at the target size, not the accuracy measured at the size reached.
"""

from __future__ import annotations

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from lab.pareto import pareto_ranks
from lab.study.fidelity import GRACE, SizeFidelity

EPOCH_KEYS = ("val_top1", "loss", "macs", "params")   # what a trial's epoch results carry


def rungs(epochs: int, grace_period: int = 1, reduction_factor: int = 3) -> list[int]:
    """The epochs after which trials are compared: grace * rf^k below the last epoch (stopping at the
    last epoch would save nothing and lose the trial's final evaluation)."""
    out, rung = [], grace_period
    while rung < epochs:
        out.append(rung)
        rung *= reduction_factor
    return out


def keeps(candidate: list[float], recorded: list[list[float]], senses: list[str], reduction_factor: int) -> bool:
    """Whether `candidate` goes on past a rung where `recorded` were seen before it."""
    if not recorded:
        return True
    ranks = pareto_ranks(np.array([*recorded, candidate], dtype=float), senses)
    ahead = int(np.sum(ranks[:-1] < ranks[-1]))
    return ahead <= len(recorded) / reduction_factor


class ParetoASHA(FIFOScheduler):
    """ASHA whose rungs compare trials by Pareto rank over `objectives` ((column, sense) pairs)."""

    kind = "epoch"   # the results it decides on

    def __init__(self, objectives: list[tuple[str, str]], epochs: int, grace_period: int = 1,
                 reduction_factor: int = 3, time_attr: str = "training_iteration", milestones: list[int] | None = None):
        super().__init__()
        self.objectives, self.time_attr, self.reduction_factor = objectives, time_attr, reduction_factor
        points = rungs(epochs, grace_period, reduction_factor) if milestones is None else milestones
        self.recorded: dict[int, dict[str, list[float]]] = {r: {} for r in points}
        self.stopped = 0

    def vector(self, result: dict) -> tuple[list[float], list[str]] | None:
        """What a rung compares of `result`, and the senses; None when it decides nothing."""
        used = [(m, s) for m, s in self.objectives if m in EPOCH_KEYS]
        if not used or any(result.get(m) is None for m, _ in used):
            return None
        return [float(result[m]) for m, _ in used], [s for _, s in used]

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get("kind") != self.kind or self.time_attr not in result:
            return TrialScheduler.CONTINUE
        now = result[self.time_attr]
        for rung in sorted(self.recorded, reverse=True):   # the highest rung reached decides, once
            seen = self.recorded[rung]
            if now < rung or trial.trial_id in seen:
                continue
            compared = self.vector(result)
            if compared is None:
                return TrialScheduler.CONTINUE
            vector, senses = compared
            go_on = keeps(vector, list(seen.values()), senses, self.reduction_factor)
            seen[trial.trial_id] = vector
            if not go_on:
                self.stopped += 1
                return TrialScheduler.STOP
            break
        return TrialScheduler.CONTINUE

    def debug_string(self) -> str:
        return f"Pareto-rank ASHA on {', '.join(m for m, _ in self.objectives)}, rungs {sorted(self.recorded)}"


class SizeASHA(ParetoASHA):
    """Pareto-rank ASHA over a --target-size study's ladder of data sizes: after each size from the
    GRACE-th (the first with a law to extrapolate) to the last but one, on the optimistic bound of the
    accuracy predicted at the target (`fidelity`) and the study's other objectives."""

    kind = "size"

    def __init__(self, objectives: list[tuple[str, str]], fidelity: SizeFidelity, reduction_factor: int = 3):
        super().__init__(objectives, 0, reduction_factor=reduction_factor, time_attr="rung",
                         milestones=list(range(GRACE, len(fidelity.fractions))))
        self.fidelity = fidelity

    def vector(self, result: dict) -> tuple[list[float], list[str]] | None:
        prediction = self.fidelity.observe(result["number"], result.get("sizes") or [], result.get("sizes_top1") or [])
        values: list[float] = []
        senses: list[str] = []
        for m, s in self.objectives:
            value: float | None
            if m == "pred_top1":   # a curve that cannot be extrapolated ranks last
                value = prediction.accuracy_interval[1] if prediction.ok else 0.0
            else:
                value = result.get(m) if m in EPOCH_KEYS else None
            if value is None:
                continue
            values.append(float(value))
            senses.append(s)
        return (values, senses) if values else None

    def debug_string(self) -> str:
        return (f"Pareto-rank ASHA over data sizes {', '.join(f'{f:.3g}' for f in self.fidelity.fractions)} on the "
                f"optimistic accuracy at {self.fidelity.target} images, rungs {sorted(self.recorded)}")
