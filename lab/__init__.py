"""lab: a neural-architecture search and scaling lab for vision models.

    import lab
    spec = lab.named("resnet50")          # or lab.parse("@224 | ...") or lab.resolve("resnet50@32px,w=0.25")
    lab.cost(spec).gmacs                   # analytic, no module built
    model = lab.build(spec, num_classes=10, in_chans=1)
"""

from lab.build import build
from lab.catalog import named, names, resolve
from lab.cost import cost
from lab.errors import LabError, SpecError
from lab.grammar import Spec, Stage, parse, scale
from lab.grammar.format import format_spec as format

__version__ = "0.1.0"

__all__ = [
           "LabError",
           "Spec",
           "SpecError",
           "Stage",
           "__version__",
           "build",
           "cost",
           "format",
           "named",
           "names",
           "parse",
           "resolve",
           "scale",
]
