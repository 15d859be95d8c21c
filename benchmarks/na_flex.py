"""Neighbourhood attention through FlexAttention against the naive reference, on a GPU (or, smaller, on CPU).

The project's setting: 56 x 56 tokens, kernel 7, dim 64 = 2 heads of 32, a relative position bias.
Implementations with the same semantics:

- flex:   lab.kernels.neighborhood.neighborhood_attention(backend="flex"): FlexAttention with a block
          mask of the neighbourhood and a score_mod adding the bias (compiled once; its compile time is
          reported apart);
- naive:  N x N scores by matmul plus a (heads, N, N) bias gathered from rpb through an index table
          (-inf outside the window), softmax, matmul with V (benchmarks/attention.py's reference);
- portable: the lab's gather-per-offset kernel, for scale.

Reported per dtype: max |output - naive's| (and of the gradients of q, k, v and rpb where flex has a
backward: CUDA), median ms of a forward and of forward+backward, and on CUDA the peak memory of each
(torch.cuda.max_memory_allocated above what the inputs hold). On CPU torch's flex has no backward: only
forward is measured there.

    python benchmarks/na_flex.py                          # CUDA, 56x56, k=7, batch 8, float32 and bf16
    python benchmarks/na_flex.py --device cpu --size 14 --batch 1 --rounds 2   # the CPU smoke run
    python benchmarks/na_flex.py --json FILE              # also write the figures as JSON
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attention import naive_bias_index  # benchmarks/attention.py: the same reference

from lab.kernels.neighborhood import neighborhood_attention

HEADS, HEAD_DIM = 2, 32


def naive(q, k, v, rpb, kernel: int, bias_index: torch.Tensor) -> torch.Tensor:
    batch, heads, height, width, dim = q.shape
    n = height * width
    table = torch.cat([rpb.flatten(1), rpb.new_full((heads, 1), float("-inf"))], 1)
    bias = table[:, bias_index].float()                                            # (heads, N, N)
    qf, kf, vf = (x.reshape(batch, heads, n, dim).float() for x in (q, k, v))
    out = ((qf * dim ** -0.5) @ kf.transpose(-1, -2) + bias).softmax(-1) @ vf
    return out.view(q.shape).to(q.dtype)


def inputs(batch: int, size: int, kernel: int, device: str, dtype: torch.dtype, grad: bool):
    torch.manual_seed(0)
    shape = (batch, HEADS, size, size, HEAD_DIM)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=grad) for _ in range(3))
    rpb = torch.randn(HEADS, 2 * kernel - 1, 2 * kernel - 1, device=device, dtype=dtype, requires_grad=grad)
    return q, k, v, rpb


def calls(impl: str, kernel: int, bias_index: torch.Tensor) -> Callable:
    if impl == "naive":
        return lambda q, k, v, rpb: naive(q, k, v, rpb, kernel, bias_index)
    return lambda q, k, v, rpb: neighborhood_attention(q, k, v, kernel, 1, rpb, backend=impl).contiguous()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(step: Callable[[], object], device: str, rounds: int) -> float:
    """Median ms of `rounds` calls after one warm-up."""
    step()
    sync(device)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak_mb(step: Callable[[], object], device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    sync(device)
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def measure(args, dtype: torch.dtype) -> dict:
    device, backward = args.device, args.device.startswith("cuda")
    bias_index = naive_bias_index(args.size, args.kernel).to(device)
    impls = ("flex", "naive", "portable")
    result: dict = {"dtype": str(dtype).removeprefix("torch."), "impls": {}}

    # correctness first, with the first (compiling) call of flex timed apart
    outs, grads = {}, {}
    for impl in impls:
        q, k, v, rpb = inputs(args.batch, args.size, args.kernel, device, dtype, backward)
        t0 = time.perf_counter()
        out = calls(impl, args.kernel, bias_index)(q, k, v, rpb)
        if backward:
            out.float().square().sum().backward()
            grads[impl] = [x.grad.float() for x in (q, k, v, rpb)]
        sync(device)
        if impl == "flex":
            result["flex_first_call_s"] = round(time.perf_counter() - t0, 2)
        outs[impl] = out.detach().float()
    for impl in ("flex", "portable"):
        entry = {"max_abs_out": (outs[impl] - outs["naive"]).abs().max().item()}
        if backward:
            entry["max_abs_grad"] = max((a - b).abs().max().item() for a, b in zip(grads[impl], grads["naive"], strict=True))
        result["impls"][impl] = entry

    for impl in impls:
        fn = calls(impl, args.kernel, bias_index)
        q, k, v, rpb = inputs(args.batch, args.size, args.kernel, device, dtype, False)
        entry = result["impls"].setdefault(impl, {})

        def forward(fn=fn, q=q, k=k, v=v, rpb=rpb):
            with torch.no_grad():
                return fn(q, k, v, rpb)

        entry["fwd_ms"] = round(timed(forward, device, args.rounds), 3)
        entry["fwd_peak_mb"] = peak_mb(forward, device)
        if backward:
            qg, kg, vg, rg = inputs(args.batch, args.size, args.kernel, device, dtype, True)

            def train(fn=fn, q=qg, k=kg, v=vg, rpb=rg):
                fn(q, k, v, rpb).float().sum().backward()
                for x in (q, k, v, rpb):
                    x.grad = None

            entry["fwd_bwd_ms"] = round(timed(train, device, args.rounds), 3)
            entry["fwd_bwd_peak_mb"] = peak_mb(train, device)
    flex, ref = result["impls"]["flex"], result["impls"]["naive"]
    result["naive_over_flex_fwd"] = round(ref["fwd_ms"] / flex["fwd_ms"], 2)
    if backward:
        result["naive_over_flex_fwd_bwd"] = round(ref["fwd_bwd_ms"] / flex["fwd_bwd_ms"], 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=56)
    parser.add_argument("--kernel", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("na_flex.py: --device cuda but torch sees no CUDA device (give --device cpu for the CPU smoke run)")
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"neighbourhood attention {args.size}x{args.size}, k={args.kernel}, {HEADS} heads x {HEAD_DIM}, "
          f"batch {args.batch}, rpb, on {where}, torch {torch.__version__}")
    results = [measure(args, getattr(torch, name)) for name in args.dtypes.split(",")]
    for r in results:
        both = f", fwd+bwd {r['naive_over_flex_fwd_bwd']}x" if "naive_over_flex_fwd_bwd" in r else ""
        print(f"\n{r['dtype']}: flex's first (compiling) call {r['flex_first_call_s']} s; naive/flex time "
              f"fwd {r['naive_over_flex_fwd']}x{both}")
        for impl, e in r["impls"].items():
            print(f"  {impl:<9} " + "  ".join(f"{key} {value:.3g}" if isinstance(value, float) else f"{key} {value}"
                                             for key, value in e.items()))
    if args.json:
        args.json.write_text(json.dumps({"setting": vars(args) | {"json": str(args.json)}, "device": where,
                                         "results": results}, indent=1))


if __name__ == "__main__":
    main()
