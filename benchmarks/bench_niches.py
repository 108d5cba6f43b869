"""Niche statistics: our kernels vs the torch baselines, in one run.

For each score dtype (bool, float32) and archive shape N x D it times, on the same S:
  sum0          torch's S.sum(0) alone: the bar for the per-step statistics
  stats_row     z + fitness + the attraction row of one parent (the engine's step):
                ours (one read of S) vs reference.niche_stats (chunked torch)
  fitness       z + fitness: ours vs reference.fitness
  matrix        the full N x N attraction matrix: ours vs the chunked N x N x chunk
                broadcast of reference.py and, for 0/1 scores, the matrix-product
                identity A = (1 - S) diag(u) S^T as float GEMMs (what a good engineer
                writes in torch); the broadcast is skipped where N^2 D > 2^34
gbps counts the bytes of S read once; extra_mib is the peak memory a call needs
beyond its inputs (CPU: peak resident set, CUDA: the caching allocator's peak).

    python benchmarks/bench_niches.py                     # the full sweep (minutes)
    python benchmarks/bench_niches.py --quick --csv out.csv
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import CsvOut, kernel_backends, peak_extra_bytes, time_ms  # noqa: E402

import m2n2_kernels as mk  # noqa: E402
from m2n2_kernels import reference  # noqa: E402

FIELDS = [
    "op", "impl", "backend", "device", "dtype", "N", "D", "ms", "reps", "gbps",
    "speedup_vs_torch", "time_vs_sum0", "extra_mib",
]
STATS_SHAPES = [(n, d) for n in (20, 256, 1024) for d in (1437, 2**16, 2**20)]
MATRIX_SHAPES = [(20, 1437), (20, 2**16), (256, 1437), (256, 2**16), (512, 2**16), (1024, 1437), (1024, 2**18)]
QUICK_STATS = [(20, 1437), (256, 2**16)]
QUICK_MATRIX = [(20, 1437), (128, 2**12)]
MAX_BROADCAST = 2**34  # N^2 D element operations of the chunked torch broadcast


def torch_gemm_attraction(S):
    """The torch matrix-product identity for 0/1 scores (alpha 1, no capacity)."""
    x = S.float()
    z = x.sum(0)
    u = 1.0 / torch.where(z != 0, z, torch.ones_like(z))
    return (1 - x) @ (x * u).T


def make_scores(n, d, dtype, device):
    g = torch.Generator(device=device).manual_seed(n + d)
    if dtype == torch.bool:
        return torch.rand(n, d, generator=g, device=device) < 0.5
    return torch.rand(n, d, generator=g, device=device).to(dtype)


def run(args):
    device = torch.device(args.device)
    out = CsvOut(FIELDS, args.csv)
    stats_shapes = QUICK_STATS if args.quick else STATS_SHAPES
    matrix_shapes = QUICK_MATRIX if args.quick else MATRIX_SHAPES

    def bench(fn, slow_after_ms=5000.0):
        # One untimed call; calls slower than slow_after_ms are timed once more only.
        first, _ = time_ms(fn, device, reps=1, warmup=1)
        reps = 1 if first > slow_after_ms else args.reps
        ms, _ = time_ms(fn, device, reps=reps, warmup=0)
        return ms, reps, peak_extra_bytes(fn, device) / 2**20

    for dtype in args.dtypes:
        name = str(dtype).replace("torch.", "")
        for op, shapes in (("stats", stats_shapes), ("matrix", matrix_shapes)):
            for n, d in shapes:
                S = make_scores(n, d, dtype, device)
                nbytes = S.numel() * S.element_size()

                def emit(op_name, impl, backend, ms, reps, mem, torch_ms=None, sum0_ms=None):
                    out.row(
                        op=op_name, impl=impl, backend=backend, device=device.type, dtype=name, N=n, D=d,
                        ms=f"{ms:.3f}", reps=reps, gbps=f"{nbytes / ms / 1e6:.2f}",
                        speedup_vs_torch=f"{torch_ms / ms:.2f}" if torch_ms else "",
                        time_vs_sum0=f"{ms / sum0_ms:.2f}" if sum0_ms else "", extra_mib=f"{mem:.1f}",
                    )

                if op == "stats":
                    sum0 = bench(lambda: S.sum(0))
                    emit("sum0", "torch S.sum(0)", "torch", *sum0)
                    cases = (
                        ("stats_row", lambda b: mk.niche_stats(S, parent=1, backend=b),
                         lambda: reference.niche_stats(S, parent=1)),
                        ("fitness", lambda b: mk.fitness(S, backend=b), lambda: reference.fitness(S)),
                    )
                    for op_name, ours, ref in cases:
                        ref_ms = bench(ref)
                        emit(op_name, "torch chunked (reference.py)", "torch", *ref_ms, sum0_ms=sum0[0])
                        for backend in kernel_backends(device):
                            res = bench(lambda: ours(backend))
                            emit(op_name, "m2n2_kernels", backend, *res, torch_ms=ref_ms[0], sum0_ms=sum0[0])
                else:
                    baseline = None
                    if dtype == torch.bool:
                        gemm = bench(lambda: torch_gemm_attraction(S))
                        emit("matrix", "torch GEMM identity", "torch", *gemm)
                        baseline = gemm[0]
                    if n * n * d <= MAX_BROADCAST:
                        ref_ms = bench(lambda: reference.attraction(S))
                        emit("matrix", "torch chunked (reference.py)", "torch", *ref_ms)
                        baseline = ref_ms[0] if baseline is None else baseline
                    for backend in kernel_backends(device):
                        res = bench(lambda: mk.attraction(S, backend=backend))
                        emit("matrix", "m2n2_kernels", backend, *res, torch_ms=baseline)
                del S
    out.close()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions; the median is reported")
    p.add_argument("--dtypes", default="bool,float32", help="comma-separated score dtypes")
    p.add_argument("--quick", action="store_true", help="two small shapes per op (a smoke run)")
    p.add_argument("--csv", default=None, help="also write the CSV to this file")
    args = p.parse_args()
    args.dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    print(f"# build_info: {mk.build_info()}", file=sys.stderr)
    run(args)


if __name__ == "__main__":
    main()
