"""Dispatcher-level glue for torch.ops.m2n2 (schemas live in csrc/ops.cpp).

- fake (meta) kernels, so every op traces under torch.compile and FakeTensorMode;
- where this build has no CUDA C++ kernels, the Triton kernels are registered as
  the ops' CUDA implementation, so torch.ops.m2n2.* works on any GPU; each first
  runs the op family's checks of the canonical arguments (the `check_op_*`
  functions of crossover.py, niches.py, scores.py, task_vectors.py), as the C++
  kernels do theirs.
The user-facing API is in crossover.py, niches.py and scores.py.
"""
import torch

from . import _backend, crossover, niches, pcb, scores, task_vectors

# ---- split-point crossover (m2n2_kernels/crossover.py) ----


@torch.library.register_fake("m2n2::split_interpolate_out")
def _split_interpolate_out_fake(a, b, out, split, w, method, omega, noise_std, seed, stream, index_offset, sums=None,
                                index_offsets=None):
    return None


@torch.library.register_fake("m2n2::split_interpolate_")
def _split_interpolate_inplace_fake(self, other, split, w, method, omega, noise_std, seed, stream, index_offset,
                                    self_is_a, sums=None, index_offsets=None):
    return None


@torch.library.register_fake("m2n2::interp_sums")
def _interp_sums_fake(a, b, split, index_offset, index_offsets=None):
    return a[0].new_empty((2, 3), dtype=torch.float64)


@torch.library.register_fake("m2n2::crossover_batch_out")
def _crossover_batch_out_fake(archive, ia, ib, split, w, out, method, omega, noise_std, seed):
    return None


def triton_split_interpolate_out(a, b, out, split, w, method, omega, noise_std, seed, stream, index_offset, sums=None,
                                 index_offsets=None):
    _triton_split_interpolate(list(a), list(b), list(out), "none", split, w, method, omega, noise_std, seed, stream,
                              index_offset, sums, index_offsets)


def triton_split_interpolate_(self, other, split, w, method, omega, noise_std, seed, stream, index_offset, self_is_a,
                              sums=None, index_offsets=None):
    a, b = (self, other) if self_is_a else (other, self)
    _triton_split_interpolate(list(a), list(b), list(self), "a" if self_is_a else "b", split, w, method, omega,
                              noise_std, seed, stream, index_offset, sums, index_offsets)


def _triton_split_interpolate(a, b, out, role, split, w, method, omega, noise_std, seed, stream, index_offset, sums,
                              index_offsets):
    from .triton import crossover as tc

    n = crossover.check_op_lists(a, b, out)
    crossover.check_op_aliasing(a, b, out, role)
    crossover.check_op_scalars(n, split, w, method, omega, noise_std, 0, index_offset, piece=sums is not None,
                               numels=[t.numel() for t in a], index_offsets=index_offsets)
    crossover.check_op_sums(sums, a[0].device)
    tc.split_interpolate_out(a, b, out, split, w, method, omega, noise_std, seed, stream, index_offset, sums,
                             index_offsets)


def triton_interp_sums(a, b, split, index_offset, index_offsets=None):
    from .triton import crossover as tc

    a, b = list(a), list(b)
    n = crossover.check_op_lists(a, b)
    crossover.check_op_offsets([t.numel() for t in a], index_offset, index_offsets)
    crossover.check_op_split(n, split, index_offset, piece=True)
    return tc.interp_sums(a, b, split, index_offset, index_offsets)


def triton_crossover_batch_out(archive, ia, ib, split, w, out, method, omega, noise_std, seed):
    from .triton import crossover as tc

    crossover.check_op_batch(archive, ia, ib, split, w, out, method, omega)
    tc.crossover_batch_out(archive, ia, ib, split, w, out, method, omega, noise_std, seed)


# ---- per-sample score gathering (m2n2_kernels/scores.py) ----


@torch.library.register_fake("m2n2::sample_scores_out")
def _sample_scores_out_fake(logits, target, mask, ignore_index, kind, reduce, out, out_index):
    return None


def triton_sample_scores_out(logits, target, mask, ignore_index, kind, reduce, out, out_index):
    from .triton import scores as ts

    scores.check_op_args(logits, target, mask, ignore_index, kind, reduce, out, out_index)
    ts.sample_scores_out(logits, target, mask, ignore_index, kind, reduce, out, out_index)


# ---- task-vector merges (m2n2_kernels/task_vectors.py) ----


