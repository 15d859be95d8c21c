"""Search spaces (YAML) and the define-by-run sampler: the cost model only, never training."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import optuna
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from optuna.trial import FixedTrial, TrialState

import lab
from lab.resources import shipped_spaces, spaces_dir
from lab.study.space import Point, Space, SpaceError, describe, load_space
from lab.train.recipes import recipe

CONV_KINDS = {"basic", "bottleneck", "convnext", "dense", "mbconv", "preact"}
ATTENTION_KINDS = {"mhsa", "swin", "nat"}
SEEDS = (0, 1, 2)
N = 200
# the measured feasible shares (300 RandomSampler points, seed 0) are 0.73-0.88: the floor leaves room for seeds
FLOOR = 0.5
SPACE_DIR, SPACES = spaces_dir(), shipped_spaces()   # the shipped folder and its searchable spaces


@pytest.fixture(autouse=True, scope="module")
def _quiet_optuna():
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(logging.WARNING)
    yield
    optuna.logging.set_verbosity(verbosity)


def random_points(space: Space, seed: int, n: int = N) -> list[tuple[dict, Point]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        point = space.sample(trial, num_classes=10, in_chans=1)
        out.append((dict(trial.params), point))
    return out


@pytest.fixture(scope="module")
def samples() -> dict[str, list[tuple[dict, Point]]]:
    return {name: [s for seed in SEEDS for s in random_points(load_space(name), seed)] for name in SPACES}


# --- the shipped spaces -----------------------------------------------------------------

def test_shipped_spaces_load():
    files = sorted(p.stem for p in SPACE_DIR.glob("*.yaml") if p.stem != "named")
    assert files == SPACES
    assert {"conv", "hierarchical", "hybrid", "isotropic", "video"} <= set(SPACES)
    for name in SPACES:
        space = load_space(name)
        assert space.name == name and space.res == (32 if name == "video" else 28)   # video: moving-digits' size
        assert space.max_macs is not None and space.max_macs <= 100e6
        assert space.max_params is not None and space.max_params <= 5e6
        assert load_space(SPACE_DIR / f"{name}.yaml").to_dict() == space.to_dict()
        frozen = Space.from_dict(json.loads(json.dumps(space.to_dict())))   # what a study freezes reads back
        for params, point in random_points(space, seed=5, n=30):
            again = frozen.sample(FixedTrial(params))
            assert (again.text, again.reason) == (point.text, point.reason)


@pytest.mark.parametrize("name", SPACES)
def test_every_point_is_valid_within_budget_or_rejected_with_a_reason(samples, name):
    space = load_space(name)
    for params, point in samples[name]:
        if point.reason is None:
            assert isinstance(point.spec, lab.Spec)
            assert point.spec.res == space.res
            assert point.text == point.spec.text
            assert lab.parse(point.text).arch_id == point.spec.arch_id
            report = lab.cost(point.spec, 10, 1)
            assert (report.macs, report.params) == (point.macs, point.params)
            assert report.macs <= space.max_macs and report.params <= space.max_params
        else:
            assert "\n" not in point.reason
            assert point.reason.startswith(("SpecError: ", "over budget: ", "under budget: ", "constraint fails: "))
            if point.reason.startswith("SpecError"):
                assert point.spec is None and point.macs is None
                with pytest.raises(lab.SpecError):
                    lab.parse(point.text)
            elif point.reason.startswith("constraint fails: "):   # a `require` condition, read after the budget
                assert space.over_budget(point.macs, point.params) is None
                assert point.reason == space._expand(FixedTrial(params)).requirement(point.macs, point.params)
            else:
                assert point.spec is not None and point.reason == space.over_budget(point.macs, point.params)
        assert point.values == {k: v for k, v in params.items()}


@pytest.mark.parametrize("name", SPACES)
def test_feasible_share_is_reasonable(samples, name):
    points = samples[name]
    for k in range(len(SEEDS)):
        chunk = points[k * N:(k + 1) * N]
        share = sum(p.reason is None for _, p in chunk) / len(chunk)
        assert share > FLOOR, (name, SEEDS[k], share)
    assert load_space(name).check_feasible(tries=100, frames=8 if name == "video" else 1) > FLOOR


@pytest.mark.parametrize("name", SPACES)
def test_exactly_the_variables_that_apply_are_suggested(samples, name):
    """Replaying a point's parameters suggests the same ones (no more: FixedTrial would raise), and
    every architecture variable suggested is read by the text: no condition is looser than its use."""
    space = load_space(name)
    hparams = {v.name for v in space.hparams}
    for params, point in samples[name][:N]:
        x = space._expand(FixedTrial(params))
        arch = set(params) - hparams
        assert x.used == arch, (params, x.used)
        again = space.sample(FixedTrial(params))
        assert (again.text, again.reason) == (point.text, point.reason)


CONDITIONS = {
    "hybrid": [
        ("stride", lambda p: p["stem"] == "conv"),
        ("patch", lambda p: p["stem"] == "patch"),
        *[(f"{v}_{i}", cond) for i in range(3) for v, cond in (
            ("w", lambda p, i=i: p.get(f"mixer_{i}") == "swin"),
            ("k", lambda p, i=i: p.get(f"mixer_{i}") == "nat"),
            ("e", lambda p, i=i: p.get(f"mixer_{i}") == "bottleneck"),
            ("se", lambda p, i=i: p.get(f"mixer_{i}") == "bottleneck"),
            ("down", lambda p, i=i: i > 0 and p["layout"] == "hierarchical"
             and p.get(f"mixer_{i}") in ("mhsa", "swin", "nat", "mixer")),
            ("mixer", lambda p, i=i: i < p["n_stages"]),
        )],
    ],
    "isotropic": [("heads", lambda p: p["mixer"] == "mhsa"), ("pool", lambda p: p["mixer"] == "mhsa"),
                  ("tok", lambda p: p["mixer"] == "mixer"), ("lr", lambda p: True)],
    "hierarchical": [("w", lambda p: p["mixer"] == "swin"), ("k", lambda p: p["mixer"] in ("nat", "convnext")),
                     ("hd", lambda p: p["mixer"] != "convnext"),
                     *[(f"depth_{i}", lambda p, i=i: i < p["n_stages"]) for i in range(4)]],
    "conv": [("e", lambda p: p["block"] == "bottleneck"), ("g", lambda p: p.get("group") == "g"),
             ("gw", lambda p: p.get("group") == "gw"), ("k", lambda p: p["block"] == "convnext"),
             ("mlp", lambda p: p["block"] == "convnext")],
    "video": [
        ("pt", lambda p: p["stem"] == "tubelet"),
        *[(f"{v}_{i}", cond) for i in range(2) for v, cond in (
            ("wt", lambda p, i=i: p.get(f"mixer_{i}") == "swin"),
            ("down", lambda p, i=i: i > 0 and p["layout"] == "hierarchical"
             and p.get(f"mixer_{i}") in ("mhsa", "swin", "mixer")),
            ("mixer", lambda p, i=i: i < p["n_stages"]),
        )],
    ],
}


@pytest.mark.parametrize("name", SPACES)
def test_conditional_variables_only_when_their_condition_holds(samples, name):
    for params, _ in samples[name]:
        for key, holds in CONDITIONS[name]:
            assert (key in params) == holds(params), (key, params)


def test_hybrid_covers_its_families(samples):
    seen = set()
    for _, p in samples["hybrid"]:
        if p.reason is not None:
            continue
        d = describe(p.spec)
        kinds = set(d["kinds"])
        seen.add(("layout", d["layout"]))
        seen.add(("stem", d["stem"]))
        if kinds <= CONV_KINDS:
            seen.add("conv-only")
        if kinds <= ATTENTION_KINDS:
            seen.add("attention-only")
        if kinds & CONV_KINDS and kinds & (ATTENTION_KINDS | {"mixer"}):
            seen.add("mixed")
        if d["layout"] == "hierarchical" and kinds & CONV_KINDS and kinds & ATTENTION_KINDS:
            seen.add("hierarchical hybrid")
        seen.update(kinds)
    assert {"conv-only", "attention-only", "mixed", "hierarchical hybrid", ("layout", "isotropic"),
            ("layout", "hierarchical"), ("stem", "conv"), ("stem", "patch")} <= seen
    assert {"basic", "bottleneck", "convnext", "mhsa", "swin", "nat", "mixer"} <= seen


@pytest.mark.parametrize("name, kinds, layouts", [
    ("isotropic", {"mhsa", "mixer"}, {"isotropic"}),
    ("hierarchical", {"swin", "nat", "convnext"}, {"hierarchical"}),
    ("conv", {"basic", "bottleneck", "convnext"}, {"hierarchical"}),
])
def test_spaces_cover_their_families(samples, name, kinds, layouts):
    valid = [p for _, p in samples[name] if p.reason is None]
    assert {k for p in valid for k in describe(p.spec)["kinds"]} == kinds
    assert {describe(p.spec)["layout"] for p in valid} == layouts
    if name == "conv":   # ResNeXt cardinality, RegNet group width, SE
        texts = " ".join(p.text for p in valid)
        assert "g=" in texts and "gw=" in texts and "se=0.25" in texts


def test_isotropic_samples_valid_hyperparameters(samples):
    for params, p in samples["isotropic"]:
        assert set(p.hparams) == {"lr"} and 3e-4 <= p.hparams["lr"] <= 3e-3
        recipe("default", **p.hparams)


class FakeTrial:
    """Any object with Optuna's suggest methods will do; this one lets hypothesis choose."""

    def __init__(self, data):
        self.data, self.params = data, {}

    def suggest_categorical(self, name, choices):
        self.params[name] = self.data.draw(st.sampled_from(choices), label=name)
        return self.params[name]

    def suggest_int(self, name, low, high, step=1, log=False):
        self.params[name] = low + step * self.data.draw(st.integers(0, (high - low) // step), label=name)
        return self.params[name]

    def suggest_float(self, name, low, high, step=None, log=False):
        if step is not None:
            value = low + step * self.data.draw(st.integers(0, round((high - low) / step)), label=name)
        elif log:
            value = math.exp(self.data.draw(st.floats(math.log(low), math.log(high)), label=name))
        else:
            value = self.data.draw(st.floats(low, high), label=name)
        self.params[name] = min(max(value, low), high)
        return self.params[name]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), name=st.sampled_from(SPACES))
