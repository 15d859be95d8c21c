"""Grammar-aware Optuna samplers: regularized evolution, Pareto local search, and Optuna's GP sampler
adapted to the lab's studies (`--sampler evolution|local|gp`; `Space.sampler` builds them).

A space is define-by-run: a child point is built by answering each `sample_independent` call of its
trial. Evolution and local search plan a trial once (its parent and the one variable to change, in
`before_trial`) and then answer every variable the space asks: the changed variable gets its new
value, any other variable the parent has gets the parent's value (when it lies in the asked
distribution), and a variable the parent lacks (it became active in the child: a conditional `if:`,
a new stage's variables) is drawn at random. A variable that becomes inactive is simply not asked.

Every decision of trial N is drawn from numpy's Generator seeded with (seed, N), and the study's
trials are the only state read: the same seed and history give the same points, and a resumed study
(a new sampler over the same storage) continues where the old one left off.

How the lab tells Optuna (lab.study.search.tell): user attribute "state" is "complete", "pruned" or
"rejected" (invalid, over budget, duplicate); rejected points (but duplicates) are pruned trials
without values that carry a violated `budget` constraint.
Rejected trials are never parents; for local search they still count as explored.
Only Optuna's public API is used.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from lab.pareto import pareto_mask, pareto_ranks

GRAMMAR_SAMPLERS = ("evolution", "local", "gp")
LOCAL_STEP = 0.1   # a float's local-search move: 10% of its range (of its log range when log-scaled)


@dataclass(frozen=True)
class Defaults:
    population: int   # evolution's window: the most recent trained trials
    tournament: int   # evolution's tournament size
    startup: int      # complete trials before any sampler leaves random sampling


def defaults(trials: int) -> Defaults:
    """Settings for a study of `trials` trained trials (20-80 in the lab's studies).

    Real et al. (2019) fill the population with P random models, then evolve with S/P ~ 1/4 at
    P = 100 for 20k models. With 20-80 trials that would be all random, so the window is about a
    third of the budget (8 at 20 trials, 13 at 40, 26 at 80: old trials age out a few times per
    study), the tournament about a third of the window (3, 4, 9: selective enough to exploit, small
    enough that a tournament's Pareto rank 0 is not the whole window), and the random start a
    quarter of the budget (5, 10, 20), never above the window, so that most of the budget evolves.
    Local search uses the same start (White et al. 2021 start from a handful of random points).
    """
    population = max(8, min(30, trials // 3))
    tournament = max(2, round(population / 3))
    startup = max(4, min(population, 20, trials // 4))
    return Defaults(population, tournament, startup)


def make(name: str, seed: int, trials: int) -> optuna.samplers.BaseSampler:
    """The grammar-aware sampler `name` (one of GRAMMAR_SAMPLERS) for a study of `trials` trials."""
    d = defaults(trials)
    if name == "evolution":
        return EvolutionSampler(seed=seed, population=d.population, tournament=d.tournament, startup=d.startup)
    if name == "local":
        return LocalSearchSampler(seed=seed, startup=d.startup)
    if name == "gp":
        return LabGPSampler(seed=seed, startup=d.startup)
    raise ValueError(f"sampler {name!r}: expected one of {', '.join(GRAMMAR_SAMPLERS)}")


# --- trials as the lab tells them ----------------------------------------------------------

def lab_state(trial: FrozenTrial) -> str:
    """complete | pruned | rejected | failed | running: the lab's user attribute "state", or what
    Optuna's state and constraints say for a trial told without it."""
    state = trial.user_attrs.get("state")
    if isinstance(state, str):
        return state
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED) and any(v > 0 for v in trial.constraints.values()):
        return "rejected"   # pruned before training (complete in studies made before the lab named its metrics)
    if trial.state == TrialState.COMPLETE:
        return "complete"
    if trial.state == TrialState.PRUNED:
        return "pruned"
    return "failed" if trial.state == TrialState.FAIL else "running"


def senses(study: optuna.Study) -> list[str]:
    return ["max" if d == optuna.study.StudyDirection.MAXIMIZE else "min" for d in study.directions]


def _complete(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if lab_state(t) == "complete" and t.values is not None]


# --- values of a distribution --------------------------------------------------------------

def random_value(dist: BaseDistribution, rng: np.random.Generator) -> Any:
    """A uniform draw from `dist` (log-uniform where it is log-scaled; on its step grid)."""
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[int(rng.integers(len(dist.choices)))]
    if isinstance(dist, IntDistribution):
        if dist.log:   # as Optuna's RandomSampler: log-uniform over [low - 0.5, high + 0.5], rounded
            x = math.exp(rng.uniform(math.log(dist.low - 0.5), math.log(dist.high + 0.5)))
            return int(min(max(round(x), dist.low), dist.high))
        return int(dist.low + dist.step * rng.integers((dist.high - dist.low) // dist.step + 1))
    if isinstance(dist, FloatDistribution):
        if dist.step is not None:
            n = round((dist.high - dist.low) / dist.step) + 1
            return float(min(dist.low + dist.step * int(rng.integers(n)), dist.high))
        if dist.log:
            return float(math.exp(rng.uniform(math.log(dist.low), math.log(dist.high))))
        return float(rng.uniform(dist.low, dist.high))
    raise TypeError(f"unsupported distribution {dist!r}")


def inside(dist: BaseDistribution, value: Any) -> bool:
    """Whether `value` is one of `dist`'s values (a choice; in range and on the step grid)."""
    if isinstance(dist, CategoricalDistribution):
        return any(_same(value, c) and type(value) is type(c) for c in dist.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    if isinstance(dist, IntDistribution):
        return bool(float(value).is_integer() and dist.low <= value <= dist.high
                    and (int(value) - dist.low) % dist.step == 0)
    if isinstance(dist, FloatDistribution):
        tol = 1e-9 * max(1.0, abs(dist.high - dist.low))
        if not dist.low - tol <= value <= dist.high + tol:
            return False
        return dist.step is None or abs((value - dist.low) / dist.step - round((value - dist.low) / dist.step)) < 1e-6
    return False


def movable(dist: BaseDistribution) -> bool:
    """A distribution with more than one value (a variable that can change)."""
    return not dist.single()


def mutate(dist: BaseDistribution, value: Any, rng: np.random.Generator) -> Any:
    """Another value of `dist` than `value`, uniformly (a float: resampled in its range, log-aware)."""
    if isinstance(dist, CategoricalDistribution):
        others = [c for c in dist.choices if not (_same(c, value) and type(c) is type(value))]
        return others[int(rng.integers(len(others)))]
    if isinstance(dist, IntDistribution) and not dist.log:
        n = (dist.high - dist.low) // dist.step + 1
        k = int(rng.integers(n - 1))   # an index among the n - 1 others
        here = (int(value) - dist.low) // dist.step if inside(dist, value) else n
        return int(dist.low + dist.step * (k + 1 if k >= here else k))
    if isinstance(dist, FloatDistribution) and dist.step is not None:
        n = round((dist.high - dist.low) / dist.step) + 1
        k = int(rng.integers(n - 1))
        here = round((value - dist.low) / dist.step) if inside(dist, value) else n
        return float(min(dist.low + dist.step * (k + 1 if k >= here else k), dist.high))
    for _ in range(64):   # log ints, continuous floats: redraw until different (almost surely at once)
        x = random_value(dist, rng)
        if not _same(x, value):
            return x
    return neighbours(dist, value)[0]


def neighbours(dist: BaseDistribution, value: Any) -> list:
    """Local search's single-variable moves: every other choice; an int +-step; a float +-10% of its
    range (of its log range when log-scaled; on its step grid, at least a step), clipped to the range."""
    if isinstance(dist, CategoricalDistribution):
        return [c for c in dist.choices if not (_same(c, value) and type(c) is type(value))]
    if isinstance(dist, IntDistribution):
        return [v for v in (int(value) - dist.step, int(value) + dist.step) if dist.low <= v <= dist.high]
    assert isinstance(dist, FloatDistribution)
    if dist.log:
        span = LOCAL_STEP * (math.log(dist.high) - math.log(dist.low))
        raw = [math.exp(math.log(value) - span), math.exp(math.log(value) + span)]
    else:   # on a step grid, at least one step
        span = max(LOCAL_STEP * (dist.high - dist.low), dist.step or 0.0)
        raw = [value - span, value + span]
    out: list[float] = []
    for x in raw:
        x = min(max(x, dist.low), dist.high)
        if dist.step is not None:
            x = min(dist.low + dist.step * round((x - dist.low) / dist.step), dist.high)
        if not _same(x, value) and not any(_same(x, y) for y in out):
            out.append(float(x))
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
        except TypeError:
            return False
    return bool(a == b)


# --- the common machinery ------------------------------------------------------------------

@dataclass(frozen=True)
class Move:
    """What a sampler decided for one trial: `parent` (a trial number; None: a random point), the
    variable `name` it changes to `value`, and `pool`: the trial numbers it chose among (evolution:
    the tournament; local search: the front members it looked at, in its random order, the parent
    last: those before it had no unexplored neighbour)."""

    parent: int | None
    name: str | None = None
    value: Any = None
    pool: tuple[int, ...] = ()


@dataclass
class _Plan:
    move: Move
    rng: np.random.Generator
    params: dict = field(default_factory=dict)   # the parent's values


class _ParentSampler(optuna.samplers.BaseSampler):
    """A sampler that builds each trial from one parent trial and one changed variable (`_choose`)."""

    def __init__(self, seed: int, startup: int):
        self.seed, self.startup = int(seed), int(startup)
        self._plans: dict[int, _Plan] = {}
        self.moves: dict[int, Move] = {}   # trial number -> what was decided (for tests and inspection)

    def _choose(self, study: optuna.Study, trial: FrozenTrial, trials: list[FrozenTrial],
                rng: np.random.Generator) -> Move:
        raise NotImplementedError

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._plan(study, trial)

    def _plan(self, study: optuna.Study, trial: FrozenTrial) -> _Plan:
        plan = self._plans.get(trial.number)
        if plan is None:
            rng = np.random.default_rng([self.seed % 2**32, trial.number])
            others = [t for t in study.get_trials(deepcopy=False) if t.number != trial.number]
            move = self._choose(study, trial, others, rng)
            parent = next((t.params for t in others if t.number == move.parent), {}) if move.parent is not None else {}
            plan = self._plans[trial.number] = _Plan(move, rng, dict(parent))
            self.moves[trial.number] = move
        return plan

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        plan = self._plan(study, trial)
        if param_name == plan.move.name and inside(param_distribution, plan.move.value):
            return plan.move.value
        if param_name != plan.move.name and param_name in plan.params and inside(param_distribution,
                                                                                 plan.params[param_name]):
            return plan.params[param_name]
        return random_value(param_distribution, plan.rng)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._plans.pop(trial.number, None)


class EvolutionSampler(_ParentSampler):
    """Regularized (ageing) evolution, Real et al. 2019, multi-objective.

    The population is the window of the `population` most recent trained trials (complete or
    pruned, by trial number); a tournament of `tournament` of the window's complete trials (pruned
    ones age like the others but never win); the parent is a tournament member of the best Pareto
    rank under the study's directions (ties at random); the child changes exactly one of the
    parent's variables to another value of its distribution. Random points until the study holds
    `startup` complete trials (and while the window holds none).
    """

    def __init__(self, seed: int = 0, population: int = 13, tournament: int = 4, startup: int = 10):
        super().__init__(seed, startup)
        if not 1 <= tournament <= population:
            raise ValueError(f"tournament {tournament}: expected 1..population ({population})")
        self.population, self.tournament = int(population), int(tournament)

    def window(self, trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
        """The population: the most recent `population` trained trials, by number."""
        trained = sorted((t for t in trials if lab_state(t) in ("complete", "pruned")), key=lambda t: t.number)
        return trained[-self.population:]

    def _choose(self, study: optuna.Study, trial: FrozenTrial, trials: list[FrozenTrial],
                rng: np.random.Generator) -> Move:
        # the random start ends with `startup` complete trials in the study, not in the window: under ASHA
        # most of a window is pruned, and a window of 8 rarely held 5 complete ones (evolution stayed random)
        complete = _complete(self.window(trials))
        if len(_complete(trials)) < max(1, self.startup) or not complete:
            return Move(None)
        picks = sorted(rng.choice(len(complete), size=min(self.tournament, len(complete)), replace=False))
        members = [complete[int(i)] for i in picks]
        ranks = pareto_ranks([list(t.values) for t in members], senses(study))
        best = [t for t, r in zip(members, ranks) if r == ranks.min()]
        parent = best[int(rng.integers(len(best)))]
        names = sorted(n for n, d in parent.distributions.items() if movable(d))
        pool = tuple(t.number for t in members)
        if not names:
            return Move(parent.number, pool=pool)
        name = names[int(rng.integers(len(names)))]
        return Move(parent.number, name, mutate(parent.distributions[name], parent.params[name], rng), pool)


class LocalSearchSampler(_ParentSampler):
    """Pareto local search (the multi-objective form of White et al. 2021's local search).

    The current set is the Pareto front of the complete trials. A front member that still has
    unexplored neighbours is picked at random, and one of its unexplored neighbours at random is
    proposed (a neighbour changes exactly one variable: `neighbours`). A neighbour is explored when
    any trial of the study (trained, rejected, failed or running) agrees with the member on every
    shared variable but that one, where it has the neighbour's value: read from the study, so a
    resumed study goes on without sampler state. When no front member has unexplored neighbours, a
    random point (a restart). Random points until `startup` trials are complete.
    """

    def __init__(self, seed: int = 0, startup: int = 10):
        super().__init__(seed, startup)

    def unexplored(self, member: FrozenTrial, trials: Sequence[FrozenTrial]) -> list[tuple[str, Any]]:
        """The (variable, value) neighbours of `member` that no trial of `trials` has tried."""
        return self._unexplored(member, _tried(trials))

    @staticmethod
    def _unexplored(member: FrozenTrial, tried: list[tuple[int, dict, set]]) -> list[tuple[str, Any]]:
        explored: dict[str, list] = {}
        mine = member.params
        items = set(mine.items())
        for number, params, its in tried:
            if number == member.number:
                continue
            # shared variables minus those with equal values (set operations: this runs per member per trial)
            shared = mine.keys() & params.keys()
            if len(shared) - len(items & its) == 1:
                (name,) = (n for n in shared if params[n] != mine[n])
                explored.setdefault(name, []).append(params[name])
        out = []
        for name in sorted(mine):
            for value in neighbours(member.distributions[name], mine[name]):
                if not any(_same(value, v) for v in explored.get(name, ())):
                    out.append((name, value))
        return out

    def _choose(self, study: optuna.Study, trial: FrozenTrial, trials: list[FrozenTrial],
                rng: np.random.Generator) -> Move:
        complete = sorted(_complete(trials), key=lambda t: t.number)
        if len(complete) < max(1, self.startup):
            return Move(None)
        front = [t for t, on in zip(complete, pareto_mask([list(t.values) for t in complete], senses(study))) if on]
        tried = _tried(trials)
        # the first member with unexplored neighbours in a random order of the front: a uniform pick among
        # those members, without computing every member's neighbourhood
        seen: list[int] = []
        for i in rng.permutation(len(front)):
            member = front[int(i)]
            seen.append(member.number)
            moves = self._unexplored(member, tried)
            if moves:
                name, value = moves[int(rng.integers(len(moves)))]
                return Move(member.number, name, value, tuple(seen))
        return Move(None, pool=tuple(seen))   # every front member's neighbourhood is exhausted: restart at random


def _tried(trials: Sequence[FrozenTrial]) -> list[tuple[int, dict, set]]:
    """(number, params, set of (name, value)) of the trials that have sampled something."""
    out = []
    for t in trials:
        params = t.params
        if params:
            out.append((t.number, params, set(params.items())))
    return out


class LabGPSampler(optuna.samplers.BaseSampler):
    """Optuna's GPSampler (multi-objective with constraints: constrained LogEHVI) on the variables
    every complete trial has (its intersection search space), random draws for the conditional rest.

    Optuna 5 reads `Trial.set_constraint` values itself (system attributes "constraints:NAME", the
    FrozenTrial's `constraints`), and its `constraints_func` is deprecated (and would store a second,
    index-named copy), so none is passed. But the lab sets the `budget` constraint only on rejected
    points, which it tells as pruned trials without values (GPSampler reads complete ones), and
    GPSampler requires every trial to have the same constraints. So the GP sees a copy of the study
    (an in-memory one, public API only) in which a trial without the constraint is feasible (0.0) and
    a rejected point is complete with penalty values (`gp_view`).
    """

    def __init__(self, seed: int = 0, startup: int = 10):
        self.seed = int(seed)
        self._gp = optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup, warn_independent_sampling=False)
        self._rngs: dict[int, np.random.Generator] = {}
        self._last: tuple[int, tuple[optuna.Study, FrozenTrial]] | None = None   # the latest trial's view

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        # GPSampler's own rule (the complete trials' intersection, single-valued variables left out), on the
        # view: rejected points are complete there, and they lack the variables their invalid points skipped
        space = optuna.search_space.IntersectionSearchSpace().calculate(self._view(study, trial)[0])
        return {name: d for name, d in space.items() if not d.single()}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        view, stand_in = self._view(study, trial)
        return self._gp.sample_relative(view, stand_in, search_space)

    def _view(self, study: optuna.Study, trial: FrozenTrial) -> tuple[optuna.Study, FrozenTrial]:
        """The study as the GP reads it (`gp_view`), built once per trial (Optuna asks for the search space
        and then the sample), and a stand-in for `trial` in it: GPSampler records its proposal on it."""
        if self._last is not None and self._last[0] == trial.number:
            return self._last[1]
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
        trials = [t for t in trials if t.number != trial.number
                  and (t.state != TrialState.PRUNED or lab_state(t) == "rejected")]   # not the scheduler's pruned ones
        view = optuna.create_study(directions=study.directions, sampler=optuna.samplers.RandomSampler(seed=0))
        view.add_trials(gp_view(trials, study.directions, study.metric_names))
        asked = view.ask()
        stand_in = next(t for t in view.get_trials(deepcopy=False) if t.number == asked.number)
        self._last = (trial.number, (view, stand_in))
        return view, stand_in

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        rng = self._rngs.setdefault(trial.number, np.random.default_rng([self.seed % 2**32, trial.number]))
        return random_value(param_distribution, rng)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._rngs.pop(trial.number, None)


PENALTY = {"max": 0.0, "min": 1e18}   # the worst value of an objective, for a rejected point in the GP's view


def gp_view(trials: Sequence[FrozenTrial], directions: Sequence[optuna.study.StudyDirection] = (),
            names: Sequence[str] | None = None) -> list[FrozenTrial]:
    """Copies of `trials` as GPSampler can read them: every constraint any trial has, on every
    complete trial (0.0, feasible, where it lacks it); rejected points (pruned, without values, in a
    study of objectives `directions` named `names`) complete with penalty values: the worst value of
    each objective, but for their MACs and params (user attributes) where those are objectives; and
    rejected points' values clipped to [lo - span, hi + span] of the trained (complete) trials' values,
    so that penalties do not swamp the GP's standardization."""
    keys = sorted({k for t in trials for k in t.constraints})
    trained = np.array([t.values for t in _complete(trials)], dtype=float)
    if len(trained):
        lo, hi = trained.min(axis=0), trained.max(axis=0)
        span = np.maximum(hi - lo, np.maximum(np.abs(hi), 1e-12) * 0.1)
    out = []
    for t in trials:
        c = copy.deepcopy(t)
        if c.state == TrialState.PRUNED and lab_state(t) == "rejected" and directions:
            c.state, c.values = TrialState.COMPLETE, _penalties(t, directions, names)
        if c.state == TrialState.COMPLETE:
            for k in keys:
                if k not in c.constraints:
                    c.set_constraint(k, 0.0)
            if len(trained) and lab_state(t) == "rejected" and c.values is not None:
                c.values = list(np.clip(np.array(c.values, dtype=float), lo - span, hi + span))
        out.append(c)
    return out


def _penalties(trial: FrozenTrial, directions: Sequence[optuna.study.StudyDirection],
               names: Sequence[str] | None) -> list[float]:
    out = []
    for i, direction in enumerate(directions):
        known = trial.user_attrs.get(names[i]) if names and names[i] in ("macs", "params") else None
        worst = PENALTY["max" if direction == optuna.study.StudyDirection.MAXIMIZE else "min"]
        out.append(float(known) if isinstance(known, (int, float)) else worst)
    return out
