"""Helpers shared by the tests: the catalog, the reference table, measuring built modules, running the CLI."""

from __future__ import annotations

import contextlib
import csv
import importlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import lab

REFERENCE_CSV = Path(__file__).resolve().parents[2] / "shared" / "reference" / "architectures.csv"

# Named architectures too large to train-step at full width in the default run (they get w=0.25 there,
# full width under -m slow).
GIANTS = ("bit_r101x3", "bit_r152x4", "wide_resnet101_2", "resnext101_32x8d", "convnext_l",
          "efficientnet_b6", "efficientnet_b7", "regnety_16gf", "vit_l16", "vit_l16_384", "vit_h14",
          "mixer_l16", "mixer_h14", "swin_b_384", "swin_l", "swin_l_384")


def at_res(name: str, res: int) -> str:
    """A reference to `name` at about `res` px: rounded down to a multiple of its patch size, if it
    patchifies (ViT-H/14 and Mixer-H/14 run at 28 px where the others run at 32)."""
    patch = next((op.p for op in lab.named(name).stem if op.patchifies), 1)
    return f"{name}@{res // patch * patch}px"


def catalog_entries() -> dict:
    """The named-architecture catalog (name -> entry with .timm), wherever `lab.resolve` lives."""
    return importlib.import_module(lab.resolve.__module__).entries()


def reference_rows() -> dict[str, dict[str, str]] | None:
    """name -> row of the reference table (params_reference, gmacs_reference, ...), None if absent."""
    if not REFERENCE_CSV.is_file():
        return None
    with REFERENCE_CSV.open(newline="") as f:
        return {row["name"]: row for row in csv.DictReader(f)}


_datasets: dict[tuple, object] = {}


def load(name: str, **kw):
    """lab.data.load_dataset, memoized across tests (datasets are read-only)."""
    from lab.data import load_dataset

    key = (name, tuple(sorted(kw.items())))
    if key not in _datasets:
        _datasets[key] = load_dataset(name, **kw)
    return _datasets[key]


def meta_model(spec: lab.Spec, num_classes: int = 1000, in_chans: int = 3) -> torch.nn.Module:
    """`spec` built on the meta device (no memory, no compute), in eval mode."""
    with torch.device("meta"):
        return lab.build(spec, num_classes=num_classes, in_chans=in_chans).eval()


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def measured_cost(model: torch.nn.Module, in_chans: int, res: int, frames: int = 1) -> tuple[float, int]:
    """Per-image multiply-accumulates as torch counts them (FLOPs / 2) and activations (elements
    written by conv and linear layers), from one forward pass of a batch of two on meta tensors.

    FlopCounterMode sees convs, linears and matmuls, and scaled_dot_product_attention on the meta
    device, but not the neighbourhood-attention kernel's per-offset path (gathers and dot
    products; see test_neighborhood_kernel_is_invisible_to_the_counter), which this measurement
    forces (the dense path on small maps does masked extra work the cost model does not count):
    NA's q.k and attention.v MACs, 2 * tokens * k^2 * width per layer, are added analytically
    from the modules' shapes."""
    import lab.kernels.neighborhood as na
    from lab.kinds.nat import NeighborhoodAttention

    batch, written, na_macs = 2, [], []
    hooks = [m.register_forward_hook(lambda m, i, out: written.append(out.numel()))
             for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear))]
    hooks += [m.register_forward_hook(  # per call: its batch is the clips' frames for a video model
        lambda m, i, out: na_macs.append(2 * m.hp * m.wp * m.kernel ** 2 * out.shape[-1] * out.shape[0]))
              for m in model.modules() if isinstance(m, NeighborhoodAttention)]
    dense_factor, na.DENSE_FACTOR = na.DENSE_FACTOR, 0
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.empty(batch, in_chans, *((frames,) if frames > 1 else ()), res, res, device="meta"))
    finally:
        na.DENSE_FACTOR = dense_factor
        for h in hooks:
            h.remove()
    return counter.get_total_flops() / 2 / batch + sum(na_macs) / batch, sum(written) // batch


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """`lab ARGV...` in this process: (exit code, stdout, stderr), argparse's exits included."""
    from lab.cli.main import main

    try:
        rc = main(list(argv))
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


