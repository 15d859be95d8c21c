"""The study's searcher: a Ray Tune `Searcher` over the study's persistent Optuna study (ask and tell),
with the search space's define-by-run sampling, rejection by the cost model before any training,
and the study's Parquet store written by the driver before Optuna is told.

Order matters for resuming after a crash: a trial's fragment is written first, then Optuna is told;
`reconcile()` settles the trials a killed driver left RUNNING in Optuna from the fragments.
Only Ray's and Optuna's public APIs are used, but for the one adapter in lab.study.optuna_private.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import optuna
from ray.tune.search import Searcher
from ray.tune.stopper import Stopper

from lab.catalog import family_of
from lab.cost import cost
from lab.errors import SpecError, StudyError
from lab.grammar import Spec, scale
from lab.memory import training_memory
from lab.study.fidelity import SizeFidelity, prediction_columns
from lab.study.optuna_private import live_trial
from lab.study.space import Point, SearchSpace, describe
from lab.study.store import PROXY_COLUMNS, StudyStore

MAX_REJECTS = 200          # consecutive rejected points before the space is declared infeasible
INTERRUPTED = "interrupted: the study's driver stopped during this trial"
DUPLICATE = "duplicate of trial"   # a rejected point that an earlier trial already trained
# consecutive duplicates after which the searcher asks for a random point: TPE, on a discrete space, can
# collapse onto its best point and propose nothing else (replays of 80-trial studies showed it)
DUPLICATE_ESCAPE = 10
# Tune reports an error without a result: the worker process died (killed, out of memory) or the
# trial function raised before reporting (run_trial reports every error of its own as a result)
WORKER_LOST = ("the trial's worker process died (killed, out of memory or crashed) before it reported a result; "
               "see the Ray logs under the study's ray/ folder")


def now() -> datetime:
    return datetime.now(UTC)


class LabSearch(Searcher):
    """Suggests grammar points of `space` that pass the cost model, asking the Optuna study
    `study_name` in `storage` (created, or loaded when it exists) with `sampler`; records every
    trial's row in `store` and tells Optuna its outcome. The objectives are read from each trial's
    own results (Tune's single metric is not used)."""

    def __init__(self, space: SearchSpace, store: StudyStore, objectives: list[tuple[str, str]],
                 sampler: optuna.samplers.BaseSampler, study_name: str, storage: optuna.storages.BaseStorage,
                 base_row: dict, num_classes: int, in_chans: int, res: int | None = None,
                 fits: Callable[[Spec], str | None] | None = None, clock: Callable[[], datetime] = now,
                 fidelity: SizeFidelity | None = None, memory: Callable[[Spec], int] | None = None):
        super().__init__(metric=None, mode=None)
        self.fidelity = fidelity   # a --target-size study: rows carry each trial's prediction at the target
        self.lab_space, self.store, self.objectives, self.fits = space, store, objectives, fits
        self.memory = memory   # a point's predicted training bytes, the rows' `memory` (trial_memory)
        self.now = clock   # what stamps rows: the wall clock, or a replay's simulated one
        self.base_row, self.num_classes, self.in_chans, self.res = base_row, num_classes, in_chans, res
        self.study = optuna.create_study(
            storage=storage, sampler=sampler, pruner=optuna.pruners.NopPruner(), study_name=study_name,
            directions=["maximize" if sense == "max" else "minimize" for _, sense in objectives], load_if_exists=True)
        if self.study.metric_names is None:   # a new study, or one made before the lab named them
            with warnings.catch_warnings():   # experimental since Optuna 3.2, and what its tools read
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.study.set_metric_names(metric_names(objectives))
        self._trials: dict[str, optuna.trial.Trial] = {}
        self._epochs: dict[str, list[dict]] = {}
        self._points: dict[str, dict] = {}
        # (grammar text, hyperparameters) -> the trial that trained it: samplers re-propose points
        self._seen: dict[tuple[str, str], int] = {
            (r["text"], r["hparams"]): r["number"]
            for r in store.trials().to_pylist() if r["state"] != "rejected" and r["text"] and r["hparams"]}
        # The first error of recording (a full disk, a storage gone): Tune would log each one and go on,
        # so the searcher keeps it, stops suggesting and asks Tune to stop (`stopper`); the driver
        # raises it after fit(). Trials not recorded stay RUNNING in Optuna: resume settles them.
        self.fatal: BaseException | None = None
        # called with every row the searcher records (a rejected point, a settled or interrupted trial) and
        # the trial's final result (None but for a settled trial), after Optuna is told: the run's progress
        # view and weights keeper (lab.study.progress, lab.study.weights)
        self.listeners: list[Callable[[dict, dict | None], None]] = []

    def __getstate__(self) -> dict:
        """Tune pickles its search algorithm into its experiment state (tuner.pkl) before the run: the
        listeners stay with this driver (a live view holds locks and a terminal; the lab never restores
        Tune's pickle: resume rebuilds the searcher)."""
        return {**self.__dict__, "listeners": []}

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save for Ray: the study's state is the Optuna database and the Parquet store,
        and `lab study resume` rebuilds the searcher from them."""

    def restore(self, checkpoint_path: str) -> None:
        pass

    # --- sampling -------------------------------------------------------------------------

    def candidate(self, trial: optuna.trial.Trial | optuna.trial.FixedTrial) -> tuple[Point, str | None]:
        """Sample a point; returns (point, reason) where reason is None when it may be trained: valid,
        within the budget at the study's resolution, and predicted to fit in a trial's memory (`fits`)."""
        point, reason = self._sized_point(trial)
        if reason is None and self.fits is not None and point.spec is not None:
            reason = self.fits(point.spec)
            point = dataclasses.replace(point, reason=reason)
        return point, reason

    def _sized_point(self, trial: optuna.trial.Trial | optuna.trial.FixedTrial) -> tuple[Point, str | None]:
        point = self.lab_space.sample(trial, num_classes=self.num_classes, in_chans=self.in_chans)
        if point.reason is not None or self.res is None or point.spec.res == self.res:
            return point, point.reason
        try:   # the study trains at another resolution than the space's: rescale and re-check the budget
            spec = scale(point.spec, res=self.res)
        except SpecError as e:
            return point, f"SpecError at {self.res} px: {e}"
        report = cost(spec, self.num_classes, self.in_chans)
        over = self.lab_space.over_budget(report.macs, report.params)
        over = None if over is None else f"at {self.res} px: {over}"
        # the same sample at another size: its sampled values, run settings and family stay
        point = dataclasses.replace(point, spec=spec, text=spec.text, params=report.params, macs=report.macs,
                                    reason=over)
        return point, over

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.fatal is not None:
            return Searcher.FINISHED
        try:
            return self._suggest(trial_id)
        except StudyError:
            raise
        except Exception as e:
            self.fatal = e
            return Searcher.FINISHED

    def stopper(self) -> Stopper:
        """A Tune stopper that ends the experiment once recording failed (see `fatal`)."""
        return _StopOnFatal(self)

    def _suggest(self, trial_id: str) -> dict | None:
        duplicates = 0
        for _ in range(MAX_REJECTS):
            trial = self.study.ask()
            point, reason = self.candidate(trial)
            earlier = self._seen.get(self._key(point)) if reason is None else None
            if reason is None and earlier is None:
                self._seen[self._key(point)] = trial.number
                self._trials[trial_id] = trial
                self._epochs[trial_id] = []
                self._points[trial_id] = {"point": point, "started_at": self.now()}
                return {"number": trial.number, "text": point.text, "hparams": point.hparams, "key": _choices(point),
                        "macs": point.macs, "params": point.params, "run": point.run}
            if earlier is not None:
                reason = f"{DUPLICATE} {earlier}: the same point and hyperparameters"
                duplicates += 1
                if duplicates % DUPLICATE_ESCAPE == 0:   # the next ask is a random point of the space
                    self.study.enqueue_trial(self._random_values(trial.number))
            row = self._row(trial.number, point, state="rejected", error=reason, started_at=self.now(), finished_at=self.now())
            self.store.write_trial(row)
            tell(self.study, trial, row, self.objectives, self._outcome(earlier))
            self._recorded(row)
        raise StudyError(f"{MAX_REJECTS} points of space {self.lab_space.name!r} in a row were invalid, over "
                         f"budget or already tried: its feasible region is empty or tiny (widen the budget or the ranges)")

    def _random_values(self, seed: int) -> dict:
        """The sampled values of a random point of the space (valid or not), drawn with `seed`."""
        draws = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        trial = draws.ask()
        self.lab_space.sample(trial, num_classes=self.num_classes, in_chans=self.in_chans)
        return dict(trial.params)

    @staticmethod
    def _key(point: Point) -> tuple[str, str]:
        """What makes two trials the same: the grammar text and the sampled values (the row's hparams)."""
        return point.text, _choices(point)

    def _outcome(self, number: int | None) -> optuna.trial.FrozenTrial | None:
        """The Optuna trial `number`, whose outcome a duplicate of it repeats (None: not a duplicate)."""
        if number is None:
            return None
        return next(t for t in self.study.get_trials(deepcopy=False) if t.number == number)

    # --- a driver's end ---------------------------------------------------------------------

    def interrupt(self) -> int:
        """Settle the trials running now as interrupted (the driver is stopping: Ctrl-C, SIGTERM); they
        do not count toward the budget, and `lab study resume` trains new points. Returns how many."""
        live = list(self._trials)
        for trial_id in live:
            trial = self._trials.pop(trial_id)
            info = self._points.pop(trial_id)
            self._epochs.pop(trial_id, None)
            row = self._row(trial.number, info["point"], state="failed", error=INTERRUPTED,
                            started_at=info["started_at"], finished_at=self.now())
            self.store.write_trial(row)
            tell(self.study, trial, row, self.objectives)
            self._recorded(row)
        return len(live)

    def reconcile(self) -> int:
        """Settle the trials a killed driver left RUNNING: from their fragment when it was written, else
        as failed (interrupted; they do not count toward the budget), with the point their sampled
        values give. Returns how many were settled."""
        rows = {r["number"]: r for r in self.store.trials().to_pylist()}
        settled = 0
        for trial in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            row = rows.get(trial.number)
            if row is None:
                row = self._interrupted_row(trial)
                self.store.write_trial(row)
            tell(self.study, live_trial(self.study, trial), row, self.objectives)
            settled += 1
        return settled

    def _interrupted_row(self, trial: optuna.trial.FrozenTrial) -> dict:
        started = trial.datetime_start.astimezone(UTC) if trial.datetime_start is not None else None
        try:   # the same values sample the same point (the space is define-by-run)
            point, _ = self.candidate(optuna.trial.FixedTrial(trial.params, trial.number))
        except Exception:   # a space edited since: keep what Optuna has
            return dict(self.base_row, number=trial.number, state="failed", error=INTERRUPTED, started_at=started,
                        finished_at=self.now(), hparams=json.dumps({"recipe": {}, "vars": trial.params}, sort_keys=True))
        return self._row(trial.number, point, state="failed", error=INTERRUPTED, started_at=started or self.now(),
                         finished_at=self.now())

    # --- results --------------------------------------------------------------------------

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if result.get("kind") == "epoch" and trial_id in self._epochs:
            self._epochs[trial_id].append({k: result.get(k) for k in ("epoch", "loss", "val_top1", "seconds", "n_train")})
            if self.fatal is None:
                try:
                    self._report(trial_id)
                except Exception as e:   # as in on_trial_complete: keep the first error, stop the study
                    self.fatal = e

    def _report(self, trial_id: str) -> None:
        """Give Optuna the running trial's epochs: the user attribute CURVE (validation accuracy per epoch,
        shown by optuna-dashboard as text), and in a single-objective study the objective per epoch as
        intermediate values (`Trial.report`, which Optuna refuses in multi-objective studies). The step
        is the trial's epoch count: the epoch, or in a --target-size trial the epochs over its sizes."""
        trial, epochs = self._trials.get(trial_id), self._epochs[trial_id]
        if trial is None:
            return
        trial.set_user_attr(CURVE, [None if e.get("val_top1") is None else round(float(e["val_top1"]), 4) for e in epochs])
        (column, _), *more = self.objectives
        if not more and epochs[-1].get(column) is not None:
            trial.report(float(epochs[-1][column]), step=len(epochs))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        # the epoch result on which the scheduler stopped a trial reaches only this method
        if result and result.get("kind") == "epoch":
            known = {(e.get("n_train"), e["epoch"]) for e in self._epochs.get(trial_id, [])}
            if (result.get("n_train"), result.get("epoch")) not in known:
                self.on_trial_result(trial_id, result)
        if self.fatal is not None:   # recording failed: this trial stays RUNNING in Optuna for resume
            return
        try:
            self._settle(trial_id, result, error)
        except Exception as e:
            self.fatal = e

    def _settle(self, trial_id: str, result: dict | None, error: bool) -> None:
        if trial_id not in self._trials:
            return
        trial = self._trials.pop(trial_id)
        info = self._points.pop(trial_id)
        epochs = self._epochs.pop(trial_id, [])
        result = result or {}
        if result.get("kind") == "final":
            state, why = result.get("state", "failed"), result.get("error")
        elif error:
            state, why = "failed", WORKER_LOST
        elif result.get("kind") == "size":
            state, why = "pruned", f"stopped by the scheduler after {len(result.get('sizes') or [])} data size(s)"
        else:
            state, why = "pruned", f"stopped by the scheduler after {len(epochs)} epoch(s)"
        row = self._row(trial.number, info["point"], state=state, error=why, started_at=info["started_at"],
                        finished_at=self.now(), result=result, epochs=epochs)
        self.store.write_epochs(trial.number, [{"number": trial.number, **e} for e in epochs])
        self.store.write_trial(row)   # the fragment first, Optuna second (see reconcile)
        tell(self.study, trial, row, self.objectives)
        self._recorded(row, result)

    def _recorded(self, row: dict, result: dict | None = None) -> None:
        for listener in self.listeners:
            listener(row, result)

    def _row(self, number: int, point: Point, state: str, error: str | None, started_at: datetime,
             finished_at: datetime, result: dict | None = None, epochs: list[dict] | None = None) -> dict:
        result = result or {}
        last = (epochs or [{}])[-1]
        shape = describe(point.spec) if point.spec is not None else {}
        row = dict(self.base_row)
        row.update(
            number=number, state=state, error=error, text=point.text,
            arch_id=point.spec.arch_id if point.spec is not None else None,
            kinds=shape.get("kinds"), layout=shape.get("layout"), stem=shape.get("stem"),
            params=point.params, macs=point.macs, res=point.spec.res if point.spec is not None else None,
            memory=self.memory(point.spec) if self.memory is not None and point.spec is not None else None,
            frames=point.spec.frames if point.spec is not None else None,
            hparams=_choices(point),
            started_at=started_at, finished_at=finished_at,
            epochs_done=result.get("epochs_done", len(epochs or [])),
            val_top1=result.get("val_top1", last.get("val_top1")), loss=result.get("loss", last.get("loss")),
            train_seconds=result.get("train_seconds", last.get("seconds")),
        )
        for key in ("val_top5", "test_top1", "test_top5", "images_per_second", "peak_memory", "device", "worker", "n_train",
                    "worker_seconds", *PROXY_COLUMNS):
            if result.get(key) is not None:
                row[key] = result[key]
        for key in ("fraction", "seed", "epochs"):   # a scaling cell's own settings
            if key in point.run:
                row[key] = point.run[key]
        if self.fidelity is not None:
            row.update(self._sizes(number, result))
        if point.family is not None or point.spec is not None:   # the point's, not the worker's (a replayed
            row["family"] = point.family or family_of(point.spec)  # table's may predate the vocabulary)
        return row


    def _sizes(self, number: int, result: dict) -> dict:
        """A --target-size trial's sizes, the largest as its fraction, and its prediction at the target."""
        assert self.fidelity is not None  # asked for --target-size studies only
        sizes, accuracies = result.get("sizes") or [], result.get("sizes_top1") or []
        out = {"sizes": sizes, "sizes_top1": accuracies, "sizes_seconds": result.get("sizes_seconds") or [],
               "fraction": result.get("fraction")}
        if not sizes:
            return {"target_size": self.fidelity.target, **{k: v for k, v in out.items() if k != "fraction"}}
        prediction = self.fidelity.observe(number, sizes, accuracies)
        return {**out, **prediction_columns(prediction, self.fidelity.target)}


class _StopOnFatal(Stopper):
    def __init__(self, searcher: LabSearch):
        self.searcher = searcher

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.searcher.fatal is not None


def trial_memory(batch_size: int, num_classes: int, in_chans: int, *, precision: str = "32", optimizer: str = "adamw",
                 ema: bool = False) -> Callable[[Spec], int]:
    """What a trial row's `memory` holds: a point's predicted peak bytes of one training step
    (lab.memory.training_memory) at the study's batch size, precision and optimizer."""
    def memory(spec: Spec) -> int:
        return training_memory(spec, batch_size, num_classes, in_chans, precision=precision, optimizer=optimizer,
                               ema=ema).total

    return memory


def _choices(point: Point) -> str:
    """The row's `hparams`: the sampled hyperparameters and grammar variables, as sorted JSON."""
    return json.dumps({"recipe": point.hparams, "vars": point.values}, sort_keys=True)


# the objective columns by the names a study's objectives are given in (--objectives val_acc:max,...)
METRIC_NAMES = {"val_top1": "val_acc", "test_top1": "test_acc", "pred_top1": "pred_acc"}
ATTRS = ("text", "arch_id", "macs", "params", "family", "kinds")   # the row's columns every Optuna trial carries
CURVE = "val_acc_curve"   # the user attribute with a trial's validation accuracy per epoch


def metric_names(objectives: list[tuple[str, str]]) -> list[str]:
    """The names Optuna (`Study.set_metric_names`) and its tools show for `objectives`: val_acc, macs, ..."""
    return [METRIC_NAMES.get(column, column) for column, _ in objectives]


def tell(study: optuna.Study, trial: optuna.trial.Trial, row: dict, objectives: list[tuple[str, str]],
         original: optuna.trial.FrozenTrial | None = None) -> None:
    """Tell Optuna how `trial` ended, as its store row says, with the row's ATTRS, state and reason
    as user attributes.

    A rejected point (invalid, over budget, over memory; never trained) is a pruned Optuna trial
    (stopped before its first step, without values) whose `budget` constraint is violated: TPE puts
    it with the infeasible trials (it reads Optuna 5's constraints of complete and pruned trials
    alike) and learns to avoid the region instead of proposing it again (it ignores failed trials);
    lab.study.samplers reads the lab's "state"; and, having no values, it is never feasible nor on
    the Pareto front of Optuna (`best_trials`, `optuna.visualization`) or optuna-dashboard (whose
    best trials are the complete trials' front, constraints unread). A duplicate of an earlier trial
    (`original`) repeats that trial's outcome: the same point trained with the same seed, told again.
    """
    for key in ATTRS:
        trial.set_user_attr(key, _plain(row.get(key)))
    trial.set_user_attr("state", row["state"])
    if row.get("error"):
        trial.set_user_attr("reason", str(row["error"])[:500])
    values: list[Any] = [row.get(m) for m, _ in objectives]  # floats where told: None-checked below
    if original is not None:
        if original.state == optuna.trial.TrialState.COMPLETE and original.values is not None:
            study.tell(trial, original.values if len(original.values) > 1 else original.values[0])
        else:   # pruned, failed, or still running: nothing to repeat yet
            study.tell(trial, state=original.state if original.state.is_finished() else optuna.trial.TrialState.FAIL)
    elif row["state"] == "rejected":
        trial.set_constraint("budget", 1.0)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    elif row["state"] == "complete" and all(v is not None for v in values):
        study.tell(trial, values if len(values) > 1 else values[0])
    elif row["state"] == "pruned":
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    else:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)


def _plain(value: Any) -> Any:
    """`value` as JSON (what Optuna's storages keep): lists for tuples and arrays, Python numbers for numpy's."""
    if hasattr(value, "tolist"):   # a numpy scalar or array
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def counted(rows: list[dict]) -> int:
    """Trials that count toward the budget: trained (complete, pruned) or failed while training,
    not rejected points and not trials interrupted by a stopped driver."""
    return sum(1 for r in rows if r["state"] in ("complete", "pruned")
               or (r["state"] == "failed" and r.get("error") != INTERRUPTED))
