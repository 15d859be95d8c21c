"""The block grammar: typed specs, their textual form, multipliers and generators."""

from lab.grammar.format import format_spec
from lab.grammar.scale import scale
from lab.grammar.spec import Spec, Stage
from lab.grammar.text import parse

__all__ = ["Spec", "Stage", "format_spec", "parse", "scale"]
