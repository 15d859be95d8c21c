"""`lab bench proxies|search`, warm starts and replayed samplers on a synthetic benchmark table."""

import json

import optuna
import pyarrow.parquet as pq
import pytest
import scipy.stats

from lab.study import warm
from lab.study.compare import MemoryStore, replay_rows
from lab.study.config import StudyConfig
from lab.study.replay import prepared, replay_defaults
from lab.study.search import LabSearch
from lab.tabular.stats import anytime_hypervolume
from lab.tabular.table import load_bench
from lab.train.record import PROXIES
from tests.support import run_cli, synthetic_bench


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return synthetic_bench(tmp_path_factory.mktemp("bench"), n=60)


def test_bench_proxies_ranks_each_proxy_beside_params_and_macs(bench, capsys):
    code, out, err = run_cli(capsys, "bench", "proxies", str(bench), "--json", "--bootstrap", "200")
    assert code == 0, err
    report = json.loads(out)
    scores = {s["score"]: s for s in report["scores"]}
    assert list(scores) == ["params", "macs", *PROXIES]
    rows = [r for r in load_bench(bench).rows() if r["state"] == "complete"]
    for name, s in scores.items():
        column = name if name in ("params", "macs") else f"zc_{name}"
        rho = scipy.stats.spearmanr([r[column] for r in rows], [r["val_top1"] for r in rows]).statistic
        assert s["spearman"]["value"] == pytest.approx(rho)
        assert s["spearman"]["lo"] <= s["spearman"]["value"] <= s["spearman"]["hi"]
    # the synthetic proxies are the accuracy plus noise: the least noisy one ranks it best
    assert scores["synflow"]["spearman"]["value"] > scores["snip"]["spearman"]["value"]
    best = report["best_baseline"]
    assert best == max(("params", "macs"), key=lambda b: scores[b]["spearman"]["value"])
    for proxy in PROXIES:   # the paired difference from the better baseline, on the same rows
        diff = scores[proxy]["versus_best_baseline"]
        assert diff["value"] == pytest.approx(scores[proxy]["spearman"]["value"] - scores[best]["spearman"]["value"])
        assert diff["lo"] <= diff["value"] <= diff["hi"]
        verdict = scores[proxy]["verdict"]
        assert verdict == (f"better than {best}" if diff["lo"] > 0 else f"worse than {best}" if diff["hi"] < 0
                           else f"undecided against {best}")
    code, out, err = run_cli(capsys, "bench", "proxies", str(bench))
    assert code == 0 and "Spearman rho" in out and "naswot" in out and "analytic" in out, err


def test_bad_bench_input_is_one_line_exit_2(tmp_path, capsys):
    for argv, words in [(["bench", "proxies", "nonesuch"], "not a .parquet file"),
                        (["bench", "search", "nonesuch"], "not a .parquet file"),
                        (["bench", "proxies", str(tmp_path / "x.parquet")], "no such file")]:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_bench_search_reports_every_sampler_and_draws_it(bench, tmp_path, capsys):
    out_file, page = tmp_path / "runs.parquet", tmp_path / "search.html"
    code, out, err = run_cli(capsys, "bench", "search", str(bench), "--samplers", "random,tpe", "--seeds", "2",
                             "--trials", "12", "--at", "5,10", "--workers", "1", "--out", str(out_file),
                             "--html", str(page))
    assert code == 0, err
    assert "random" in out and "tpe" in out and "@10" in out and "tpe @" not in out   # no @20/@40 asked
    runs = pq.read_table(out_file).to_pylist()
    assert {(r["sampler"], r["seed"], r["trials"]) for r in runs} == {
        (s, seed, n) for s in ("random", "tpe") for seed in (0, 1) for n in (5, 10)}
    # each figure is the hypervolume of that seed's replayed study, recomputed here
    rows = replay_rows(str(bench), "tpe", 1, 12)
    max_macs = prepared(StudyConfig(name="x", backend=f"replay:{bench}", **replay_defaults(load_bench(bench))),
                        load_bench(bench))[0].max_macs
    expected = anytime_hypervolume(rows, [5, 10], max_macs)
    assert {r["trials"]: r["hypervolume"] for r in runs if r["sampler"] == "tpe" and r["seed"] == 1} == expected
    assert "Plotly" in page.read_text() or "plotly" in page.read_text()
    code, out, err = run_cli(capsys, "bench", "search", str(bench), "--samplers", "random,annealing", "--seeds", "1")
    assert code == 2 and "sampler" in err and "Traceback" not in err, err


