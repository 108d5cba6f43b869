"""Parent selection: competition for the first parent, attraction for the second.

The rule (docs/semantics.md, "Parent selection"):
- the first parent is drawn with probability fitness_i / sum(fitness);
- the second with probability A[first, b] / sum_b A[first, b], the attraction of
  every model to the first parent's failures; when that row sums to 0 (no model
  covers what the first parent misses), or attraction is off, the second parent is
  drawn from the fitness distribution again, independently of the first;
- when every fitness is 0 (nothing in the archive solves anything yet), parents
  are drawn uniformly from the filled rows (from all rows when that is not known).

A draw is an inverse-CDF lookup of one uniform number u in [0, 1): the first index
whose running sum of weights (in float64, in index order) exceeds u times the
total. The same numbers therefore give the same parents whether the lookup runs
on the host (`inverse_cdf`, the engine's CPU path) or on the device without a host
sync (`inverse_cdf_tensor`, the engine's CUDA path and `select_parents_batch`).
"""
import bisect
import itertools
from typing import Optional, Tuple

import torch

import m2n2_kernels as mk


def inverse_cdf(weights, u):
    """Index drawn by uniform u in [0, 1) from non-negative weights (a list with a
    positive sum): the first i with cumsum(weights)[i] > u * sum(weights)."""
    cum = list(itertools.accumulate(weights))
    i = bisect.bisect_right(cum, u * cum[-1])
    if i == len(cum):  # u * total rounded up to the total: the last positive weight
        i = max(j for j, v in enumerate(weights) if v > 0)
    return i


def inverse_cdf_tensor(weights, u):
    """`inverse_cdf` for every row of weights [..., N] (float64) and u [...], on the
    weights' device, without a host sync; int64 [...]."""
    cum = weights.cumsum(-1)
    idx = (cum <= (u * cum[..., -1]).unsqueeze(-1)).sum(-1)
    n = weights.shape[-1]
    last = (n - 1) - (weights > 0).flip(-1).to(torch.int8).argmax(-1)
    return torch.minimum(idx, last)


def fitness_weights(fit, filled=None):
    """float64 weights of the first draw: fitness, or uniform over the filled rows
    when every fitness is 0 (a masked add, no host sync)."""
    fit = fit.to(torch.float64)
    fallback = torch.ones_like(fit) if filled is None else filled.to(torch.float64)
    return fit + (fit.sum() == 0).to(torch.float64) * fallback


def draw_parents_tensor(fit_w, A, u):
    """(first [K], second [K]) from fitness weights [N] (float64), the attraction
    matrix A [N, N] (None: attraction off) and uniforms u [K, 2]."""
    first = inverse_cdf_tensor(fit_w.expand(u.shape[0], -1), u[:, 0])
    if A is None:
        rows = fit_w.expand(u.shape[0], -1)
    else:
        rows = A.index_select(0, first).to(torch.float64)
        rows = torch.where(rows.sum(1, keepdim=True) == 0, fit_w.unsqueeze(0), rows)
    return first, inverse_cdf_tensor(rows, u[:, 1])


def _check_S(S):
    if not isinstance(S, torch.Tensor):
        raise TypeError(f"S must be a torch.Tensor, got {type(S).__name__}")
    if S.dim() != 2:
        raise ValueError(f"S must be 2-D [N models, D datapoints], got shape {tuple(S.shape)}")
    if S.shape[0] < 1:
        raise ValueError("S has no rows: there is no model to select")


def _check_generator(generator, device):
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator.device.type != device.type:
        raise ValueError(f"generator must be on {device.type} (the device of S), got {generator.device}")


def select_parents_batch(S, k, *, alpha=1.0, attraction=True, generator=None, filled=None, backend=None):
    """K parent pairs drawn from the score matrix S [N, D] (bool right/wrong scores,
    or floats in [0, 1]), as int64 tensors (first [K], second [K]) on S's device.

    The K pairs are independent draws from the same S, made without a host sync
    (the attraction rows come from the whole N x N matrix). `filled` (bool [N])
    marks the rows holding a model, for the all-zero-fitness fallback."""
    _check_S(S)
    _check_generator(generator, S.device)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if attraction:
        stats = mk.niche_stats(S, alpha=alpha, backend=backend)
        fit, A = stats.fitness, stats.attraction
    else:
        fit, A = mk.fitness(S, alpha=alpha, backend=backend), None
    u = torch.rand(k, 2, dtype=torch.float64, generator=generator, device=S.device)
    return draw_parents_tensor(fitness_weights(fit, filled), A, u)


def select_parents(
    S, *, alpha: float = 1.0, attraction: bool = True, generator: Optional[torch.Generator] = None
) -> Tuple[int, int]:
    """One (first, second) parent pair drawn from the archive's score matrix S [N, D]
    by the M2N2 rule: the first by competition fitness, the second by attraction to
    the first (docs/semantics.md)."""
    first, second = select_parents_batch(S, 1, alpha=alpha, attraction=attraction, generator=generator)
    return int(first[0]), int(second[0])
