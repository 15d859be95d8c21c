"""--gpus-per-trial auto: trials packed onto GPUs by predicted training memory (lab.study.packing), the
probe of Ray's GPUs and its one-line refusal of logical GPUs (lab.study.cluster), and, on Ray's logical
GPUs with --device cpu, studies whose trials run as many at once as the fractions allow."""

from __future__ import annotations

import glob
import json
import math
from pathlib import Path

import optuna
import pytest
import torch
from support import ray_head

from lab.catalog import resolve
from lab.cli.main import main
from lab.errors import LabError, StudyError
from lab.grammar import parse
from lab.memory import training_memory
from lab.study import cluster
from lab.study.cluster import GpuProbe, check_cuda
from lab.study.config import StudyConfig
from lab.study.packing import (
    CUDA_CONTEXT,
    GRID,
    HEADROOM,
    Packing,
    gpu_fraction,
    gpu_memory_of,
    need_bytes,
    worker_device,
)
from lab.study.store import StudyStore

GB = 10**9
TINY = "resnet18@28px,w=0.25,d=0.5"


def _predicted(spec, batch: int, in_chans: int, **kwargs) -> int:
    """A study's prediction at precision auto: the larger of fp32's and bf16 mixed's."""
    return max(training_memory(spec, batch, 10, in_chans, precision=p, **kwargs).total for p in ("32", "bf16-mixed"))


def _reference_fraction(predicted: int, gpu: int) -> float | None:
    """The smallest k/16 of `gpu` that holds predicted x 1.2 + 500 MB, by counting sixteenths."""
    need = predicted * 1.2 + 500e6
    for k in range(1, 17):
        if k * gpu / 16 >= need - 1e-6:   # the module rounds the headroom's bytes up (< 1 byte)
            return k / 16
    return None


def test_the_fraction_is_predicted_memory_with_headroom_in_sixteenths_of_a_gpu():
    assert (HEADROOM, CUDA_CONTEXT, GRID) == (1.2, 500 * 10**6, 16)   # the README documents these
    for gpu in (8 * GB, 16 * GB, 24 * GB, 80 * GB):
        for predicted in (0, 10**6, 3 * 10**8, GB, 2.5 * GB, 7 * GB, 12 * GB, 20 * GB, 66 * GB, 70 * GB):
            assert gpu_fraction(int(predicted), gpu) == _reference_fraction(int(predicted), gpu), (predicted, gpu)
    # at the grid's steps exactly: half a 16 GB GPU holds 8 GB, 6.25 GB predicted x 1.2 + 0.5 GB
    assert gpu_fraction(int(6.25 * GB), 16 * GB) == 0.5
    assert gpu_fraction(int(6.25 * GB) + 10, 16 * GB) == 9 / 16
    assert gpu_fraction(0, 16 * GB) == 1 / 16                 # never less than a sixteenth
    assert gpu_fraction(int(12.9 * GB), 16 * GB) == 1.0       # 15.98 GB: the whole GPU
    assert gpu_fraction(int(13 * GB), 16 * GB) is None        # 16.1 GB: more than one GPU


def _packing(gpu: int, batch: int = 64) -> Packing:
    return Packing(gpu, "--gpu-memory", batch, 10, 3, cpus=2.0)


def test_small_points_share_a_gpu_large_ones_get_one_alone_and_one_over_a_gpu_is_refused():
    small, large, huge = resolve("resnet18@32px,w=0.25"), resolve("resnet50"), resolve("vit_l16")
    # a GPU of 1.5 x the ResNet-50's need (at 224 px, batch 64): it gets 11/16, alone
    gpu = int(need_bytes(_predicted(large, 64, 3)) * 1.5)
    packing = _packing(gpu)
    fractions = {}
    for name, spec in (("small", small), ("large", large), ("huge", huge)):
        fractions[name] = packing({"text": spec.text, "hparams": {}})["gpu"]
        assert packing({"text": spec.text, "hparams": {}})["cpu"] == 2.0
        if name != "huge":
            assert fractions[name] == _reference_fraction(_predicted(spec, 64, 3), gpu), name
    assert fractions["large"] == 11 / 16 and math.floor(1 / fractions["large"]) == 1
    assert math.floor(1 / fractions["small"]) >= 8, fractions   # eight or more of them share one GPU
    assert packing.reason(small) is None and packing.reason(large) is None
    assert _predicted(huge, 64, 3) * 1.2 + 500e6 > gpu
    reason = packing.reason(huge)
    assert reason is not None and reason.startswith("over GPU memory:") and "\n" not in reason
    assert "(--gpu-memory)" in reason and huge.text in reason
    assert fractions["huge"] == 1.0   # asked for anyway (hyperparameters that grow a point): a whole GPU
    # the trial's hyperparameters count: SGD keeps one state tensor per weight to AdamW's two
    sgd = packing.predicted(large, {"optimizer": "sgd"})
    assert sgd == _predicted(large, 64, 3, optimizer="sgd") < packing.predicted(large)
    # a study's precision counts: bf16 mixed keeps activations in 2 bytes
    bf16 = Packing(16 * GB, "--gpu-memory", 64, 10, 3, cpus=2.0, precision=StudyConfig(name="p", precision="bf16").precision)
    assert bf16.precision == "bf16-mixed" and StudyConfig(name="p").precision == "auto"
    assert bf16.predicted(large) == training_memory(large, 64, 10, 3, precision="bf16-mixed").total


