"""The grammar-aware samplers (lab.study.samplers): regularized evolution, Pareto local search and
the GP sampler, driven through the space's define-by-run sampling with synthetic objectives (no
training), told as lab.study.search.tell tells a study."""

from __future__ import annotations

import math
import zlib

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FixedTrial, TrialState

from lab.study.config import StudyConfig
from lab.study.samplers import (
    Defaults,
    EvolutionSampler,
    LabGPSampler,
    LocalSearchSampler,
    defaults,
    gp_view,
    mutate,
    neighbours,
)
from lab.study.search import tell
from lab.study.space import SAMPLERS, Space, load_space

OBJ = [("val_top1", "max"), ("macs", "min")]
TINY = {"name": "tiny", "res": 28,
        "vars": {"mixer": ["basic", "convnext"], "width": [16, 32], "depth": {"int": [1, 3]}},
        "text": "@{res} | conv(c={width},k=3,s=2),bn,relu | {mixer} {depth}x{width} | gap,fc"}


@pytest.fixture(autouse=True)
def _quiet():
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    yield
    optuna.logging.set_verbosity(level)


def accuracy(point) -> float:
    """A deterministic synthetic val_top1 in [0, 1] of a point: more MACs and some mixers help."""
    bonus = {"basic": 0.02, "convnext": 0.05, "swin": 0.04, "mhsa": 0.01, "nat": 0.03}
    v = point.values
    mixers = [x for k, x in v.items() if k.startswith("mixer")]
    a = 0.5 + 0.1 * math.log1p(point.macs / 1e6) + sum(bonus.get(m, 0.0) for m in mixers) / max(1, len(mixers))
    return min(0.99, a + 0.01 * (zlib.crc32(point.text.encode()) % 100) / 100)


def drive(space: Space, sampler: optuna.samplers.BaseSampler, asks: int, trained: int | None = None,
          on_ask=None) -> optuna.Study:
    """Ask `asks` trials (or until `trained` are trained) and tell each as the lab's searcher does:
    trained points complete with synthetic values, rejected ones with the budget constraint,
    duplicates with their original's outcome."""
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    seen: dict[tuple, int] = {}
    done = 0
    for _ in range(asks):
        if trained is not None and done >= trained:
            break
        if on_ask is not None:
            on_ask(study)
        trial = study.ask()
        point = space.sample(trial)
        key = (point.text, tuple(sorted(point.values.items())))
        if point.reason is None and key not in seen:
            seen[key] = trial.number
            done += 1
            tell(study, trial, {"state": "complete", "val_top1": accuracy(point), "macs": point.macs}, OBJ)
        elif point.reason is None:
            original = study.get_trials(deepcopy=False)[seen[key]]
            tell(study, trial, {"state": "rejected", "error": "duplicate"}, OBJ, original)
        else:
            tell(study, trial, {"state": "rejected", "val_top1": None, "macs": point.macs, "error": point.reason}, OBJ)
    return study


def _in_distribution(dist, value) -> bool:
    if isinstance(dist, CategoricalDistribution):
        return value in dist.choices
    if isinstance(dist, IntDistribution):
        return isinstance(value, int) and dist.low <= value <= dist.high and (value - dist.low) % dist.step == 0
    return dist.low <= value <= dist.high


def _dominates(a, b) -> bool:   # (val_top1 max, macs min)
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


# --- the operators ---------------------------------------------------------------------------

def test_neighbours_of_each_distribution():
    assert neighbours(CategoricalDistribution(["a", "b", "c"]), "b") == ["a", "c"]
    assert neighbours(IntDistribution(0, 10, step=2), 4) == [2, 6]
    assert neighbours(IntDistribution(0, 10, step=2), 0) == [2]
    assert neighbours(IntDistribution(1, 3), 3) == [2]
    assert neighbours(FloatDistribution(0.0, 1.0), 0.5) == pytest.approx([0.4, 0.6])
    assert neighbours(FloatDistribution(0.0, 1.0), 0.95) == pytest.approx([0.85, 1.0])   # clipped
    assert neighbours(FloatDistribution(1.0, 100.0, log=True), 10.0) == pytest.approx([10 ** 0.8, 10 ** 1.2])
    assert neighbours(FloatDistribution(0.0, 1.0, step=0.25), 0.5) == pytest.approx([0.25, 0.75])


def test_mutations_reach_every_other_value_and_only_those():
    rng = np.random.default_rng(0)
    cases = [(CategoricalDistribution([0, 0.25, "x"]), 0.25, {0, "x"}),
             (IntDistribution(1, 9, step=2), 5, {1, 3, 7, 9}),
             (FloatDistribution(0.0, 1.0, step=0.5), 0.0, {0.5, 1.0})]
    for dist, value, others in cases:
        assert {mutate(dist, value, rng) for _ in range(200)} == others
    for dist in (FloatDistribution(1e-4, 1e-1, log=True), IntDistribution(1, 1000, log=True)):
        xs = [mutate(dist, 10 ** -2 if isinstance(dist, FloatDistribution) else 10, rng) for _ in range(200)]
        assert all(dist.low <= x <= dist.high for x in xs) and 1e-2 not in xs and 10 not in xs
        assert np.median(np.log(xs)) == pytest.approx(np.log(math.sqrt(dist.low * dist.high)), abs=1.0)  # log-uniform


