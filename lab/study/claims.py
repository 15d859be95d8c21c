"""Claims a scaling study puts to the test, and their verdicts from the study's trials.

A claim names arms of the study's grid and one of three tests:

- `beats`: the arm's accuracy is above each arm of `than` at `at` (smallest, largest, all: the
  mean over the fractions, or one fraction). The statistic is the mean over seeds of the paired
  accuracy difference (the same seed trains every arm on the same nested subset), with a
  Student-t interval over the seeds.
- `closes-gap`: the arm's accuracy relative to each arm of `than` grows from the smallest fraction
  to the largest ("needs more data": it gains more from data). The statistic is the paired
  difference-in-differences [A - B](largest) - [A - B](smallest), with a t interval over seeds.
- `steeper`: the arm's fitted power-law exponent b (E = a D^-b) exceeds each of `than`'s: b_A - b_B
  with a percentile interval from the two curves' bootstrap samples (lab.scaling).

Each comparison is `supported` when its interval lies above 0, `contradicted` when below, else
`inconclusive`. A claim is supported when all its comparisons are, contradicted when all are,
`partly supported` / `partly contradicted` when some are and the rest are inconclusive, `mixed`
when some go each way. Intervals are per comparison: with many comparisons some will exclude 0 by
chance (no multiple-comparison correction).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from lab.errors import LabError, StudyError, check_mapping
from lab.scaling.bootstrap import t_quantile

TESTS = ("beats", "closes-gap", "steeper")
PLACES = ("smallest", "largest", "all")
CLAIM_KEYS = ("claim", "test", "arm", "than", "at")


@dataclass(frozen=True)
class Claim:
    says: str                     # the claim in words, as the lecture puts it
    test: str                     # beats, closes-gap or steeper
    arm: str
    than: tuple[str, ...]
    at: str | float = "smallest"  # beats: smallest, largest, all or a fraction

    def to_setting(self) -> dict:
        out: dict[str, Any] = {"claim": self.says, "test": self.test, "arm": self.arm, "than": list(self.than)}
        if self.test == "beats":
            out["at"] = self.at
        return out


def parse_claims(entries, arms: list[str], fractions: list[float] | None = None) -> list[Claim]:
    """Claims from a study's `claims` setting over its `arms` (and `fractions`, when known);
    StudyError names the entry and field at fault."""
    if not isinstance(entries, list):
        raise StudyError("study claims: expected a list of claims (claim, test, arm, than, at)")
    claims = []
    for i, entry in enumerate(entries):
        where = f"study claims[{i}]"
        check_mapping(entry, CLAIM_KEYS, where, f"a mapping with keys {', '.join(CLAIM_KEYS)}")
        says = entry.get("claim")
        if not isinstance(says, str) or not says.strip():
            raise StudyError(f"{where}.claim: expected the claim in words")
        test = entry.get("test")
        if test not in TESTS:
            raise StudyError(f"{where}.test = {test!r}: expected one of {', '.join(TESTS)}")
        than = entry.get("than")
        than = [than] if isinstance(than, str) else than
        if not isinstance(than, list) or not than:
            raise StudyError(f"{where}.than: expected an arm or a list of arms")
        for field_, names in (("arm", [entry.get("arm")]), ("than", than)):
            for name in names:
                if name not in arms:
                    raise StudyError(f"{where}.{field_} = {name!r}: not an arm of the study "
                                     f"(arms: {', '.join(arms)})")
        if entry["arm"] in than:
            raise StudyError(f"{where}.than: compares {entry['arm']!r} with itself")
        at = entry.get("at", "smallest")
        if test != "beats" and "at" in entry:
            raise StudyError(f"{where}.at: only a `beats` claim is tested at a place ({test} uses every fraction)")
        if not (at in PLACES or (isinstance(at, (int, float)) and not isinstance(at, bool) and 0 < at <= 1)):
            raise StudyError(f"{where}.at = {at!r}: expected smallest, largest, all or a fraction in (0, 1]")
        if at not in PLACES and fractions is not None and not any(math.isclose(at, f) for f in fractions):
            raise StudyError(f"{where}.at = {at!r}: not one of the study's fractions ({', '.join(f'{f:g}' for f in fractions)})")
        claims.append(Claim(says.strip(), test, entry["arm"], tuple(than), at))
    return claims


@dataclass
class Comparison:
    arm: str
    than: str
    statistic: str                # what `value` is, in words
    value: float = math.nan
    lo: float = math.nan
    hi: float = math.nan
    n: int = 0                    # paired seeds (or bootstrap samples for `steeper`)
    verdict: str = "inconclusive"
    note: str | None = None       # why there is no number, or a caveat

    def measured(self, test: str) -> str:
        """'+4.3 [+2.7, +5.9] points, 3 seeds' (accuracy in points; an exponent difference as is)."""
        steeper = test == "steeper"
        scale, fmt = (1.0, "{:+.3f}") if steeper else (100.0, "{:+.1f}")
        if not math.isfinite(self.value):
            return "–"
        text = fmt.format(scale * self.value)
        if math.isfinite(self.lo) and math.isfinite(self.hi):
            text += f" [{fmt.format(scale * self.lo)}, {fmt.format(scale * self.hi)}]"
        return text + ("" if steeper else f" points, {self.n} seed{'s' * (self.n != 1)}")


@dataclass
class ClaimResult:
    claim: Claim
    comparisons: list[Comparison] = field(default_factory=list)
    level: float = 0.95

    @property
    def verdict(self) -> str:
        verdicts = [c.verdict for c in self.comparisons]
        sup, con = verdicts.count("supported"), verdicts.count("contradicted")
        if sup and con:
            return "mixed"
        if sup:
            return "supported" if sup == len(verdicts) else "partly supported"
        if con:
            return "contradicted" if con == len(verdicts) else "partly contradicted"
        return "inconclusive"

    def to_dict(self) -> dict:
        return {"claim": self.claim.says, "test": self.claim.test, "arm": self.claim.arm,
                "than": list(self.claim.than), "at": self.claim.at if self.claim.test == "beats" else None,
                "verdict": self.verdict, "level": self.level,
                "comparisons": [{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                 for k, v in c.__dict__.items()} for c in self.comparisons]}


def verdict(lo: float, hi: float) -> str:
    if lo > 0:
        return "supported"
    if hi < 0:
        return "contradicted"
    return "inconclusive"


def t_interval(values: np.ndarray, level: float) -> tuple[float, float, float]:
    """Mean of `values` and its Student-t interval at `level` (NaNs with fewer than 2 values)."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n < 2:
        return (float(values.mean()) if n else math.nan), math.nan, math.nan
    mean = float(values.mean())
    half = t_quantile(0.5 + level / 2, n - 1) * float(values.std(ddof=1)) / math.sqrt(n)
    return mean, mean - half, mean + half


