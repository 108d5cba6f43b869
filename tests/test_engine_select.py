"""Parent selection (python/m2n2/select.py) against the formulas of docs/semantics.md,
computed here in float64 from S alone."""
import itertools
import math

import pytest
import torch

import m2n2
from m2n2.select import draw_parents_tensor, fitness_weights, inverse_cdf, inverse_cdf_tensor


def exact_pair_probabilities(S, alpha=1.0, attraction=True, filled=None):
    """P(first = a, second = b) by the rule, in float64."""
    S = S.to(torch.float64)
    z = S.sum(0)
    zhat = torch.where(z != 0, z, torch.ones_like(z)) ** alpha
    fit = (S / zhat).sum(1)
    if fit.sum() == 0:
        fit = torch.ones_like(fit) if filled is None else filled.to(torch.float64)
    p_first = fit / fit.sum()
    P = torch.zeros(S.shape[0], S.shape[0], dtype=torch.float64)
    for a in range(S.shape[0]):
        row = ((S - S[a]).clamp(min=0) / zhat).sum(1) if attraction else torch.zeros_like(fit)
        cond = row / row.sum() if row.sum() > 0 else p_first
        P[a] = p_first[a] * cond
    return P


def assert_matches(first, second, P, sigmas=5.0):
    m = first.numel()
    counts = torch.zeros_like(P)
    counts.index_put_((first, second), torch.ones(m, dtype=torch.float64), accumulate=True)
    expect = P * m
    tol = sigmas * torch.sqrt(P * (1 - P) * m) + 1.0
    bad = (counts - expect).abs() > tol
    assert not bad.any(), f"counts {counts[bad].tolist()} vs expected {expect[bad].tolist()}"
    assert counts[P == 0].sum() == 0, "a pair of probability 0 was drawn"


def score_matrix(kind, rows=5, cols=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "bool":
        S = torch.rand(rows, cols, generator=g) < 0.45
        S[-1] = False  # an empty row: never drawn
        return S
    S = torch.rand(rows, cols, generator=g, dtype=torch.float64).to(torch.float32)
    S[:, 0] = 0  # a column nobody solves (the z = 0 guard)
    return S


@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.0])
@pytest.mark.parametrize("attraction", [True, False])
def test_pair_distribution_matches_the_formulas(kind, alpha, attraction):
    S = score_matrix(kind)
    g = torch.Generator().manual_seed(123)
    first, second = m2n2.select_parents_batch(S, 60_000, alpha=alpha, attraction=attraction, generator=g)
    assert first.dtype == second.dtype == torch.int64 and first.shape == (60_000,)
    assert_matches(first, second, exact_pair_probabilities(S, alpha, attraction))


def test_zero_attraction_row_falls_back_to_fitness():
    # Row 0 is right wherever anyone is: nobody covers its failures, A[0, :] = 0.
    S = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], dtype=torch.bool)
    P = exact_pair_probabilities(S)
    fit = P.sum(1)
    torch.testing.assert_close(P[0] / P[0].sum(), fit)  # the formula's fallback: fitness again
    g = torch.Generator().manual_seed(1)
    first, second = m2n2.select_parents_batch(S, 60_000, generator=g)
    assert_matches(first, second, P)
    assert (second[first == 0] == 0).any(), "the fallback draws the first parent again too"


def test_all_zero_fitness_draws_uniformly_over_filled_rows():
    S = torch.zeros(4, 6, dtype=torch.bool)
    filled = torch.tensor([True, False, True, False])
    g = torch.Generator().manual_seed(2)
    first, second = m2n2.select_parents_batch(S, 20_000, generator=g, filled=filled)
    assert_matches(first, second, exact_pair_probabilities(S, filled=filled))


def test_select_parents_returns_one_pair_of_ints():
    S = score_matrix("bool")
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    pair = m2n2.select_parents(S, generator=g1)
    assert isinstance(pair[0], int) and isinstance(pair[1], int)
    assert pair == m2n2.select_parents(S, generator=g2), "the same generator state gives the same pair"


def test_host_and_device_lookups_agree():
    g = torch.Generator().manual_seed(3)
    for trial in range(200):
        w = torch.rand(7, generator=g, dtype=torch.float64)
        w[torch.rand(7, generator=g) < 0.4] = 0
        if w.sum() == 0:
            w[3] = 0.5
        u = torch.rand(16, generator=g, dtype=torch.float64)
        u[0], u[1] = 0.0, 1.0 - 2.0**-53  # the ends of [0, 1)
        host = [inverse_cdf(w.tolist(), float(x)) for x in u]
        dev = inverse_cdf_tensor(w.expand(16, -1), u).tolist()
        assert host == dev
        assert all(w[i] > 0 for i in host), "an index of weight 0 was drawn"


def test_inverse_cdf_rounding_at_the_top_picks_the_last_positive_weight():
    w = [0.1, 0.7, 0.0, 0.0]
    top = math.nextafter(1.0, 0.0)
    # u * total may round to total itself: the draw must still land on a positive weight.
    assert inverse_cdf(w, top) == 1
    assert inverse_cdf_tensor(torch.tensor([w], dtype=torch.float64), torch.tensor([top], dtype=torch.float64)).item() == 1


def test_draw_parents_tensor_uses_the_first_parents_rows():
    fit = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    A = torch.tensor([[0.0, 0.0, 5.0], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    u = torch.tensor([[0.1, 0.99], [0.5, 0.2], [0.9, 0.5]], dtype=torch.float64)
    first, second = draw_parents_tensor(fitness_weights(fit), A, u)
    assert first.tolist() == [0, 1, 2]
    assert second.tolist() == [2, 0, 1]  # row 2 is all zero: fitness again, u = 0.5 -> middle


@pytest.mark.parametrize(
    "args,kwargs,exc,match",
    [
        (([[1, 0]], 1), {}, TypeError, "S must be a torch.Tensor"),
        ((torch.ones(3, dtype=torch.bool), 1), {}, ValueError, "S must be 2-D"),
        ((torch.ones(0, 3, dtype=torch.bool), 1), {}, ValueError, "no rows"),
        ((torch.ones(2, 3, dtype=torch.bool), 0), {}, ValueError, "k must be a positive integer"),
        ((torch.ones(2, 3, dtype=torch.bool), 1), {"generator": 5}, TypeError, "generator must be"),
        ((torch.ones(2, 3, dtype=torch.bool), 1), {"alpha": float("nan")}, ValueError, "alpha must be finite"),
    ],
)
def test_bad_input(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        m2n2.select_parents_batch(*args, **kwargs)


def test_pairs_are_independent_draws_across_a_batch():
    # K pairs from one call are iid: the pair distribution of position 0 over many
    # calls with K = 8 matches the one-pair distribution.
    S = score_matrix("bool", seed=4)
    g = torch.Generator().manual_seed(5)
    firsts, seconds = [], []
    for _ in range(4000):
        f, s = m2n2.select_parents_batch(S, 8, generator=g)
        firsts.append(f)
        seconds.append(s)
    first, second = torch.stack(firsts), torch.stack(seconds)
    P = exact_pair_probabilities(S)
    for position in itertools.islice(range(8), 0, 8, 7):  # the first and the last of the batch
        assert_matches(first[:, position], second[:, position], P)
