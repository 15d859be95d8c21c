"""The study's searcher: Ray Tune's OptunaSearch bound to the study's persistent Optuna study, with
the grammar space as its define-by-run function, rejection by the cost model before any training,
and the study's Parquet store written by the driver before Optuna is told.

Order matters for resuming after a crash: a trial's fragment is written first, then Optuna is told;
`reconcile()` settles the trials a killed driver left RUNNING in Optuna from the fragments.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import optuna
from ray.tune.search.optuna import OptunaSearch

from lab.study.config import StudyError

MAX_REJECTS = 200          # consecutive rejected points before the space is declared infeasible
INTERRUPTED = "interrupted: the study's driver stopped during this trial"
DUPLICATE = "duplicate of trial"   # a rejected point that an earlier trial already trained


def now() -> datetime:
    return datetime.now(timezone.utc)


class LabSearch(OptunaSearch):
    """OptunaSearch whose suggestions are grammar points of `space` that pass the cost model."""

    def __init__(self, space, store, objectives: list[tuple[str, str]], sampler: optuna.samplers.BaseSampler,
                 study_name: str, storage: optuna.storages.BaseStorage, base_row: dict, num_classes: int,
                 in_chans: int, res: int | None = None):
        self.lab_space, self.store, self.objectives = space, store, objectives
        self.base_row, self.num_classes, self.in_chans, self.res = base_row, num_classes, in_chans, res
        self._epochs: dict[str, list[dict]] = {}
        self._points: dict[str, dict] = {}
        # (grammar text, hyperparameters) -> the trial that trained it: samplers re-propose points
        self._seen: dict[tuple[str, str], int] = {
            (r["text"], r["hparams"]): r["number"]
            for r in store.trials().to_pylist() if r["state"] != "rejected" and r["text"] and r["hparams"]}
        metrics, modes = [m for m, _ in objectives], [s for _, s in objectives]
        single = len(objectives) == 1
        super().__init__(space=lambda trial: None, metric=metrics[0] if single else metrics,
                         mode=modes[0] if single else modes, sampler=sampler, study_name=study_name,
                         storage=storage)

    @property
    def study(self) -> optuna.Study:
        return self._ot_study

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save for Ray: the study's state is the Optuna database and the Parquet store,
        and `lab study resume` rebuilds the searcher from them."""

    def restore(self, checkpoint_path: str) -> None:
        pass

    # --- sampling -------------------------------------------------------------------------

    def _point(self, trial: optuna.Trial):
        """Sample a point; returns (point, reason) where reason is None when it may be trained."""
        import lab
        from lab.cost import cost

        point = self.lab_space.sample(trial, num_classes=self.num_classes, in_chans=self.in_chans)
        if point.reason is not None or self.res is None or point.spec.res == self.res:
            return point, point.reason
        try:   # the study trains at another resolution than the space's: rescale and re-check the budget
            spec = lab.scale(point.spec, res=self.res)
        except lab.SpecError as e:
            return point, f"SpecError at {self.res} px: {e}"
        report = cost(spec, self.num_classes, self.in_chans)
        over = self.lab_space.over_budget(report.macs, report.params)
        over = None if over is None else f"at {self.res} px: {over}"
        point = type(point)(spec=spec, text=spec.text, hparams=point.hparams, params=report.params, macs=report.macs,
                            reason=over)
        return point, over

    def suggest(self, trial_id: str) -> dict | None:
        for _ in range(MAX_REJECTS):
            trial = self._ot_study.ask()
            point, reason = self._point(trial)
            earlier = self._seen.get(self._key(point)) if reason is None else None
            if reason is None and earlier is None:
                self._seen[self._key(point)] = trial.number
                self._ot_trials[trial_id] = trial
                self._epochs[trial_id] = []
                self._points[trial_id] = {"point": point, "started_at": now()}
                return {"number": trial.number, "text": point.text, "hparams": point.hparams,
                        "macs": point.macs, "params": point.params, "run": point.run}
            if earlier is not None:
                reason = f"{DUPLICATE} {earlier}: the same point and hyperparameters"
            row = self._row(trial.number, point, state="rejected", error=reason, started_at=now(), finished_at=now())
            self.store.write_trial(row)
            tell(self._ot_study, trial.number, row, self.objectives, self._outcome(earlier))
        raise StudyError(f"{MAX_REJECTS} points of space {self.lab_space.name!r} in a row were invalid, over "
                         f"budget or already tried: its feasible region is empty or tiny (widen the budget or the ranges)")

    @staticmethod
    def _key(point) -> tuple[str, str]:
        """What makes two trials the same: the grammar text and the sampled values (the row's hparams)."""
        return point.text, _choices(point)

    def _outcome(self, number: int | None) -> optuna.trial.FrozenTrial | None:
        """The Optuna trial `number`, whose outcome a duplicate of it repeats (None: not a duplicate)."""
        if number is None:
            return None
        return self._ot_study._storage.get_trial(
            self._ot_study._storage.get_trial_id_from_study_id_trial_number(self._ot_study._study_id, number))

    # --- results --------------------------------------------------------------------------

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if result.get("kind") == "epoch" and trial_id in self._epochs:
            self._epochs[trial_id].append({k: result.get(k) for k in ("epoch", "loss", "val_top1", "seconds")})

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        # the epoch result on which the scheduler stopped a trial reaches only this method
        if result and result.get("kind") == "epoch":
            known = {e["epoch"] for e in self._epochs.get(trial_id, [])}
            if result.get("epoch") not in known:
                self.on_trial_result(trial_id, result)
        self._settle(trial_id, result, error)

    def _settle(self, trial_id: str, result: dict | None, error: bool) -> None:
        if trial_id not in self._ot_trials:
            return
        trial = self._ot_trials.pop(trial_id)
        info = self._points.pop(trial_id)
        epochs = self._epochs.pop(trial_id, [])
        result = result or {}
        if result.get("kind") == "final":
            state, why = result.get("state", "failed"), result.get("error")
        elif error:
            state, why = "failed", "the trial raised outside training (see the Ray logs in the study folder)"
        else:
            state, why = "pruned", f"stopped by the scheduler after {len(epochs)} epoch(s)"
        row = self._row(trial.number, info["point"], state=state, error=why, started_at=info["started_at"],
                        finished_at=now(), result=result, epochs=epochs)
        self.store.write_epochs(trial.number, [{"number": trial.number, **e} for e in epochs])
        self.store.write_trial(row)   # the fragment first, Optuna second (see reconcile)
        tell(self._ot_study, trial.number, row, self.objectives)
        self._completed_trials.add(trial_id)

    def _row(self, number: int, point, state: str, error: str | None, started_at, finished_at,
             result: dict | None = None, epochs: list[dict] | None = None) -> dict:
        from lab.study.space import describe

        result = result or {}
        last = (epochs or [{}])[-1]
        shape = describe(point.spec) if point.spec is not None else {}
        row = dict(self.base_row)
        row.update(
            number=number, state=state, error=error, text=point.text,
            arch_id=point.spec.arch_id if point.spec is not None else None,
            family=result.get("family"), kinds=shape.get("kinds"), layout=shape.get("layout"), stem=shape.get("stem"),
            params=point.params, macs=point.macs, res=point.spec.res if point.spec is not None else None,
            frames=point.spec.frames if point.spec is not None else None,
            hparams=_choices(point),
            started_at=started_at, finished_at=finished_at,
            epochs_done=result.get("epochs_done", len(epochs or [])),
            val_top1=result.get("val_top1", last.get("val_top1")), loss=result.get("loss", last.get("loss")),
            train_seconds=result.get("train_seconds", last.get("seconds")),
        )
        for key in ("val_top5", "test_top1", "test_top5", "images_per_second", "peak_memory", "device", "worker", "n_train",
                    "worker_seconds"):
            if result.get(key) is not None:
                row[key] = result[key]
        for key in ("fraction", "seed", "epochs"):   # a scaling cell's own settings
            if key in point.run:
                row[key] = point.run[key]
        if point.family is not None:
            row["family"] = point.family
        elif row.get("family") is None and point.spec is not None:
            from lab.catalog import family_of
            row["family"] = family_of(point.spec)
        return row


