"""Timing, memory, flags and the CSV schema shared by the benchmark scripts.

Speed is judged as ratios measured in one run (docs/benchmarking.md): every script times its
op and the baselines back to back on the same buffers, reports the median of
several repetitions, and writes one tidy CSV row per (op, impl, backend, case) with the
columns of KERNEL_FIELDS (bench_engine.py, which times whole evolution steps, has its
own). Every script takes the flags of `parser()`: --device, --reps, --csv, --quick
(a smoke run: small sizes), and --dtypes where it has a choice of dtypes.
"""
import argparse
import csv
import ctypes
import statistics
import sys
import time

import torch

from m2n2_kernels import _backend


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _rss_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _return_free_memory():
    """Hands the C heap's free pages back to the OS (glibc's malloc_trim), so that a
    call's temporary buffers fault in new pages and count in the resident set instead
    of reusing pages an earlier call freed (which read as no extra memory at all)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_extra_bytes(fn, device):
    """Memory the call needs beyond what is allocated before it: on CUDA from the
    caching allocator's peak, on CPU from the process's peak resident set (reset
    through /proc/self/clear_refs, so earlier peaks do not count), after the heap's
    free pages went back to the OS."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        result = fn()
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - base
        del result
        return max(0, extra)
    _return_free_memory()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        return float("nan")
    base = _rss_bytes("VmRSS")
    result = fn()
    extra = _rss_bytes("VmHWM") - base
    del result
    return max(0, extra)


def time_ms(fn, device, reps=7, warmup=1):
    """Median and min wall time of fn() in milliseconds."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times)


# One row per (op, impl, backend, case): `shape` is the case (e.g. "268435456" elements,
# "20x1437" for N x D, "8x512x32000" for B x T x V); `ms` the median of `reps` timed
# calls, `ms_min` the fastest; `gbps` the minimal bytes the op must move / ms;
# `speedup_vs_torch` the best torch code's ms / ours; `ceiling` names the bandwidth
# yardstick of the row (torch's lerp_, S.sum(0), argmax) and `time_vs_ceiling` is
# ms / its ms (1.0 = as fast as merely streaming the data); `extra_mib` the peak
# memory a call needs beyond what was allocated before it.
KERNEL_FIELDS = [
    "op", "impl", "backend", "device", "dtype", "shape", "ms", "ms_min", "reps", "gbps",
    "speedup_vs_torch", "ceiling", "time_vs_ceiling", "extra_mib",
]


def parser(description, *, dtypes=None):
    """The flags every benchmark script shares (`dtypes`: the default of --dtypes, a
    comma-separated list, for scripts that take one)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions; the median is reported (default 5)")
    p.add_argument("--csv", default=None, help="also write the CSV to this file")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    if dtypes is not None:
        p.add_argument("--dtypes", default=dtypes, type=lambda v: [getattr(torch, d) for d in v.split(",")],
                       help=f"comma-separated (default {dtypes})")
    return p


def dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


def _fixed(x):
    """Two decimals, or three significant digits below 0.1 (a slow baseline's rate
    must not print as 0.00)."""
    return f"{x:.2f}" if abs(x) >= 0.1 else f"{x:.3g}"


class KernelRows:
    """CSV rows of KERNEL_FIELDS, formatted alike in every script."""

    def __init__(self, path=None):
        self.out = CsvOut(KERNEL_FIELDS, path)

    def row(self, *, op, impl, backend, device, dtype, shape, ms, reps, extra_bytes, ms_min=None, nbytes=None,
            torch_ms=None, ceiling=None, ceiling_ms=None):
        self.out.row(
            op=op, impl=impl, backend=backend, device=torch.device(device).type, dtype=dtype_name(dtype),
            shape="x".join(str(int(s)) for s in shape) if isinstance(shape, (tuple, list)) else str(shape),
            ms=f"{ms:.3f}", ms_min="" if ms_min is None else f"{ms_min:.3f}", reps=reps,
            gbps="" if nbytes is None else _fixed(nbytes / ms / 1e6),
            speedup_vs_torch="" if torch_ms is None else _fixed(torch_ms / ms),
            ceiling=ceiling or "", time_vs_ceiling="" if ceiling_ms is None else _fixed(ms / ceiling_ms),
            extra_mib=f"{extra_bytes / 2**20:.1f}",
        )

    def close(self):
        self.out.close()


class CsvOut:
    """Rows to stdout (and optionally a file) as CSV with a fixed header."""

    def __init__(self, fields, path=None):
        self.fields = fields
        self.files = [sys.stdout] + ([open(path, "w", newline="")] if path else [])
        self.writers = [csv.DictWriter(f, fieldnames=fields, extrasaction="raise") for f in self.files]
        for w in self.writers:
            w.writeheader()

    def row(self, **values):
        for w, f in zip(self.writers, self.files):
            w.writerow({k: values.get(k, "") for k in self.fields})
            f.flush()

    def close(self):
        for f in self.files[1:]:
            f.close()


def kernel_backends(device):
    """Our backends that run compiled on tensors of `device` (the Triton interpreter,
    which runs on CPU tensors, is far too slow to time)."""
    names = []
    if device.type == "cpu" or _backend.cuda_compiled():
        names.append("cpp")
    if device.type == "cuda" and _backend.triton_importable():
        names.append("triton")
    return names
