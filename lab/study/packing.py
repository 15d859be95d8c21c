"""`--gpus-per-trial auto`: each trial asks Ray for the GPU fraction its predicted training memory needs.

A trial's need is its predicted peak (lab.memory.training_memory at the study's batch size, precision,
optimizer and EMA) times HEADROOM, plus CUDA_CONTEXT for the process's own CUDA context and libraries
(which lab.memory does not count). Its fraction is that need over one GPU's memory, rounded up to a
multiple of 1/GRID: sixteenths are exact in Ray's fixed-point resource arithmetic (1e-4 units), and
mixed sizes pack (a 9/16 trial and a 7/16 one share a GPU). Ray runs trials on one GPU only while
their fractions sum to at most 1, so the predicted needs of a GPU's trials fit in its memory. A point
whose need exceeds one GPU is refused before training (`reason`), as over-memory points are.

The GPU's memory is `--gpu-memory` when given, else what a Ray task on a GPU of each machine reads
(lab.study.cluster.probe_gpus), the smallest over the machines: a mixed cluster packs for its
smallest GPU.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lab.errors import LabError, StudyError
from lab.grammar import parse
from lab.grammar.spec import Spec
from lab.memory import format_size, parse_size, training_memory
from lab.train.recipes import recipe

if TYPE_CHECKING:
    from lab.study.config import StudyConfig

HEADROOM = 1.2            # on the predicted peak: the prediction's error, allocator fragmentation, cuDNN workspaces
CUDA_CONTEXT = 500 * 10**6   # bytes per trial process for its CUDA context, cuBLAS/cuDNN handles (300-500 MB measured
                          # in the wild, per process and GPU), before any tensor
GRID = 16                 # fractions are multiples of 1/GRID of a GPU
AUTO = "auto"


def need_bytes(predicted: int) -> int:
    """The memory a trial whose training is predicted to peak at `predicted` bytes is given."""
    return math.ceil(predicted * HEADROOM) + CUDA_CONTEXT


def gpu_fraction(predicted: int, gpu_memory: int) -> float | None:
    """The GPU fraction (a multiple of 1/GRID, at least 1/GRID, at most 1) for a trial predicted to peak at
    `predicted` bytes on a GPU of `gpu_memory` bytes; None when its need exceeds the whole GPU."""
    need = need_bytes(predicted)
    if need > gpu_memory:
        return None
    slots = max(1, -(-need * GRID // gpu_memory))   # ceil in integers: no float rounding at the grid's steps
    return min(slots, GRID) / GRID


@dataclass(frozen=True)
class Packing:
    """How a study's trials are packed onto GPUs of `gpu_memory` bytes (`source` says where that came from).
    Called with a trial's config (Ray Tune's resources function), it gives the trial's resources."""

    gpu_memory: int
    source: str                    # "--gpu-memory", or the probe's (gpu_memory_of)
    batch_size: int
    num_classes: int
    in_chans: int
    cpus: float
    recipe: str = "default"
    precision: str = AUTO          # the study's (canonical: StudyConfig): a lab.memory precision, or auto

    def predicted(self, spec: Spec, hparams: dict | None = None) -> int:
        """Predicted peak training bytes of `spec` under the study's recipe with the trial's `hparams`."""
        try:
            rec = recipe(self.recipe, **{k: v for k, v in (hparams or {}).items() if k not in ("epochs", "batch_size")})
        except LabError:   # the trial's own recipe check reports it; predict with the study's recipe
            rec = recipe(self.recipe)
        # auto: fp32 or bf16 mixed, whichever the trial's GPU takes; the larger of the two predictions
        precisions = ("32", "bf16-mixed") if self.precision == AUTO else (self.precision,)
        return max(training_memory(spec, self.batch_size, self.num_classes, self.in_chans, precision=precision,
                                   optimizer=rec.optimizer, ema=rec.ema > 0).total for precision in precisions)

    def fraction(self, spec: Spec, hparams: dict | None = None) -> float | None:
        return gpu_fraction(self.predicted(spec, hparams), self.gpu_memory)

    def reason(self, spec: Spec) -> str | None:
        """Why `spec` cannot train on one GPU (None when it can): the one-line reason its row keeps."""
        predicted = self.predicted(spec)
        if gpu_fraction(predicted, self.gpu_memory) is not None:
            return None
        return (f"over GPU memory: {spec.text!r} needs about {format_size(predicted)} to train at batch "
                f"{self.batch_size}, {format_size(need_bytes(predicted))} with headroom (x{HEADROOM} + "
                f"{format_size(CUDA_CONTEXT)} CUDA context); one GPU has {format_size(self.gpu_memory)} ({self.source})")

    def __call__(self, config: dict) -> dict:
        """Ray Tune's resources of the trial `config` (LabSearch.suggest's: the point's grammar text and
        hyperparameters): its CPUs and GPU fraction. A point refused by `reason` never gets here; one whose
        hyperparameters make it larger than a GPU asks for a whole one (its worker's own check refuses it)."""
        text = config.get("text")
        if not text:   # Tune may ask before the searcher's config is in: a whole GPU is always valid
            return {"cpu": self.cpus, "gpu": 1.0}
        hparams = config.get("hparams")
        if isinstance(hparams, str):
            hparams = json.loads(hparams)
        fraction = self.fraction(parse(text), hparams if isinstance(hparams, dict) else None)
        return {"cpu": self.cpus, "gpu": 1.0 if fraction is None else fraction}


