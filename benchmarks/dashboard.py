"""How long `lab dashboard` takes to render a large study, and how big the page is.

A synthetic 10,000-trial store (compacted tables, as a finished study leaves them; four data
fractions so that the scaling view appears; learning curves for 2,000 trials) is rendered three
times in one process after a warm-up import; the median and the split by stage are printed, with
the HTML size and the trace types (WebGL above the threshold). With Chromium present, the page
is loaded headless once and its rendered plots and JavaScript errors are reported.

    python benchmarks/dashboard.py [--trials 10000] [--curves 2000]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from lab.dashboard import figures as F
from lab.dashboard import load, render
from lab.dashboard.importance import importances
from lab.dashboard.page import build_figures
from lab.dashboard.synthetic import write_synthetic_study

CHROMIUM = "/usr/bin/chromium"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=10_000)
    p.add_argument("--curves", type=int, default=2_000)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lab-dash-bench-"))
    try:
        t0 = time.perf_counter()
        write_synthetic_study(tmp / "studies" / "big", a.trials, fractions=[0.1, 0.25, 0.5, 1.0], curves=a.curves,
                              bulk=True, seed=0)
        print(f"synthetic store: {a.trials} trials, curves for {a.curves}, 4 fractions "
              f"({time.perf_counter() - t0:.1f} s to write)")
        root = tmp / "studies"
        render(["big"], root=root)        # warm-up: lazy imports, plotly.js written beside the page once

        times = []
        for _ in range(a.rounds):
            t = time.perf_counter()
            page = render(["big"], root=root)
            times.append(time.perf_counter() - t)
        print(f"render to HTML: median {statistics.median(times):.2f} s of {a.rounds} "
              f"({', '.join(f'{x:.2f}' for x in times)})")

        t = time.perf_counter()
        data = load([root / "big"])
        t_load = time.perf_counter() - t
        t = time.perf_counter()
        importances(data)
        t_imp = time.perf_counter() - t
        t = time.perf_counter()
        figs, _, _ = build_figures(data)
        t_figs = time.perf_counter() - t - t_imp
        rest = statistics.median(times) - t_load - t_imp - t_figs
        print(f"  of which: load {t_load:.2f} s, importance (fANOVA) {t_imp:.2f} s, other figures {t_figs:.2f} s, "
              f"JSON, HTML and writing the rest ({rest:.2f} s)")

        size = page.stat().st_size
        js = page.parent / next(p.name for p in page.parent.glob("plotly-*.min.js"))
        print(f"HTML size: {size / 1e6:.2f} MB (plotly.js beside it: {js.stat().st_size / 1e6:.2f} MB, written once)")
        kinds = {k: sorted({tr.type for tr in f.data if tr.type in ("scatter", "scattergl")}) for k, f in figs.items()}
        print("trace types (scattergl above", F.GL_THRESHOLD, "points):",
              ", ".join(f"{k}={'/'.join(v)}" for k, v in kinds.items() if v))

        if Path(CHROMIUM).exists():
            prof = tmp / "chromium"
            t = time.perf_counter()
            out = subprocess.run(
                [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--enable-unsafe-swiftshader", f"--user-data-dir={prof}", "--window-size=1400,1000",
                 "--virtual-time-budget=60000", "--dump-dom", page.as_uri()],
                capture_output=True, text=True, timeout=300)
            dom = out.stdout
            rendered = re.search(r"<body[^>]*data-rendered=\"(\d+)\"", dom)
            errors = re.search(r"data-js-errors=\"([^\"]*)\"", dom)
            print(f"headless Chromium: {rendered.group(1) if rendered else 0} of {len(figs)} plots rendered, "
                  f"JavaScript errors: {json.dumps(errors.group(1)) if errors else 'none'} "
                  f"({time.perf_counter() - t:.1f} s wall, virtual time)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
