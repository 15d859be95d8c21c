"""How much memory a grammar point needs to train or to run, from the cost model, before anything is built.

Training holds, for a batch of B images:

    weights + gradients + optimizer state   (params x bytes each: 1 + 1 + 2 for AdamW, 1 + 1 + 1 for SGD
                                            with momentum; + 1 for an EMA copy; + a half-precision copy
                                            of the weights under mixed precision, autocast's cache)
    + B x activations kept for backward     (SAVED_PER_ACT x the cost model's activations, plus the input
                                            image, at the activation dtype's bytes)

times OVERHEAD (backward's transient gradient buffers, forward temporaries, allocator rounding).
Inference (probes, feature extraction) holds the weights and, per image, the largest working set of
one element or one block: its input, its conv/linear outputs and its output, times OVERHEAD.

Measured (tests/test_memory.py, CPU, float32, batch 16): the bytes of the tensors autograd saves for
backward are 1.8-2.1 x the cost model's activations for ResNet-style, ViT, Mixer and ConvNeXt points,
2.4 x for Swin and 3.3 x for MBConv (depthwise convs, SiLU and squeeze-excite save more per counted
output): SAVED_PER_ACT = 2. The peak that torch's CPU allocator reaches during the first training
step (forward, backward, AdamW step, the gradients and moments allocated) is 0.54-0.96 x the estimate
for those points and bottleneck ResNets at batch 16 and 64; the process's RSS growth over one step of a
ResNet, a ViT and a Mixer at 64 px and batch 64 (1.1-1.4 GB) is 0.76-1.04 x.

Ignored: the data set (lab keeps it in memory, on the device for CUDA runs), the process itself (the
torch and CUDA libraries and context: a few hundred MB), a distillation teacher, attention matrices
(SDPA's fused kernels keep none for backward; a kernel that materializes them needs B x heads x N^2
more), the classifier's logits and the loss, cuDNN workspaces, and fragmentation beyond OVERHEAD.
It is an order-of-magnitude guard (refuse a point that cannot fit), not a precise prediction.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from lab.cost import steps
from lab.errors import LabError, TrainError
from lab.grammar.spec import Spec
from lab.grammar.trace import Step
from lab.kinds import Shape

SAVED_PER_ACT = 2.0   # elements autograd saves per activation the cost model counts (measured: 1.8-3.3)
OVERHEAD = 1.25       # transient buffers and allocator rounding, on top of the sum
OPTIMIZER_STATES = {"adamw": 2, "adam": 2, "sgd": 1, "none": 0}   # state tensors per parameter (SGD: momentum)
# precision (Lightning's names) -> (bytes of a weight, gradient and optimizer state; bytes of an activation)
PRECISIONS = {"32": (4, 4), "32-true": (4, 4), "bf16-mixed": (4, 2), "16-mixed": (4, 2),
              "bf16-true": (2, 2), "16-true": (2, 2), "64": (8, 8), "64-true": (8, 8)}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one training step (or one inference batch), by part; `total` includes the overhead."""

    what: str             # "train" or "run"
    batch_size: int
    precision: str
    weights: int          # weights (+ gradients + optimizer state + EMA + half-precision copy, for training)
    activations: int      # for the whole batch
    total: int
    optimizer: str = ""   # for training: whose state is counted

    def describe(self) -> str:
        """'154 GB to train at batch 64 (weights, gradients and AdamW state 2.4 GB, ...)'."""
        state = {"adamw": "AdamW", "adam": "Adam", "sgd": "SGD momentum", "none": "no optimizer"}.get(self.optimizer)
        kept = f"weights, gradients and {state} state" if self.what == "train" else "weights"
        acts = "activations kept for backward" if self.what == "train" else "activations"
        return (f"{format_size(self.total)} to {self.what} at batch {self.batch_size} ({kept} "
                f"{format_size(self.weights)}, {acts} {format_size(self.activations)}, x{OVERHEAD} overhead)")


def _bytes(precision: str) -> tuple[int, int]:
    if precision not in PRECISIONS:
        raise LabError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


def _numel(s: Shape) -> int:
    """Elements of one image's (or clip's) tensor of shape `s`: channels x (prefix + frames x grid) tokens."""
    return s.c * s.tokens


def training_memory(spec: Spec, batch_size: int, num_classes: int = 1000, in_chans: int = 3, *,
                    precision: str = "32", optimizer: str = "adamw", ema: bool = False) -> MemoryEstimate:
    """The estimated peak bytes of one training step of `spec` at `batch_size` (see the module's docstring)."""
    if optimizer not in OPTIMIZER_STATES:
        raise LabError(f"optimizer {optimizer!r}: expected one of {', '.join(OPTIMIZER_STATES)}")
    w_bytes, a_bytes = _bytes(precision)
    walk = steps(spec, num_classes, in_chans)
    params = sum(s.cost.params for s in walk)
    acts = sum(s.cost.acts for s in walk)
    copies = 2 + OPTIMIZER_STATES[optimizer] + int(ema)          # weights, gradients, state, EMA
    weights = params * w_bytes * copies + (params * a_bytes if w_bytes != a_bytes else 0)  # + autocast's copy
    activations = batch_size * a_bytes * math.ceil(SAVED_PER_ACT * acts + _numel(walk[0].shape_in))
    return MemoryEstimate("train", batch_size, precision, weights, activations,
                          math.ceil(OVERHEAD * (weights + activations)), optimizer)