def gpu_memory_of(config: StudyConfig) -> tuple[int, str] | None:
    """One GPU's bytes for a study's packing, and where they come from: its --gpu-memory, else the probe of
    Ray's GPUs (the smallest; None while this driver has no Ray yet). StudyError when the GPUs have no CUDA
    to measure (logical GPUs, --device cpu) and no --gpu-memory was given."""
    if config.gpu_memory is not None:
        return parse_size(str(config.gpu_memory), "--gpu-memory"), "--gpu-memory"
    import ray

    from lab.study.cluster import probe_gpus  # lazy: start-up time (the study's settings, lab.study.config, import this module)

    if not ray.is_initialized():
        return None
    probe = probe_gpus()
    if probe.memory is None:
        raise StudyError(f"--gpus-per-trial auto: Ray's {probe.gpus:g} GPU(s) have no CUDA device to measure "
                         f"(logical GPUs); give --gpu-memory SIZE, a GPU's memory to pack by (e.g. 16GB)")
    smallest = "the smallest of the machines' GPUs, probed" if probe.machines > 1 else "the GPU Ray has, probed"
    return probe.memory, smallest


def packing_for(config: StudyConfig, num_classes: int, in_chans: int) -> Packing | None:
    """The study's packing (None unless --gpus-per-trial auto, or while its GPUs' memory is unknown)."""
    if config.gpus_per_trial != AUTO:
        return None
    memory = gpu_memory_of(config)
    if memory is None:
        return None
    return Packing(memory[0], memory[1], config.batch_size, num_classes, in_chans, config.cpus_per_trial,
                   config.recipe, config.precision)


def gpu_check(config: StudyConfig, num_classes: int, in_chans: int) -> Callable[[Spec], str | None]:
    """LabSearch's check of a sampled point under --gpus-per-trial auto: why it cannot train on one GPU
    (None when it can, and while the GPUs' memory is not known yet: a resumed study's settling of its
    old trials runs before Ray is joined)."""
    packing: list[Packing] = []

    def check(spec: Spec) -> str | None:
        if not packing:
            found = packing_for(config, num_classes, in_chans)
            if found is None:
                return None
            packing.append(found)
        return packing[0].reason(spec)

    return check


def worker_device(config: StudyConfig) -> str:
    """The device a study's trials train on: its --device, where auto is CUDA for trials given GPUs."""
    if config.device != "auto":
        return str(config.device)
    return "cuda" if config.gpus_per_trial == AUTO or float(config.gpus_per_trial) > 0 else "cpu"


def placement() -> dict:
    """In a trial's worker: where Ray placed it, for its final result (Tune's result.json keeps it): the GPU
    fraction it holds, Ray's GPU ids and CUDA_VISIBLE_DEVICES, and when it began (time.time())."""
    import ray
    from ray import tune

    seen: dict = {"began": time.time(), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    # outside a Tune trial (a test calling run_trial) there is none, and Ray warns so
    with contextlib.suppress(Exception), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seen["gpus"] = float(tune.get_context().get_trial_resources().required_resources.get("GPU", 0.0))
    with contextlib.suppress(Exception):
        seen["gpu_ids"] = [str(i) for i in ray.get_gpu_ids()]
    return seen
