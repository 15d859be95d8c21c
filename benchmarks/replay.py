"""Wall time of a replayed study (`lab study create --backend replay:BENCH`): in this process (the
lab imported once, as in a notebook) per sampler, and as a fresh `lab` command (imports included).

    python benchmarks/replay.py hybrid --trials 40 --samplers random,tpe,nsga2,evolution,local
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time

from lab.study.config import StudyConfig
from lab.study.replay import replay_defaults
from lab.study.runner import create
from lab.study.store import StudyStore
from lab.tabular.table import load_bench


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("bench")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--samplers", default="random,tpe,nsga2,evolution,local")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    bench = load_bench(args.bench)
    with tempfile.TemporaryDirectory() as root:
        warm = create(StudyConfig(name="warm-up", backend=f"replay:{args.bench}", trials=2, sampler="random",
                                  **replay_defaults(bench)), root=root, verbose=0)   # fits the surrogate once
        del warm
        for sampler in args.samplers.split(","):
            start = time.perf_counter()
            folder = create(StudyConfig(name=f"r-{sampler.replace('+', '-')}", backend=f"replay:{args.bench}",
                                        trials=args.trials, sampler=sampler, seed=args.seed, **replay_defaults(bench)),
                            root=root, verbose=0)
            wall = time.perf_counter() - start
            rows = StudyStore(folder).trials().to_pylist()
            states: dict[str, int] = {}
            for r in rows:
                states[r["state"]] = states.get(r["state"], 0) + 1
            sources = sum(str(r.get("worker") or "").endswith("/table") for r in rows)
            print(f"{sampler:>12}: {args.trials} trained trials replayed in {wall:.2f} s "
                  f"({len(rows)} asked: {states}; {sources} complete from the table, the rest predicted)")
        start = time.perf_counter()
        subprocess.run(["lab", "study", "create", "--backend", f"replay:{args.bench}", "--trials", str(args.trials),
                        "--name", "cli", "--root", root, "--no-dashboard", "--quiet"], check=True, capture_output=True)
        print(f"`lab study create --backend replay:{args.bench} --trials {args.trials}` as a command "
              f"(the default sampler, imports included): {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
