"""PCB merging: parameter competition balancing (Du et al. 2024), docs/semantics.md,
"PCB merging".

Each model's delta d_k = m_k - base is scored by how it stands within its own model
(intra-balancing: its clamped magnitude, normalised) and against the other models
(inter-balancing: tanh of d_k times the sum of the deltas); the lowest-scoring
fraction is dropped, the rest weighted by their normalised scores and averaged. One
op, a few streaming passes (clamp bounds, drop thresholds, then one fused pass that
writes); inputs as task_merge: tensors or lists of tensors.
"""
import torch

from . import _checks, reference, task_vectors
from .task_vectors import SCOPES


def check_op_pcb(base, models, ratio, lam, scope, clamp):
    """Every argument of pcb_merge but `out`, checked before anything is written;
    returns the canonical form (base_list, model_lists, is_list, ratio, lam, clamp)."""
    base_list, lists, is_list, _ = task_vectors._model_lists(base, models)
    ratio, lam, clamp = check_scalars(ratio, lam, scope, clamp)
    return base_list, lists, is_list, ratio, lam, clamp


def check_scalars(ratio, lam, scope, clamp):
    """ratio in (0, 1], lam finite, scope a choice, clamp in [0, 0.5), in the order and
    words of csrc/pcb_args.h."""
    ratio = _checks.as_finite_float(ratio, "ratio")
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must lie in (0, 1], got {ratio}")
    lam = _checks.as_finite_float(lam, "lam")
    _checks.choice(scope, "scope", SCOPES)
    clamp = _checks.as_finite_float(clamp, "clamp")
    if not 0.0 <= clamp < 0.5:
        raise ValueError(f"clamp must lie in [0, 0.5), got {clamp}")
    return ratio, lam, clamp


def check_op_canonical(base, models, out, ratio, lam, scope, clamp):
    """The op's own checks on its canonical arguments (models flat, model-major), in
    the order and words of csrc/pcb_args.h: what tests/test_op_contract.py holds the
    C++ kernel to. The models and tensors are checked as task_merge checks them (its
    canonical checks, run with settings that are always valid), then the numbers."""
    L = max(len(base), 1)
    K = len(models) // L
    task_vectors.check_op_canonical(base, models, out, [1.0] * K, [1.0] * K, [0.0] * K, "none", "none", "none",
                                    False, 1.0, "tensor", 0)
    check_scalars(ratio, lam, scope, clamp)


def pcb_merge(base, models, *, ratio, lam=1.0, scope="tensor", clamp=1e-4, out=None, backend=None):
    """base + lam * the PCB-merged task vector (docs/semantics.md, "PCB merging").

    `ratio`: the fraction of each model's scores kept, in (0, 1]; `scope`: "tensor"
    (each list position is a unit) or "global" (the whole list, as the authors'
    code); `clamp`: the fraction of magnitudes clamped at either end before they
    are normalised, in [0, 0.5) (the authors' 1e-4); `out`: None (new tensors), base
    itself (in place) or a fresh buffer like base.
    """
    base_list, lists, is_list, ratio, lam, clamp = check_op_pcb(base, models, ratio, lam, scope, clamp)
    out_list = task_vectors._out_list(out, base_list, lists, is_list)

    def triton_route():
        from .triton import pcb as triton_pcb

        return triton_pcb.pcb_merge_out

    result = task_vectors.run_routed(
        backend, base_list, lists, out_list, out is not None,
        lambda: reference.pcb_merge(base_list, lists, ratio=ratio, lam=lam, scope=scope, clamp=clamp),
        lambda: torch.ops.m2n2.pcb_merge_out, triton_route, (ratio, lam, scope, clamp))
    return result if is_list else result[0]
