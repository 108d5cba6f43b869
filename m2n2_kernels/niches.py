"""Niche statistics of an archive score matrix: the Python API (checks, backend
choice, dispatch). Semantics: docs/semantics.md, "Niche statistics", and reference.py."""
from typing import NamedTuple, Optional

import torch

from . import _backend, _checks, reference
from ._values import raise_if_bad_scores

SCORE_DTYPES = (torch.bool, torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64)
MODES = ("none", "row", "matrix")


class NicheStats(NamedTuple):
    """What niche_stats returns: z [D] (column sums of S), fitness [N], and the
    attraction row A[parent, :] [N] or matrix A [N, N]."""

    z: torch.Tensor
    fitness: torch.Tensor
    attraction: Optional[torch.Tensor]


# ---------------------------------------------------------------------------
# The op's canonical arguments (csrc/niches_args.h checks the same, in the same words).
# ---------------------------------------------------------------------------


def check_op_args(S, child, capacity, alpha, eps, parent, attraction_mode, z, fitness, attraction):
    """niche_stats_out's arguments: S 2-D with contiguous, non-overlapping rows; child
    (mode "none" only) and capacity (float64) contiguous [D]; outputs of the compute
    dtype and their shapes. Values (finiteness, 0/1 of uint8) are not read here."""
    _checks.check_tensor(S, "S", SCORE_DTYPES)
    if S.dim() != 2:
        raise ValueError(f"S must be 2-D [N models, D datapoints], got shape {_checks.shape_str(S.shape)}")
    rows, cols = S.shape
    if not (S.stride(1) == 1 or cols <= 1):
        raise ValueError("S's rows must be contiguous (stride 1 along D)")
    if rows > 1 and S.stride(0) < cols:
        raise ValueError("S's rows must not overlap")
    _checks.as_finite_float(alpha, "alpha")
    _checks.as_finite_float(eps, "eps", min_value=0.0)
    _checks.choice(attraction_mode, "attraction_mode", MODES)
    if attraction_mode == "row":
        _checks.check_range(_checks.as_int(parent, "parent"), "parent", 0, rows, " (a row of S)")
    if child is not None:
        if attraction_mode != "none":
            raise ValueError("child is only counted with attraction_mode 'none'")
        _checks.check_like(child, "child", dtype=S.dtype, shape=(cols,), device=S.device, contiguous=True,
                           of=" (as a row of S)")
    if capacity is not None:
        _checks.check_like(capacity, "capacity", dtype=torch.float64, shape=(cols,), device=S.device,
                           contiguous=True, of=" (one per column of S)")
    out_dtype = reference.niche_compute_dtype(S.dtype)
    att_shape = {"none": (0,), "row": (rows,), "matrix": (rows, rows)}[attraction_mode]
    for t, name, shape in ((z, "z", (cols,)), (fitness, "fitness", (rows + (child is not None),)),
                           (attraction, "attraction", att_shape)):
        _checks.check_like(t, name, dtype=out_dtype, shape=shape, device=S.device, contiguous=True)
    _checks.check_disjoint(((z, "z"), (fitness, "fitness"), (attraction, "attraction")),
                           ((S, "S"), (child, "child"), (capacity, "capacity")))
    return rows, cols


# ---------------------------------------------------------------------------
# The public API: canonical form, then the op.
# ---------------------------------------------------------------------------


def _check_uint8_scores(t, name):
    if t.dtype == torch.uint8 and t.numel() > 0 and not torch.compiler.is_compiling():
        if int(t.max()) > 1:  # a reduction: no N x D temporary
            pos = tuple(int(k) for k in (t > 1).nonzero()[0])
            raise ValueError(
                f"{name}{list(pos)} = {int(t[pos])}: uint8 scores must be 0 or 1 (use a float S otherwise)"
            )


def _canonical_capacity(capacity, S):
    if capacity is None:
        return None
    _checks.check_tensor(capacity, "capacity")
    if capacity.dtype == torch.bool or capacity.dtype.is_complex:
        raise TypeError(f"capacity must hold real numbers, got {capacity.dtype}")
    _checks.check_like(capacity, "capacity", shape=(S.shape[1],), device=S.device, of=" (one per column of S)")
    capacity = capacity.to(torch.float64).contiguous()
    if capacity.numel() > 0 and not torch.compiler.is_compiling():
        bad = ~torch.isfinite(capacity) | (capacity < 0)
        if bool(bad.any()):
            j = int(bad.nonzero()[0, 0])
            raise ValueError(f"capacity[{j}] = {float(capacity[j])}: capacities must be finite and >= 0")
    return capacity


def _canonical(S):
    """S with contiguous rows that do not overlap (a row-major view is used as is;
    anything else, a transposed or expanded S, is copied)."""
    rows, cols = S.shape
    if S.numel() == 0:
        return S.new_empty(S.shape)  # contiguous strides (.contiguous() keeps an empty's)
    if (cols > 1 and S.stride(1) != 1) or (rows > 1 and S.stride(0) < cols):
        S = S.contiguous()
    return S


