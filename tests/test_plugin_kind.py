"""A token mixer defined outside the lab, in this test module, joins the grammar by registering
itself: `lab arch kinds` lists it, the hybrid space samples it, the cost model costs it, the builder
builds it, training trains it and the dashboard colours it as a token mixer. Nothing else is edited:
every list of kinds in the lab is derived from the registry and the kinds' own traits."""

from __future__ import annotations

import optuna
import pytest
import torch
from torch import nn

import lab
from lab.cli.main import main
from lab.dashboard.data import load, mixer_label
from lab.kinds import Cost, Shape, register, token_mixers, unregister
from lab.kinds.base import param
from lab.kinds.transformer import ACT_CHOICES, TokenBlock
from lab.study.space import describe, load_space
from lab.study.store import StudyStore
from lab.train.run import train
from support import measured_cost, meta_model, n_params


class MeanTokens(nn.Module):
    """Every token moves towards the mean of the sequence, by a learned amount per channel."""

    def __init__(self, width: int):
        super().__init__()
        self.gate = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate * (x.mean(dim=1, keepdim=True) - x)


class MeanMixer(TokenBlock):
    """A throwaway token mixer (a PoolFormer-like global pooling mixer), then the channel MLP."""

    kind = "meanmix"
    mixer_family = "other"
    per_frame = False
    mlp: float = param(4.0, lo=0.0, hi=16, doc="MLP hidden ratio")
    act: str = param("gelu", choices=ACT_CHOICES, doc="MLP activation")
    ls: float = param(0.0, lo=0.0, hi=1.0, doc="layer-scale init (0: none)")

    def mixer_cost(self, s: Shape, width: int) -> Cost:
        return Cost(width, 0, 0)   # the gate; a mean is pooling, which the cost model does not count

    def build_mixer(self, s: Shape, width: int, index: int) -> nn.Module:
        return MeanTokens(width)


@pytest.fixture(scope="module", autouse=True)
def meanmix():
    cls = register(MeanMixer)
    yield cls
    unregister("meanmix")


ISOTROPIC = {"layout": "isotropic", "stem": "conv", "stride": 4, "width": 32, "n_stages": 2,
             "mixer_0": "basic", "depth_0": 1, "mixer_1": "meanmix", "depth_1": 2}


def test_the_registry_lists_it_as_a_token_mixer(capsys):
    assert "meanmix" in token_mixers()
    assert main(["arch", "kinds"]) == 0
    assert "meanmix" in capsys.readouterr().out


def test_the_hybrid_space_samples_it():
    space = load_space("hybrid")
    point = space.sample(optuna.trial.FixedTrial(ISOTROPIC), num_classes=10, in_chans=1)
    assert point.reason is None, point.reason
    assert "meanmix 2x32" in point.text
    assert describe(point.spec)["kinds"] == ["basic", "meanmix"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = [space.sample(study.ask(), num_classes=10, in_chans=1) for _ in range(120)]
    assert any("meanmix" in p.values.values() and p.reason is None for p in drawn)
    # a hierarchical stage of it enters through the token mixers' transitions
    hier = dict(ISOTROPIC, layout="hierarchical", down_1="merge")
    assert "meanmix 2x64/merge" in space.sample(optuna.trial.FixedTrial(hier), 10, 1).text


def test_it_is_costed_as_it_is_built():
    spec = lab.parse("@28 | conv(c=32,s=2),bn,relu | basic 1x32 | meanmix 2x32/(conv(k=1),ln) | ln,gap,fc")
    assert lab.parse(spec.text) == spec
    report = lab.cost(spec, num_classes=10, in_chans=1)
    model = meta_model(spec, 10, 1)
    macs, acts = measured_cost(model, 1, spec.res)
    assert report.params == n_params(model)
    assert report.macs == pytest.approx(macs, rel=0.005)
    assert report.acts == acts
    with pytest.raises(lab.SpecError, match="keep their width"):
        lab.parse("@28 | conv(c=32,s=2),bn,relu | meanmix 2x64 | ln,gap,fc")


def test_it_trains():
    result = train("@28 | conv(c=16,s=4),bn,relu | meanmix 1x16 | ln,gap,fc", "mnist5k", epochs=1,
                   fraction=0.02, batch_size=32, out=None)
    assert result.record["state"] == "complete"
    assert result.record["epochs_done"] == 1
    assert torch.isfinite(torch.tensor(result.record["loss"]))
    gate = next(p for n, p in result.model.named_parameters() if n.endswith("mixer.gate"))
    assert not torch.equal(gate, torch.ones_like(gate))   # the optimizer moved the mixer's own weights


def test_the_dashboard_colours_it_as_a_mixer(tmp_path):
    assert mixer_label(["basic", "meanmix"]) == "conv+meanmix"
    assert mixer_label(["meanmix", "swin"]) == "meanmix+swin"
    store = StudyStore(tmp_path / "plug")
    store.save_config({"name": "plug", "objectives": "val_acc:max,macs:min"})
    for number, kinds in enumerate((["basic", "meanmix"], ["basic"], ["meanmix"])):
        store.write_trial({"number": number, "state": "complete", "kinds": kinds, "val_top1": 0.5 + number / 10,
                           "macs": 10**6 * (number + 1), "text": f"t{number}", "arch_id": f"a{number}"})
    data = load([tmp_path / "plug"])
    assert list(data.rows["mixer"]) == ["conv+meanmix", "conv", "meanmix"]
    assert set(data.groups) == {"conv+meanmix", "conv", "meanmix"}
