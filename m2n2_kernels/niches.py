"""Niche statistics of an archive score matrix: the Python API (checks, backend
choice, dispatch). Semantics: docs/semantics.md, "Niche statistics", and reference.py."""
from typing import NamedTuple, Optional

import torch

from . import _backend, _checks, reference

SCORE_DTYPES = (torch.bool, torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64)
MODES = ("none", "row", "matrix")


class NicheStats(NamedTuple):
    """What niche_stats returns: z [D] (column sums of S), fitness [N], and the
    attraction row A[parent, :] [N] or matrix A [N, N]."""

    z: torch.Tensor
    fitness: torch.Tensor
    attraction: Optional[torch.Tensor]


def _check_scores(S):
    if not isinstance(S, torch.Tensor):
        raise TypeError(f"S must be a torch.Tensor, got {type(S).__name__}")
    if S.dtype not in SCORE_DTYPES:
        raise TypeError(f"S must be bool, uint8, float16, bfloat16, float32 or float64, got {S.dtype}")
    if S.dim() != 2:
        raise ValueError(f"S must be 2-D [N models, D datapoints], got shape {tuple(S.shape)}")
    if S.dtype == torch.uint8 and S.numel() > 0 and not torch.compiler.is_compiling():
        if int(S.max()) > 1:  # a reduction: no N x D temporary
            i, j = (int(k) for k in (S > 1).nonzero()[0])
            raise ValueError(f"S[{i}, {j}] = {int(S[i, j])}: uint8 scores must be 0 or 1 (use a float S otherwise)")


def _check_capacity(capacity, S):
    if capacity is None:
        return None
    if not isinstance(capacity, torch.Tensor):
        raise TypeError(f"capacity must be a torch.Tensor or None, got {type(capacity).__name__}")
    if capacity.dtype == torch.bool or capacity.dtype.is_complex:
        raise TypeError(f"capacity must hold real numbers, got {capacity.dtype}")
    if capacity.shape != (S.shape[1],):
        raise ValueError(f"capacity must have shape ({S.shape[1]},) (one value per column of S), got {tuple(capacity.shape)}")
    if capacity.device != S.device:
        raise ValueError(f"capacity must be on {S.device} (the device of S), got {capacity.device}")
    capacity = capacity.to(torch.float64).contiguous()
    if capacity.numel() > 0 and not torch.compiler.is_compiling():
        bad = ~torch.isfinite(capacity) | (capacity < 0)
        if bool(bad.any()):
            j = int(bad.nonzero()[0, 0])
            raise ValueError(f"capacity[{j}] = {float(capacity[j])}: capacities must be finite and >= 0")
    return capacity


def _check_child(child, S):
    if not isinstance(child, torch.Tensor):
        raise TypeError(f"child must be a torch.Tensor, got {type(child).__name__}")
    if child.dtype != S.dtype:
        raise TypeError(f"child must be {S.dtype} (the dtype of S), got {child.dtype}")
    if child.shape != (S.shape[1],):
        raise ValueError(f"child must have shape ({S.shape[1]},) (one score per column of S), got {tuple(child.shape)}")
    if child.device != S.device:
        raise ValueError(f"child must be on {S.device} (the device of S), got {child.device}")
    if child.dtype == torch.uint8 and child.numel() > 0 and not torch.compiler.is_compiling():
        if int(child.max()) > 1:
            j = int((child > 1).nonzero()[0, 0])
            raise ValueError(f"child[{j}] = {int(child[j])}: uint8 scores must be 0 or 1")
    return child.contiguous()


def _check_parent(parent, rows):
    parent = _checks.as_int(parent, "parent")
    if not 0 <= parent < rows:
        raise IndexError(f"parent must lie in [0, {rows}) (a row of S), got {parent}")
    return parent


def raise_if_non_finite(S, child, z):
    """A NaN or inf score makes its column's z non-finite: find the first such column,
    then the score itself, and raise (the message of csrc/niches_args.h)."""
    bad = ~torch.isfinite(z)
    if not bool(bad.any()):
        return
    j = int(bad.nonzero()[0, 0])
    column = S[:, j]
    rows = (~torch.isfinite(column)).nonzero()
    if rows.numel() > 0:
        i = int(rows[0, 0])
        raise ValueError(f"S[{i}, {j}] = {float(column[i])}: scores must be finite")
    raise ValueError(f"child[{j}] = {float(child[j])}: scores must be finite")


def _canonical(S):
    """S with contiguous rows (a row-major view is used as is; anything else is copied)."""
    if S.shape[1] > 1 and S.stride(1) != 1:
        S = S.contiguous()
    return S


def _run(S, *, alpha, capacity, eps, parent, mode, child, backend):
    """The op in canonical form on the chosen backend: (z, fitness, attraction)."""
    _check_scores(S)
    alpha = _checks.as_finite_float(alpha, "alpha")
    eps = _checks.as_finite_float(eps, "eps", min_value=0.0)
    capacity = _check_capacity(capacity, S)
    rows, cols = S.shape
    if mode == "row":
        parent = _check_parent(parent, rows)
    else:
        parent = -1
    if mode == "matrix" and rows == 0:
        raise ValueError("S has no rows (N = 0): there is no attraction matrix to compute")
    if child is not None:
        child = _check_child(child, S)
    S = _canonical(S)
    out_dtype = reference.niche_compute_dtype(S.dtype)
    fit_rows = rows + (child is not None)
    att_shape = {"none": (0,), "row": (rows,), "matrix": (rows, rows)}[mode]

    name = _backend.choose(S.device, backend)
    if name == "triton" and S.device.type == "cuda" and not _backend.cuda_compiled():
        name = "cpp"  # the op's CUDA kernel is the Triton one (ops.py): opaque to torch.compile
    if name == "torch":
        z, fit, att = reference.niche_stats(
            S, alpha=alpha, capacity=capacity, eps=eps, parent=parent, mode=mode, child=child
        )
        if not torch.compiler.is_compiling():
            raise_if_non_finite(S, child, z)
        return z, fit, (torch.empty(0, dtype=out_dtype, device=S.device) if att is None else att)

    z = torch.empty(cols, dtype=out_dtype, device=S.device)
    fit = torch.empty(fit_rows, dtype=out_dtype, device=S.device)
    att = torch.empty(att_shape, dtype=out_dtype, device=S.device)
    if name == "triton":
        from .triton import niches as triton_niches

        triton_niches.niche_stats_out(S, child, capacity, alpha, eps, parent, mode, z, fit, att)
    else:
        torch.ops.m2n2.niche_stats_out(S, child, capacity, alpha, eps, parent, mode, z, fit, att)
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