def cells(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Complete trials as a table arm x fraction x seed -> accuracy, from a scaling study's rows
    (the cell is in each trial's hparams vars)."""
    done = rows[rows["state"] == "complete"] if "state" in rows else rows
    out: list[dict[str, Any]] = []
    if "hparams" not in done or metric not in done:
        return pd.DataFrame(out, columns=["arm", "fraction", "seed", "acc"])
    for h, acc in zip(done["hparams"], pd.to_numeric(done[metric], errors="coerce")):
        try:
            v = json.loads(h).get("vars", {})
        except (TypeError, ValueError, AttributeError):
            continue
        if {"arch", "fraction", "seed"} <= set(v) and math.isfinite(acc):
            out.append({"arm": v["arch"], "fraction": float(v["fraction"]), "seed": int(v["seed"]), "acc": float(acc)})
    return pd.DataFrame(out, columns=["arm", "fraction", "seed", "acc"])


def _paired(table: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Accuracy difference a - b per (fraction, seed) where both arms have the cell."""
    pa = table[table["arm"] == a].set_index(["fraction", "seed"])["acc"]
    pb = table[table["arm"] == b].set_index(["fraction", "seed"])["acc"]
    both = pa.index.intersection(pb.index)
    return (pa.loc[both] - pb.loc[both]).rename("diff").reset_index()


def _place(fractions: list[float], at) -> float | None:
    if at == "smallest":
        return fractions[0]
    if at == "largest":
        return fractions[-1]
    return None if at == "all" else float(at)


def _beats(table: pd.DataFrame, a: str, b: str, at, fractions: list[float], level: float) -> Comparison:
    d = _paired(table, a, b)
    where = _place(fractions, at)
    if where is None:   # every fraction: each seed's mean difference over the fractions it has for both
        full = d.groupby("seed").filter(lambda g: len(g) == len(fractions))
        per_seed = full.groupby("seed")["diff"].mean()
        what = f"mean accuracy difference over {len(fractions)} fractions"
    else:
        per_seed = d[np.isclose(d["fraction"], where)].set_index("seed")["diff"]
        what = f"accuracy difference at fraction {where:g}"
    return _from_seeds(a, b, what, per_seed.to_numpy(), level)


def _closes_gap(table: pd.DataFrame, a: str, b: str, fractions: list[float], level: float) -> Comparison:
    what = f"(A - B) at fraction {fractions[-1]:g} minus (A - B) at {fractions[0]:g}"
    if len(fractions) < 2:
        return Comparison(a, b, what, note="needs two fractions or more")
    d = _paired(table, a, b).pivot(index="seed", columns="fraction", values="diff")
    if fractions[0] not in d or fractions[-1] not in d:
        return _from_seeds(a, b, what, np.array([]), level)
    g = (d[fractions[-1]] - d[fractions[0]]).dropna()
    return _from_seeds(a, b, what, g.to_numpy(), level)


def _from_seeds(a: str, b: str, what: str, values: np.ndarray, level: float) -> Comparison:
    mean, lo, hi = t_interval(values, level)
    c = Comparison(a, b, what, mean, lo, hi, len(values))
    if len(values) < 2:
        c.note = f"{len(values)} paired seed{'s' * (len(values) != 1)}: an interval needs 2 or more"
    else:
        c.verdict = verdict(lo, hi)
    return c


def _steeper(fits: dict, a: str, b: str, level: float) -> Comparison:
    what = "power-law exponent b_A - b_B"
    try:
        fa, fb = fits[a].get("power"), fits[b].get("power")
    except KeyError as e:
        return Comparison(a, b, what, note=f"no trials of {e.args[0]!r}")
    except LabError as e:
        return Comparison(a, b, what, note=str(e))
    value = fa.value("b") - fb.value("b")
    if fa.boot is None or fb.boot is None:
        return Comparison(a, b, what, value, note="no bootstrap samples: no interval")
    i, j = fa.law.params.index("b"), fb.law.params.index("b")
    sa, sb = fa.boot[:, i], fb.boot[:, j]
    sa, sb = sa[np.isfinite(sa)], sb[np.isfinite(sb)]
    n = min(len(sa), len(sb))
    if n < 20:
        return Comparison(a, b, what, value, note="too few bootstrap samples for an interval")
    diff = sa[:n] - sb[:n]   # independent curves: pair the samples as drawn
    lo, hi = np.percentile(diff, [50 * (1 - level), 50 * (1 + level)])
    return Comparison(a, b, what, value, float(lo), float(hi), n, verdict(lo, hi))


def evaluate(claims: list[Claim], rows: pd.DataFrame, metric: str, fits: dict | None = None,
             level: float = 0.95) -> list[ClaimResult]:
    """Each claim's comparisons and verdict from a scaling study's trial rows. `fits` maps an arm
    to its lab.scaling CurveFit (needed by `steeper` claims)."""
    table = cells(rows, metric)
    fractions = sorted(table["fraction"].unique().tolist())
    results = []
    for claim in claims:
        result = ClaimResult(claim, level=level)
        for other in claim.than:
            if claim.test == "steeper":
                result.comparisons.append(_steeper(fits or {}, claim.arm, other, level))
            elif not fractions:
                result.comparisons.append(Comparison(claim.arm, other, claim.test, note="no complete trials"))
            elif claim.test == "beats":
                result.comparisons.append(_beats(table, claim.arm, other, claim.at, fractions, level))
            else:
                result.comparisons.append(_closes_gap(table, claim.arm, other, fractions, level))
        results.append(result)
    return results