def _run(S, *, alpha, capacity, eps, parent, mode, child, backend):
    """The op in canonical form on the chosen backend: (z, fitness, attraction)."""
    _checks.check_tensor(S, "S", SCORE_DTYPES)
    if S.dim() != 2:
        raise ValueError(f"S must be 2-D [N models, D datapoints], got shape {_checks.shape_str(S.shape)}")
    rows, cols = S.shape
    if mode == "matrix" and rows == 0:
        raise ValueError("S has no rows (N = 0): there is no attraction matrix to compute")
    _check_uint8_scores(S, "S")
    capacity = _canonical_capacity(capacity, S)
    if child is not None:
        _checks.check_like(child, "child", dtype=S.dtype, shape=(cols,), device=S.device, of=" (as a row of S)")
        _check_uint8_scores(child, "child")
        child = child.contiguous()
    S = _canonical(S)
    out_dtype = reference.niche_compute_dtype(S.dtype)
    z = torch.empty(cols, dtype=out_dtype, device=S.device)
    fit = torch.empty(rows + (child is not None), dtype=out_dtype, device=S.device)
    att = torch.empty({"none": (0,), "row": (rows,), "matrix": (rows, rows)}[mode], dtype=out_dtype, device=S.device)
    alpha = _checks.as_finite_float(alpha, "alpha")
    eps = _checks.as_finite_float(eps, "eps", min_value=0.0)
    parent = _checks.check_range(_checks.as_int(parent, "parent"), "parent", 0, rows, " (a row of S)") if mode == "row" else -1
    route = _backend.route(S.device, backend)
    if route != "op":  # the C++ kernels check the same, in the same words (csrc/niches_args.h)
        check_op_args(S, child, capacity, alpha, eps, parent, mode, z, fit, att)
    if route == "torch":
        rz, rfit, ratt = reference.niche_stats(
            S, alpha=alpha, capacity=capacity, eps=eps, parent=parent, mode=mode, child=child
        )
        if not torch.compiler.is_compiling():
            raise_if_bad_scores(S, child, rz, find_negative=True)
        return rz, rfit, att if ratt is None else ratt
    args = (S, child, capacity, alpha, eps, parent, mode, z, fit, att)
    if route == "triton":
        from .triton import niches as triton_niches

        triton_niches.niche_stats_out(*args)
    else:
        torch.ops.m2n2.niche_stats_out(*args)
    return z, fit, att


def fitness(S, *, alpha=1.0, capacity=None, eps=0.0, child=None, backend=None):
    """Competition fitness of every model: fitness_i = sum_j c_j S_ij / zhat_j.

    S [N, D]: bool or uint8 (0/1 right-or-wrong scores), float16, bfloat16, float32 or
    float64 (scores in [0, 1]); z_j = sum_k S_kj; zhat_j = (z_j if z_j != 0 else 1) **
    alpha + eps; capacity c [D] (default 1). alpha = 0 gives plain (capacity-weighted)
    accuracy sums, the GA baseline. Returns float32 [N] (float64 for float64 S).

    With `child` [D] (a score row of S's dtype), the fitness of the N + 1 rows with the
    child counted as row N (in z too), as replacement compares them: [N + 1]; its
    argmin is the row the child replaces (N: the child itself). S and child are
    never concatenated.
    """
    if child is None:
        return _run(S, alpha=alpha, capacity=capacity, eps=eps, parent=None, mode="none", child=None, backend=backend)[1]
    return _replacement_fitness(S, child, alpha=alpha, capacity=capacity, eps=eps, backend=backend)


def _replacement_fitness(S, child, *, alpha, capacity, eps, backend):
    if isinstance(S, torch.Tensor) and S.dim() == 2 and S.shape[0] == 0:
        raise ValueError("S has no rows (N = 0): there is no row for the child to replace")
    if child is None:
        raise TypeError("child must be a torch.Tensor, got NoneType")
    return _run(S, alpha=alpha, capacity=capacity, eps=eps, parent=None, mode="none", child=child, backend=backend)[1]


def attraction(S, *, alpha=1.0, capacity=None, eps=0.0, parent=None, backend=None):
    """Attraction A[a, b] = sum_j c_j / zhat_j * max(S_bj - S_aj, 0): how much model b
    covers where model a fails (row a = the first parent).

    Returns the matrix A [N, N], or with `parent` the row A[parent, :] [N] (the
    weights the engine samples the second parent from). float32 (float64 for
    float64 S). Arguments as for fitness().
    """
    mode = "matrix" if parent is None else "row"
    return _run(S, alpha=alpha, capacity=capacity, eps=eps, parent=parent, mode=mode, child=None, backend=backend)[2]


def niche_stats(S, *, alpha=1.0, capacity=None, eps=0.0, parent=None, backend=None):
    """z, fitness and attraction from a single read of S (the engine's hot loop):
    the attraction row A[parent, :] when `parent` is given, else the matrix A.
    Returns NicheStats(z, fitness, attraction)."""
    mode = "matrix" if parent is None else "row"
    z, fit, att = _run(
        S, alpha=alpha, capacity=capacity, eps=eps, parent=parent, mode=mode, child=None, backend=backend
    )
    return NicheStats(z, fit, att)


def replace_index(S, child, *, alpha=1.0, capacity=None, eps=0.0, backend=None):
    """The row of S a child with score row `child` [D] replaces: fitness is taken over
    the N + 1 rows with the child included (z counts the child too) and the lowest
    fitness is replaced, ties to the lowest index. Returns -1 when the child itself is
    the worst (nothing changes). S and child are never concatenated."""
    fit = _replacement_fitness(S, child, alpha=alpha, capacity=capacity, eps=eps, backend=backend)
    return reference.replacement_from_fitness(fit)