def test_any_trial_like_object_drives_the_sampler(data, name):
    space = load_space(name)
    trial = FakeTrial(data)
    point = space.sample(trial, num_classes=10, in_chans=1)
    assert point.values == trial.params
    if point.reason is None:
        assert lab.parse(point.text).arch_id == point.spec.arch_id
        assert point.macs <= space.max_macs and point.params <= space.max_params
    else:
        assert point.reason.startswith(("SpecError: ", "over budget: ", "under budget: ", "constraint fails: "))


def test_tpe_sampler_with_ask_and_tell():
    space = load_space("hybrid")
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=5),
                                directions=["minimize", "maximize"])
    for _ in range(25):
        trial = study.ask()
        point = space.sample(trial, num_classes=10, in_chans=1)
        if point.reason is not None:
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, [point.macs / 1e6, -point.params / 1e6])
        assert space._expand(FixedTrial(trial.params)).used == set(trial.params)
    states = {t.state for t in study.trials}
    assert TrialState.COMPLETE in states and len(study.trials) == 25
    assert study.best_trials


# --- the format -------------------------------------------------------------------------

SMALL = """\
name: small
res: 28
budget: {max_macs: 60M, max_params: 3_000_000}
vars:
  mixer: [mhsa, swin]
  w: {choice: [4, 7], if: "mixer == 'swin'"}
  width: {int: [32, 64], step: 32}
rules:
  block:
    switch: mixer
    cases:
      mhsa: mhsa(hd=16)
      swin: "swin(w={w},hd=16)"
text: "@{res} | patch(p=4,c={width}) | {block} 2x{width} | ln,gap,fc"
"""