@torch.library.register_fake("m2n2::task_merge_out")
def _task_merge_out_fake(base, models, out, weights, density, gamma, sparsify, consensus, rescale, normalize, lam,
                         scope, seed):
    return None


def triton_task_merge_out(base, models, out, weights, density, gamma, sparsify, consensus, rescale, normalize, lam,
                          scope, seed):
    from .triton import task_merge as ttm

    base, models, out = list(base), list(models), list(out)
    task_vectors.check_op_canonical(base, models, out, weights, density, gamma, sparsify, consensus, rescale, normalize,
                                    lam, scope, seed)
    ttm.task_merge_out(base, models, out, weights, density, gamma, sparsify, consensus, rescale, normalize, lam, scope,
                       seed)


@torch.library.register_fake("m2n2::della_merge_out")
def _della_merge_out_fake(base, models, out, weights, density, epsilon, consensus, rescale, normalize, lam, scope,
                          seed):
    return None


def triton_della_merge_out(base, models, out, weights, density, epsilon, consensus, rescale, normalize, lam, scope,
                           seed):
    """The op's CUDA implementation, whether or not CUDA C++ was compiled (della has
    no CUDA C++ kernel): the Triton kernels, for the tensors they take."""
    from .triton import della as tdella

    base, models, out = list(base), list(models), list(out)
    task_vectors.check_op_della_canonical(base, models, out, weights, density, epsilon, consensus, rescale, normalize,
                                          lam, scope, seed)
    if not tdella.supports(base):
        raise NotImplementedError(f"della_merge_out on CUDA takes rows of at most {tdella.MAX_FIBER} elements and no "
                                  "float64 tensors (m2n2_kernels.della_merge runs the reference for the others)")
    tdella.della_merge_out(base, models, out, weights, density, epsilon, consensus, rescale, normalize, lam, scope,
                           seed)


# ---- PCB merging (m2n2_kernels/pcb.py) ----


@torch.library.register_fake("m2n2::pcb_merge_out")
def _pcb_merge_out_fake(base, models, out, ratio, lam, scope, clamp):
    return None


def triton_pcb_merge_out(base, models, out, ratio, lam, scope, clamp):
    from .triton import pcb as tpcb

    base, models, out = list(base), list(models), list(out)
    pcb.check_op_canonical(base, models, out, ratio, lam, scope, clamp)
    tpcb.pcb_merge_out(base, models, out, ratio, lam, scope, clamp)


# ---- niche statistics (m2n2_kernels/niches.py) ----


@torch.library.register_fake("m2n2::niche_stats_out")
def _niche_stats_out_fake(S, child, capacity, alpha, eps, parent, attraction_mode, z, fitness, attraction):
    return None


def triton_niche_stats_out(S, child, capacity, alpha, eps, parent, attraction_mode, z, fitness, attraction):
    from .triton import niches as tn

    niches.check_op_args(S, child, capacity, alpha, eps, parent, attraction_mode, z, fitness, attraction)
    tn.niche_stats_out(S, child, capacity, alpha, eps, parent, attraction_mode, z, fitness, attraction)


_TRITON_IMPLS = {
    "split_interpolate_out": triton_split_interpolate_out,
    "split_interpolate_": triton_split_interpolate_,
    "crossover_batch_out": triton_crossover_batch_out,
    "interp_sums": triton_interp_sums,
    "sample_scores_out": triton_sample_scores_out,
    "niche_stats_out": triton_niche_stats_out,
    "task_merge_out": triton_task_merge_out,
    "pcb_merge_out": triton_pcb_merge_out,
}


def register_triton_kernels():
    """The Triton kernels as the ops' CUDA implementation (used where CUDA C++ was not
    compiled; tests call the wrappers on CPU tensors under the interpreter)."""
    # Imported here so that a triton too old for any of them fails here.
    from .triton import crossover as _tc, niches as _tn, pcb as _tpcb, scores as _ts, task_merge as _ttm  # noqa: F401

    for op, impl in _TRITON_IMPLS.items():
        torch.library.impl(f"m2n2::{op}", "CUDA")(impl)


if not _backend.cuda_compiled() and _backend.triton_importable():
    try:
        register_triton_kernels()
    except ImportError:  # the Triton kernels need a newer triton than the one installed
        pass
if _backend.triton_importable():
    torch.library.impl("m2n2::della_merge_out", "CUDA")(triton_della_merge_out)