def test_the_same_seed_replays_the_same_study(bench):
    a, b = replay_rows(str(bench), "random", 3, 10), replay_rows(str(bench), "random", 3, 10)
    keys = ("number", "state", "text", "val_top1", "epochs_done")
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]


def test_a_replayed_warm_start_begins_with_the_proxys_best_pool_points(bench):
    table = load_bench(bench)
    config = StudyConfig(name="w", backend=f"replay:{bench}", sampler="random+naswot", trials=20, seed=4,
                         **replay_defaults(table))
    rows = replay_rows(str(bench), "random+naswot", 4, 20)
    n = warm.warm_count(20)
    pool = warm.bench_pool(table, "naswot", 4, n * warm.WARM_POOL)
    best = sorted(pool, key=lambda item: -item[1])[:n]
    first = [json.loads(r["hparams"])["vars"] for r in rows if r["state"] != "rejected"][:n]
    assert first == [values for values, _ in best]
    assert config.base_sampler == "random" and config.warm_proxy == "naswot"


def test_a_live_warm_start_scores_a_random_pool_on_one_batch(monkeypatch):
    from lab.data import load_dataset
    from lab.study.space import Space

    space = Space.from_dict({"name": "tiny", "res": 28, "vars": {"width": [8, 16], "depth": {"int": [1, 2]}},
                             "text": "@{res} | conv(c={width},k=3,s=2),bn,relu | basic {depth}x{width} | gap,fc"})
    data = load_dataset("mnist5k", seed=0, fraction=0.02)
    monkeypatch.setattr(warm, "WARM_POOL", 1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searcher = LabSearch(space, MemoryStore(), [("val_top1", "max"), ("macs", "min")],
                         optuna.samplers.RandomSampler(seed=0), "w", optuna.storages.InMemoryStorage(), {},
                         data.num_classes, data.in_chans)  # type: ignore[arg-type]
    config = StudyConfig(name="w", sampler="tpe+snip", trials=20, seed=0)
    assert warm.warm_start(searcher, config, None, data) == 4   # every distinct point of the tiny space
    enqueued = [t.system_attrs["fixed_params"] for t in searcher.study.get_trials(deepcopy=False)]
    assert sorted(map(str, enqueued)) == sorted(str({"width": w, "depth": d}) for w in (8, 16) for d in (1, 2))
    # in the order of their scores, best first: the first asks train them
    first = [searcher.candidate(searcher.study.ask())[0] for _ in range(4)]
    scores = [warm.score_point(p.spec, data, 0, which=("snip",))["snip"][0] for p in first]
    assert scores == sorted(scores, reverse=True)
    assert warm.warm_start(searcher, config, None, data) == 0   # a study with trials keeps its own history


class _Stuck(optuna.samplers.RandomSampler):
    """Proposes the same point for ever (a collapsed sampler): `fixed`, a valid point's values."""

    def __init__(self, fixed: dict):
        super().__init__(seed=0)
        self.fixed = fixed

    def sample_independent(self, study, trial, name, distribution):
        return self.fixed[name]


def test_a_sampler_stuck_on_a_trained_point_is_given_a_random_one():
    from lab.study.search import DUPLICATE, DUPLICATE_ESCAPE
    from lab.study.space import load_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space, draws = load_space("conv"), optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    while not space.sample(trial := draws.ask(), 10, 1).ok:
        pass
    store = MemoryStore()
    searcher = LabSearch(space, store, [("val_top1", "max")], _Stuck(trial.params), "s",  # type: ignore[arg-type]
                         optuna.storages.InMemoryStorage(), {}, 10, 1)
    first = searcher.suggest("a")
    searcher.on_trial_complete("a", {"kind": "final", "state": "complete", "val_top1": 0.5})
    second = searcher.suggest("b")
    assert second["text"] != first["text"]
    duplicates = [r for r in store.rows.values() if (r["error"] or "").startswith(DUPLICATE)]
    assert len(duplicates) == DUPLICATE_ESCAPE
