"""The block grammar: typed specs, their textual form, multipliers and generators."""

from lab.grammar.scale import scale
from lab.grammar.spec import Spec, Stage
from lab.grammar.text import format_spec, parse

__all__ = ["Spec", "Stage", "format_spec", "parse", "scale"]
