"""Faster steps: --precision (32, bf16-mixed, 16-mixed), --compile (torch.compile) and channels_last,
for `lab train`, studies and `lab arch bench`; the run row records them."""

from __future__ import annotations

import json

import lightning as L
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lab import catalog
from lab.bench import _measure, compare
from lab.build import build
from lab.cli.main import main, make_parser
from lab.errors import LabError, StudyError, TrainError
from lab.memory import precision_name
from lab.study.config import StudyConfig
from lab.train.module import LabModule
from lab.train.recipes import recipe
from lab.train.record import RUN_SCHEMA, read_records
from lab.train.run import fit, is_conv, prepare, record, resolve_precision, train, wants_channels_last

TINY = "@16 | conv(c=8,k=3),bn,relu | basic 1x8, 1x16/2 | gap,fc"
# a NAT on an 8x8 map: the dense kernel on a CPU. A 16x16 map (the portable kernel, its own
# autograd.Function with k^2 gathers unrolled) compiles to the same logits and gradients too, in 10 minutes
TINY_NAT = "@16 | conv(c=16,s=2,bias=1),ln | nat(hd=8,mlp=2) 1x16 | ln,gap,fc"
CPU = torch.device("cpu")


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        rc = main(list(argv))
    except SystemExit as e:   # argparse's own errors exit from parse_args
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


# --- names ---------------------------------------------------------------------------------


def test_precision_names_canonicalise_aliases_and_refuse_the_rest_naming_the_flag():
    assert [precision_name(t) for t in ("32", "fp32", "32-true", "bf16", "BF16-mixed", "16", "16-mixed")] == \
        ["32", "32", "32", "bf16-mixed", "bf16-mixed", "16-mixed", "16-mixed"]
    with pytest.raises(LabError, match=r"^--flag 'fp8': expected 32, bf16-mixed \(bf16\) or 16-mixed \(16\)$"):
        precision_name("fp8", "--flag")
    assert resolve_precision("auto", CPU) == "32" and resolve_precision("bf16", CPU) == "bf16-mixed"
    with pytest.raises(TrainError, match=r"^--precision 'half': expected auto, 32"):
        resolve_precision("half", CPU)


def test_bf16_on_a_gpu_without_it_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4")
    cuda = torch.device("cuda")
    assert resolve_precision("auto", cuda) == "32"   # auto falls back to fp32 there
    assert resolve_precision("16", cuda) == "16-mixed"
    with pytest.raises(TrainError) as e:
        resolve_precision("bf16", cuda)
    assert str(e.value) == "--precision bf16: Tesla T4 has no bfloat16 support; use --precision 16-mixed or 32"


def test_a_study_canonicalises_its_precision_and_refuses_bad_speed_settings():
    config = StudyConfig(name="s", precision="bf16", compile=True)
    assert (config.precision, config.compile, config.channels_last) == ("bf16-mixed", True, None)
    assert StudyConfig(name="s").precision == "auto"
    with pytest.raises(StudyError, match=r"^study precision = 'fp8': expected auto, 32"):
        StudyConfig(name="s", precision="fp8")
    with pytest.raises(StudyError, match=r"^study compile = 'yes': expected true or false$"):
        StudyConfig(name="s", compile="yes")


# --- precision -----------------------------------------------------------------------------


