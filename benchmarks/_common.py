"""Timing, memory and CSV helpers shared by the benchmark scripts.

Speed is judged as ratios measured in one run (docs/benchmarking.md): every script times its
op and the baselines back to back on the same buffers, reports the median of
several repetitions, and writes one tidy CSV row per (op, backend, case).
"""
import csv
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


def peak_extra_bytes(fn, device):
    """Memory the call needs beyond what is allocated before it: on CUDA from the
    caching allocator's peak, on CPU from the process's peak resident set (reset
    through /proc/self/clear_refs, so earlier peaks do not count)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        result = fn()
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - base
        del result
        return max(0, extra)
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
