"""Parametric families that expand into grammar text: RegNet and EfficientNet compound scaling."""

from __future__ import annotations

import math

from lab.errors import SpecError


def make_divisible(v: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """Nearest multiple of `divisor`, never more than 10% below `v` (EfficientNet's channel rounding)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < round_limit * v else new_v


def regnet(w0: int, wa: float, wm: float, depth: int, gw: int, b: float = 1.0, se: float = 0.0,
           res: int = 224, stem: int = 32, q: int = 8) -> str:
    """RegNet's linear-then-quantized widths ("Designing Network Design Spaces", section 3.3).

    Block j has width u_j = w0 + wa*j, snapped to w0 * wm^round(log(u_j/w0)/log(wm)) and
    quantized to a multiple of q; runs of equal widths are the stages. Bottleneck widths
    (w*b) are then rounded to a multiple of the group width, which is capped at the
    bottleneck width. Every stage starts with stride 2.
    """
    if not (wa >= 0 and w0 > 0 and wm > 1 and w0 % q == 0 and depth >= 1):
        raise SpecError("regnet needs wa >= 0, w0 > 0 divisible by 8, wm > 1 and depth >= 1")
    exps = [round(math.log((w0 + wa * j) / w0) / math.log(wm)) for j in range(depth)]
    widths = [int(round(w0 * wm ** e / q) * q) for e in exps]
    stage_w = sorted(set(widths))
    stage_d = [widths.count(w) for w in stage_w]
    mids = [int(w * b) for w in stage_w]
    groups = [min(gw, m) for m in mids]
    mids = [int(round(m / g) * g) for m, g in zip(mids, groups)]
    stage_w = [int(m / b) for m in mids]
    blocks = [f"bottleneck(e={_n(1 / b)},gw={g}{f',se={_n(se)}' if se else ''})" for g in groups]
    parts = [f"@{res}", f"conv(c={stem},k=3,s=2),bn,relu"]
    for i, (blk, d, w) in enumerate(zip(blocks, stage_d, stage_w)):
        stage = f"{d}x{w}/2"
        if i and blk == blocks[i - 1]:
            parts[-1] += f", {stage}"
        else:
            parts.append(f"{blk} {stage}")
    parts.append("gap,fc")
    return " | ".join(parts)


# EfficientNet-B0: (expansion, kernel, stride, channels, repeats) per stage
EFFICIENTNET_B0 = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                   (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))


def efficientnet(width: float = 1.0, depth: float = 1.0, res: int = 224, drop: float = 0.2) -> str:
    """EfficientNet compound scaling of B0: channels x width (to multiples of 8), repeats x depth
    (rounded up), input resolution `res`."""
    rc = lambda c: make_divisible(c * width)  # noqa: E731
    parts = [f"@{res}", f"conv(c={rc(32)},k=3,s=2),bn,silu"]
    prev = None
    for e, k, s, c, r in EFFICIENTNET_B0:
        args = ",".join(x for x in (f"e={e}" if e != 6 else "", f"k={k}" if k != 3 else "") if x)
        blk = "mbconv" + ("" if (e, k) == (6, 3) else f"({args})")
        stage = f"{math.ceil(r * depth)}x{rc(c)}" + ("/2" if s == 2 else "")
        if blk == prev:
            parts[-1] += f", {stage}"
        else:
            parts.append(f"{blk} {stage}")
        prev = blk
    parts.append(f"conv(c={rc(1280)},k=1),bn,silu,gap,drop(p={_n(drop)}),fc")
    return " | ".join(parts)


def _n(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))
