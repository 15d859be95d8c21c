"""`--logger`: a run's hyperparameters and per-epoch metrics in Lightning's loggers, read back with each
tool's own reader (TensorBoard's EventAccumulator, MLflow's client on its file store, the CSV file)."""

from __future__ import annotations

import csv
import sys

import pytest
import yaml

from lab.data import load_dataset
from lab.errors import TrainError
from lab.study import runner
from lab.train import loggers
from lab.train.run import train
from tests.support import run_cli

TINY = "@28 | conv(c=8,k=3),bn,relu | basic 1x8 | gap,fc"
RUN = dict(epochs=2, batch_size=32, device="cpu")   # synthetic:200: 160 training images, 5 steps an epoch


def _expected_epochs(result) -> dict[str, list[tuple[int, float]]]:
    """The per-epoch metrics the logger should hold, from the run's own history and record."""
    epochs = [h["epoch"] for h in result.history]
    last = epochs[-1]
    return {"train/loss": [(h["epoch"], h["loss"]) for h in result.history],
            "train/seconds": [(h["epoch"], h["seconds"]) for h in result.history],
            "val/top1": [(h["epoch"], h["val_top1"]) for h in result.history],
            "test/top1": [(last, result.record["test_top1"])], "test/top5": [(last, result.record["test_top5"])]}


def test_tensorboard_events_hold_the_runs_epochs_hyperparameters_and_test_accuracy(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    result = train(TINY, "synthetic:200", out=tmp_path, logger="tensorboard", **RUN)
    rec = result.record
    folder = tmp_path / "logs" / "tensorboard" / rec["run_id"]   # one folder per run, named by its run id
    assert result.log == str(folder)
    events = EventAccumulator(str(folder)).Reload()
    assert set(events.Tags()["scalars"]) == {"train/loss", "train/seconds", "train/lr", "val/top1", "val/top5",
                                             "val/loss", "test/top1", "test/top5"}
    for tag, expected in _expected_epochs(result).items():
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in expected], tag   # step = epoch, once per epoch
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6), tag   # float32 in the file
    assert events.Scalars("val/loss")[-1].value == pytest.approx(rec["val_loss"], rel=1e-6)
    # the HParams view: the hyperparameters of the run's session
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["text"].string_value == rec["text"] and hparams["arch_id"].string_value == rec["arch_id"]
    assert hparams["macs"].number_value == rec["macs"] and hparams["params"].number_value == rec["params"]
    assert hparams["recipe/lr"].number_value == pytest.approx(rec["lr"]) and hparams["seed"].number_value == 0
    saved = yaml.safe_load((folder / "hparams.yaml").read_text())
    assert saved["text"] == rec["text"] and saved["n_train"] == rec["n_train"] == 160
    assert saved["recipe/epochs"] == 2 and saved["family"] == rec["family"] and saved["run_id"] == rec["run_id"]


def test_mlflow_file_store_holds_the_runs_params_and_metric_history(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")   # restored after the test (make_logger sets it when unset)
    result = train(TINY, "synthetic:200", out=None, logger="mlflow", log_dir=tmp_path / "logs", **RUN)
    rec = result.record
    client = MlflowClient(tracking_uri=f"file:{tmp_path / 'logs' / 'mlruns'}")
    experiment = client.get_experiment_by_name("lab")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == rec["run_id"] and run.info.status == "FINISHED"
    assert run.info.run_id in result.log
    params = run.data.params
    for key in ("text", "arch_id", "macs", "params", "family", "dataset", "n_train", "seed"):
        assert params[key] == str(rec[key]), key
    assert params["recipe/lr"] == str(rec["lr"]) and params["recipe/epochs"] == "2" and params["recipe/name"] == "default"
    for tag, expected in _expected_epochs(result).items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, tag))
        assert history == expected, tag   # float64: exactly the run's numbers
    assert run.data.metrics["val/top1"] == rec["val_top1"]   # the final val top-1 is its last value