# every point is valid, but a learning rate of 1e30 makes every trial diverge (NaN loss) in its worker
BAD_RECIPE_SPACE = """
res: 28
vars:
  width: {choice: [8, 16]}
hparams:
  lr: {choice: [1.0e+30]}
text: "@{res} | conv(c={width},k=3,s=2),bn,relu | basic 1x{width} | gap,fc"
"""


def synthetic_bench(folder, n: int = 40, epochs: int = 2, seed: int = 0, name: str = "synthetic"):
    """A benchmark table file of `n` random valid points of the hybrid space with made-up curves
    (accuracy rising with MACs, conv stems and conv stages; seconds with MACs) and proxies: what
    `lab bench` and replays read, without training anything."""
    import json
    import math

    import numpy as np
    import optuna

    from lab.study.space import load_space
    from lab.tabular.table import make_table, save_bench
    from lab.train.record import PROXIES

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space("hybrid")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    rng = np.random.default_rng(seed)
    rows, curves = [], {}
    while len(rows) < n:
        point = space.sample(study.ask(), 10, 1)
        if not point.ok or any(r["text"] == point.text for r in rows):
            continue
        conv = sum(str(v) in ("basic", "bottleneck", "convnext") for k, v in point.values.items() if k.startswith("mixer"))
        final = min(0.99, 0.3 + 0.1 * math.log10(point.macs / 1e6 + 1) * 3 + 0.1 * conv + rng.normal(0, 0.02))
        number = len(rows)
        curve = [{"epoch": e + 1, "loss": 2.0 / (e + 1), "val_top1": final * (e + 1) / epochs,
                  "seconds": (e + 1) * point.macs / 2e6} for e in range(epochs)]
        row = {"number": number, "state": "complete", "text": point.text, "params": point.params, "macs": point.macs,
               "hparams": json.dumps({"recipe": point.hparams, "vars": point.values}, sort_keys=True),
               "val_top1": final, "test_top1": final - 0.01, "loss": curve[-1]["loss"],
               "train_seconds": curve[-1]["seconds"], "worker_seconds": curve[-1]["seconds"] * 1.2}
        for i, proxy in enumerate(PROXIES):   # proxies: the accuracy plus more and more noise
            row[f"zc_{proxy}"] = final + rng.normal(0, 0.05 * (i + 1))
            row[f"zc_{proxy}_seconds"] = 0.01 * (i + 1)
        rows.append(row)
        curves[number] = curve
    meta = {"settings": {"dataset": "mnist5k", "fraction": 0.25, "epochs": epochs, "recipe": "default", "batch_size": 64,
                         "res": 28, "seed": 1000, "objectives": "val_acc:max,macs:min"},
            "data": {"name": "mnist5k", "fraction": 0.25, "n_train": 1000, "num_classes": 10, "in_chans": 1, "frames": 1},
            "space": {"name": "hybrid", "definition": space.to_dict()}}
    return save_bench(make_table(rows, curves, meta), Path(folder) / f"{name}.parquet")


@contextlib.contextmanager
def ray_head(*flags: str, env: dict | None = None) -> Iterator[int]:
    """`ray start --head --block` with `flags` in its own session, for the block: yields its port once it
    accepts connections. At the end its process group is killed (never `ray stop`, which stops every Ray
    of the machine) and its temporary folder removed."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")   # short: Ray's Unix sockets live under it
    head = subprocess.Popen(["ray", "start", "--head", "--block", "--port", str(port), "--include-dashboard", "false",
                             "--temp-dir", temp, *flags], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        yield port
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp, ignore_errors=True)