def _choices(point) -> str:
    """The row's `hparams`: the sampled hyperparameters and grammar variables, as sorted JSON."""
    return json.dumps({"recipe": point.hparams, "vars": point.values}, sort_keys=True)


PENALTY = {"max": 0.0, "min": 1e18}   # the worst value of an objective, for rejected points


def tell(study: optuna.Study, number: int, row: dict, objectives: list[tuple[str, str]],
         original: optuna.trial.FrozenTrial | None = None) -> None:
    """Tell Optuna how trial `number` ended, as its store row says.

    A rejected point (invalid or over budget; never trained) is a complete Optuna trial whose
    `budget` constraint is violated, with the worst objective values (its known MACs and params
    where they are objectives): TPE and NSGA-II learn to avoid the infeasible region instead of
    proposing it again (they ignore failed trials). A duplicate of an earlier trial (`original`)
    repeats that trial's outcome: the same point trained with the same seed, told again.
    """
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    study._storage.set_trial_user_attr(trial_id, "state", row["state"])
    if row.get("error"):
        study._storage.set_trial_user_attr(trial_id, "reason", str(row["error"])[:500])
    values = [row.get(m) for m, _ in objectives]
    if original is not None:
        if original.state == optuna.trial.TrialState.COMPLETE and original.values is not None:
            study.tell(number, original.values if len(original.values) > 1 else original.values[0])
        else:   # pruned, failed, or still running: nothing to repeat yet
            study.tell(number, state=original.state if original.state.is_finished() else optuna.trial.TrialState.FAIL)
    elif row["state"] == "rejected":
        optuna.trial.Trial(study, trial_id).set_constraint("budget", 1.0)
        values = [v if m in ("macs", "params") and v is not None else PENALTY[sense]
                  for v, (m, sense) in zip(values, objectives)]
        study.tell(number, values if len(values) > 1 else values[0])
    elif row["state"] == "complete" and all(v is not None for v in values):
        study.tell(number, values if len(values) > 1 else values[0])
    elif row["state"] == "pruned":
        study.tell(number, state=optuna.trial.TrialState.PRUNED)
    else:
        study.tell(number, state=optuna.trial.TrialState.FAIL)


def reconcile(study: optuna.Study, store, objectives: list[tuple[str, str]], base_row: dict) -> int:
    """Settle the trials a killed driver left RUNNING: from their fragment when it was written,
    else as failed (interrupted; they do not count toward the budget). Returns how many were settled."""
    rows = {r["number"]: r for r in store.trials().to_pylist()}
    settled = 0
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        row = rows.get(trial.number)
        if row is None:
            row = dict(base_row, number=trial.number, state="failed", error=INTERRUPTED, finished_at=now(),
                       hparams=json.dumps(trial.params, sort_keys=True))
            store.write_trial(row)
        tell(study, trial.number, row, objectives)
        settled += 1
    return settled


def counted(rows: list[dict]) -> int:
    """Trials that count toward the budget: trained (complete, pruned) or failed while training,
    not rejected points and not trials interrupted by a stopped driver."""
    return sum(1 for r in rows if r["state"] in ("complete", "pruned")
               or (r["state"] == "failed" and r.get("error") != INTERRUPTED))
