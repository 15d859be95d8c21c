"""The grammar's vocabulary: every registered op and block kind.

Adding a kind is adding one module here that defines and registers it; nothing else changes.
"""

from lab.kinds import (basic, bottleneck, convnext, dense, mbconv, nat, ops, preact, swin, tokens,  # noqa: F401
                       transformer)  # (imported for registration)
from lab.kinds.base import REGISTRY, Block, Context, Cost, Kind, Op, Shape

__all__ = ["REGISTRY", "Block", "Context", "Cost", "Kind", "Op", "Shape", "blocks", "ops_"]


def blocks() -> list[str]:
    return sorted(k for k, c in REGISTRY.items() if c.role == "block")


def ops_() -> list[str]:
    return sorted(k for k, c in REGISTRY.items() if c.role == "op")
