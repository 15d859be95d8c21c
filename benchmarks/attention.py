"""Neighbourhood attention kernel vs naive masked full attention, on CPU.

Setting of the project target: 56 x 56 tokens, kernel 7, dim 64 = 2 heads of 32, with a relative
position bias, float32. Three implementations with the same semantics:

- na:          lab.kernels.neighborhood.neighborhood_attention, portable backend;
- naive:       N x N scores by matmul, plus an (heads, N, N) bias gathered from rpb through an
               index table precomputed outside the timed region (the -inf entry masks keys outside
               the neighbourhood), softmax, matmul with V;
- naive_sdpa:  the same bias tensor passed as attn_mask to F.scaled_dot_product_attention.

Time: median wall time of repeated calls, the implementations alternating call by call in this
process. Peak memory: each (implementation, batch, mode) runs in a fresh spawned process with
MALLOC_MMAP_THRESHOLD_=65536 (large blocks go back to the OS when freed); after one warm-up call
the kernel's peak-RSS counter is reset (writing 5 to /proc/self/clear_refs) and the peak is
VmHWM - VmRSS (from /proc/self/status) over one more call. Inputs, tables and the naive index
table are built before the baseline, so only what the call itself allocates is counted.

    python benchmarks/attention.py
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time
from multiprocessing import get_context

import torch
import torch.nn.functional as F

from lab.kernels.neighborhood import _tables, neighborhood_attention

SIZE, KERNEL, HEADS, HEAD_DIM = 56, 7, 2, 32
IMPLS = ("na", "naive", "naive_sdpa")


def naive_bias_index(size: int, kernel: int) -> torch.Tensor:
    """(N, N) index into rpb.flatten(1) plus one -inf column for keys outside the window."""
    n = size * size
    idx, ridx = _tables(size, size, kernel, 1, torch.device("cpu"))
    full = torch.full((n, n), (2 * kernel - 1) ** 2, dtype=torch.long)
    return full.scatter_(1, idx.T, ridx.T)


def make(impl: str, batch: int, grad: bool):
    """A zero-argument call doing one forward (and backward if grad) of impl, with its inputs."""
    shape = (batch, HEADS, SIZE, SIZE, HEAD_DIM)
    q, k, v = (torch.randn(shape, requires_grad=grad) for _ in range(3))
    rpb = torch.randn(HEADS, 2 * KERNEL - 1, 2 * KERNEL - 1, requires_grad=grad)
    n, scale = SIZE * SIZE, HEAD_DIM ** -0.5
    if impl == "na":
        def forward():
            return neighborhood_attention(q, k, v, KERNEL, 1, rpb, backend="portable")
    else:
        bias_index = naive_bias_index(SIZE, KERNEL)

        def forward():
            table = torch.cat([rpb.flatten(1), rpb.new_full((HEADS, 1), float("-inf"))], 1)
            bias = table[:, bias_index]  # (heads, N, N)
            qf, kf, vf = (x.reshape(batch, HEADS, n, HEAD_DIM) for x in (q, k, v))
            if impl == "naive_sdpa":
                out = F.scaled_dot_product_attention(qf, kf, vf, attn_mask=bias, scale=scale)
            else:
                out = ((qf * scale) @ kf.transpose(-1, -2) + bias).softmax(-1) @ vf
            return out.view(q.shape)

    if not grad:
        def call():
            with torch.no_grad():
                return forward()
        return call
    grad_out = torch.randn(q.shape)

    def call():
        forward().backward(grad_out)
        for x in (q, k, v, rpb):
            x.grad = None
    return call


def _proc_status() -> dict[str, int]:
    text = open("/proc/self/status").read()
    return {key: int(re.search(rf"{key}:\s+(\d+) kB", text).group(1)) for key in ("VmRSS", "VmHWM")}


def _peak_mb_child(impl: str, batch: int, grad: bool, threads: int, result) -> None:
    torch.set_num_threads(threads)
    call = make(impl, batch, grad)
    call()  # warm-up: lazy initialisation, table caches
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _proc_status()["VmRSS"]
    call()
    result.put((_proc_status()["VmHWM"] - before) / 1024)


def peak_mb(impl: str, batch: int, grad: bool, threads: int) -> float:
    """Peak resident memory growth of one call, in MiB, measured in a fresh spawned process."""
    ctx = get_context("spawn")
    result = ctx.Queue()
    child = ctx.Process(target=_peak_mb_child, args=(impl, batch, grad, threads, result))
    child.start()
    mb = result.get()
    child.join()
    return mb


def median_ms(calls: dict[str, object], rounds: int) -> dict[str, float]:
    times = {name: [] for name in calls}
    for call in calls.values():
        call()  # warm-up
    for _ in range(rounds):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


def check_same_output() -> float:
    torch.manual_seed(0)
    outs = []
    for impl in IMPLS:
        torch.manual_seed(0)
        outs.append(make(impl, 1, grad=False)())
    return max((o - outs[0]).abs().max().item() for o in outs[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=7, help="timed calls per implementation")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"  # inherited by the spawned measuring processes
    print(f"{SIZE}x{SIZE} tokens, kernel {KERNEL}, dim {HEADS * HEAD_DIM} = {HEADS} heads x "
          f"{HEAD_DIM}, rpb, float32, {args.threads} threads, torch {torch.__version__}")
    print(f"max |output difference| vs na at B=1: {check_same_output():.1e}")
    print("load average at start: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))

    # all timings first, then the memory runs: a process starting up beside a timed call would
    # steal one of the two cores
    times = {}
    for batch in args.batches:
        rounds = args.rounds if batch == 1 else max(3, args.rounds // 2)
        for grad in (False, True):
            calls = {impl: make(impl, batch, grad) for impl in IMPLS}
            for impl, ms in median_ms(calls, rounds).items():
                times[impl, batch, grad] = ms
    rows = {key: (ms, peak_mb(*key, args.threads)) for key, ms in times.items()}

    print(f"\n{'impl':<11} {'B':>2}  {'fwd ms':>8} {'fwd MiB':>8}  "
          f"{'fwd+bwd ms':>10} {'fwd+bwd MiB':>10}")
    for batch in args.batches:
        for impl in IMPLS:
            (f_ms, f_mb), (b_ms, b_mb) = rows[impl, batch, False], rows[impl, batch, True]
            print(f"{impl:<11} {batch:>2}  {f_ms:8.1f} {f_mb:8.1f}  {b_ms:10.1f} {b_mb:10.1f}")
    print("load average at end:   " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print("\nratios naive / na (time, peak memory):")
    for batch in args.batches:
        for impl in IMPLS[1:]:
            parts = []
            for grad, mode in ((False, "fwd"), (True, "fwd+bwd")):
                (na_ms, na_mb), (ms, mb) = rows["na", batch, grad], rows[impl, batch, grad]
                parts.append(f"{mode} {ms / na_ms:5.1f}x time {mb / na_mb:5.1f}x memory")
            print(f"  B={batch} {impl:<11} " + ", ".join(parts))


if __name__ == "__main__":
    main()