@pytest.mark.parametrize("name", ["evolution", "local"])
def test_children_are_points_of_the_space_one_variable_away(name):
    space = load_space("hybrid")
    sampler = EvolutionSampler(seed=1, population=20, tournament=5, startup=5) if name == "evolution" \
        else LocalSearchSampler(seed=1, startup=5)
    study = drive(space, sampler, asks=230)
    trials = study.get_trials(deepcopy=False)
    children = [t for t in trials if sampler.moves[t.number].parent is not None]
    assert len(children) >= 200
    for child in children:
        move = sampler.moves[child.number]
        again = FixedTrial(child.params)
        space.sample(again)   # the define-by-run asks exactly these variables, from these distributions
        assert set(again.params) == set(child.params) and again.distributions == child.distributions, child.number
        assert all(_in_distribution(child.distributions[n], v) for n, v in child.params.items())
        parent = trials[move.parent].params
        changed = [n for n in parent.keys() & child.params.keys() if parent[n] != child.params[n]]
        assert changed == [move.name] and child.params[move.name] == move.value, (child.number, changed, move)


# --- evolution -------------------------------------------------------------------------------

def test_evolution_parent_is_a_best_rank_member_of_its_tournament():
    sampler = EvolutionSampler(seed=3, population=12, tournament=4, startup=6)
    windows: dict[int, set] = {}

    def record(study):   # the window's complete trials before each ask: the last 12 trained
        trained = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("state") in ("complete", "pruned")]
        windows[len(study.trials)] = {t.number for t in trained[-12:] if t.user_attrs["state"] == "complete"}

    study = drive(load_space("hybrid"), sampler, asks=80, on_ask=record)
    trials = study.get_trials(deepcopy=False)
    evolved = [t.number for t in trials if sampler.moves[t.number].parent is not None]
    assert len(evolved) > 60 and all(sampler.moves[n].parent is None for n in range(6))
    for number in evolved:
        move = sampler.moves[number]
        window = windows[number]
        assert set(move.pool) <= window and len(move.pool) == min(4, len(window)) and move.parent in move.pool
        parent = trials[move.parent].values
        assert not any(_dominates(trials[m].values, parent) for m in move.pool)   # of rank 0 in its tournament
    # a tournament's best is not always the same trial: the tournament is drawn at random
    assert len({sampler.moves[n].parent for n in evolved}) > 5


def _tell_sixteen(sampler: EvolutionSampler, row_of) -> None:
    """16 trials of a one-variable study asked of `sampler`, trial N told as `row_of(N)` says."""
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    for number in range(16):
        trial = study.ask()
        trial.suggest_int("x", 0, 100)
        tell(study, trial, row_of(number), OBJ)


def test_evolution_window_ages_and_pruned_members_never_win():
    sampler = EvolutionSampler(seed=0, population=4, tournament=4, startup=2)
    # every fourth trained trial is pruned (it ages with the others); earlier trials are better in both
    # objectives: only ageing removes them
    _tell_sixteen(sampler, lambda n: {"state": "pruned"} if n % 4 == 3 else
                  {"state": "complete", "val_top1": 1.0 - n / 100, "macs": 1000 + n})
    for number in range(2, 16):
        move = sampler.moves[number]
        window = [n for n in range(max(0, number - 4), number)]   # the last 4 trained trials
        complete = [n for n in window if n % 4 != 3]
        assert set(move.pool) == set(complete) and move.parent == min(complete), (number, move)
    assert sampler.moves[15].parent == 12   # trials 0..10 aged out although they dominate trial 12