def test_points_over_one_gpu_are_rejected_untrained_with_the_reason(tmp_path):
    from lab.study.runner import _memory_check
    from lab.study.search import LabSearch
    from lab.study.space import load_space

    data = type("Data", (), {"num_classes": 10, "in_chans": 1})()
    config = StudyConfig(name="g", space="conv", gpus_per_trial="auto", gpu_memory="620MB")
    searcher = LabSearch(load_space("conv"), StudyStore(tmp_path), [("val_top1", "max"), ("macs", "min")],
                         optuna.samplers.RandomSampler(seed=0), "unit", optuna.storages.InMemoryStorage(),
                         {"dataset": "mnist5k"}, 10, 1, fits=_memory_check(config, data))
    trained = [searcher.suggest(f"t{i}") for i in range(8)]
    rows = StudyStore(tmp_path).trials().to_pylist()
    over = [r for r in rows if r["state"] == "rejected" and r["error"].startswith("over GPU memory")]
    assert over and all("620 MB (--gpu-memory)" in r["error"] for r in over), rows
    for r in rows:   # the verdict agrees with the closed form (points outside the space's budget aside)
        if r["error"] and not r["error"].startswith("over GPU memory"):
            continue
        need = _predicted(parse(r["text"]), 64, 1) * 1.2 + 500e6
        assert (r in over) == (need > 620e6), (r["text"], need)
    assert all(isinstance(c, dict) for c in trained)


def test_auto_gpu_memory_and_device_are_checked_settings():
    config = StudyConfig(name="a", gpus_per_trial="auto", gpu_memory="80GB")
    assert config.memory_limit() == (None, None)   # each trial's need is checked against the GPU instead
    assert worker_device(config) == "cuda"
    assert worker_device(StudyConfig(name="a", gpus_per_trial="auto", device="cpu")) == "cpu"
    assert worker_device(StudyConfig(name="a", gpus_per_trial=0.25)) == "cuda"
    assert worker_device(StudyConfig(name="a")) == "cpu"
    for settings, message in [
        (dict(gpus_per_trial="half"), "study gpus_per_trial = 'half': expected a non-negative GPU fraction, or auto"),
        (dict(gpus_per_trial=-1.0), "study gpus_per_trial = -1.0"),
        (dict(gpu_memory="80GB"), "give --gpus-per-trial auto with it"),
        (dict(gpus_per_trial="auto", gpu_memory="lots"), "study gpu_memory 'lots'"),
        (dict(gpus_per_trial="auto", gpu_memory="400MB"), "no more than the 500 MB"),
        (dict(device="gpu"), "study device = 'gpu': expected auto"),
    ]:
        with pytest.raises(LabError, match=message.replace("(", r"\(").replace(")", r"\)")):
            StudyConfig(name="a", **settings)
    assert gpu_memory_of(config) == (80 * GB, "--gpu-memory")


def test_the_flags_take_auto_gpu_memory_and_device(tmp_path):
    from lab.cli.main import make_parser as build_parser
    from lab.cli.study import config_from_args

    args = build_parser().parse_args(["study", "create", "--name", "x", "--gpus-per-trial", "auto",
                                      "--gpu-memory", "24GB", "--device", "cpu"])
    config = config_from_args(args)
    assert (config.gpus_per_trial, config.gpu_memory, config.device) == ("auto", "24GB", "cpu")
    assert config_from_args(build_parser().parse_args(["study", "create", "--name", "x", "--gpus-per-trial",
                                                       "0.25"])).gpus_per_trial == 0.25
    recipe = tmp_path / "r.yaml"
    recipe.write_text("gpus_per_trial: auto\ngpu_memory: 16GiB\n")
    args = build_parser().parse_args(["study", "create", "--name", "x", "--recipe-file", str(recipe)])
    assert config_from_args(args).gpus_per_trial == "auto"
    bench = build_parser().parse_args(["bench", "build", "--gpus-per-trial", "auto", "--gpu-memory", "8GB"])
    assert (bench.gpus_per_trial, bench.gpu_memory) == ("auto", "8GB")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["study", "create", "--gpus-per-trial", "some"])


