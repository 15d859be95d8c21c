"""Experiment loggers of a training run (`--logger`): Lightning's TensorBoard, CSV, MLflow and W&B loggers.

A run is one logger run. Its hyperparameters (the point's text, arch_id, family, params, MACs, the
data, the recipe's fields as recipe/FIELD, the seed) are logged before it trains; its metrics once
per epoch with step = the epoch (1, 2, ...): train/loss, train/lr, train/seconds, and val/top1,
val/top5, val/loss on the epochs that validate (every epoch of a run of up to 16, and always the
last); the test split's test/top1 and test/top5 at the end (step = the last epoch). The final val
top-1 is val/top1's last value. The files go under a log folder LOGS:

    LOGS/tensorboard/RUN/   events and hparams.yaml         (tensorboard --logdir LOGS/tensorboard)
    LOGS/csv/RUN/           metrics.csv (a row per epoch, and the test row) and hparams.yaml
    LOGS/mlruns/            MLflow's file store, unless MLFLOW_TRACKING_URI names a server or database
    LOGS/wandb/             W&B's local files; W&B's own environment applies (WANDB_MODE=offline, ...)

The Trainer itself keeps `logger=False` (it would log per optimizer step); the optional packages
(tensorboard, mlflow, wandb) are imported only when a logger of theirs is made.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab.errors import LabError, TrainError, first_line

if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger

LOGGERS = ("tensorboard", "csv", "mlflow", "wandb")
# a logger's packages (any one will do) and the lab extra that installs them
_PACKAGES = {"tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"), "mlflow": (("mlflow",), "mlflow"),
             "wandb": (("wandb",), "wandb")}
# the metrics TensorBoard's HParams view shows beside the hyperparameters
HPARAM_METRICS = ("val/top1", "val/loss", "train/loss", "test/top1")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(kind: str) -> str:
    """`kind` when it is a known logger whose package is installed; else TrainError (one line) naming
    --logger and the choices, or the extra to install."""
    if kind not in LOGGERS:
        raise TrainError(f"--logger {kind!r}: expected one of {', '.join(LOGGERS)}")
    modules, extra = _PACKAGES.get(kind, ((), ""))
    if modules and not any(_installed(m) for m in modules):
        raise TrainError(f"--logger {kind}: the {modules[0]} package is not installed: pip install 'lab[{extra}]'")
    return kind


def make_logger(kind: str, save_dir: str | Path, experiment: str, run_name: str, group: str | None = None) -> Logger:
    """Lightning's logger `kind` for one run named `run_name` under `save_dir`: TensorBoard and CSV in
    save_dir/KIND/RUN_NAME; MLflow in the experiment `experiment` of MLFLOW_TRACKING_URI, else of the
    file store save_dir/mlruns; W&B in the project `experiment` (and `group`), files in save_dir/wandb."""
    require(kind)
    save_dir = Path(save_dir)
    try:
        save_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrainError(f"--log-dir {save_dir}: cannot make it ({e.strerror or e})") from None
    if kind == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger  # lazy: start-up time

        return TensorBoardLogger(save_dir, name=kind, version=run_name, default_hp_metric=False)
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger  # lazy: start-up time

        return CSVLogger(save_dir, name=kind, version=run_name)
    if kind == "mlflow":
        return _mlflow(save_dir, experiment, run_name, group)
    from lightning.pytorch.loggers import WandbLogger  # lazy: start-up time

    return WandbLogger(project=experiment, name=run_name, group=group, save_dir=str(save_dir))


def _mlflow(save_dir: Path, experiment: str, run_name: str, group: str | None) -> Logger:
    from lightning.pytorch.loggers import MLFlowLogger  # lazy: start-up time
    from mlflow.tracking import MlflowClient  # lazy: start-up time (an optional package)

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        uri = f"file:{(save_dir / 'mlruns').resolve()}"
        # MLflow 3 keeps its file store behind this switch (it prefers a database: MLFLOW_TRACKING_URI=sqlite:///...)
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    try:   # made here, once: the concurrent trials of a study would race to create it
        client = MlflowClient(uri)
        if client.get_experiment_by_name(experiment) is None:
            with contextlib.suppress(Exception):   # another trial made it first
                client.create_experiment(experiment)
    except Exception as e:
        raise TrainError(f"--logger mlflow: cannot open the tracking store {uri} ({type(e).__name__}: "
                         f"{first_line(e)})") from None
    return MLFlowLogger(experiment_name=experiment, run_name=run_name, tracking_uri=uri,
                        tags={"lab.group": group} if group else None)


def flatten(params: dict, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of KEY/SUB keys (recipe/lr)."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _kind(logger: Logger) -> str:
    return type(logger).__name__.removesuffix("Logger").lower()


def start(logger: Logger, params: dict) -> None:
    """Log the run's hyperparameters (nested mappings flattened: recipe/lr). TrainError, one line, when
    the logger cannot write (an unreachable tracking server, a read-only folder)."""
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger  # lazy: start-up time

    flat = flatten(params)
    try:
        if isinstance(logger, MLFlowLogger):
            _mlflow_params(logger, flat)
        else:
            logger.log_hyperparams(flat)
        if isinstance(logger, TensorBoardLogger):
            _tensorboard_hparams(logger, flat)
        logger.save()
    except LabError:
        raise
    except Exception as e:
        raise TrainError(f"--logger {_kind(logger)}: cannot log the run ({type(e).__name__}: {first_line(e)})") from None


def _mlflow_params(logger: Any, flat: dict[str, Any]) -> None:
    """MLflow's params in full (Lightning's MLFlowLogger cuts values at 250 characters; grammar text is longer)."""
    from mlflow.entities import Param  # lazy: start-up time (an optional package)
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH  # lazy: start-up time (an optional package)

    params = [Param(key, str(value)[:MAX_PARAM_VAL_LENGTH]) for key, value in flat.items()]
    for i in range(0, len(params), 100):   # MLflow takes at most 100 params a batch
        logger.experiment.log_batch(run_id=logger.run_id, params=params[i:i + 100])


def _tensorboard_hparams(logger: Any, flat: dict[str, Any]) -> None:
    """TensorBoard's HParams view of the run: its hyperparameters beside HPARAM_METRICS (whose values are
    the scalars logged under those tags; Lightning's log_hyperparams would log placeholders at step 0)."""
    try:
        from torch.utils.tensorboard.summary import hparams  # lazy: start-up time
    except ImportError:   # tensorboardX instead of tensorboard
        from tensorboardX.summary import hparams  # lazy: start-up time

    values = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in flat.items()}
    writer = logger.experiment._get_file_writer()
    for summary in hparams(values, dict.fromkeys(HPARAM_METRICS, 0.0)):
        writer.add_summary(summary)


