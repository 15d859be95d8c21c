"""A study's settings: what `lab study create` takes as flags or from a study recipe (studies/*.yaml),
frozen into the study's folder so that `lab study resume` continues exactly the same study."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from lab.errors import LabError, StudyError
from lab.memory import available_memory, format_size, parse_size, precision_name
from lab.pareto import ALIASES
from lab.study.claims import parse_claims
from lab.study.grid import EPOCH_POLICIES, Arm, parse_arms, split_archs
from lab.study.packing import CUDA_CONTEXT
from lab.study.space import SAMPLERS
from lab.study.space_yaml import safe_load
from lab.study.weights import DEFAULT_CAP, parse_cap, parse_metric
from lab.train.loggers import LOGGERS
from lab.train.record import PROXIES

SCHEDULERS = ("asha", "fifo")
# what a warm start (--sampler SAMPLER+SCORE) may rank a pool by: a zero-cost proxy, or the free baseline #params
WARM_SCORES = (*PROXIES, "params")
KINDS = ("search", "scaling")
DEFAULT_TRIALS = 20
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class StudyConfig:
    name: str
    kind: str = "search"                   # search: sample `space`; scaling: the grid archs x fractions x seeds
    space: str = "hybrid"
    dataset: str = "mnist5k"
    trials: int | None = None              # trained trials (rejected points do not count); a grid's size
    archs: list | None = None              # scaling: arms: names with multipliers, grammar text, or mappings
                                           # {name, arch, recipe: {field: value}, teacher: arm} (lab.study.grid)
    fractions: list[float] | None = None   # scaling: nested fractions of the training split
    seeds: int = 1                         # scaling: seeds seed, seed+1, ... per (arch, fraction)
    epochs_policy: str = "constant-steps"  # scaling: constant-steps or constant-epochs
    objectives: str = "val_acc:max,macs:min"
    epochs: int = 8
    fraction: float = 1.0
    res: int | None = None                 # None: the space's resolution
    recipe: str = "default"
    batch_size: int = 64
    sampler: str = "tpe+snip"              # TPE warm-started from the points SNIP ranks best (BENCHMARKS.md, issue 20)
    scheduler: str | None = None           # None: asha for a search, fifo for a scaling grid
    storage: str | None = None             # None: sqlite in the study's folder
    address: str | None = None             # None: Ray on this machine
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | str = 0.0      # a GPU fraction, or "auto": each trial's predicted memory's (lab.study.packing)
    gpu_memory: str | None = None          # auto: one GPU's memory to pack by (80GB); None: probed on Ray's GPUs
    concurrency: int = 2
    max_memory: str | None = None          # training memory per trial (8GiB); None: this machine's / concurrency
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"                # each trial's: auto, 32, bf16-mixed (bf16), 16-mixed (16) (lab.train.run)
    compile: bool = False                  # each trial's training step through torch.compile
    channels_last: bool | None = None      # None: a conv point on a GPU (lab.train.run.wants_channels_last)
    claims: list | None = None             # scaling: the claims `lab study report` tests (lab.study.claims)
    backend: str = "ray"                   # ray: train every trial; replay:BENCH: read them from a benchmark table
    target_size: int | None = None         # search: rank points by the accuracy predicted at N training images,
                                           # trained on a ladder of nested sizes (lab.study.fidelity)
    rungs: int = 3                         # target_size: the ladder's sizes, fraction / 3^(rungs-1) .. fraction
    logger: str | None = None              # each trial logs to Lightning's logger (lab.train.loggers) in STUDY/logs
    # the weights a live study keeps in STUDY/weights (lab.study.weights): its Pareto set, the top `keep_top`
    # complete trials by `keep_metric`, within `weights_cap` bytes ("0": keep none)
    keep_top: int = 0
    keep_metric: str = "val_top1"
    weights_cap: str = DEFAULT_CAP

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise StudyError(f"study kind = {self.kind!r}: expected one of {', '.join(KINDS)}")
        if self.kind == "scaling":
            self._resolve_grid()
        else:
            for field in ("archs", "fractions", "claims"):
                if getattr(self, field) is not None:
                    raise StudyError(f"study {field} is for scaling studies (--kind scaling)")
            self._set("trials", DEFAULT_TRIALS if self.trials is None else self.trials)
            self._set("scheduler", self.scheduler or "asha")
        assert self.trials is not None  # set above, for either kind
        checks = [
            ("name", bool(_NAME.match(self.name)), "letters, digits, '_', '.', '-'"),
            ("trials", self.trials >= 1, "at least 1"),
            ("epochs", self.epochs >= 1, "at least 1"),
            ("fraction", 0 < self.fraction <= 1, "in (0, 1]"),
            ("res", self.res is None or self.res >= 1, "positive"),
            ("batch_size", self.batch_size >= 1, "at least 1"),
            ("sampler", isinstance(self.sampler, str) and self.base_sampler in SAMPLERS
             and self.warm_proxy in (None, *WARM_SCORES),
             f"one of {', '.join(SAMPLERS)}, optionally +SCORE to warm-start it ({', '.join(WARM_SCORES)})"),
            ("scheduler", self.scheduler in SCHEDULERS, f"one of {', '.join(SCHEDULERS)}"),
            ("cpus_per_trial", self.cpus_per_trial > 0, "positive"),
            ("gpus_per_trial", self.gpus_per_trial == "auto" or (isinstance(self.gpus_per_trial, (int, float))
                                                                and not isinstance(self.gpus_per_trial, bool)
                                                                and self.gpus_per_trial >= 0),
             "a non-negative GPU fraction, or auto (by each trial's predicted memory)"),
            ("device", self.device in ("auto", "cpu", "cuda"), "auto (CUDA for trials given GPUs), cpu or cuda"),
            ("concurrency", self.concurrency >= 1, "at least 1"),
            ("backend", isinstance(self.backend, str) and (self.backend == "ray" or (
                self.backend.startswith("replay:") and len(self.backend) > 7)),
             "ray, or replay:BENCH (a shipped benchmark's name or a .parquet path)"),
            ("target_size", self.target_size is None or (isinstance(self.target_size, int)
                                                         and not isinstance(self.target_size, bool) and self.target_size >= 1),
             "a whole number of training images >= 1"),
            ("rungs", isinstance(self.rungs, int) and self.rungs >= 2, "at least 2 (a law needs two sizes)"),
            ("logger", self.logger is None or self.logger in LOGGERS, f"one of {', '.join(LOGGERS)}"),
        ]
        for field, ok, expected in checks:
            if not ok:
                raise StudyError(f"study {field} = {getattr(self, field)!r}: expected {expected}")
        if self.max_memory is not None:
            parse_size(str(self.max_memory), "study max_memory")
        self._check_speed()
        if self.gpu_memory is not None:
            self._check_gpu_memory()
        if isinstance(self.keep_top, bool) or not isinstance(self.keep_top, int) or self.keep_top < 0:
            raise StudyError(f"study keep_top = {self.keep_top!r}: expected a whole number >= 0")
        parse_metric(self.keep_metric, "study keep_metric")
        parse_cap(self.weights_cap, "study weights_cap")
        if self.logger is not None and self.backend != "ray":
            raise StudyError(f"study logger: a replayed study ({self.backend}) trains nothing to log; --logger needs "
                             f"--backend ray")
        if self.target_size is not None:
            self._resolve_target()

    def _resolve_target(self) -> None:
        """A --target-size study ranks on the accuracy predicted at N: its accuracy objective becomes pred_acc."""
        if self.kind != "search":
            raise StudyError("study target_size: a scaling study trains its grid's fractions; --target-size is for a search")
        if self.backend != "ray":
            raise StudyError(f"study target_size: a benchmark table holds one data size; --target-size needs --backend ray, "
                             f"not {self.backend}")
        pieces = []
        for piece in str(self.objectives).split(","):
            name, colon, sense = piece.strip().partition(":")
            renamed = "pred_acc" if ALIASES.get(name, name) in ("val_top1", "pred_top1") else name
            pieces.append(f"{renamed}{colon}{sense}")
        if not any(p.startswith("pred_acc") for p in pieces):
            raise StudyError(f"study objectives = {self.objectives!r}: --target-size ranks points by the accuracy predicted "
                             f"at N, so the objectives need val_acc (e.g. val_acc:max,macs:min)")
        self._set("objectives", ",".join(pieces))

    @property
    def base_sampler(self) -> str:
        """The sampler without its warm start: "evolution" of "evolution+naswot"."""
        return self.sampler.partition("+")[0]

    @property
    def warm_proxy(self) -> str | None:
        """The zero-cost proxy whose best-ranked points start the study ("naswot" of "evolution+naswot"), or None."""
        _, plus, proxy = self.sampler.partition("+")
        return proxy if plus else None

    def memory_limit(self) -> tuple[int | None, str | None]:
        """Bytes a trial may use to train, and where that limit comes from: max_memory; else, for trials on
        this machine's CPUs, its available memory shared by `concurrency` trials; else (a cluster, GPUs)
        None, and each trial's worker checks against its own machine."""
        if self.max_memory is not None:
            return parse_size(str(self.max_memory), "study max_memory"), "--max-memory, per trial"
        if self.address or self.gpus_per_trial == "auto" or float(self.gpus_per_trial) > 0:
            return None, None
        return available_memory("cpu") // self.concurrency, f"this machine's available memory / {self.concurrency} trials at once"

    def _check_gpu_memory(self) -> None:
        if self.gpus_per_trial != "auto":
            raise StudyError(f"study gpu_memory = {self.gpu_memory!r}: it is the GPU memory --gpus-per-trial auto "
                             f"packs trials by; give --gpus-per-trial auto with it")
        size = parse_size(str(self.gpu_memory), "study gpu_memory")
        if size <= CUDA_CONTEXT:
            raise StudyError(f"study gpu_memory = {self.gpu_memory!r}: no more than the {format_size(CUDA_CONTEXT)} "
                             f"each trial's CUDA context is given (lab.study.packing); expected a GPU's memory, e.g. 16GB")

    def _check_speed(self) -> None:
        """precision canonical (bf16 -> bf16-mixed; auto stays), compile and channels_last booleans."""
        if str(self.precision).strip().lower() == "auto":
            self._set("precision", "auto")
        else:
            try:
                self._set("precision", precision_name(str(self.precision), "study precision"))
            except LabError:
                raise StudyError(f"study precision = {self.precision!r}: expected auto, 32, bf16-mixed (bf16) or "
                                 f"16-mixed (16)") from None
        for field in ("compile", "channels_last"):
            value = getattr(self, field)
            if not isinstance(value, bool) and not (field == "channels_last" and value is None):
                raise StudyError(f"study {field} = {value!r}: expected true or false")

    def _set(self, field: str, value) -> None:
        object.__setattr__(self, field, value)   # resolving defaults of a frozen config

    def _resolve_grid(self) -> None:
        archs = split_archs(self.archs) if isinstance(self.archs, str) else self.archs
        if not isinstance(archs, list) or not archs:
            raise StudyError("study archs: a scaling study needs --archs A,B,... (names or grammar text)")
        arms = parse_arms(archs, self.recipe)
        fractions = self.fractions
        if isinstance(fractions, str):
            try:
                fractions = [float(f) for f in fractions.split(",") if f.strip()]
            except ValueError:
                raise StudyError(f"study fractions = {self.fractions!r}: expected numbers in (0, 1], e.g. 0.1,0.3,1") from None
        if (not fractions or any(isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1
                                 for f in fractions)):
            raise StudyError(f"study fractions = {self.fractions!r}: expected numbers in (0, 1], e.g. 0.1,0.3,1")
        if self.seeds < 1:
            raise StudyError(f"study seeds = {self.seeds!r}: expected at least 1")
        if self.epochs_policy not in EPOCH_POLICIES:
            raise StudyError(f"study epochs_policy = {self.epochs_policy!r}: expected one of {', '.join(EPOCH_POLICIES)}")
        if self.fraction != 1:
            raise StudyError("study fraction: a scaling study takes its fractions from --fractions (fraction stays 1)")
        if self.scheduler not in (None, "fifo"):
            raise StudyError(f"study scheduler = {self.scheduler!r}: a scaling study trains every cell (fifo)")
        self._set("archs", [arm.to_setting() for arm in arms])
        self._set("fractions", sorted({float(f) for f in fractions}))
        assert self.fractions is not None  # set just above
        if self.claims is not None:
            self._set("claims", [c.to_setting() for c in parse_claims(self.claims, [a.name for a in arms], self.fractions)])
        size = len(arms) * len(self.fractions) * self.seeds
        if self.trials not in (None, size):
            raise StudyError(f"study trials = {self.trials!r}: a scaling study trains its grid, "
                             f"{len(arms)} archs x {len(self.fractions)} fractions x {self.seeds} seeds = {size}")
        self._set("trials", size)
        self._set("scheduler", "fifo")

    def arms(self) -> list[Arm]:
        """A scaling study's arms."""
        return parse_arms(self.archs or [], self.recipe)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]


