"""Recipes, optimizer groups, the schedule, run records and checkpoints (no training loop)."""

from __future__ import annotations

import math

import pyarrow.parquet as pq
import pytest
import torch

import lab
from lab.errors import LabError, TrainError
from lab.train.checkpoint import load_checkpoint, save_checkpoint
from lab.train.optim import lr_factor, make_optimizer, make_schedule, no_decay_names
from lab.train.recipes import PRESETS, Recipe, recipe
from lab.train.record import RUN_SCHEMA, append_record, read_records


# --- recipes ---------------------------------------------------------------------------------

def test_presets_are_the_lecture_recipes():
    assert set(PRESETS) == {"default", "vit", "deit", "bit-finetune"}
    assert PRESETS["vit"].weight_decay == 0.1 and PRESETS["vit"].warmup_epochs > 0
    deit = PRESETS["deit"]
    assert deit.mixup_alpha == 0.8 and deit.cutmix_alpha == 1.0 and deit.label_smoothing == 0.1
    bit = PRESETS["bit-finetune"]
    assert bit.weight_decay == 0 and bit.dropout == 0 and bit.crop == "resize"
    assert not bit.mixes(20_000) and bit.mixes(20_001)   # BiT-HyperRule: MixUp only above 20k images


def test_recipe_overrides_and_errors():
    r = recipe("vit", epochs=3, lr=None)
    assert r.epochs == 3 and r.lr == PRESETS["vit"].lr and r.name == "vit"
    with pytest.raises(TrainError, match="unknown recipe 'bert'"):
        recipe("bert")
    with pytest.raises(TrainError, match="unknown recipe field 'momentum'"):
        recipe("default", momentum=0.9)
    with pytest.raises(TrainError, match="lam = 2"):
        Recipe(lam=2)
    with pytest.raises(TrainError, match="crop = 'zoom'"):
        recipe("default", crop="zoom")


# --- optimizer and schedule ------------------------------------------------------------------

def _names_without_decay(text: str) -> tuple[set[str], set[str]]:
    model = lab.build(lab.resolve(text), num_classes=10)
    skip = no_decay_names(model)
    return skip, {n for n, _ in model.named_parameters()} - skip


def test_no_weight_decay_on_norms_biases_tokens_positions_and_relative_tables():
    skip, decay = _names_without_decay("deit_ti_distilled@32px,p=8")
    assert any(n.endswith(".pos") for n in skip) and sum(n.endswith(".token") for n in skip) == 2
    assert all(n.endswith("weight") for n in decay)
    assert not any("norm" in n for n in decay)
    assert any("qkv.weight" in n for n in decay) and any("fc1.weight" in n for n in decay)
    skip, decay = _names_without_decay("swin_t@28px,w=0.25")
    assert any(n.endswith("relative_position_bias_table") for n in skip)
    assert not any("relative_position" in n for n in decay)
    skip, decay = _names_without_decay("nat_mini@28px,w=0.25")
    assert any(n.endswith(".rpb") for n in skip)
    skip, decay = _names_without_decay("resnet18@32px")
    assert all(p.endswith("weight") for p in decay) and all(".bn" not in p and "stem.1" not in p for p in decay)


def test_optimizer_groups_cover_every_parameter_once():
    model = lab.build(lab.resolve("swin_t@28px,w=0.25"), num_classes=10)
    opt = make_optimizer(model, recipe("vit"))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.999)
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert isinstance(make_optimizer(model, recipe("bit-finetune")), torch.optim.SGD)


