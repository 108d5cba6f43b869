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
gbps counts the bytes of S read once; time_vs_ceiling compares with S.sum(0);
extra_mib is the peak memory a call needs beyond its inputs (CPU: peak resident set,
CUDA: the caching allocator's peak). Columns: benchmarks/_common.py, KERNEL_FIELDS.

    python benchmarks/bench_niches.py                     # the full sweep (minutes)
    python benchmarks/bench_niches.py --quick --csv out.csv
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import KernelRows, kernel_backends, parser, peak_extra_bytes, time_ms  # noqa: E402

import m2n2_kernels as mk  # noqa: E402
from m2n2_kernels import reference  # noqa: E402

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
    rows = KernelRows(args.csv)
    stats_shapes = QUICK_STATS if args.quick else STATS_SHAPES
    matrix_shapes = QUICK_MATRIX if args.quick else MATRIX_SHAPES

    def bench(fn, slow_after_ms=5000.0):
        # One untimed call; calls slower than slow_after_ms are timed once more only.
        first, _ = time_ms(fn, device, reps=1, warmup=1)
        reps = 1 if first > slow_after_ms else args.reps
        ms, ms_min = time_ms(fn, device, reps=reps, warmup=0)
        return ms, ms_min, reps, peak_extra_bytes(fn, device)

    for dtype in args.dtypes:
        for op, shapes in (("stats", stats_shapes), ("matrix", matrix_shapes)):
            for n, d in shapes:
                S = make_scores(n, d, dtype, device)
                nbytes = S.numel() * S.element_size()

                def emit(op_name, impl, backend, timing, torch_ms=None, sum0_ms=None):
                    ms, ms_min, reps, extra = timing
                    rows.row(op=op_name, impl=impl, backend=backend, device=device, dtype=dtype, shape=(n, d),
                             ms=ms, ms_min=ms_min, reps=reps, nbytes=nbytes, torch_ms=torch_ms,
                             ceiling="S.sum(0)" if sum0_ms else None, ceiling_ms=sum0_ms, extra_bytes=extra)

                if op == "stats":
                    sum0 = bench(lambda: S.sum(0))
                    emit("sum0", "torch S.sum(0)", "torch", sum0, sum0_ms=sum0[0])
                    cases = (
                        ("stats_row", lambda b: mk.niche_stats(S, parent=1, backend=b),
                         lambda: reference.niche_stats(S, parent=1)),
                        ("fitness", lambda b: mk.fitness(S, backend=b), lambda: reference.fitness(S)),
                    )
                    for op_name, ours, ref in cases:
                        ref_timing = bench(ref)
                        emit(op_name, "torch chunked (reference.py)", "torch", ref_timing, sum0_ms=sum0[0])
                        for backend in kernel_backends(device):
                            emit(op_name, "m2n2_kernels", backend, bench(lambda: ours(backend)),
                                 torch_ms=ref_timing[0], sum0_ms=sum0[0])
                else:
                    baseline = None
                    if dtype == torch.bool:
                        gemm = bench(lambda: torch_gemm_attraction(S))
                        emit("matrix", "torch GEMM identity", "torch", gemm)
                        baseline = gemm[0]
                    if n * n * d <= MAX_BROADCAST:
                        ref_timing = bench(lambda: reference.attraction(S))
                        emit("matrix", "torch chunked (reference.py)", "torch", ref_timing)
                        baseline = ref_timing[0] if baseline is None else baseline
                    for backend in kernel_backends(device):
                        emit("matrix", "m2n2_kernels", backend, bench(lambda: mk.attraction(S, backend=backend)),
                             torch_ms=baseline)
                del S
    rows.close()


def main():
    args = parser(__doc__, dtypes="bool,float32").parse_args()
    print(f"# build_info: {mk.build_info()}", file=sys.stderr)
    run(args)


if __name__ == "__main__":
    main()
