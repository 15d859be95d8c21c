"""The canonical one-line text of a Spec (lab.grammar.text parses it back): defaults omitted,
parameters in declaration order, consecutive stages with the same block grouped."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lab.kinds import Kind

if TYPE_CHECKING:   # the types formatted (lab.grammar.spec imports this module to name its points)
    from lab.grammar.spec import Spec, Stage


def _num(v: Any) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)
    return str(v)


def format_kind(k: Kind) -> str:
    args = k.args()
    if not args:
        return k.kind
    return f"{k.kind}({','.join(f'{key}={_num(v)}' for key, v in args.items())})"


def _format_ops(ops: tuple) -> str:
    return ",".join(format_kind(op) for op in ops)


def _format_stage(st: Stage) -> str:
    text = f"{st.depth}x{st.width}"
    if st.stride != 1:
        text += f"/{st.stride}"
    if len(st.down) == 1:
        text += f"/{format_kind(st.down[0])}"
    elif st.down:
        text += f"/({_format_ops(st.down)})"
    return text


def format_spec(spec: Spec) -> str:
    parts = [f"@{spec.frames}x{spec.res}" if spec.frames != 1 else f"@{spec.res}", _format_ops(spec.stem)]
    group: list[Stage] = []
    for st in spec.stages + (None,):
        if group and (st is None or st.block != group[0].block):
            parts.append(f"{format_kind(group[0].block)} {', '.join(_format_stage(g) for g in group)}")
            group = []
        if st is not None:
            group.append(st)
    parts.append(_format_ops(spec.head))
    return " | ".join(parts)