def epoch_metrics(epoch: dict, val: dict | None, lr: float | None) -> dict[str, float]:
    """An epoch's metrics as a logger records them: `epoch` is lab.train.callbacks.EpochHistory's entry,
    `val` the epoch's validation {"top1", "top5", "loss"} (None when it did not validate)."""
    metrics = {"train/loss": epoch.get("loss"), "train/seconds": epoch.get("seconds"), "train/lr": lr}
    if val is not None:
        metrics.update({"val/top1": val.get("top1"), "val/top5": val.get("top5"), "val/loss": val.get("loss")})
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)}


def log_epoch(logger: Logger, epoch: dict, val: dict | None, lr: float | None) -> None:
    """One epoch's metrics at step = the epoch, written through (a trial a scheduler stops keeps its epochs).
    A logger that fails now (a tracking server gone) is a warning: the run goes on."""
    try:
        logger.log_metrics(epoch_metrics(epoch, val, lr), step=int(epoch["epoch"]))
        logger.save()
    except Exception as e:
        _warn(logger, f"epoch {epoch['epoch']} not logged", e)


def _warn(logger: Logger, what: str, error: Exception) -> None:
    print(f"lab: warning: --logger {_kind(logger)}: {what} ({type(error).__name__}: {first_line(error)})",
          file=sys.stderr)


def finish(logger: Logger, record: dict | None, ok: bool) -> None:
    """The run's test accuracy (from its record, at step = its last epoch), then the logger closed: a
    finished run when `ok`, a failed one otherwise."""
    # the run is recorded already: a logger failing now is a warning
    final = {"test/top1": record.get("test_top1"), "test/top5": record.get("test_top5")} if ok and record else {}
    final_metrics = {k: float(v) for k, v in final.items() if v is not None}
    try:
        if final_metrics and record is not None:
            logger.log_metrics(final_metrics, step=int(record.get("epochs_done") or 0))
    except Exception as e:
        _warn(logger, "the test accuracy not logged", e)
    try:
        _close(logger, "success" if ok else "failed")
    except Exception as e:
        _warn(logger, "not closed", e)


def abandon(logger: Logger, stopped: bool = False) -> None:
    """Close the logger of a run that ended with an exception; `stopped`: it was stopped (Ctrl-C, or a
    scheduler's stop: Tune ends a trial's thread with SystemExit), an MLflow run KILLED rather than
    FAILED. Never raises (the run's own exception is the one to see)."""
    with contextlib.suppress(Exception):
        _close(logger, "KILLED" if stopped else "failed")


def _close(logger: Logger, status: str) -> None:
    logger.finalize(status)   # MLflow: success -> FINISHED, failed -> FAILED, KILLED as it is; the others close files
    if _kind(logger) == "wandb":   # Lightning leaves W&B's run open: the next trial in this worker would join it
        import wandb  # lazy: start-up time (an optional package)

        wandb.finish(exit_code=0 if status == "success" else 1)


def where(logger: Logger) -> str:
    """Where the run's log is: its folder, or MLflow's tracking URI, experiment and run."""
    from lightning.pytorch.loggers import MLFlowLogger  # lazy: start-up time

    if isinstance(logger, MLFlowLogger):
        return f"{logger._tracking_uri} (experiment {logger._experiment_name!r}, run {logger.run_id})"
    return str(logger.log_dir or logger.save_dir)
