"""Packaging: the wheel holds every module and the search spaces, a non-editable install of it works
from any folder, and LAB_SPACES overrides the shipped search_spaces folder everywhere.

The wheel is built from a copy of the source (no stale build/ folder, nothing written to the
tree) without build isolation or an index, and installed (no dependencies) into a fresh venv that
sees the system site-packages for torch and the rest; the system's editable lab must not win.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

import lab
from lab import catalog
from lab.errors import LabError, SpecError
from lab.resources import ENV, shipped_spaces, spaces_dir
from lab.study.space import SpaceError, load_space

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {"conv", "hierarchical", "hybrid", "isotropic", "video"}
TINY = "@28 | conv(c=8,k=3,s=2),bn,relu | basic 1x8 | gap,fc"
CACHE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")

# run by the venv's python from a folder outside the repo: the wheel's lab, and its spaces, are the ones imported
SNIPPET = """
import importlib.metadata, json, sys
from pathlib import Path
import lab
from lab.resources import shipped_spaces, spaces_dir
from lab.study.space import load_space
repo, venv = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
where, folder = Path(lab.__file__).resolve(), spaces_dir().resolve()
assert where.is_relative_to(venv) and not where.is_relative_to(repo), where
assert folder == where.parent / "search_spaces", folder
assert importlib.metadata.version("lab") == lab.__version__
names = shipped_spaces()
for name in names:
    assert load_space(name).name == name
