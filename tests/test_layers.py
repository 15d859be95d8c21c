"""Imports run one way. The layers themselves are an import-linter contract (pyproject.toml,
`lint-imports` in .ci/run); this test keeps the other half of the rule: no module of the lab is
imported inside a function to dodge a cycle. An import kept inside a function for the CLI's
start-up time says so on its line (`# lazy: start-up time`)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("module", ["lab.study.grid", "lab.grammar.text", "lab.report.study"])
def test_every_layer_imports_on_its_own(module):
    """A module imports without a cycle holding it together: in a fresh interpreter, importing it
    first (before any other lab module) works."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
