"""Warm starts (`--sampler SAMPLER+SCORE`): a new study's first trials are the points a zero-cost proxy
(or, the free baseline, #params) ranks best in a random pool of the space's valid points; the sampler
proper takes over after them.

Live, the pool is WARM_POOL x n points sampled at random (valid, within budget, predicted to fit),
each scored on one batch (lab.train.proxies). Replayed, the pool is as many of the benchmark
table's points, drawn at random with the study's seed: they are random points of the same space
whose proxies were recorded when the table was built. Every proxy is read higher-is-better, as
its paper proposes; `lab bench proxies` says whether that ranks this space's accuracy at all.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import optuna

from lab.study.config import StudyConfig
from lab.study.search import LabSearch
from lab.tabular.table import Bench
from lab.train.proxies import score_point

WARM_POOL = 10   # pool points scored per warm-start point
MAX_DRAWS = 20   # random draws per pool point before a live pool settles for what it found


def warm_count(trials: int) -> int:
    """Points a warm start enqueues for a study of `trials` trials: about a startup phase's worth."""
    return max(4, trials // 5)


def warm_start(searcher: LabSearch, config: StudyConfig, bench: Bench | None, data) -> int:
    """Enqueue the proxy's best points as a new study's first trials; returns how many (0: no warm
    start asked, a scaling grid, or the study already has trials: a resumed study keeps its history)."""
    proxy = config.warm_proxy
    assert config.trials is not None  # StudyConfig resolves it
    if proxy is None or config.kind != "search" or searcher.study.get_trials(deepcopy=False):
        return 0
    n = warm_count(config.trials)
    pool = bench_pool(bench, proxy, config.seed, n * WARM_POOL) if bench is not None else \
        live_pool(searcher, proxy, data, config.seed, n * WARM_POOL)
    best = sorted(pool, key=lambda item: -item[1])[:n]
    for values, _ in best:
        searcher.study.enqueue_trial(values, skip_if_exists=True)
    return len(best)


def bench_pool(bench: Bench, proxy: str, seed: int, size: int) -> list[tuple[dict, float]]:
    """`size` random rows of the table with a recorded `proxy`: (sampled values, proxy value)."""
    column = "params" if proxy == "params" else f"zc_{proxy}"
    rows = [r for r in bench.rows() if r.get(column) is not None]
    picked = np.random.default_rng(seed).permutation(len(rows))[:size]
    return [(json.loads(rows[i]["hparams"])["vars"], float(rows[i][column])) for i in picked]


def live_pool(searcher: LabSearch, proxy: str, data, seed: int, size: int) -> list[tuple[dict, float]]:
    """`size` distinct random points the study may train, each scored with `proxy` on one batch of `data`."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(logging.WARNING)
    try:
        draws = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        pool: dict[str, tuple[dict, float]] = {}
        for _ in range(size * MAX_DRAWS):
            if len(pool) >= size:
                break
            trial = draws.ask()
            point, reason = searcher.candidate(trial)
            if reason is not None or point.text in pool:
                continue
            value = (float(point.params or 0) if proxy == "params"   # a point that may train has its cost
                     else score_point(point.spec, data, seed, which=(proxy,))[proxy][0])
            if value is not None:
                pool[point.text] = (dict(trial.params), value)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return list(pool.values())