def write(tmp_path, text: str, name: str = "space.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_small_space(tmp_path):
    space = load_space(write(tmp_path, SMALL))
    assert (space.name, space.res, space.max_macs, space.max_params) == ("small", 28, 60_000_000, 3_000_000)
    swin = space.sample(FixedTrial({"mixer": "swin", "w": 4, "width": 64}))
    assert swin.reason is None and swin.text == "@28 | patch(p=4,c=64) | swin(w=4,hd=16) 2x64 | ln,gap,fc"
    assert swin.values == {"mixer": "swin", "w": 4, "width": 64}
    mhsa = space.sample(FixedTrial({"mixer": "mhsa", "width": 32}))
    assert mhsa.reason is None and "w" not in mhsa.values and mhsa.text.startswith("@28 | patch(p=4,c=32) | mhsa")
    assert describe(mhsa.spec) == {"kinds": ["mhsa"], "layout": "isotropic", "stem": "patch"}
    # the frozen form is JSON and loads back to the same space
    d = json.loads(json.dumps(space.to_dict()))
    again = Space.from_dict(d)
    assert again.to_dict() == space.to_dict()
    assert again.sample(FixedTrial({"mixer": "swin", "w": 4, "width": 64})).text == swin.text


def test_budget_forms_and_reasons(tmp_path):
    for form in ("60M", "60e6", "6.0e+7", 60_000_000, "60_000_000"):
        text = SMALL.replace("max_macs: 60M", f"max_macs: {form}")
        assert load_space(write(tmp_path, text)).max_macs == 60_000_000
    tight = load_space(write(tmp_path, SMALL.replace("max_macs: 60M", "max_macs: 1M")))
    point = tight.sample(FixedTrial({"mixer": "mhsa", "width": 64}))
    assert point.spec is not None and point.macs > 1e6
    assert point.reason == f"over budget: {point.macs / 1e6:.1f} MMACs > 1 MMACs"
    small = load_space(write(tmp_path, SMALL.replace("max_macs: 60M", "max_macs: 60M, min_params: 1M")))
    assert small.sample(FixedTrial({"mixer": "mhsa", "width": 32})).reason.startswith("under budget: ")


def test_a_spec_error_is_a_reason(tmp_path):
    space = load_space(write(tmp_path, SMALL.replace("patch(p=4,", "patch(p=5,")))
    point = space.sample(FixedTrial({"mixer": "mhsa", "width": 32}))
    assert point.spec is None and point.params is None and point.reason.startswith("SpecError: ")
    assert "\n" not in point.reason and point.text.startswith("@28 | patch(p=5,c=32)")


def test_requirements_read_variables_and_cost(tmp_path):
    text = SMALL + 'require: ["mixer == \'swin\' or macs < 1e6"]\n'
    space = load_space(write(tmp_path, text))
    assert space.sample(FixedTrial({"mixer": "swin", "w": 4, "width": 32})).reason is None
    point = space.sample(FixedTrial({"mixer": "mhsa", "width": 32}))
    assert point.spec is not None and point.reason == "constraint fails: mixer == 'swin' or macs < 1e6"


def test_nat_points_respect_their_lower_cap(samples):
    """The shipped hierarchical and hybrid spaces cap neighbourhood attention at 25 MMACs (slow on a CPU)."""
    nat = [p for name in ("hybrid", "hierarchical") for _, p in samples[name]
           if p.reason is None and "nat" in describe(p.spec)["kinds"]]
    assert nat and max(p.macs for p in nat) <= 25e6


def test_check_feasible_fails_fast_on_an_impossible_budget(tmp_path):
    space = load_space(write(tmp_path, SMALL.replace("max_macs: 60M", "max_macs: 1")))
    with pytest.raises(SpaceError, match=r"space\.yaml: no feasible point in 300 samples .*over budget"):
        space.check_feasible(num_classes=10, in_chans=1)
    assert load_space(write(tmp_path, SMALL)).check_feasible(tries=20) == 1.0


def test_stages_repeat_their_variables(tmp_path):
    text = SMALL.replace('text: "@{res} | patch(p=4,c={width}) | {block} 2x{width} | ln,gap,fc"', """\
stages:
  count: n_stages
  vars:
    depth: {int: [1, 2]}
  text: "{depth * (res // 28)}x{width * 2 ** i}{'' if i == 0 else '/merge'}"
  join: ", "
text: "@{res} | patch(p=4,c={width}) | {block} {stages} | ln,gap,fc"
""").replace("  width: {int: [32, 64], step: 32}", "  width: {int: [32, 64], step: 32}\n  n_stages: {int: [1, 3]}")
    space = load_space(write(tmp_path, text))
    point = space.sample(FixedTrial({"mixer": "mhsa", "width": 32, "n_stages": 3, "depth_0": 1, "depth_1": 2, "depth_2": 1}))
    assert point.reason is None
    assert point.text == "@28 | patch(p=4,c=32) | mhsa(hd=16) 1x32, 2x64/merge, 1x128/merge | ln,gap,fc"
    assert describe(point.spec)["layout"] == "hierarchical"


@pytest.mark.parametrize("old, new, where, message", [
    # unknown keys, at any depth
    ("name: small", "name: small\nbudjet: {max_macs: 1}", "budjet (line 2)", "unknown key 'budjet'"),
    ("{max_macs: 60M,", "{max_flops: 60M,", "budget.max_flops (line 3)", "unknown key 'max_flops'"),
    ('{choice: [4, 7], if:', '{choice: [4, 7], iff:', "vars.w.iff (line 6)", "unknown key 'iff'"),
    # bad ranges and types
    ("{int: [32, 64], step: 32}", "{int: [64, 16]}", "vars.width.int (line 7)", "low 64 > high 16"),
    ("{int: [32, 64], step: 32}", "{int: [32, sixty]}", "vars.width.int (line 7)", "expected two numbers"),
    ("{int: [32, 64], step: 32}", "{int: [32, 64], step: -1}", "vars.width.step (line 7)", "expected a positive integer"),
    ("{int: [32, 64], step: 32}", "{float: [0, 1], log: true}", "vars.width.float (line 7)", "log range needs low > 0"),
    ("[mhsa, swin]", "{choice: []}", "vars.mixer.choice (line 5)", "non-empty list"),
    ("res: 28", "res: big", "res (line 2)", "expected an input resolution"),
    ("max_macs: 60M", "max_macs: many", "budget.max_macs (line 3)", "expected a positive number"),
    # conditions and templates naming unknown variables
    ("if: \"mixer == 'swin'\"", "if: \"mixr == 'swin'\"", "vars.w.if (line 6)", "unknown variable or rule 'mixr'"),
    ("if: \"mixer == 'swin'\"", "if: \"width == 32\"", "vars.w.if (line 6)",
     "a condition reads only variables declared before it, not 'width'"),
    ("swin(w={w},hd=16)", "swin(w={window},hd=16)", "rules.block.cases.swin (line 13)",
     "unknown variable or rule 'window'"),
    ("c={width})", "c={wdth})", "text (line 14)", "unknown variable or rule 'wdth'"),
    ("c={width})", "c={width.real})", "text (line 14)", "attribute is not allowed"),
    ("      swin: ", "      swim: ", "rules.block.cases.swim (line 13)", "case 'swim' is not a choice of mixer"),
    ("  width: {int", "  unused: [1, 2]\n  width: {int", "vars.unused (line 7)", "never used"),
    # malformed YAML
    ("  mixer: [mhsa, swin]", "  mixer: [mhsa, swin\n  oops", "line 7", "invalid YAML"),
    ("  w: {choice", "    w: {choice", "line 6", "invalid YAML"),
    ("name: small", "name: small\nname: again", "name (line 2)", "duplicate key 'name'"),
    ('text: "@{res}', "text: @{res}", "line 14", "invalid YAML"),
    ('text: "@{res}', 'require: ["macs < flops"]\ntext: "@{res}', "require[0] (line 14)",
     "unknown variable or rule 'flops'"),
    # hyperparameters are fields of Recipe, in their bounds
    ("name: small", "name: small\nhparams: {learning_rate: [0.1]}", "hparams.learning_rate (line 2)",
     "unknown hyperparameter"),
    ("name: small", "name: small\nhparams: {drop_path: {float: [0, 1]}}", "hparams.drop_path (line 2)",
     "drop_path = 1.0 must be in [0, 1)"),
])
def test_validation_errors_name_file_key_and_line(tmp_path, old, new, where, message):
    assert old in SMALL
    path = write(tmp_path, SMALL.replace(old, new, 1))
    with pytest.raises(SpaceError) as e:
        load_space(path)
    text = str(e.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: {where}: "), text
    assert message in text, text


def test_shipped_names_and_unknown_spaces(tmp_path):
    with pytest.raises(SpaceError, match="unknown space 'nope'"):
        load_space("nope")
    with pytest.raises(SpaceError, match="no such space file"):
        load_space(tmp_path / "missing.yaml")
    with pytest.raises(SpaceError, match=r"empty\.yaml: the file is empty"):
        load_space(write(tmp_path, "", "empty.yaml"))
    with pytest.raises(SpaceError) as e:   # a shipped space's errors name it relative to the repository
        Space({"res": 28}, "search_spaces/x.yaml")
    assert str(e.value) == "search_spaces/x.yaml: missing key 'text'"


def test_a_space_bug_raises_when_sampled(tmp_path):
    space = load_space(write(tmp_path, SMALL.replace("if: \"mixer == 'swin'\"", "if: \"mixer == 'mhsa'\"")))
    with pytest.raises(SpaceError, match=r"rules\.block\.cases\.swin \(line 13\): \{w\} is not set"):
        space.sample(FixedTrial({"mixer": "swin", "width": 32}))


def test_point_keeps_the_fields_a_study_rebuilds():
    p = Point(spec=None, text="x", hparams={}, params=None, macs=None, reason="SpecError: x")
    assert p.values == {} and not p.ok


@pytest.mark.parametrize("name, kinds, layout, stem", [
    ("resnet18", ["basic"], "hierarchical", "conv"),
    ("vit_s16", ["mhsa"], "isotropic", "patch"),
    ("mixer_s16", ["mixer"], "isotropic", "patch"),
    ("swin_t", ["swin"], "hierarchical", "patch"),
    ("nat_mini", ["nat"], "hierarchical", "conv"),
    ("vit_r50_b16_384", ["bottleneck", "mhsa"], "hierarchical", "conv"),
])
def test_describe(name, kinds, layout, stem):
    assert describe(lab.named(name)) == {"kinds": kinds, "layout": layout, "stem": stem}


def test_the_readme_format_example_loads_and_has_feasible_points(tmp_path):
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = re.search(r"```yaml\n(.*?)```", readme[readme.index("### The format"):], re.S).group(1)
    (tmp_path / "tiny.yaml").write_text(example)
    assert load_space(str(tmp_path / "tiny.yaml")).check_feasible(num_classes=10, in_chans=1) > 0