def test_evolution_starts_once_the_study_holds_enough_complete_trials():
    # under ASHA most trained trials are pruned: the window of 4 never holds the 3 complete trials the
    # start asks for, but the study does after trial 8; evolution then evolves from the window's complete one
    sampler = EvolutionSampler(seed=0, population=4, tournament=2, startup=3)
    _tell_sixteen(sampler, lambda n: {"state": "complete", "val_top1": 0.5, "macs": 1000} if n % 4 == 0 else
                  {"state": "pruned"})
    parents = {n: sampler.moves[n].parent for n in range(16)}
    assert all(parents[n] is None for n in range(9))          # fewer than 3 complete trials before trial 9
    assert all(parents[n] == 4 * ((n - 1) // 4) for n in range(9, 16)), parents   # the window's complete trial


# --- local search ----------------------------------------------------------------------------

def test_local_search_proposes_unexplored_neighbours_then_restarts():
    space = Space.from_dict(TINY)
    sampler = LocalSearchSampler(seed=0, startup=3)
    before: dict[int, list] = {}
    study = drive(space, sampler, asks=40, on_ask=lambda s: before.__setitem__(len(s.trials), s.get_trials()))
    trials = study.get_trials(deepcopy=False)
    restarts = 0
    for t in trials[3:]:
        earlier = before[t.number]
        move = sampler.moves[t.number]
        complete = [e for e in earlier if e.user_attrs["state"] == "complete"]
        front = [e for e in complete if not any(_dominates(o.values, e.values) for o in complete)]
        tried = [e.params for e in earlier]
        open_ = {}
        for m in front:
            moves = [(n, v) for n, d in m.distributions.items() for v in neighbours(d, m.params[n])]
            open_[m.number] = [(n, v) for n, v in moves if {**m.params, n: v} not in tried]
        if move.parent is None:
            assert not any(open_.values()), t.number   # a restart only when every neighbourhood is exhausted
            assert sorted(move.pool) == sorted(open_)
            restarts += 1
        else:
            assert move.parent in open_ and (move.name, move.value) in open_[move.parent]
            assert t.params == {**trials[move.parent].params, move.name: move.value}
            assert move.pool[-1] == move.parent and not any(open_[n] for n in move.pool[:-1])
    assert restarts > 0   # the 12-point space's front neighbourhoods ran out within 40 asks


def test_local_search_resumes_from_the_study_alone():
    """A new sampler over the same study proposes what the old one would have: no sampler state."""
    space = Space.from_dict(TINY)
    study = drive(space, LocalSearchSampler(seed=0, startup=3), asks=8)
    fresh = LocalSearchSampler(seed=0, startup=3)
    resumed = optuna.create_study(directions=["maximize", "minimize"], sampler=fresh)
    resumed.add_trials(study.get_trials())
    ta, tb = study.ask(), resumed.ask()
    space.sample(ta), space.sample(tb)
    assert sum(m.parent is not None for m in study.sampler.moves.values()) >= 4
    assert ta.params == tb.params and study.sampler.moves[ta.number] == fresh.moves[tb.number]


# --- the same seed ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["evolution", "local"])
def test_the_same_seed_samples_the_same_points(name):
    space = load_space("hybrid")

    def points(seed):
        return [t.params for t in drive(space, space.sampler(name, seed, 40), asks=30).get_trials()]

    assert points(5) == points(5)
    assert points(5) != points(6)


def test_sampler_names_and_defaults():
    assert {"evolution", "local", "gp"} <= set(SAMPLERS)
    assert StudyConfig(name="s", space="hybrid", sampler="evolution").sampler == "evolution"
    assert [defaults(n) for n in (20, 40, 80)] == [Defaults(8, 3, 5), Defaults(13, 4, 10), Defaults(26, 9, 20)]
    space = load_space("hybrid")
    evo = space.sampler("evolution", 0, 40)
    assert isinstance(evo, EvolutionSampler) and (evo.population, evo.tournament, evo.startup) == (13, 4, 10)
    assert isinstance(space.sampler("local", 0, 40), LocalSearchSampler)
    assert isinstance(space.sampler("gp", 0, 40), LabGPSampler)


# --- gp --------------------------------------------------------------------------------------

def test_gp_view_fills_the_constraint_and_clips_penalties():
    study = optuna.create_study(directions=["maximize", "minimize"])
    for values, state in (([0.8, 10.0], "complete"), ([0.6, 30.0], "complete"), ([0.0, 1e18], "rejected")):
        trial = study.ask()
        trial.suggest_int("x", 0, 3)
        tell(study, trial, {"state": state, "val_top1": values[0], "macs": values[1]}, OBJ)
    view = gp_view(study.get_trials(), study.directions)   # the rejected point: pruned, without values
    assert [t.constraints for t in view] == [{"budget": 0.0}, {"budget": 0.0}, {"budget": 1.0}]
    # trained: val 0.6..0.8 (span 0.2), macs 10..30 (span 20): the penalty clipped to one span past the worst
    assert view[2].values == pytest.approx([0.4, 50.0]) and view[0].values == [0.8, 10.0]
    assert study.get_trials()[0].constraints == {}   # the study itself is untouched


@pytest.mark.slow   # ~8 s on two cores: torch's import and two GP fits with their acquisition searches
def test_gp_samples_the_hybrid_space_with_constraints():
    space = load_space("hybrid")
    proposals: list[tuple[dict, list]] = []

    class Recording(LabGPSampler):   # what the GP proposed, and the constraints the study held then
        def sample_relative(self, study, trial, search_space):
            out = super().sample_relative(study, trial, search_space)
            done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
            proposals.append((out, [t.constraints for t in done]))
            return out

    study = drive(space, Recording(seed=2, startup=4), asks=6)
    made = [(out, held) for out, held in proposals if out]
    assert made, "the GP never proposed"
    # with trained points (no constraint) and rejected ones (budget violated) in the study
    assert {"budget": 1.0} in made[0][1] and {} in made[0][1]
    shared = set.intersection(*(set(t.params) for t in study.get_trials() if t.state == TrialState.COMPLETE))
    assert all(set(out) <= shared and {"n_stages", "width", "mixer_0"} <= set(out) for out, _ in made)
    # with a trial still running (Ray runs several at once): GPSampler's batch acquisition sees it
    space.sample(study.ask())
    before = len(proposals)
    space.sample(study.ask())
    assert len(proposals) == before + 1 and proposals[-1][0]