def test_logical_gpus_are_refused_in_one_line_unless_trials_train_on_cpu(monkeypatch):
    logical = GpuProbe(gpus=2, machines=1, cuda=False, memory=None, without_cuda=("node-a",))
    monkeypatch.setattr(cluster, "probe_gpus", lambda timeout=cluster.PROBE_SECONDS: logical)
    with pytest.raises(StudyError) as e:
        check_cuda("auto")
    text = str(e.value)
    assert "\n" not in text and text.startswith("--gpus-per-trial auto: Ray has 2 GPU(s) but torch sees no CUDA")
    assert "node-a" in text and "--gpus-per-trial 0" in text and "--device cpu" in text
    with pytest.raises(StudyError, match=r"--gpus-per-trial 0\.5: Ray has 2"):
        check_cuda(0.5, "cuda")
    assert check_cuda("auto", "cpu") is logical and check_cuda(0.0) is None
    # trials on CPU, packed by logical GPUs: their memory must be given
    monkeypatch.setattr("ray.is_initialized", lambda: True)
    with pytest.raises(StudyError, match=r"no CUDA device to measure .*give --gpu-memory"):
        gpu_memory_of(StudyConfig(name="a", gpus_per_trial="auto", device="cpu"))
    real = GpuProbe(gpus=3, machines=2, cuda=True, memory=24 * GB, names=("L4", "A100"))
    monkeypatch.setattr(cluster, "probe_gpus", lambda timeout=cluster.PROBE_SECONDS: real)
    assert gpu_memory_of(StudyConfig(name="a", gpus_per_trial="auto")) == (24 * GB, "the smallest of the machines' "
                                                                                   "GPUs, probed")


