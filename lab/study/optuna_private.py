"""The one place the lab reaches into Optuna's private API, where its public API has no way to do
what a study needs. tests/test_optuna_private.py fails loudly when a new Optuna release changes it.

- Resuming a study settles the trials a killed driver left RUNNING: each is told its outcome and
  given user attributes (its state, its reason). Optuna hands out live `Trial` objects only from
  `Study.ask()`; a FrozenTrial read back from the storage becomes one again through the `Trial`
  constructor, which takes the storage's private trial id (`FrozenTrial._trial_id`).
"""

from __future__ import annotations

import optuna


def live_trial(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> optuna.trial.Trial:
    """A live handle (set_user_attr, set_constraint) on a trial of `study` read back as `frozen`."""
    return optuna.trial.Trial(study, frozen._trial_id)