def test_mlflow_params_are_not_cut_at_250_characters(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    text = "@28 | " + ", ".join(f"1x{8 + i}" for i in range(80))   # grammar text of a deep point is that long
    logger = loggers.make_logger("mlflow", tmp_path, "long", "r")
    loggers.start(logger, {"text": text, "recipe": {"lr": 0.1}})
    loggers.finish(logger, None, ok=False)
    run = MlflowClient(tracking_uri=f"file:{tmp_path / 'mlruns'}").get_run(logger.run_id)
    assert len(text) > 250 and run.data.params["text"] == text and run.data.params["recipe/lr"] == "0.1"
    assert run.info.status == "FAILED"


def test_csv_metrics_have_a_row_per_epoch_and_a_test_row(tmp_path):
    result = train(TINY, "synthetic:200", out=None, logger="csv", log_dir=tmp_path, **RUN)
    folder = tmp_path / "csv" / result.record["run_id"]
    rows = list(csv.DictReader((folder / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 2]
    for row, h in zip(rows, result.history):
        assert float(row["train/loss"]) == pytest.approx(h["loss"], rel=1e-12)
        assert float(row["val/top1"]) == pytest.approx(h["val_top1"], rel=1e-12) and row["test/top1"] == ""
    assert float(rows[-1]["test/top1"]) == pytest.approx(result.record["test_top1"]) and rows[-1]["train/loss"] == ""
    assert yaml.safe_load((folder / "hparams.yaml").read_text())["arch_id"] == result.record["arch_id"]


def test_an_unknown_logger_is_one_line_naming_the_flag_and_the_choices(capsys, tmp_path):
    with pytest.raises(TrainError, match=r"^--logger 'neptune': expected one of tensorboard, csv, mlflow, wandb$"):
        train(TINY, "synthetic:200", out=None, logger="neptune", **RUN)
    code, _, err = run_cli(capsys, "train", TINY, "--dataset", "synthetic:200", "--out", str(tmp_path),
                             "--logger", "tb")
    assert code == 2 and err.strip() == "lab: error: --logger 'tb': expected one of tensorboard, csv, mlflow, wandb"
    assert not list(tmp_path.iterdir())   # refused before anything was written
    code, _, err = run_cli(capsys, "study", "create", "--name", "x", "--root", str(tmp_path), "--logger", "tb")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "logger" in err and "tensorboard, csv" in err


@pytest.mark.parametrize("kind, modules", [("mlflow", ["mlflow"]), ("tensorboard", ["tensorboard", "tensorboardX"]),
                                           ("wandb", ["wandb"])])
def test_a_missing_logger_package_names_its_extra(kind, modules, monkeypatch):
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)   # what an absent package looks like to the import system
    with pytest.raises(TrainError, match=rf"^--logger {kind}: the {modules[0]} package is not installed: "
                                         rf"pip install 'lab\[{kind}\]'$"):
        train(TINY, "synthetic:200", out=None, logger=kind, **RUN)


def test_wandb_is_refused_with_its_extra_or_made_offline(tmp_path, monkeypatch):
    if not loggers._installed("wandb"):
        with pytest.raises(TrainError, match=r"pip install 'lab\[wandb\]'"):
            loggers.make_logger("wandb", tmp_path, "proj", "trial-000001", group="study")
        return
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = loggers.make_logger("wandb", tmp_path, "proj", "trial-000001", group="study")
    assert logger.name == "proj" and str(tmp_path) in str(logger.save_dir)


def _recording_logger(fail: bool = False):
    """A caller-made Lightning logger that keeps what it is given (and, with `fail`, cannot log metrics)."""
    from lightning.pytorch.loggers import Logger

    class RecordingLogger(Logger):
        name, version = "recording", "0"

        def __init__(self) -> None:
            super().__init__()
            self.params: dict = {}
            self.metrics: list[tuple[int | None, dict]] = []
            self.status: str | None = None

        def log_hyperparams(self, params, *args, **kwargs) -> None:
            self.params.update(params)

        def log_metrics(self, metrics, step=None) -> None:
            if fail:
                raise OSError("the tracking server is gone")
            self.metrics.append((step, dict(metrics)))

        def finalize(self, status: str) -> None:
            self.status = status

    return RecordingLogger()


def test_a_logger_that_fails_mid_run_is_a_warning_and_a_stopped_run_is_killed(capsys):
    broken = _recording_logger(fail=True)
    result = train(TINY, "synthetic:200", out=None, logger=broken, **RUN)
    err = capsys.readouterr().err
    assert result.record["state"] == "complete" and broken.status == "success" and result.log is not None
    assert "lab: warning: --logger recording: epoch 1 not logged (OSError: the tracking server is gone)" in err
    assert broken.params["recipe/epochs"] == 2 and broken.params["text"] == result.record["text"]

    def stop(epoch: dict) -> None:   # what Tune does to a trial its scheduler stops (sys.exit in its thread)
        raise SystemExit(0)

    stopped = _recording_logger()
    with pytest.raises(SystemExit):
        train(TINY, "synthetic:200", out=None, logger=stopped, on_epoch=stop, **RUN)
    assert stopped.status == "KILLED" and [step for step, _ in stopped.metrics] == [1]   # logged before the stop


def test_a_study_trial_logs_one_run_named_by_its_number_under_the_study(tmp_path, monkeypatch):
    reports: list[dict] = []
    monkeypatch.setattr(runner.tune, "report", reports.append)   # run_trial outside a Tune session
    data = load_dataset("synthetic:200")
    config = {"number": 42, "text": TINY, "macs": 0, "params": 0, "hparams": {}}
    settings = {"cpus": 1, "recipe": "default", "epochs": 2, "batch_size": 32, "seed": 0, "device": "cpu",
                "teachers": str(tmp_path / "teachers"), "ladder": None, "logger": "csv",
                "logs": str(tmp_path / "logs"), "study": "demo"}
    runner.run_trial(config, data=data, settings=settings)
    final = reports[-1]
    assert final["kind"] == "final" and final["state"] == "complete", final
    (folder,) = (tmp_path / "logs" / "csv").iterdir()
    assert folder.name == "trial-000042"   # one version folder, named by the trial
    rows = list(csv.DictReader((folder / "metrics.csv").open()))
    epochs = [r for r in reports if r["kind"] == "epoch"]
    assert [int(r["step"]) for r in rows[:-1]] == [e["epoch"] for e in epochs] == [1, 2]
    assert [float(r["val/top1"]) for r in rows[:-1]] == pytest.approx([e["val_top1"] for e in epochs], rel=1e-12)
    assert float(rows[-1]["test/top1"]) == pytest.approx(final["test_top1"])


def test_study_logger_settings():
    from lab.errors import StudyError
    from lab.study.config import StudyConfig

    assert StudyConfig(name="s").logger is None and StudyConfig(name="s", logger="mlflow").logger == "mlflow"
    with pytest.raises(StudyError, match=r"^study logger = 'tb': expected one of tensorboard, csv, mlflow, wandb$"):
        StudyConfig(name="s", logger="tb")
    with pytest.raises(StudyError, match=r"replayed study .* --logger needs --backend ray"):
        StudyConfig(name="s", logger="csv", backend="replay:hybrid")


@pytest.mark.slow
def test_a_live_study_logs_each_trial_in_its_logs_folder_and_tune_writes_no_copies(tmp_path, local_ray, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lab.study.config import StudyConfig
    from lab.study.store import StudyStore

    monkeypatch.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "0")   # restored after: _tune sets it
    config = StudyConfig(name="logged", space="conv", dataset="mnist5k", fraction=0.05, epochs=2, batch_size=32,
                         sampler="random", scheduler="fifo", concurrency=1, trials=2, logger="tensorboard")
    folder = runner.create(config, root=tmp_path, verbose=0)
    trials, epochs = StudyStore(folder).tables()
    done = [r for r in trials.to_pylist() if r["state"] == "complete"]
    assert len(done) == 2
    for row in done:
        events = EventAccumulator(str(folder / "logs" / "tensorboard" / f"trial-{row['number']:06d}")).Reload()
        curve = sorted((e["epoch"], e["val_top1"]) for e in epochs.to_pylist() if e["number"] == row["number"])
        assert [(e.step, e.value) for e in events.Scalars("val/top1")] == [
            (s, pytest.approx(v, rel=1e-6)) for s, v in curve]
    # Tune's own CSV, JSON and TensorBoard copies of each trial are off with --logger
    assert not list((folder / "ray").rglob("progress.csv")) and not list((folder / "ray").rglob("events.out.*"))