def test_auto_without_any_gpu_for_ray_is_refused_before_the_study_exists(tmp_path, capsys, local_ray):
    capsys.readouterr()   # what the shared Ray printed when it started
    rc = main(["study", "create", "--name", "gpu", "--root", str(tmp_path), "--gpus-per-trial", "auto", "--space",
               "conv", "--trials", "1", "--no-dashboard", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == ("lab: error: --gpus-per-trial auto: this machine has 0 GPU(s) for Ray; train on CPUs "
                               "with --gpus-per-trial 0"), err
    assert not (tmp_path / "gpu").exists()


def test_the_probe_reads_the_gpu_ray_assigned(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cluster._look()["cuda"] is False and cluster._look()["visible"] == "3"
    props = type("Props", (), {"total_memory": 85 * GB, "name": "NVIDIA H100"})()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props if i == 0 else None)
    seen = cluster._look()
    assert (seen["cuda"], seen["memory"], seen["name"], seen["visible"]) == (True, 85 * GB, "NVIDIA H100", "3")


# --- studies on Ray's logical GPUs ---------------------------------------------------------------

def _finals(folder: Path) -> list[dict]:
    """The trials' final results as Tune wrote them (STUDY/ray/run-*/TRIAL/result.json)."""
    finals = []
    for path in glob.glob(str(folder / "ray" / "run-*" / "*" / "result.json")):
        finals += [r for r in map(json.loads, Path(path).read_text().splitlines()) if r.get("kind") == "final"]
    return finals


def _most_at_once(finals: list[dict], gpu: str | None = None) -> tuple[int, float]:
    """The most trials running at once (on GPU `gpu`, or anywhere) and the most GPU they held together."""
    events = sorted([(r["began"], 1, r["gpus"]) for r in finals if gpu is None or r["gpu_ids"] == [gpu]]
                    + [(r["ended"], -1, -r["gpus"]) for r in finals if gpu is None or r["gpu_ids"] == [gpu]])
    running = held = most = most_held = 0
    for _, step, share in events:
        running, held = running + step, held + share
        most, most_held = max(most, running), max(most_held, held)
    return most, most_held


def _expected(folder: Path, gpu_memory: int, batch: int) -> tuple[float, int]:
    """The fraction the closed form gives the (one) point of the study, and how many such fit on 2 GPUs."""
    (text,) = {r["text"] for r in StudyStore(folder).trials().to_pylist()}
    fraction = _reference_fraction(_predicted(parse(text), batch, 1), gpu_memory)
    assert fraction is not None
    return fraction, 2 * math.floor(1 / fraction)


def _check_packed(folder: Path, gpu_memory: int, trials: int) -> tuple[int, int]:
    """Asserts the study's trials held the closed form's fraction, each its own logical GPU, and that as many
    ran at once as two GPUs hold; returns (how many fit, the most at once)."""
    rows = StudyStore(folder).trials().to_pylist()
    assert len(rows) == trials and {r["state"] for r in rows} == {"complete"}, [(r["state"], r["error"]) for r in rows]
    fraction, capacity = _expected(folder, gpu_memory, 32)
    finals = _finals(folder)
    assert len(finals) == trials and {r["gpus"] for r in finals} == {fraction}
    for r in finals:   # each trial saw the one logical GPU Ray gave it
        assert r["cuda_visible_devices"] == ",".join(r["gpu_ids"]) and r["gpu_ids"] in (["0"], ["1"]), r
    most, _ = _most_at_once(finals)
    assert most == min(capacity, trials), (most, capacity, finals)
    for gpu in ("0", "1"):
        assert _most_at_once(finals, gpu)[1] <= 1 + 1e-9
    return capacity, most


def _grid(name: str, root: Path, gpu_memory: str, seeds: int, *extra: str) -> list[str]:
    """A scaling study of one tiny point trained `seeds` times: every trial asks for the same fraction."""
    return ["study", "create", "--name", name, "--root", str(root), "--kind", "scaling", "--archs", TINY,
            "--fractions", "0.02", "--seeds", str(seeds), "--epochs", "1", "--batch-size", "32",
            "--gpus-per-trial", "auto", "--gpu-memory", gpu_memory, "--device", "cpu", "--concurrency", "8",
            "--cpus-per-trial", "0.5", "--no-dashboard", "--quiet", *extra]


@pytest.fixture
def logical_gpus():
    """Ray on this machine with 2 logical GPUs (and 8 logical CPUs), for the test; a test worker's shared
    Ray (conftest's local_ray) is stopped first and starts again for the next test that asks for it."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=8, num_gpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_on_logical_gpus_trials_pack_by_predicted_memory_and_without_cuda_the_study_is_refused(
        tmp_path, capsys, logical_gpus):
    capsys.readouterr()   # what Ray printed when it started
    probe = cluster.probe_gpus()
    assert (probe.gpus, probe.machines, probe.cuda, probe.memory) == (2, 1, False, None)
    # without --device cpu: one line before the study exists
    rc = main(["study", "create", "--name", "nocuda", "--root", str(tmp_path), "--gpus-per-trial", "auto",
               "--space", "conv", "--trials", "1", "--fraction", "0.02", "--epochs", "1", "--no-dashboard", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "Ray has 2 GPU(s) but torch sees no CUDA device" in err and "--device cpu" in err
    assert not (tmp_path / "nocuda").exists()
    # --device cpu on logical GPUs: nothing to measure, so their memory must be given
    rc = main(["study", "create", "--name", "nosize", "--root", str(tmp_path), "--gpus-per-trial", "auto", "--device",
               "cpu", "--space", "conv", "--trials", "1", "--fraction", "0.02", "--epochs", "1", "--no-dashboard",
               "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "give --gpu-memory SIZE" in err, err
    assert not (tmp_path / "nosize").exists()
    # 1.5 GB GPUs: the tiny point needs ~0.51 GB, 6/16 of one: two per GPU, four at once
    assert main(_grid("packed", tmp_path, "1.5GB", 6)) == 0
    assert _check_packed(tmp_path / "packed", int(1.5 * GB), 6) == (4, 4)


@pytest.mark.slow
def test_a_ray_start_head_with_logical_gpus_packs_the_joined_studys_trials(tmp_path, capsys):
    """`ray start --head --num-gpus=2` in its own session (killed by its group at the end: never `ray stop`,
    which stops every Ray of the machine), a study joining it by --address."""
    import ray

    if ray.is_initialized():   # a test worker's shared Ray: the study must join the head instead
        ray.shutdown()
    with ray_head("--num-gpus", "2", "--num-cpus", "8") as port:
        # 0.9 GB GPUs: the tiny point needs ~0.51 GB, 10/16 of one: one per GPU, two at once
        assert main(_grid("joined", tmp_path, "0.9GB", 4, "--address", f"127.0.0.1:{port}")) == 0, \
            capsys.readouterr().err
        assert _check_packed(tmp_path / "joined", int(0.9 * GB), 4) == (2, 2)
