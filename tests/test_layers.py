"""Imports run one way. The layers themselves are an import-linter contract (pyproject.toml,
`lint-imports` in .ci/run); this test keeps the other half of the rule: no module of the lab is
imported inside a function to dodge a cycle. An import kept inside a function for the CLI's
start-up time says so on its line (`# lazy: start-up time`)."""

from __future__ import annotations

import ast
from pathlib import Path

LAB = Path(__file__).resolve().parents[1] / "lab"
MARK = "# lazy: start-up time"


def _function_level_lab_imports(path: Path, root: Path = LAB.parent) -> list[str]:
    lines = path.read_text().splitlines()
    found = []
    for fn in ast.walk(ast.parse("\n".join(lines))):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if not node.level else ["lab"]   # a relative import is the lab's own
            else:
                continue
            if any(n == "lab" or n.startswith("lab.") for n in names) and \
                    not any(MARK in lines[i - 1] for i in range(node.lineno, node.end_lineno + 1)):
                found.append(f"{path.relative_to(root)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return found


def test_no_lab_module_is_imported_inside_a_function_unmarked():
    found = [hit for path in sorted(LAB.rglob("*.py")) for hit in _function_level_lab_imports(path)]
    assert not found, "function-level imports of lab modules (import at module level, or mark them " \
                      f"'{MARK}' if they are there for start-up time):\n" + "\n".join(found)


def test_the_check_sees_an_unmarked_import(tmp_path):
    bad = tmp_path / "lab" / "x.py"
    bad.parent.mkdir()
    bad.write_text(f"def f():\n    from lab.study import runner\n\ndef g():\n    import lab.cost  {MARK}\n")
    assert _function_level_lab_imports(bad, tmp_path) == ["lab/x.py:2: from lab.study import runner"]


def test_modules_import_without_a_cycle_holding_them_together():
    """In a fresh interpreter, importing a module first (before any other lab module) works: here
    the modules whose imports ran in circles before (grammar.spec and text, study.config and grid),
    each imported first in a process of its own (one interpreter start: forked after the imports of
    the libraries, which cannot be cycles of the lab's)."""
    import subprocess
    import sys

    script = """
import os, sys, importlib
import torch, optuna, ray.tune, pandas, pyarrow   # the slow imports, once, before forking
for module in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(module)
        except BaseException as e:
            print(module, type(e).__name__, e, file=sys.stderr)
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status:
        sys.exit(1)
"""
    modules = ["lab.grammar.text", "lab.grammar.spec", "lab.study.grid", "lab.study.config", "lab.report.study"]
    run = subprocess.run([sys.executable, "-c", script, *modules], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