def inference_memory(spec: Spec, batch_size: int, num_classes: int = 1000, in_chans: int = 3, *,
                     precision: str = "32") -> MemoryEstimate:
    """The estimated peak bytes of a forward pass of `spec` at `batch_size` without autograd (probes)."""
    w_bytes, a_bytes = _bytes(precision)
    walk = steps(spec, num_classes, in_chans)
    weights = sum(s.cost.params for s in walk) * w_bytes

    def working_set(step: Step) -> int:
        depth = spec.stages[step.stage].depth if step.section == "stage" and step.stage is not None else 1
        return _numel(step.shape_in) + math.ceil(step.cost.acts / depth) + _numel(step.shape_out)

    activations = batch_size * a_bytes * max(working_set(s) for s in walk)
    return MemoryEstimate("run", batch_size, precision, weights, activations,
                          math.ceil(OVERHEAD * (weights + activations)))


# --- the limit -------------------------------------------------------------------------


def _cgroup_free() -> int | None:
    """What a cgroup v2 memory limit leaves, when the process runs under one."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - used)


def _host_available() -> int:
    """MemAvailable of /proc/meminfo (what can be allocated without swapping), else free pages."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return 2**63 - 1   # unknown: no limit


def available_memory(device: str | torch.device = "cpu") -> int:
    """Bytes that can be allocated now on `device`: the GPU's free memory (torch.cuda.mem_get_info) for
    a CUDA device; else the host's MemAvailable, capped by a cgroup v2 limit when there is one."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free)
    host, cgroup = _host_available(), _cgroup_free()
    return host if cgroup is None else min(host, cgroup)


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "p": 10**15, "pb": 10**15,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "pib": 2**50}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?(?:e\d+)?)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_size(text: str, flag: str = "--max-memory") -> int:
    """Bytes of a size such as 8GiB, 500MB, 1.5G or 2e9 (kB/MB/GB/TB/PB are powers of 1000, KiB/MiB/GiB/
    TiB/PiB of 1024; a bare number is bytes). Bad text raises LabError naming `flag`."""
    m = _SIZE.fullmatch(text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS or float(m.group(1)) * _UNITS[unit] < 1:
        raise LabError(f"{flag} {text!r}: expected a positive size such as 8GiB, 500MB or 2e9 (bytes)")
    return int(float(m.group(1)) * _UNITS[unit])


def format_size(n: float) -> str:
    """'154 GB', '3.1 MB', '512 B': powers of 1000, two or three significant digits."""
    for unit, scale in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f} {unit}" if value >= 10 else f"{value:.1f} {unit}"
    return f"{int(n)} B"


# --- the check -------------------------------------------------------------------------


def check_fits(spec: Spec, batch_size: int, num_classes: int, in_chans: int, limit_bytes: int, *,
               precision: str = "32", optimizer: str = "adamw", ema: bool = False, train: bool = True,
               label: str | None = None, limit_from: str | None = None) -> str | None:
    """None when `spec` fits in `limit_bytes` to train (`train`) or run at `batch_size`; else the one-line
    reason: "'TEXT' needs about 154 GB to train at batch 64 (...); this machine has 20 GB available
    (--max-memory to set the limit)". `limit_from` names where the limit came from ("--max-memory")
    when it is not the machine's available memory; `label` is the point's name (default its text)."""
    est = (training_memory(spec, batch_size, num_classes, in_chans, precision=precision, optimizer=optimizer, ema=ema)
           if train else inference_memory(spec, batch_size, num_classes, in_chans, precision=precision))
    if est.total <= limit_bytes:
        return None
    limit = (f"the limit is {format_size(limit_bytes)} ({limit_from})" if limit_from else
             f"this machine has {format_size(limit_bytes)} available (--max-memory to set the limit)")
    return f"{label or spec.text!r} needs about {est.describe()}; {limit}"


def require_fits(spec: Spec, batch_size: int, num_classes: int, in_chans: int, limit_bytes: int | None = None, *,
                 device: str | torch.device = "cpu", precision: str = "32", optimizer: str = "adamw",
                 ema: bool = False, train: bool = True, label: str | None = None) -> None:
    """check_fits against `limit_bytes` (given by --max-memory), or the memory available on `device`
    when it is None; raise TrainError with check_fits' reason when the point does not fit."""
    limit, source = (available_memory(device), None) if limit_bytes is None else (limit_bytes, "--max-memory")
    reason = check_fits(spec, batch_size, num_classes, in_chans, limit, precision=precision, optimizer=optimizer,
                        ema=ema, train=train, label=label, limit_from=source)
    if reason is not None:
        raise TrainError(reason)