class _StepLoss(L.Callback):
    """Every training step's loss, and the dtype of the model's logits in it."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.dtypes: list[torch.dtype] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def _fit_steps(precision: str, fraction: float):
    """A tiny run's prepared inputs, fitted result and per-step losses and logits' dtypes."""
    p = prepare(TINY, "digits", res=16, epochs=1, batch_size=16, fraction=fraction, device="cpu", precision=precision)
    steps = _StepLoss()
    fc = [m for m in p.model.modules() if isinstance(m, torch.nn.Linear)][-1]
    fc.register_forward_hook(lambda m, i, o: steps.dtypes.append(o.dtype) if m.training else None)
    return p, fit(p, callbacks=[steps]), steps


def _agrees_with_fp32(precision: str, dtype: torch.dtype, fraction: float, tolerance: float) -> None:
    _, _, ref = _fit_steps("32", fraction)
    p, f, steps = _fit_steps(precision, fraction)
    assert set(ref.dtypes) == {torch.float32} and len(ref.losses) >= 5
    assert set(steps.dtypes) == {dtype} and len(steps.dtypes) == len(ref.losses)   # autocast ran every step
    # the same seeded run, step by step: within `tolerance` of fp32's loss, and not the same numbers
    gaps = [abs(a - b) for a, b in zip(steps.losses, ref.losses)]
    assert max(gaps) < tolerance and max(gaps) > 0, gaps
    row = record(p, f, out=None).record
    assert row["precision"] == p.precision and row["compile"] is False and row["compile_seconds"] is None


def test_a_bf16_mixed_run_trains_in_bfloat16_within_a_tolerance_of_fp32():
    # 20 steps; measured: the largest gap 4e-5 nats (bfloat16's 8 bits of mantissa on ~2.3): tolerance 0.01
    _agrees_with_fp32("bf16", torch.bfloat16, 0.27, 0.01)


def test_16_mixed_on_a_cpu_is_float16_autocast_with_a_grad_scaler():
    from lightning.pytorch.plugins.precision import MixedPrecision

    from lab.train.run import _precision_args

    plugin = _precision_args("16-mixed", CPU)["plugins"][0]   # not Lightning's silent switch to bf16-mixed
    assert isinstance(plugin, MixedPrecision) and plugin.precision == "16-mixed" and plugin.scaler is not None
    assert _precision_args("bf16-mixed", CPU) == {"precision": "bf16-mixed"}
    assert _precision_args("16-mixed", torch.device("cuda")) == {"precision": "16-mixed"}


@pytest.mark.slow   # float16 is emulated on a CPU: several times slower than fp32
def test_a_16_mixed_run_trains_in_float16_within_a_tolerance_of_fp32():
    _agrees_with_fp32("16", torch.float16, 0.27, 0.01)


def test_the_memory_check_uses_the_runs_precision(monkeypatch):
    import lab.train.run as run

    seen = []

    def require_fits(*args, **kwargs):   # record what the check is asked, then stop: nothing is built
        seen.append(kwargs["precision"])
        raise TrainError("stop")

    monkeypatch.setattr(run, "require_fits", require_fits)
    for name in ("bf16", "auto", "16-mixed"):
        with pytest.raises(TrainError, match=r"^stop$"):
            prepare(TINY, "digits", res=16, device="cpu", precision=name)
    assert seen == ["bf16-mixed", "32", "16-mixed"]


# --- channels_last -------------------------------------------------------------------------


def test_conv_points_are_told_apart_and_channels_last_is_on_by_default_on_a_gpu_only():
    conv, vit, nat = (catalog.resolve(n) for n in ("resnet18", "vit_ti16", "nat_mini"))
    assert is_conv(conv) and is_conv(catalog.resolve("convnext_t")) and not is_conv(vit) and not is_conv(nat)
    cuda = torch.device("cuda")
    assert wants_channels_last(conv, cuda, None) and not wants_channels_last(vit, cuda, None)
    assert not wants_channels_last(conv, CPU, None) and wants_channels_last(conv, CPU, True)
    assert not wants_channels_last(conv, cuda, False)


def test_a_channels_last_run_trains_its_model_and_inputs_in_that_format():
    p = prepare(TINY, "digits", res=16, epochs=1, batch_size=64, fraction=0.2, device="cpu", channels_last=True)
    # a conv of more than one input channel (a (8, 1, 3, 3) weight is contiguous in either format)
    conv = next(m for m in p.model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    seen = []
    conv.register_forward_hook(lambda m, i, o: seen.append(i[0].is_contiguous(memory_format=torch.channels_last)
                                                           and not i[0].is_contiguous()) if m.training else None)
    row = record(p, fit(p), out=None).record
    assert seen and all(seen) and row["channels_last"] is True


# --- compile -------------------------------------------------------------------------------


def _module(text: str, compile: bool) -> tuple[LabModule, torch.nn.Module]:
    torch.manual_seed(0)
    model = build(catalog.resolve(text), num_classes=10, in_chans=3)
    ident = lambda x, **k: x  # noqa: E731
    return LabModule(model, recipe("default"), 10, 100, 1, ident, ident, 0, compile=compile), model


@pytest.mark.slow   # compiling takes 10-30 s on a CPU
@pytest.mark.parametrize("text", [TINY, TINY_NAT], ids=["conv", "nat"])
def test_the_compiled_training_forward_gives_the_eager_logits_and_gradients(text):
    module, model = _module(text, compile=True)
    x = torch.randn(8, 3, 16, 16)
    model.train()
    eager = model(x)
    grads = torch.autograd.grad(eager.square().sum(), list(model.parameters()))
    compiled = module.forward_train(x)
    assert isinstance(compiled, torch.Tensor)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    cgrads = torch.autograd.grad(compiled.square().sum(), list(model.parameters()))
    for a, b in zip(cgrads, grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    assert set(module.state_dict()) == {f"model.{k}" for k in model.state_dict()}   # no _orig_mod.* copies


@pytest.mark.slow   # compiling takes 10-30 s on a CPU
def test_a_compiled_run_records_its_compile_seconds():
    r = train(TINY, "digits", res=16, epochs=1, batch_size=32, fraction=0.5, device="cpu", out=None, compile=True)
    row = r.record
    assert row["compile"] is True and 0 < row["compile_seconds"] <= row["train_seconds"]
    assert row["state"] == "complete"


def test_a_point_that_fails_to_compile_is_one_line(monkeypatch):
    import lab.train.module as module

    def broken(model):
        def call(x):
            raise torch._dynamo.exc.InternalTorchDynamoError("no kernel for this op\nlong traceback ...")
        return call

    monkeypatch.setattr(module.torch, "compile", broken)
    with pytest.raises(TrainError) as e:
        train(TINY, "digits", res=16, epochs=1, batch_size=64, fraction=0.2, device="cpu", out=None, compile=True)
    assert str(e.value) == ("--compile: @16 | conv(c=8,k=3),bn,relu | basic 1x8, 1x16/2 | gap,fc failed to compile: "
                            "InternalTorchDynamoError: no kernel for this op")


# --- the run table -------------------------------------------------------------------------


def test_old_run_tables_read_the_new_columns_as_null(tmp_path):
    new = ("precision", "compile", "channels_last", "compile_seconds")
    assert all(n in RUN_SCHEMA.names for n in new)
    old = pa.schema([f for f in RUN_SCHEMA if f.name not in new], metadata=RUN_SCHEMA.metadata)
    pq.write_table(pa.Table.from_pylist([{n: None for n in old.names} | {"run_id": "r"}], schema=old),
                   tmp_path / "runs.parquet")
    row = read_records(tmp_path / "runs.parquet").to_pylist()[0]
    assert row["run_id"] == "r" and all(row[n] is None for n in new)


# --- the CLI -------------------------------------------------------------------------------


def test_lab_train_precision_flag_is_recorded_and_a_bad_one_is_one_line(tmp_path, capsys):
    args = ["train", TINY, "--dataset", "digits", "--res", "16", "--epochs", "1", "--fraction", "0.2",
            "--out", str(tmp_path), "--json", "-q"]
    rc, out, err = _cli(capsys, *args, "--precision", "bf16", "--channels-last")
    assert rc == 0, err
    row = json.loads(out)
    assert (row["precision"], row["compile"], row["channels_last"]) == ("bf16-mixed", False, True)
    assert read_records(tmp_path / "runs.parquet").to_pylist()[0]["precision"] == "bf16-mixed"
    rc, out, err = _cli(capsys, *args, "--precision", "fp8")
    assert rc == 2 and err.strip() == ("lab: error: --precision 'fp8': expected auto, 32, bf16-mixed (bf16) or "
                                       "16-mixed (16)")


def test_lab_study_create_takes_the_speed_flags(capsys):
    from lab.cli.study import config_from_args

    args = make_parser().parse_args(["study", "create", "--name", "s", "--precision", "bf16", "--compile",
                                      "--no-channels-last"])
    config = config_from_args(args)
    assert (config.precision, config.compile, config.channels_last) == ("bf16-mixed", True, False)
    rc, _, err = _cli(capsys, "study", "create", "--name", "s", "--precision", "fp8", "--no-dashboard")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "study precision = 'fp8'" in err


# --- lab arch bench ------------------------------------------------------------------------


def test_bench_runs_a_point_under_autocast_and_refuses_a_bad_precision():
    out = _measure("lab", TINY, 16, 2, "cpu", 1, False, "bf16-mixed")
    assert out["train_ips"] > 0 and out["infer_ips"] > 0 and "compile_s" not in out
    with pytest.raises(LabError, match=r"^--precision 'fp8': expected 32"):
        compare("resnet18", precision="fp8")


@pytest.mark.slow   # compiles the lab's and timm's resnet18
def test_bench_vs_timm_compiles_both_in_bf16(capsys):
    rc, out, err = _cli(capsys, "arch", "bench", "resnet18", "--res", "32", "--batch", "4", "--steps", "2",
                        "--rounds", "1", "--vs", "timm", "--precision", "bf16", "--compile", "--json")
    assert rc == 0, err
    result = json.loads(out)
    assert result["precision"] == "bf16-mixed" and result["compile"] is True
    assert all(m["compile_s"] > 0 for m in result["runs"].values()) and result["ratio"]["train"] > 0
