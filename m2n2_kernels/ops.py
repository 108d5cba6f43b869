"""Dispatcher-level glue for torch.ops.m2n2 (schemas live in csrc/ops.cpp).

- fake (meta) kernels, so every op traces under torch.compile and FakeTensorMode;
- where this build has no CUDA C++ kernels, the Triton kernels are registered as
  the ops' CUDA implementation, so torch.ops.m2n2.* works on any GPU.
The user-facing API is in crossover.py (and the other op-family modules).
"""
import torch

from . import _backend


@torch.library.register_fake("m2n2::split_interpolate_out")
def _split_interpolate_out_fake(a, b, out, split, w, method, omega, noise_std, seed, stream, index_offset):
    return None


@torch.library.register_fake("m2n2::split_interpolate_")
def _split_interpolate_inplace_fake(self, other, split, w, method, omega, noise_std, seed, stream, index_offset, self_is_a):
    return None


@torch.library.register_fake("m2n2::crossover_batch_out")
def _crossover_batch_out_fake(archive, ia, ib, split, w, out, method, omega, noise_std, seed):
    return None


def _check_direct_crossover_call(a, b, out, split, method, omega, index_offset):
    """The checks the C++ kernels make (crossover_args.h), for direct torch.ops
    callers reaching the Triton kernels: nothing is launched on bad input."""
    from . import crossover

    n = crossover._check_parents(list(a), list(b))
    crossover._check_scalars(n, split, 0.0, method, omega, 0.0, 0, index_offset)
    for i, (o, x) in enumerate(zip(out, a)):
        if o.dtype != x.dtype or o.shape != x.shape or o.device != x.device or not o.is_contiguous():
            raise ValueError(f"out[{i}] must be a contiguous {x.dtype} tensor of shape {tuple(x.shape)} on {x.device}")
    if len(out) != len(a) or not all(t.is_contiguous() for t in list(a) + list(b)):
        raise ValueError("a, b and out must be lists of equal length of contiguous tensors")


def _register_triton_crossover():
    from .triton import crossover as tc

    def out_of_place(a, b, out, split, w, method, omega, noise_std, seed, stream, index_offset):
        _check_direct_crossover_call(a, b, out, split, method, omega, index_offset)
        tc.split_interpolate_out(list(a), list(b), list(out), split, w, method, omega, noise_std, seed, stream, index_offset)

    def inplace(self, other, split, w, method, omega, noise_std, seed, stream, index_offset, self_is_a):
        a, b = (self, other) if self_is_a else (other, self)
        out_of_place(a, b, self, split, w, method, omega, noise_std, seed, stream, index_offset)

    torch.library.impl("m2n2::split_interpolate_out", "CUDA")(out_of_place)

    torch.library.impl("m2n2::split_interpolate_", "CUDA")(inplace)
    torch.library.impl("m2n2::crossover_batch_out", "CUDA")(tc.crossover_batch_out)


# ---- per-sample score gathering (m2n2_kernels/scores.py) ----


@torch.library.register_fake("m2n2::sample_scores_out")
def _sample_scores_out_fake(logits, target, mask, ignore_index, kind, reduce, out, out_index):
    return None


def _register_triton_scores():
    from .triton import scores as ts

    torch.library.impl("m2n2::sample_scores_out", "CUDA")(ts.sample_scores_out)


# ---- niche statistics (m2n2_kernels/niches.py) ----


@torch.library.register_fake("m2n2::niche_stats_out")
def _niche_stats_out_fake(S, child, capacity, alpha, eps, parent, attraction_mode, z, fitness, attraction):
    return None


def _register_triton_niches():
    from .triton import niches as tn

    torch.library.impl("m2n2::niche_stats_out", "CUDA")(tn.niche_stats_out)


# Without CUDA C++ kernels, the Triton ones are the ops' CUDA implementation.
if not _backend.cuda_compiled() and _backend.triton_importable():
    for _register in (_register_triton_crossover, _register_triton_scores, _register_triton_niches):
        try:
            _register()
        except ImportError:  # the Triton kernels need a newer triton than the one installed
            pass
