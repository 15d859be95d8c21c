"""How much memory a grammar point needs to train or to run, from the cost model, before anything is built.

Training one step at a batch of B images holds:

    weights + optimizer state               (params x bytes each: 1 + 2 for AdamW, 1 + 1 for SGD with
                                            momentum; + 1 for an EMA copy; + a half-precision copy of
                                            the weights under mixed precision, autocast's cache)
    + gradients and activations together    (the most that backward holds at once: it frees each step's
                                            saved tensors as it computes that step's gradients, last
                                            step first, so the peak is where the activations of the
                                            steps before some point and the gradients of those after
                                            it coexist: the end of forward, the optimizer step, or in
                                            between for a ResNet, whose activations sit early and
                                            weights late)
    + backward's working set                (TRANSIENT x what the largest unit keeps: its gradients in flight)

times OVERHEAD. The activations are what autograd keeps for backward, counted by each kind from its
own structure (`Kind.saved`, `Block.saved_unit`, walked by `lab.cost.saved`): a conv's or linear's
input, a norm's input, a ReLU's output, a SiLU's or GELU's input, max-pool indices (int64), attention's
q, k, v, output and log-sum-exp, the attention matrices of window and neighbourhood attention, the
depthwise and squeeze-excite maps of MBConv, each storage once. Under mixed precision they are kept
at the half-precision dtype except where float32 stays (norm inputs on a residual stream that a
float32 parameter joined: position embeddings, class tokens, layer scale; the portable neighbourhood
kernel), plus the float32 batch beside its copy.

Measured (benchmarks/memory_check.py, BENCHMARKS.md; tests/test_memory.py): the bytes that
saved_tensors_hooks sees are 0.95-1.04 x the count for every family (ResNet, ResNeXt, WRN, RegNet,
DenseNet, BiT, ConvNeXt, EfficientNet, ViT/DeiT, Mixer, Swin, NAT, the R50 hybrid), in float32 and
under CPU bfloat16 autocast. The CPU allocator's peak during a full training step (forward, backward,
AdamW step with its state allocated) over 26 points of those families at 32-64 px and batch 8-64 is
0.86-1.19 x the estimate in float32 (median 0.99, all within 20%) and 0.87-1.32 x under bfloat16
autocast (median 0.96, 24 of 26 within 20%: ConvNeXt's layer scale makes its stream float32, and
backward's working set there is about twice the estimate's).

Inference (probes, feature extraction) holds the weights and, per image, the largest working set of
one element or one block: its input, its conv/linear outputs and its output, times RUN_OVERHEAD.

Ignored: the data set (lab keeps it in memory, on the device for CUDA runs), the process itself (the
torch and CUDA libraries and context: a few hundred MB), a distillation teacher, the classifier's
logits and the loss, cuDNN workspaces and the CUDA caching allocator's rounding and fragmentation
(not measurable on this CPU machine), the GPU kernels' own choices (FlexAttention for neighbourhood
attention on CUDA keeps less than the CPU kernels counted here).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from lab.cost import saved, steps
from lab.errors import LabError, TrainError
from lab.grammar.spec import Spec
from lab.grammar.trace import Step
from lab.kinds import Shape
from lab.kinds.base import Saved

OVERHEAD = 1.0        # training: allocator rounding and what the parts leave out, on top of the peak
RUN_OVERHEAD = 1.25   # inference: forward temporaries and allocator rounding, on top of the working set
TRANSIENT = 0.5       # backward's working set: this share of what the largest unit keeps (measured)
OPTIMIZER_STATES = {"adamw": 2, "adam": 2, "sgd": 1, "none": 0}   # state tensors per parameter (SGD: momentum)
# precision (Lightning's names) -> (bytes of a weight, gradient and optimizer state; bytes of an activation)
PRECISIONS = {"32": (4, 4), "32-true": (4, 4), "bf16-mixed": (4, 2), "16-mixed": (4, 2),
              "bf16-true": (2, 2), "16-true": (2, 2), "64": (8, 8), "64-true": (8, 8)}
MIXED = ("bf16-mixed", "16-mixed")   # autocast: float32 weights, half-precision compute
# what a user may write for a training precision (--precision) -> its canonical name (a key of PRECISIONS)
PRECISION_ALIASES = {"32": "32", "32-true": "32", "fp32": "32", "bf16": "bf16-mixed", "bf16-mixed": "bf16-mixed",
                     "16": "16-mixed", "fp16": "16-mixed", "16-mixed": "16-mixed"}


def precision_name(text: str, flag: str = "--precision") -> str:
    """The canonical training precision of `text`: 32, bf16-mixed or 16-mixed (bf16 and 16 are aliases
    of the mixed ones, fp32/32-true of 32). Anything else raises LabError naming `flag`."""
    name = PRECISION_ALIASES.get(str(text).strip().lower())
    if name is None:
        raise LabError(f"{flag} {text!r}: expected 32, bf16-mixed (bf16) or 16-mixed (16)")
    return name


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
    transient: int = 0    # for training: backward's working set (the gradients of one unit in flight)
    together: int = 0     # for training: the most bytes of activations and gradients alive at once

    def describe(self) -> str:
        """'154 GB to train at batch 64 (weights, gradients and AdamW state 2.4 GB, ...)'."""
        state = {"adamw": "AdamW", "adam": "Adam", "sgd": "SGD momentum", "none": "no optimizer"}.get(self.optimizer)
        if self.what != "train":
            return (f"{format_size(self.total)} to run at batch {self.batch_size} (weights "
                    f"{format_size(self.weights)}, activations {format_size(self.activations)}, x{RUN_OVERHEAD} overhead)")
        precision = "" if self.precision in ("32", "32-true") else f", precision {self.precision}"
        return (f"{format_size(self.total)} to train at batch {self.batch_size}{precision} (weights, gradients and "
                f"{state} state {format_size(self.weights)}, activations kept for backward "
                f"{format_size(self.activations)}, at most {format_size(self.together)} of activations and "
                f"gradients at once, backward's working set {format_size(self.transient)})")


def _bytes(precision: str) -> tuple[int, int]:
    if precision not in PRECISIONS:
        raise LabError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


def _numel(s: Shape) -> int:
    """Elements of one image's (or clip's) tensor of shape `s`: channels x (prefix + frames x grid) tokens."""
    return s.c * s.tokens


def _saved_bytes(kept: Saved, precision: str) -> int:
    """Bytes of `kept` at `precision`: low elements at the activation dtype, full ones in float32 under
    mixed precision (at the activation dtype otherwise), indices as int64."""
    _, a_bytes = _bytes(precision)
    full = 4 if precision in MIXED else a_bytes
    return kept.low * a_bytes + kept.full * full + kept.int64 * 8


def training_memory(spec: Spec, batch_size: int, num_classes: int = 1000, in_chans: int = 3, *,
                    precision: str = "32", optimizer: str = "adamw", ema: bool = False) -> MemoryEstimate:
    """The estimated peak bytes of one training step of `spec` at `batch_size` (see the module's docstring)."""
    if optimizer not in OPTIMIZER_STATES:
        raise LabError(f"optimizer {optimizer!r}: expected one of {', '.join(OPTIMIZER_STATES)}")
    w_bytes, a_bytes = _bytes(precision)
    walk = steps(spec, num_classes, in_chans)
    params = sum(s.cost.params for s in walk)
    copies = 2 + OPTIMIZER_STATES[optimizer] + int(ema)          # weights, gradients, state, EMA
    weights = params * w_bytes * copies + (params * a_bytes if precision in MIXED else 0)  # + autocast's copy
    kept = saved(spec, num_classes, in_chans)
    image = _numel(walk[0].shape_in) * 4 if precision in MIXED else 0   # the float32 batch, beside its copy
    acts = [batch_size * _saved_bytes(k, precision) for k in kept]
    activations = sum(acts) + batch_size * image
    unit = max(_saved_bytes(_unit(k, st, spec), precision) for k, st in zip(kept, walk))
    transient = math.ceil(TRANSIENT * batch_size * unit)
    # backward frees each step's saved tensors as it computes its gradients, last step first: the peak
    # is at a boundary j where the activations of steps before j and the gradients of steps from j on
    # coexist (j = len: the end of forward; j = 0: the optimizer step, every gradient computed)
    grads = [s.cost.params * w_bytes for s in walk]
    together = max(sum(acts[:j]) + sum(grads[j:]) for j in range(len(walk) + 1)) + batch_size * image
    peak = weights - sum(grads) + together + transient
    return MemoryEstimate("train", batch_size, precision, weights, activations, math.ceil(OVERHEAD * peak),
                          optimizer, transient, together)


def _unit(kept: Saved, step: Step, spec: Spec) -> Saved:
    """What one unit of a stage (or one op) keeps: a stage's total over its depth."""
    if step.section != "stage" or step.stage is None:
        return kept
    depth = spec.stages[step.stage].depth
    return Saved(-(-kept.low // depth), -(-kept.full // depth), -(-kept.int64 // depth))


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
                          math.ceil(RUN_OVERHEAD * (weights + activations)))


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