def test_schedule_is_linear_warmup_then_cosine():
    total, warm, floor = 100, 10, 0.01
    f = [lr_factor(s, total, warm, floor) for s in range(total)]
    assert f[:warm] == pytest.approx([(s + 1) / warm for s in range(warm)])
    for s in range(warm, total):   # the closed form of the cosine
        t = (s - warm) / (total - warm)
        assert f[s] == pytest.approx(floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))
    assert all(a >= b for a, b in zip(f[warm:], f[warm + 1:]))
    model = torch.nn.Linear(2, 2)
    r = recipe("default", epochs=2, lr=0.1, min_lr=0.001, warmup_epochs=0.5)
    opt = make_optimizer(model, r)
    sched = make_schedule(opt, r, steps_per_epoch=10)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1 / 5) and lrs[4] == pytest.approx(0.1)
    assert lrs[-1] == pytest.approx(0.001 + 0.099 * 0.5 * (1 + math.cos(math.pi * 14 / 15)))


# --- records ---------------------------------------------------------------------------------

def _record(**changes) -> dict:
    row = {name: None for name in RUN_SCHEMA.names}
    row.update(run_id="r1", state="complete", arch_id="abc", text="@28 | ...", params=10, macs=20, val_top1=0.5)
    row.update(changes)
    return row


def test_records_append_atomically_in_the_schema(tmp_path):
    table = tmp_path / "sub" / "runs.parquet"
    append_record(table, _record())
    append_record(table, _record(run_id="r2", val_top1=0.75))
    t = read_records(table)
    assert t.schema == RUN_SCHEMA and t.num_rows == 2
    assert t.column("run_id").to_pylist() == ["r1", "r2"]
    assert t.column("val_top1").to_pylist() == [0.5, 0.75]
    assert pq.read_schema(table).names == RUN_SCHEMA.names
    assert sorted(p.name for p in table.parent.iterdir()) == [".runs.parquet.lock", "runs.parquet"]


def test_record_errors_leave_the_table_intact(tmp_path):
    table = tmp_path / "runs.parquet"
    append_record(table, _record())
    with pytest.raises(ValueError, match="lacks"):
        append_record(table, {"run_id": "x"})
    with pytest.raises(Exception):
        append_record(table, _record(params="many"))   # not an int64: rejected before writing
    assert read_records(table).num_rows == 1
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(LabError, match="not a readable run table"):
        read_records(bad)


# --- checkpoints -----------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", ["model.pt", "model.safetensors"])
def test_checkpoint_round_trip(tmp_path, suffix):
    spec = lab.resolve("@16 | conv(c=8,k=3),bn,relu | basic 1x8, 1x16/2 | gap,fc")
    model = lab.build(spec, num_classes=3, in_chans=1).eval()
    meta = {"text": spec.text, "num_classes": 3, "in_chans": 1, "res": 16, "dataset": "digits",
            "mean": [0.3], "std": [0.4], "recipe": "default", "run_id": "r", "lab_version": lab.__version__}
    pt = save_checkpoint(tmp_path, model, meta)
    blob = torch.load(pt, weights_only=True)   # plain tensors and metadata only
    assert blob["meta"] == meta
    loaded, got = load_checkpoint(tmp_path / suffix)
    assert got == meta
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(loaded(x), model(x))


def test_checkpoint_errors(tmp_path):
    with pytest.raises(TrainError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(TrainError, match="not readable as a lab checkpoint"):
        load_checkpoint(junk)


# --- EMA -------------------------------------------------------------------------------------

def test_ema_follows_the_warmup_formula():
    from lab.train.callbacks import ema_with_warmup

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=ema_with_warmup(0.9), use_buffers=True)
    ema.update_parameters(model)   # the first update copies
    expected = [p.detach().clone() for p in model.parameters()]
    for n in range(1, 30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(4, 3))   # moves the BatchNorm statistics and its counter
        ema.update_parameters(model)
        d = min(0.9, (1 + n) / (10 + n))   # the decay ramps up to 0.9 (reached at n = 80; here it is still ramping)
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, model.parameters())]
        for e, p in zip(expected, ema.module.parameters()):
            torch.testing.assert_close(p, e)
    assert ema.module[1].num_batches_tracked == model[1].num_batches_tracked   # counters are copied, not averaged
