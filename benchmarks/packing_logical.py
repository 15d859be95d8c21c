"""--gpus-per-trial auto on Ray's logical GPUs (this CPU machine): the GPU share each trial is given
and how many trials run at once, for a few GPU sizes.

Ray starts here with 2 logical GPUs and 8 logical CPUs; each study is a scaling grid of one tiny point
(resnet18@28px,w=0.25,d=0.5 on mnist5k at fraction 0.02, batch 32, 1 epoch) trained SEEDS times with
--device cpu, --concurrency 8 and --cpus-per-trial 0.5, so that only the GPU shares limit the trials
at once. From each trial's Tune result (its share, Ray's GPU ids, CUDA_VISIBLE_DEVICES, its wall-clock
window) it prints the share, the trials Ray can hold on 2 GPUs (2 x floor(1 / share)), the most that
ran at once, the most share any one GPU held at once, and the study's wall time.

    python benchmarks/packing_logical.py [--seeds 6] [--gpu-memory 0.9GB,1.5GB,3GB]
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import tempfile
import time
from pathlib import Path

import ray

from lab.cli.main import main
from lab.grammar import parse
from lab.memory import format_size, parse_size, training_memory
from lab.study.packing import gpu_fraction, need_bytes
from lab.study.store import StudyStore

ARCH = "resnet18@28px,w=0.25,d=0.5"


def _finals(folder: Path) -> list[dict]:
    rows = []
    for path in glob.glob(str(folder / "ray" / "run-*" / "*" / "result.json")):
        rows += [r for r in map(json.loads, Path(path).read_text().splitlines()) if r.get("kind") == "final"]
    return rows


def _at_once(rows: list[dict], gpu: str | None = None) -> tuple[int, float]:
    mine = [r for r in rows if gpu is None or r["gpu_ids"] == [gpu]]
    events = sorted([(r["began"], 1, r["gpus"]) for r in mine] + [(r["ended"], -1, -r["gpus"]) for r in mine])
    running = held = most = most_held = 0
    for _, step, share in events:
        running, held = running + step, held + share
        most, most_held = max(most, running), max(most_held, held)
    return most, most_held


def run(gpu_memory: str, seeds: int, root: Path) -> dict:
    name = f"pack-{gpu_memory}"
    start = time.perf_counter()
    rc = main(["study", "create", "--name", name, "--root", str(root), "--kind", "scaling", "--archs", ARCH,
               "--fractions", "0.02", "--seeds", str(seeds), "--epochs", "1", "--batch-size", "32",
               "--gpus-per-trial", "auto", "--gpu-memory", gpu_memory, "--device", "cpu", "--concurrency", "8",
               "--cpus-per-trial", "0.5", "--no-dashboard", "--quiet"])
    seconds = time.perf_counter() - start
    folder = root / name
    (text,) = {r["text"] for r in StudyStore(folder).trials().to_pylist()}
    predicted = max(training_memory(parse(text), 32, 10, 1, precision=p).total for p in ("32", "bf16-mixed"))
    share = gpu_fraction(predicted, parse_size(gpu_memory))
    rows = _finals(folder)
    most, _ = _at_once(rows)
    return {"gpu_memory": gpu_memory, "rc": rc, "predicted": format_size(predicted),
            "need": format_size(need_bytes(predicted)), "share": share,
            "shares_seen": sorted({r["gpus"] for r in rows}), "capacity": 2 * math.floor(1 / share) if share else 0,
            "most_at_once": most, "most_per_gpu": max(_at_once(rows, g)[1] for g in ("0", "1")),
            "visible_ok": all(r["cuda_visible_devices"] == ",".join(r["gpu_ids"]) for r in rows),
            "trials": len(rows), "seconds": round(seconds, 1)}


def cli() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--gpu-memory", default="0.9GB,1.5GB,3GB")
    args = parser.parse_args()
    ray.init(address="local", num_cpus=8, num_gpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    with tempfile.TemporaryDirectory() as root:
        for size in args.gpu_memory.split(","):
            print(json.dumps(run(size, args.seeds, Path(root))), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    cli()
