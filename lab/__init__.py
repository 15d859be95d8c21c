"""lab: a neural-architecture search and scaling lab for vision models.

    import lab
    spec = lab.named("resnet50")          # or lab.parse("@224 | ...") or lab.resolve("resnet50@32px,w=0.25")
    lab.cost(spec).gmacs                   # analytic, no module built
    model = lab.build(spec, num_classes=10, in_chans=1)

The names below are imported on first use (PEP 562): `import lab` alone, which every `lab` command
pays, loads neither torch nor the grammar, so that `lab --help` starts in a fraction of a second.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> (module, attribute)
_EXPORTS = {
    "LabError": ("lab.errors", "LabError"),
    "SpecError": ("lab.errors", "SpecError"),
    "Spec": ("lab.grammar", "Spec"),
    "Stage": ("lab.grammar", "Stage"),
    "parse": ("lab.grammar", "parse"),
    "scale": ("lab.grammar", "scale"),
    "format": ("lab.grammar.format", "format_spec"),
    "build": ("lab.build", "build"),
    "cost": ("lab.cost", "cost"),
    "named": ("lab.catalog", "named"),
    "names": ("lab.catalog", "names"),
    "resolve": ("lab.catalog", "resolve"),
}

__all__ = ["LabError", "Spec", "SpecError", "Stage", "__version__", "build", "cost", "format", "named", "names",
           "parse", "resolve", "scale"]   # = _EXPORTS and the version (tests/test_startup.py)

if TYPE_CHECKING:   # what type checkers and IDEs see: the same names, imported eagerly
    from lab.build import build
    from lab.catalog import named, names, resolve
    from lab.cost import cost
    from lab.errors import LabError, SpecError
    from lab.grammar import Spec, Stage, parse, scale
    from lab.grammar.format import format_spec as format


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'lab' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value   # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


class _Package(types.ModuleType):
    """The package `lab`, whose functions `lab.build` and `lab.cost` share their names with submodules:
    importing a submodule binds it on its package (importlib's setattr), which would shadow the function
    that an eager `from lab.cost import cost` here used to put back. The function keeps the name."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType) and value.__name__ == f"{__name__}.{name}":
            return   # the submodule stays reachable as sys.modules["lab.NAME"]
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
