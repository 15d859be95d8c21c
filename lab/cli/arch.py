"""`lab arch list|show|bench`: named architectures, per-stage cost tables, throughput."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from lab.cli.args import whole
from lab.report.table import render

if TYPE_CHECKING:
    from lab import catalog


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("arch", help="named architectures and grammar points")
    asub = p.add_subparsers(dest="arch_command", metavar="ARCH_COMMAND", parser_class=type(p))
    asub.required = True

    ls = asub.add_parser("list", help="every named architecture with params and GMACs vs the published figures")
    ls.add_argument("--family", help="only this family (resnet, convnext, ...)")
    ls.add_argument("--json", action="store_true", help="a JSON list of objects")
    ls.set_defaults(run=run_list)

    show = asub.add_parser("show", help="the per-stage table of a named architecture or grammar text")
    show.add_argument("ref", metavar="NAME|TEXT", help="a name (resnet50, resnet50@32px,w=0.25) or grammar text")
    show.add_argument("--classes", type=whole, default=None,
                      help="classes of the head (default: a named point's published head, else 1000)")
    show.add_argument("--in-chans", type=whole, default=3, help="input channels (default 3)")
    show.add_argument("--batch-size", type=whole, default=64,
                      help="batch size of the predicted training memory (default 64)")
    show.add_argument("--precision", default="32",
                      help="precision of the predicted training memory: 32 (default), bf16-mixed (bf16) or 16-mixed (16)")
    show.add_argument("--json", action="store_true", help="a JSON object")
    show.set_defaults(run=run_show)

    kinds = asub.add_parser("kinds", help="every op and block kind of the grammar with its parameters")
    kinds.set_defaults(run=run_kinds)

    bench = asub.add_parser("bench", help="training and inference images/s and peak memory")
    bench.add_argument("ref", metavar="NAME|TEXT")
    bench.add_argument("--res", type=whole, help="input resolution (default: the point's own)")
    bench.add_argument("--batch", type=whole, default=32)
    bench.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps (default cpu)")
    bench.add_argument("--steps", type=whole, default=10, help="timed steps per round")
    bench.add_argument("--rounds", type=whole, default=3, help="rounds (the median is reported)")
    bench.add_argument("--vs", choices=["timm"], help="also time the reference implementation and print ratios")
    bench.add_argument("--channels-last", action="store_true", help="run both models in channels-last memory format")
    bench.add_argument("--precision", default="32",
                       help="32 (default), bf16-mixed (bf16) or 16-mixed (16): both models' forward and loss under "
                            "autocast; auto: bf16-mixed on a GPU that has it")
    bench.add_argument("--compile", action="store_true",
                       help="both models through torch.compile (the compilation's seconds are reported apart)")
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(run=run_bench)


def _summary(name: str, spec, entry: catalog.Entry | None, classes: int = 1000, in_chans: int = 3) -> dict:
    from lab import catalog  # lazy: start-up time
    from lab.cost import cost  # lazy: start-up time

    rep = cost(spec, classes, in_chans)
    out = {"name": name, "family": entry.family if entry else catalog.family_of(spec),
           "params": rep.params, "gmacs": round(rep.gmacs, 4), "acts": rep.acts, "res": spec.res,
           "frames": spec.frames, "arch_id": spec.arch_id, "text": spec.text}
    if entry is not None:
        out.update(timm=entry.timm, published_params_m=entry.published_params_m,
                   published_gmacs=entry.published_gmacs)
    return out


def _timm_layout(timm_name: str) -> str | None:
    from lab.interop.timm import InteropError, dialect_of  # lazy: start-up time

    try:
        return dialect_of(timm_name)
    except InteropError:
        return None


def _pct(ours: float, published: float | None) -> str:
    return "" if not published else f"{100 * (ours - published) / published:+.1f}%"


def run_list(args: argparse.Namespace) -> int:
    from lab import catalog  # lazy: start-up time
    from lab.report.jsonable import to_json  # lazy: start-up time

    entries = [e for e in catalog.entries().values() if not args.family or e.family == args.family]
    items = [_summary(e.name, catalog.named(e.name), e, e.classes) for e in entries]
    if args.json:
        print(to_json(items, indent=1))
        return 0
    rows = [(i["name"], i["family"], i["res"], f"{i['params'] / 1e6:.2f}", f"{i['gmacs']:.2f}",
             i["published_params_m"] or "", i["published_gmacs"] or "",
             _pct(i["params"] / 1e6, i["published_params_m"]), _pct(i["gmacs"], i["published_gmacs"]))
            for i in items]
    print(render(["name", "family", "res", "params(M)", "GMACs", "pub.params", "pub.GMACs", "d.params", "d.GMACs"],
                 rows, "<<>>>>>>>"))
    return 0


def run_show(args: argparse.Namespace) -> int:
    from lab import catalog  # lazy: start-up time
    from lab.cost import cost  # lazy: start-up time
    from lab.memory import precision_name, training_memory  # lazy: start-up time
    from lab.report.jsonable import to_json  # lazy: start-up time

    spec = catalog.resolve(args.ref)
    name = args.ref if not args.ref.lstrip().startswith("@") else spec.arch_id
    base = None if args.ref.lstrip().startswith("@") else args.ref.split("@")[0].strip()
    entry = catalog.entries().get(base) if base else None
    if args.classes is None:
        args.classes = entry.classes if entry else 1000
    precision = precision_name(args.precision, "--precision")
    info = _summary(name, spec, entry, args.classes, args.in_chans)
    mem = training_memory(spec, args.batch_size, args.classes, args.in_chans, precision=precision)
    info["memory"] = {"batch_size": args.batch_size, "precision": precision, "optimizer": mem.optimizer,
                      "total": mem.total, "weights": mem.weights, "activations": mem.activations,
                      "together": mem.together, "transient": mem.transient}
    if entry and entry.timm:
        info["timm_layout"] = _timm_layout(entry.timm)
    rep = cost(spec, args.classes, args.in_chans)
    stages: list[dict[str, Any]] = [
        {"stage": r.name, "block": r.block, "depth": r.depth,
         "res": f"{r.frames}x{r.h}x{r.w}" if r.frames > 1 else f"{r.h}x{r.w}", "channels": r.channels,
         "tokens": r.tokens, "prefix_tokens": r.prefix, "params": r.params, "macs": r.macs, "acts": r.acts}
        for r in rep.rows]
    if args.json:
        print(to_json({**info, "stages": stages}, indent=1))
        return 0
    print(f"{info['name']}  ({info['family']}, arch_id {info['arch_id']})")
    print(f"  {info['text']}")
    if entry and entry.timm:
        print(f"  timm: {entry.timm} (weights in its {info['timm_layout']} layout load with --init timm:{entry.timm})")
    elif entry and entry.reference:
        print(f"  reference: {entry.reference}")
    print()

    def out(s: dict) -> str:  # "56x56" for a map, "1+14x14 tok" for tokens with a class token, "16x56x56 tok" on clips
        if s["stage"] == "head":
            return "logits" if args.classes else "features"
        prefix = f"{s['prefix_tokens']}+" if s["prefix_tokens"] else ""
        return f"{prefix}{s['res']} tok" if s["tokens"] else s["res"]

    rows = [(s["stage"], s["block"], s["depth"], out(s), s["channels"], f"{s['params'] / 1e6:.3f}",
             f"{s['macs'] / 1e9:.3f}") for s in stages]
    rows.append(("total", "", "", "", "", f"{rep.params / 1e6:.3f}", f"{rep.gmacs:.3f}"))
    print(render(["stage", "block", "depth", "out", "channels", "params(M)", "GMACs"], rows, "<<>>>>>"))
    print(f"\ntraining memory (predicted, AdamW): {mem.describe()}")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from lab.bench import compare  # lazy: start-up time
    from lab.report.jsonable import to_json  # lazy: start-up time

    result = compare(args.ref, res=args.res, batch=args.batch, device=args.device, steps=args.steps,
                     rounds=args.rounds, vs_timm=args.vs == "timm", channels_last=args.channels_last,
                     precision=args.precision, compile=args.compile)
    if args.json:
        print(to_json(result, indent=1))
        return 0
    compiled = result["compile"]
    rows = [(who, f"{m['train_ips']:.1f}", f"{m['infer_ips']:.1f}", f"{m['peak_mb']:.0f}",
             *([f"{m['compile_s']:.1f}"] if compiled else [])) for who, m in result["runs"].items()]
    settings = ", ".join([result["precision"], *(["compiled"] if compiled else []),
                          *(["channels_last"] if result["channels_last"] else [])])
    print(f"{args.ref} at {result['res']}px, batch {args.batch}, {result['device']}, {settings}, "
          f"median of {args.rounds} rounds")
    print(render(["model", "train img/s", "infer img/s", "peak MB", *(["compile s"] if compiled else [])], rows,
                 "<>>>>" if compiled else "<>>>"))
    if "ratio" in result:
        r = result["ratio"]
        print(f"lab/timm: train {r['train']:.3f}x, inference {r['infer']:.3f}x, peak memory {r['peak']:.3f}x")
    return 0


LAYOUTS = {"nchw": "maps", "nlc": "tokens", "any": "maps or tokens"}


def _traits(cls: type) -> str:
    """What the lab asks of a kind, in words: the layout it takes, the mixer it is, what it needs."""
    from lab.kinds import traits  # lazy: start-up time

    t = traits(cls)
    words = [f"on {LAYOUTS.get(t['layout'], t['layout'])}"]
    if t["role"] == "block":
        words.append(f"token mixer: {t['mixer_family']}" if t["token_mixer"] else "conv block")
    words += [w for flag, w in (("needs_grid", "grid only (no class tokens)"), ("patchifies", "patchifies"),
                                ("classifier", "classifier")) if t[flag]]
    return "; ".join(words)


def run_kinds(args: argparse.Namespace) -> int:
    from lab.kinds import REGISTRY  # lazy: start-up time

    for role in ("op", "block"):
        print(f"{role}s:")
        for name, cls in sorted(REGISTRY.items()):
            if cls.role != role:
                continue
            params = ", ".join(f"{p}={'-' if d is None else d}" for p, d, _ in cls.params_doc())
            print(f"  {name}({params})" if params else f"  {name}")
            print(f"      {(cls.__doc__ or '').strip().splitlines()[0]}")
            print(f"      [{_traits(cls)}]")
    return 0
