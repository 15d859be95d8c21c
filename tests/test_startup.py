"""What each command imports before it does its work (issue 22: `lab --help` paid torch's import).
A fresh interpreter per case: which modules are loaded is deterministic, unlike a timing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "ray", "optuna", "lightning", "pandas", "plotly", "timm", "scipy", "sklearn", "pyarrow",
         "torchvision", "numpy", "mlxtend")


def loaded_after(code: str) -> set[str]:
    """Top-level packages of HEAVY that `code`, run in a fresh interpreter, leaves imported."""
    probe = f"{code}\nimport sys, json\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.strip().splitlines()[-1])) & set(HEAVY)


def test_help_imports_no_heavy_package():
    # the whole parser (every subcommand's flags) is what `lab --help` and every command build first
    assert loaded_after("from lab.cli.main import make_parser\nmake_parser().format_help()") == set()


def test_import_lab_is_lazy_and_complete():
    assert loaded_after("import lab") == set()
    code = "import lab\nassert lab.cost(lab.named('resnet18')).params == lab.cost(lab.resolve('resnet18')).params"
    assert "torch" in loaded_after(code)   # the names load what they need on first use


@pytest.mark.parametrize(("argv", "needs"), [
    (["arch", "list"], set()),
    (["arch", "show", "vit_s16"], {"timm", "torchvision"}),   # it names timm's layout of the reference model
])
def test_arch_commands_import_only_the_model_code(argv, needs):
    # the cost model lives beside each kind's build (lab.kinds), so torch comes; nothing of training,
    # studies or dashboards does
    code = f"import contextlib, io\nfrom lab.cli.main import main\nwith contextlib.redirect_stdout(io.StringIO()): main({argv!r})"
    assert loaded_after(code) == {"torch", "numpy"} | needs


def test_all_names_every_lazy_export():
    import lab

    assert set(lab.__all__) == {*lab._EXPORTS, "__version__"}
    assert all(getattr(lab, name) is not None for name in lab.__all__)


def test_a_submodule_import_does_not_shadow_the_function_of_its_name():
    code = ("import lab, lab.cost, lab.build, sys\n"
            "assert callable(lab.cost) and callable(lab.build) and lab.cost is sys.modules['lab.cost'].cost\n"
            "assert lab.build is sys.modules['lab.build'].build")
    assert "torch" in loaded_after(code)