from lab.resources import shipped_benches
from lab.tabular.table import load_bench
benches = shipped_benches()
assert all(p.resolve().is_relative_to(venv) for p in benches.values()), benches
assert load_bench("hybrid").table.num_rows > 0
print(json.dumps({"lab": str(where), "spaces": names, "named": len(lab.names()), "benches": sorted(benches)}))
"""


def _copy_source(dst: Path) -> None:
    """What the build reads: the top-level files (pyproject.toml, README.md, ...), lab/ and search_spaces/."""
    dst.mkdir(parents=True)
    for p in ROOT.iterdir():
        if p.is_file():
            shutil.copy2(p, dst / p.name)
    for folder in ("lab", "search_spaces"):
        shutil.copytree(ROOT / folder, dst / folder, ignore=CACHE)


def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, check=False, **kw)
    assert p.returncode == 0, f"{cmd} -> {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    return p


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    _copy_source(tmp / "src")
    _run([sys.executable, "-m", "pip", "wheel", tmp / "src", "--no-deps", "--no-build-isolation", "--no-index",
          "-q", "-w", tmp / "dist"], cwd=tmp)
    (whl,) = (tmp / "dist").glob("lab-*.whl")
    return whl


def test_the_wheel_holds_every_module_and_the_search_spaces(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    yamls = {n for n in names if n.startswith("lab/search_spaces/") and n.endswith(".yaml")}
    assert yamls == {f"lab/search_spaces/{p.name}" for p in (ROOT / "search_spaces").glob("*.yaml")}
    assert {"named", *SHIPPED} <= {Path(n).stem for n in yamls}
    assert {"lab/search_spaces/__init__.py", "lab/resources.py", "lab/__main__.py"} <= names
    tables = {f"lab/nasbench/{p.name}" for p in (ROOT / "lab" / "nasbench").glob("*.parquet")}
    assert "lab/nasbench/hybrid.parquet" in tables and tables <= names   # the shipped benchmark tables
    modules = {f"lab/{p.relative_to(ROOT / 'lab').as_posix()}" for p in (ROOT / "lab").rglob("*.py")
               if "__pycache__" not in p.parts}
    missing = sorted(modules - names)
    assert not missing, f"not in the wheel: {missing} (list the package in pyproject's [tool.setuptools] packages)"
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    assert f"\nVersion: {lab.__version__}\n" in zipfile.ZipFile(wheel).read(meta).decode()


def test_the_installed_wheel_works_from_another_folder(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv])
    py, script = venv / "bin" / "python", venv / "bin" / "lab"
    if subprocess.run([py, "-m", "pip", "--version"], capture_output=True, check=False).returncode != 0:
        _run([py, "-m", "ensurepip", "--default-pip"])   # no pip in the system site: the bundled one
    _run([py, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q", wheel])
    assert script.is_file()

    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", ENV, "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", PYTHONNOUSERSITE="1")
    commands = {
        "version": [script, "--version"],
        "list": [script, "arch", "list", "--json"],
        "show": [script, "arch", "show", "resnet50"],
        "module": [py, "-m", "lab", "--help"],
        "snippet": [py, "-c", SNIPPET, ROOT, venv],
        "train": [script, "train", TINY, "--epochs", "1", "--fraction", "0.05", "--out", "RUNS", "--no-progress"],
    }
    procs = {}   # each starts torch (seconds): run side by side
    for key, cmd in commands.items():
        with open(work / f"{key}.out", "w") as out, open(work / f"{key}.err", "w") as err:
            procs[key] = subprocess.Popen([str(c) for c in cmd], cwd=work, env=env, stdout=out, stderr=err)
    codes = {key: p.wait(timeout=300) for key, p in procs.items()}
    out = {key: (work / f"{key}.out").read_text() for key in commands}
    for key, code in codes.items():
        assert code == 0, f"{commands[key]} -> {code}\n{out[key][-2000:]}\n{(work / f'{key}.err').read_text()[-4000:]}"

    assert out["version"].strip() == f"lab {lab.__version__}"
    listed = {item["name"]: item for item in json.loads(out["list"])}
    assert "resnet50" in listed and listed["resnet50"]["family"] == "resnet"
    assert out["show"].startswith("resnet50") and "bottleneck" in out["show"]
    assert out["module"].startswith("usage: lab") and "--version" in out["module"]
    got = json.loads(out["snippet"].strip().splitlines()[-1])
    assert SHIPPED <= set(got["spaces"]) and got["named"] == len(listed) and "hybrid" in got["benches"]
    assert (work / "RUNS" / "runs.parquet").is_file()


# --- LAB_SPACES -----------------------------------------------------------------------------

@pytest.fixture
def fresh_catalog(monkeypatch):
    """The shipped folder (no LAB_SPACES) and an empty catalog cache, before and after."""
    monkeypatch.delenv(ENV, raising=False)
    catalog.entries.cache_clear()
    catalog.named.cache_clear()
    yield
    catalog.entries.cache_clear()
    catalog.named.cache_clear()


def _listed(message: str) -> list[str]:
    """The space names an unknown-space error offers."""
    m = re.search(r"\(shipped[^:]*: ([^;]*);", message)
    assert m, message
    return m.group(1).split(", ")


def test_an_unknown_space_is_told_the_names_that_load(fresh_catalog):
    with pytest.raises(SpaceError) as e:
        load_space("nope")
    assert str(e.value).startswith("unknown space 'nope'")
    assert _listed(str(e.value)) == shipped_spaces() and SHIPPED <= set(shipped_spaces())
    for name in shipped_spaces():
        assert load_space(name).name == name
    with pytest.raises(SpaceError, match="unknown space 'named'"):   # named.yaml is not a searchable space
        load_space("named")


def test_lab_spaces_overrides_the_catalog_and_load_space(tmp_path, monkeypatch, fresh_catalog):
    shipped = spaces_dir()
    folder = tmp_path / "spaces"
    shutil.copytree(shipped, folder, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    (folder / "video.yaml").unlink()
    (folder / "mine.yaml").write_text((folder / "conv.yaml").read_text())
    (folder / "named.yaml").write_text(yaml.safe_dump(
        {"tiny_net": {"family": "resnet", "text": TINY, "reference": "tests/test_packaging.py"}}))

    monkeypatch.setenv(ENV, str(folder))   # read at call time: no reload
    assert spaces_dir() == folder
    expected = sorted({p.stem for p in folder.glob("*.yaml")} - {"named"})
    assert shipped_spaces() == expected and "mine" in expected and "video" not in expected
    mine = load_space("mine")
    assert mine.name == "mine" and mine.where == str(folder / "mine.yaml")
    with pytest.raises(SpaceError) as e:
        load_space("video")
    assert ENV in str(e.value) and _listed(str(e.value)) == expected
    assert catalog.names() == ["tiny_net"] and lab.named("tiny_net").res == 28
    with pytest.raises(SpecError, match="unknown architecture 'resnet50'"):
        lab.named("resnet50")

    monkeypatch.setenv(ENV, str(tmp_path / "missing"))
    catalog.entries.cache_clear()
    with pytest.raises(LabError, match="named architectures not found at .*missing"):
        catalog.entries()
    with pytest.raises(SpaceError, match="no spaces found in .*missing"):
        load_space("conv")

    monkeypatch.delenv(ENV)
    catalog.entries.cache_clear()
    catalog.named.cache_clear()
    assert spaces_dir() == shipped and "resnet50" in catalog.names() and load_space("video").name == "video"
