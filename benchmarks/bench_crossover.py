"""Split-point crossover: our kernels vs the best pure-torch code vs torch's lerp_.

One run, same buffers, median of --reps repetitions. For every dtype and every
backend present it times:
  ceiling       torch's own lerp (in place, and into out): the memory-bandwidth bar
  lerp_split    in place: ours vs two lerp_ on the two views of the split
  slerp_split   into out: ours vs one dot, two norms and two scaled adds per side
  slerp_mutate  slerp_split + N(0, 0.01^2) noise: ours (fused) vs + randn_like, add_
GB/s counts the op's minimal traffic (read a and b, write the child) for every row,
so rows compare directly with the ceiling (lerp_ for the in-place row, lerp(out=)
for the others). Columns: benchmarks/_common.py, KERNEL_FIELDS.

    python benchmarks/bench_crossover.py                   # 1 GiB per buffer
    python benchmarks/bench_crossover.py --mib 64 --csv out.csv
    python benchmarks/bench_crossover.py --quick           # 16 MiB per buffer
"""
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import KernelRows, kernel_backends, parser, peak_extra_bytes, time_ms  # noqa: E402

import m2n2_kernels as mk  # noqa: E402

W = 0.3
SIGMA = 0.01


def torch_slerp_into(a, b, out, split, w):
    """The best plain-torch slerp-split: one dot, two norms, two scaled adds per side."""
    dot = float(torch.dot(a, b))
    na, nb = float(torch.linalg.vector_norm(a)), float(torch.linalg.vector_norm(b))
    omega = math.acos(max(-1.0, min(1.0, dot / (na * nb))))
    so = math.sin(omega)
    for lo, hi, t in ((0, split, w), (split, a.numel(), 1 - w)):
        ca, cb = (math.sin((1 - t) * omega) / so, math.sin(t * omega) / so) if so > 1e-6 else (1 - t, t)
        torch.mul(a[lo:hi], ca, out=out[lo:hi])
        out[lo:hi].add_(b[lo:hi], alpha=cb)
    return out


def torch_slerp_mutate_into(a, b, out, split, w, sigma):
    torch_slerp_into(a, b, out, split, w)
    return out.add_(torch.randn_like(out), alpha=sigma)


def torch_lerp_split_(a, b, split, w):
    a[:split].lerp_(b[:split], w)
    a[split:].lerp_(b[split:], 1 - w)
    return a


def run(args):
    device = torch.device(args.device)
    rows = KernelRows(args.csv)
    torch.manual_seed(0)
    mib = 16 if args.quick and args.mib is None else (args.mib or 1024)
    for dtype in args.dtypes:
        elem = torch.empty((), dtype=dtype).element_size()
        n = mib * 2**20 // elem
        split = min(n, n // 2 + 3)  # not a multiple of any vector width
        a = torch.randn(n, device=device).to(dtype)
        b = torch.randn(n, device=device).to(dtype)
        out = torch.empty_like(a)
        traffic = 3 * n * elem

        def bench(fn):
            ms, ms_min = time_ms(fn, device, reps=args.reps)
            return ms, ms_min, peak_extra_bytes(fn, device)

        ceilings = {"lerp_": bench(lambda: a.lerp_(b, W)), "lerp(out=)": bench(lambda: torch.lerp(a, b, W, out=out))}

        def emit(op, impl, backend, timing, torch_ms=None):
            ceiling = "lerp_" if op in ("lerp_split", "lerp_") else "lerp(out=)"
            ms, ms_min, extra = timing
            rows.row(op=op, impl=impl, backend=backend, device=device, dtype=dtype, shape=n, ms=ms, ms_min=ms_min,
                     reps=args.reps, nbytes=traffic, torch_ms=torch_ms, ceiling=ceiling,
                     ceiling_ms=ceilings[ceiling][0], extra_bytes=extra)

        emit("lerp_", "torch lerp_ (in place)", "torch", ceilings["lerp_"])
        emit("lerp(out=)", "torch.lerp(out=)", "torch", ceilings["lerp(out=)"])

        torch_ms = {}
        for op, fn in (
            ("lerp_split", lambda: torch_lerp_split_(a, b, split, W)),
            ("slerp_split", lambda: torch_slerp_into(a, b, out, split, W)),
            ("slerp_mutate", lambda: torch_slerp_mutate_into(a, b, out, split, W, SIGMA)),
        ):
            timing = bench(fn)
            torch_ms[op] = timing[0]
            emit(op, "best torch", "torch", timing)

        for backend in kernel_backends(device):
            ours = {
                "lerp_split": lambda: mk.split_interpolate_(a, b, split, W, method="lerp", backend=backend),
                "slerp_split": lambda: mk.split_interpolate(a, b, split, W, out=out, backend=backend),
                "slerp_mutate": lambda: mk.split_interpolate(
                    a, b, split, W, out=out, noise_std=SIGMA, seed=1, backend=backend
                ),
            }
            for op, fn in ours.items():
                emit(op, "m2n2_kernels", backend, bench(fn), torch_ms=torch_ms[op])
        del a, b, out
    rows.close()


def main():
    p = parser(__doc__, dtypes="float32,bfloat16")
    p.add_argument("--mib", type=int, default=None, help="size of each buffer in MiB (default 1024, 16 with --quick)")
    args = p.parse_args()
    print(f"# build_info: {mk.build_info()}", file=sys.stderr)
    run(args)


if __name__ == "__main__":
    main()
