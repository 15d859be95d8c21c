"""The grammar's vocabulary: every registered op and block kind.

Adding a kind is adding one module here that defines and registers it (`@register`); every module
of this package is imported when the package is, so nothing else changes. Kinds defined elsewhere
(a plugin, a notebook, a test) join the grammar by being registered too: `lab.kinds.register`, or a
module named under the `lab.kinds` entry-point group of an installed distribution.

What the rest of the lab asks about a kind (token mixer or not, layout, patchifying, ...) it
declares itself, as traits on its class (`lab.kinds.base.Kind`); lists of kinds are derived here.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from importlib.metadata import entry_points

from lab.kinds.base import MIXER_FAMILIES, REGISTRY, TRAITS, Block, Context, Cost, Kind, Op, Shape, register, traits, unregister

__all__ = ["MIXER_FAMILIES", "REGISTRY", "TRAITS", "Block", "Context", "Cost", "Kind", "Op", "Shape", "blocks",
           "in_order", "is_token_mixer", "ops_", "register", "select", "token_mixers", "traits", "unregister"]


def _discover() -> None:
    """Import every module of this package, then the `lab.kinds` entry points (each registers its kinds)."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{info.name}")
    for entry in entry_points(group="lab.kinds"):
        entry.load()


_discover()


def blocks() -> list[str]:
    return sorted(k for k, c in REGISTRY.items() if c.role == "block")


def ops_() -> list[str]:
    return sorted(k for k, c in REGISTRY.items() if c.role == "op")


def in_order(kinds: Iterable[str]) -> list[str]:
    """`kinds` in the lecture's order of token mixing (conv, global attention, window attention,
    neighbourhood attention, MLP, other: MIXER_FAMILIES), by name within a family; ops by name."""
    def key(name: str) -> tuple[int, str]:
        family = getattr(REGISTRY.get(name), "mixer_family", "")
        return (MIXER_FAMILIES.index(family) if family in MIXER_FAMILIES else -1, name)

    return sorted(kinds, key=key)


def select(**wanted: object) -> list[str]:
    """The registered kinds whose traits equal `wanted` (`select(role="block", token_mixer=True)`), in order."""
    unknown = sorted(set(wanted) - set(TRAITS) - {"kind", "role"})
    if unknown:
        raise KeyError(f"unknown trait {unknown[0]!r} (traits: {', '.join(TRAITS)})")
    return in_order(k for k, c in REGISTRY.items() if all(traits(c).get(t) == v for t, v in wanted.items()))


def token_mixers() -> list[str]:
    """The registered blocks that mix tokens by attention or MLP (every other block is a conv kind)."""
    return select(role="block", token_mixer=True)


def is_token_mixer(kind: str) -> bool:
    cls = REGISTRY.get(kind)
    return cls is not None and cls.role == "block" and bool(getattr(cls, "token_mixer", False))
