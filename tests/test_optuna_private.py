"""The one use of Optuna's private API (lab.study.optuna_private). If a new Optuna release renames
`FrozenTrial._trial_id` or changes what the `Trial` constructor takes, this fails here, by name,
instead of a resumed study failing in the field."""

from __future__ import annotations

import optuna

from lab.study.optuna_private import live_trial


def test_a_frozen_running_trial_becomes_a_live_handle_again(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/optuna.db")
    study = optuna.create_study(study_name="s", storage=storage, directions=["maximize", "minimize"])
    asked = study.ask()
    asked.suggest_int("x", 0, 3)
    # a driver that died now left trial 0 RUNNING; a new driver reads it back from the storage
    again = optuna.load_study(study_name="s", storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/optuna.db"))
    (frozen,) = again.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    assert hasattr(frozen, "_trial_id"), "optuna.trial.FrozenTrial lost _trial_id: update lab.study.optuna_private"
    trial = live_trial(again, frozen)
    assert trial.number == frozen.number == 0 and trial.params == {"x": asked.params["x"]}
    trial.set_user_attr("state", "failed")
    trial.set_constraint("budget", 1.0)
    again.tell(trial, state=optuna.trial.TrialState.FAIL)
    (done,) = again.get_trials()
    assert done.state == optuna.trial.TrialState.FAIL and done.user_attrs["state"] == "failed"
    assert [v for k, v in done.system_attrs.items() if k.endswith(":budget")] == [1.0]   # what samplers read