def read_recipe_file(path: str | Path) -> dict:
    """The settings of a study recipe (studies/NAME.yaml): a mapping of StudyConfig fields."""
    path = Path(path)
    try:
        data = safe_load(path.read_text())
    except FileNotFoundError:
        raise StudyError(f"--recipe-file {path}: no such file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise StudyError(f"{path}{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise StudyError(f"{path}: a study recipe is a mapping of settings")
    unknown = sorted(set(data) - set(StudyConfig.fields()))
    if unknown:
        raise StudyError(f"{path}: unknown setting {unknown[0]!r} (known: {', '.join(StudyConfig.fields())})")
    return data


def studies_root(root: str | Path | None = None) -> Path:
    """Where study folders live: `root`, else $LAB_HOME/studies, else ./studies."""
    if root is not None:
        return Path(root).expanduser().resolve()
    home = os.environ.get("LAB_HOME")
    return (Path(home).expanduser() / "studies").resolve() if home else Path("studies").resolve()


def find_study(name: str, root: str | Path | None = None) -> Path:
    """The folder of study `name` under `root` (else $LAB_HOME/studies, else ./studies); a path to
    a study folder works too. StudyError when there is none."""
    folder = studies_root(root) / name
    if (folder / "study.yaml").is_file():
        return folder
    path = Path(name).expanduser()
    if (path / "study.yaml").is_file():
        return path.resolve()
    raise StudyError(f"no study {name!r} in {studies_root(root)}")
