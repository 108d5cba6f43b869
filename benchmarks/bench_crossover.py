"""Split-point crossover: our kernels vs the best pure-torch code vs torch's lerp_.

One run, same buffers, median of --reps repetitions. For every dtype and every
backend present it times:
  ceiling       torch's own lerp (in place, and into out): the memory-bandwidth bar
  lerp_split    in place: ours vs two lerp_ on the two views of the split
  slerp_split   into out: ours vs one dot, two norms and two scaled adds per side
  slerp_mutate  slerp_split + N(0, 0.01^2) noise: ours (fused) vs + randn_like, add_
GB/s counts the op's minimal traffic (read a and b, write the child) for every row,
so rows compare directly with the ceiling. extra_mib is the peak memory the call
needs beyond its inputs and outputs.

    python benchmarks/bench_crossover.py                   # 1 GiB per buffer
    python benchmarks/bench_crossover.py --mib 64 --csv out.csv
"""
import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import CsvOut, kernel_backends, peak_extra_bytes, time_ms  # noqa: E402

import m2n2_kernels as mk  # noqa: E402

FIELDS = [
    "op", "impl", "backend", "device", "dtype", "numel", "ms", "gbps",
    "speedup_vs_torch", "fraction_of_lerp_ceiling", "extra_mib",
]
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
    out_csv = CsvOut(FIELDS, args.csv)
    torch.manual_seed(0)
    for dtype in args.dtypes:
        elem = torch.empty((), dtype=dtype).element_size()
        n = args.mib * 2**20 // elem
        split = min(n, n // 2 + 3)  # not a multiple of any vector width
        a = torch.randn(n, device=device).to(dtype)
        b = torch.randn(n, device=device).to(dtype)
        out = torch.empty_like(a)
        traffic = 3 * n * elem

        def bench(fn):
            ms, _ = time_ms(fn, device, reps=args.reps)
            return ms, peak_extra_bytes(fn, device) / 2**20

        ceiling_ms, ceiling_mem = bench(lambda: a.lerp_(b, W))
        ceiling_out_ms, _ = bench(lambda: torch.lerp(a, b, W, out=out))

        def emit(op, impl, backend, ms, mem, torch_ms=None, ceiling=ceiling_ms):
            out_csv.row(
                op=op, impl=impl, backend=backend, device=device.type, dtype=str(dtype).replace("torch.", ""),
                numel=n, ms=f"{ms:.2f}", gbps=f"{traffic / ms / 1e6:.1f}",
                speedup_vs_torch=f"{torch_ms / ms:.2f}" if torch_ms else "",
                fraction_of_lerp_ceiling=f"{ceiling / ms:.2f}", extra_mib=f"{mem:.1f}",
            )

        emit("ceiling", "torch lerp_ (in place)", "torch", ceiling_ms, ceiling_mem)
        emit("ceiling", "torch.lerp(out=)", "torch", ceiling_out_ms, 0.0, ceiling=ceiling_out_ms)

        torch_ms = {}
        for op, fn in (
            ("lerp_split", lambda: torch_lerp_split_(a, b, split, W)),
            ("slerp_split", lambda: torch_slerp_into(a, b, out, split, W)),
            ("slerp_mutate", lambda: torch_slerp_mutate_into(a, b, out, split, W, SIGMA)),
        ):
            ms, mem = bench(fn)
            torch_ms[op] = ms
            ceiling = ceiling_ms if op == "lerp_split" else ceiling_out_ms
            emit(op, "best torch", "torch", ms, mem, ceiling=ceiling)

        for backend in kernel_backends(device):
            ours = {
                "lerp_split": lambda: mk.split_interpolate_(a, b, split, W, method="lerp", backend=backend),
                "slerp_split": lambda: mk.split_interpolate(a, b, split, W, out=out, backend=backend),
                "slerp_mutate": lambda: mk.split_interpolate(
                    a, b, split, W, out=out, noise_std=SIGMA, seed=1, backend=backend
                ),
            }
            for op, fn in ours.items():
                ms, mem = bench(fn)
                ceiling = ceiling_ms if op == "lerp_split" else ceiling_out_ms
                emit(op, "m2n2_kernels", backend, ms, mem, torch_ms=torch_ms[op], ceiling=ceiling)
        del a, b, out
    out_csv.close()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--mib", type=int, default=1024, help="size of each buffer in MiB (default 1024)")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions; the median is reported")
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated, e.g. float32,bfloat16")
    p.add_argument("--csv", default=None, help="also write the CSV to this file")
    args = p.parse_args()
    args.dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    print(f"# build_info: {mk.build_info()}", file=sys.stderr)
    run(args)


if __name__ == "__main__":
    main()
