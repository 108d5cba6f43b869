"""Task-vector merges (docs/semantics.md, "Task-vector merges: task arithmetic, TIES,
DARE, Model Breadcrumbs") against values worked out independently in the tests: plain fp64 maths and
loops written again from the docs, and small cases worked out by hand. reference.py
is used only for its Philox draws (dare_uniform24, itself checked here against
Random123's known answers), never as the oracle of a merge; except at the end,
where the C++ and Triton kernels are held to the reference bit for bit.

Triton runs in its interpreter on CPU tensors (conftest.py sets TRITON_INTERPRET=1),
which is slow: "triton" joins only the tests below that are cheap there
(BACKENDS); the others run on torch and cpp (CPU_BACKENDS), and the Triton section
at the end covers what they check with fewer, smaller calls.
"""
import math
import os
import mmap
import sys

import numpy as np
import pytest
import torch

from m2n2_kernels.reference import DARE_STREAM, dare_uniform24
from m2n2_kernels.task_vectors import breadcrumbs_merge, dare_merge, task_arithmetic, task_merge, ties_merge

from conftest import available_backends

TRITON = [b for b in available_backends("cpu") if b == "triton"]
CPU_BACKENDS = ["torch", "cpp"]  # tests too slow for the Triton interpreter
BACKENDS = CPU_BACKENDS + TRITON

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
# (elements, shape): the awkward sizes, and one 2-D tensor of 17 x 59 = 1003 elements.
SIZES = [(0, (0,)), (1, (1,)), (7, (7,)), (1003, (17, 59))]
# Significand bits (implicit one included) and the smallest normal exponent.
FLOAT_FORMATS = {torch.float16: (11, -14), torch.bfloat16: (8, -126), torch.float32: (24, -126),
                 torch.float64: (53, -1022)}


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(shape, dtype, seed, scale=1.0):
    return (scale * torch.randn(shape, generator=gen(seed), dtype=torch.float64)).to(dtype)


def ulp(x, dtype):
    """The spacing of `dtype` at |x| (fp64 array), subnormals included."""
    p, emin = FLOAT_FORMATS[dtype]
    _, e = np.frexp(np.abs(x))  # |x| = m 2^e, m in [0.5, 1): exponent e - 1
    return np.ldexp(1.0, np.maximum(e - 1, emin) - (p - 1))


def assert_close_to_fp64(got, want, scale, dtype):
    """got (dtype) against the exact fp64 result `want`. Compute type fp32 (fp64 for
    fp64 storage) rounds each step: an error below ~1e-6 (1e-13) times `scale`, the
    sum of the magnitudes of the terms; a 16-bit result is then rounded once more to
    its dtype, so it may be one unit in its last place from want."""
    g = got.double().reshape(-1).numpy()
    w = want.reshape(-1).numpy()
    s = scale.reshape(-1).numpy()
    if dtype == torch.float64:
        tol = 1e-13 * s + 1e-300
    elif dtype == torch.float32:
        tol = 1e-6 * s + 1e-30
    else:
        tol = ulp(w, dtype) + 1e-6 * s
    bad = np.abs(g - w) > tol
    assert not bad.any(), (f"{int(bad.sum())} of {bad.size} elements off, first at {int(np.argmax(bad))}: "
                           f"got {g[bad][:4]}, want {w[bad][:4]}, tol {tol[bad][:4]}")


def kept_by_magnitude(d, density):
    """The indices TIES keeps of the fp64 delta vector d: k = max(1, int(density n))
    (none for density 0 or n = 0, all for density 1) of largest |d|, lowest index
    first among equal magnitudes. Written with Python's sort on (-|d|, i)."""
    n = len(d)
    if n == 0 or density <= 0:
        k = 0
    elif density >= 1:
        k = n
    else:
        k = max(1, int(density * n))
    order = sorted(range(n), key=lambda i: (-abs(d[i]), i))
    return set(order[:k])


def kept_by_outliers(d, density, gamma):
    """The indices Model Breadcrumbs keeps, as mergekit's magnitude_outliers states it:
    t = int(density n), n_top = int(gamma n), n_bot = max(0, n - t - n_top); in
    ascending order of |d| (the reverse of TIES' order: among equal magnitudes the
    higher index first), positions [n_bot, n_bot + t). All for density >= 1."""
    n = len(d)
    if density >= 1:
        return set(range(n))
    t, n_top = int(density * n), int(gamma * n)
    n_bot = max(0, n - t - n_top)
    order = sorted(range(n), key=lambda i: (abs(d[i]), -i))
    return set(order[n_bot:n_bot + t])


def dare_kept(seed, k, n, density):
    if density >= 1:
        return [True] * n
    u = dare_uniform24(seed, DARE_STREAM + k, torch.arange(n, dtype=torch.int64)).tolist()
    return [x < density for x in u]


def merge_oracle(base, models, weights, *, sparsify=None, density=1.0, consensus=None, rescale=None,
                 normalize=False, lam=1.0, seed=0, gamma=0.01):
    """One unit (flat lists of floats), in fp64 with Python loops, from the docs."""
    n, K = len(base), len(models)
    rho = list(density) if isinstance(density, (list, tuple)) else [density] * K
    gam = list(gamma) if isinstance(gamma, (list, tuple)) else [gamma] * K
    e = []
    for k in range(K):
        d = [models[k][i] - base[i] for i in range(n)]
        if sparsify in ("magnitude", "magnitude_outliers"):
            keep = kept_by_magnitude(d, rho[k]) if sparsify == "magnitude" else kept_by_outliers(d, rho[k], gam[k])
            kept = [i in keep for i in range(n)]
        elif sparsify == "random":
            kept = dare_kept(seed, k, n, rho[k])
        else:
            kept = [True] * n
        # s_k is 1 where the rule keeps every element or none (not where the draws
        # happen to): magnitude k = n or 0, random rho >= 1 or <= 0.
        s = 1.0
        if sparsify in ("magnitude", "magnitude_outliers"):
            partial = 0 < len(keep) < n
        else:
            partial = sparsify == "random" and 0 < rho[k] < 1
        if partial:
            if rescale == "density":
                s = 1.0 / rho[k]
            elif rescale == "l1":
                before = math.fsum(abs(x) for x in d)
                after = math.fsum(abs(x) for x, c in zip(d, kept) if c)
                s = 1.0 if before < 1e-7 or after < 1e-7 else before / after
        e.append([(d[i] * s) * weights[k] if kept[i] else 0.0 for i in range(n)])
    out = []
    for i in range(n):
        col = [e[k][i] for k in range(K)]
        if consensus is None:
            x, D = sum(col), sum(weights)
            D = 1.0 if abs(D) < 1e-8 else D
        else:
            vote = sum(col) if consensus == "sum" else sum((v > 0) - (v < 0) for v in col)
            sigma = 1 if vote >= 0 else -1
            agree = [k for k in range(K) if (col[k] > 0 and sigma > 0) or (col[k] < 0 and sigma < 0)]
            x, D = sum(col[k] for k in agree), sum(weights[k] for k in agree)
            D = 1.0 if D == 0 else D
        out.append(base[i] + lam * (x / D if normalize else x))
    return out


def flat(t):
    return t.double().reshape(-1).tolist()


# ---------------------------------------------------------------------------
# Task arithmetic.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,shape", SIZES, ids=[str(n) for n, _ in SIZES])
@pytest.mark.parametrize("K", [1, 2, 5])
@pytest.mark.parametrize("normalize,lam", [(False, 1.0), (False, 0.7), (True, 1.3)])
def test_task_arithmetic_formula(backend, dtype, n, shape, K, normalize, lam):
    base = randn(shape, dtype, 1)
    models = [randn(shape, dtype, 10 + k) for k in range(K)]
    weights = [0.25 + 0.5 * k for k in range(K)]  # 0.25, 0.75, 1.25, ...
    got = task_arithmetic(base, models, weights, lam=lam, normalize=normalize, backend=backend)
    assert got.dtype == dtype and got.shape == base.shape
    b = base.double()
    terms = [w * (m.double() - b) for w, m in zip(weights, models)]
    D = sum(weights) if normalize else 1.0
    want = b + lam * sum(terms) / D
    scale = b.abs() + abs(lam) * sum(t.abs() for t in terms) / abs(D)
    assert_close_to_fp64(got, want, scale, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("weights,D", [
    ([1.0, -1.0], 1.0),  # sum exactly 0: divided by 1
    ([1.0, -1.0 + 2.0**-30], 1.0),  # |sum| = 9.3e-10 < 1e-8: divided by 1
    ([1.0, -1.0 + 2.0**-26], 2.0**-26),  # |sum| = 1.49e-8 >= 1e-8: divided by it
    ([0.5, 1.5, -4.0], -2.0),
])
def test_task_arithmetic_normalize_divisor(backend, weights, D):
    base = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    models = [base + torch.tensor([1.0, 2.0, -3.0], dtype=torch.float64) * (k + 1) for k in range(len(weights))]
    got = task_arithmetic(base, models, weights, normalize=True, lam=0.5, backend=backend)
    x = sum(w * (k + 1) * torch.tensor([1.0, 2.0, -3.0], dtype=torch.float64) for k, w in enumerate(weights))
    torch.testing.assert_close(got, base + 0.5 * (x / D), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_delta_formed_in_compute_type_not_bf16(backend):
    # d_k = c(m_k) - c(base) in fp32: with base 1, models 512 and -508 (bf16 values),
    # d = 511 and -509 (exact in fp32, neither is a bf16 value), x = 2, out = 3.
    # Formed in bf16 (as mergekit), d = 512 and -508 (ties to even), x = 4, out = 5.
    base = torch.tensor([1.0], dtype=torch.bfloat16)
    models = [torch.tensor([512.0], dtype=torch.bfloat16), torch.tensor([-508.0], dtype=torch.bfloat16)]
    got = task_arithmetic(base, models, [1.0, 1.0], backend=backend)
    assert got.item() == 3.0


# ---------------------------------------------------------------------------
# TIES: magnitude sparsification.
# ---------------------------------------------------------------------------


def magnitude_densities(n):
    return sorted({0.0, 1.0 / n if n else 0.5, 0.1, 0.5, 1.0})


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64, torch.float16], ids=str)
@pytest.mark.parametrize("n", [0, 1, 7, 1003])
def test_ties_keeps_exactly_k_largest(backend, dtype, n):
    # K = 1, weight 1, base 0, normalize off: out = d where kept, 0 elsewhere, and no d
    # is 0. bf16/fp16 randn values repeat (ties at the threshold).
    base = torch.zeros(n, dtype=dtype)
    model = randn(n, dtype, 3)
    model[model == 0] = 1.0
    d = flat(model)
    for density in magnitude_densities(n):
        got = ties_merge(base, [model], [1.0], density, normalize=False, backend=backend)
        keep = kept_by_magnitude(d, density)
        want = torch.tensor([d[i] if i in keep else 0.0 for i in range(n)], dtype=torch.float64).to(dtype)
        assert got.dtype == dtype
        assert int((got != base).sum()) == len(keep), density
        assert torch.equal(got, want), density
        expected_k = 0 if n == 0 or density == 0 else n if density == 1 else max(1, int(density * n))
        assert len(keep) == expected_k


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("density", [0.02, 0.1, 0.3, 0.55, 0.9])
def test_ties_ties_kept_lowest_index_first(backend, dtype, density):
    # Integer deltas in {-3..3} \ {0} on an integer base: each magnitude occurs ~17
    # times in 100 elements, so the threshold magnitude is almost always shared.
    n = 100
    g = gen(5)
    base = torch.randint(-4, 5, (n,), generator=g).to(dtype)
    mag = torch.randint(1, 4, (n,), generator=g)
    sign = torch.randint(0, 2, (n,), generator=g) * 2 - 1
    model = base + (mag * sign).to(dtype)
    got = ties_merge(base, [model], [1.0], density, normalize=False, backend=backend)
    d = (mag * sign).tolist()
    k = max(1, int(density * n))
    # By hand: magnitudes 3, then 2, then 1; within one magnitude, ascending index.
    order = [i for m in (3, 2, 1) for i in range(n) if abs(d[i]) == m]
    keep = set(order[:k])
    want = base.double() + torch.tensor([d[i] if i in keep else 0 for i in range(n)], dtype=torch.float64)
    assert torch.equal(got, want.to(dtype))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_keep_count_is_int_of_fp64_product(backend):
    # 0.7 * 10 is 7.0 in fp64 (the stored 0.7 is 0.69999999999999996, so the exact
    # product's floor would be 6): k = int(density * n) = 7, as mergekit's int().
    base = torch.zeros(10)
    model = torch.arange(10, 0, -1, dtype=torch.float32)
    got = ties_merge(base, [model], [1.0], 0.7, normalize=False, backend=backend)
    assert int((got != 0).sum()) == int(0.7 * 10) == 7
    assert torch.equal(got, torch.tensor([10.0, 9, 8, 7, 6, 5, 4, 0, 0, 0]))


def small_case(g, K, n=13):
    """A base, K models of it whose deltas are rounded to 1/4 (equal magnitudes and zero
    deltas occur), weights in [-0.5, 1.5) and densities in [0, 1), all drawn from g."""
    base = torch.randn(n, generator=g, dtype=torch.float64)
    models = [base + torch.round(4 * torch.randn(n, generator=g, dtype=torch.float64)) / 4 for _ in range(K)]
    weights = [float(x) for x in torch.rand(K, generator=g, dtype=torch.float64) * 2 - 0.5]
    density = [float(x) for x in torch.rand(K, generator=g, dtype=torch.float64)]
    return base, models, weights, density


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("trial", range(6))
def test_ties_random_small_cases(backend, trial):
    # Several models, per-model densities, both consensus rules, against the fp64 loops.
    base, models, weights, density = small_case(gen(100 + trial), 1 + trial % 4)
    for consensus in ("sum", "count"):
        for normalize in (False, True):
            got = ties_merge(base, models, weights, density, consensus=consensus, normalize=normalize, lam=0.9,
                             backend=backend)
            want = merge_oracle(flat(base), [flat(m) for m in models], weights, sparsify="magnitude",
                                density=density, consensus=consensus, normalize=normalize, lam=0.9)
            torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------
# Model Breadcrumbs (magnitude_outliers).
# ---------------------------------------------------------------------------

# Ten deltas of distinct magnitudes 1..10 (index i holds 10 - i, signs alternating).
# density 0.5, gamma 0.2: t = 5, n_top = 2, n_bot = 3: drop 10, 9 and 1, 2, 3; keep 8..4.
# density 0.5, gamma 0.7: n_bot = max(0, 10 - 5 - 7) = 0: the 5 smallest, 5..1.
# density 0.05: t = int(0.5) = 0, nothing (no max(1, ...) here, unlike TIES).
# density 1: everything, whatever gamma (mergekit returns the tensor).
# gamma 0: TIES' band (t largest), gamma 1: the t smallest.
BREADCRUMBS = [(0.5, 0.2, [8, 7, 6, 5, 4]), (0.5, 0.7, [5, 4, 3, 2, 1]), (0.05, 0.2, []),
               (1.0, 0.5, list(range(10, 0, -1))), (0.3, 0.0, [10, 9, 8]), (0.3, 1.0, [3, 2, 1]),
               (0.0, 0.0, [])]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("density,gamma,kept", BREADCRUMBS)
def test_breadcrumbs_band_by_hand(backend, dtype, density, gamma, kept):
    base = torch.zeros(10, dtype=dtype)
    model = torch.tensor([(10 - i) * (-1) ** i for i in range(10)], dtype=dtype)
    got = breadcrumbs_merge(base, [model], [1.0], density, gamma=gamma, backend=backend)
    want = torch.where(torch.isin(model.abs(), torch.tensor(kept, dtype=dtype)), model, torch.zeros((), dtype=dtype))
    assert torch.equal(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_breadcrumbs_ties_at_both_ends_lowest_index_first(backend):
    # |d| = 3, 3, 3, 3 (i = 0..3), 2, 2, 2 (4..6), 1 (7): descending ranks 0..7 in index
    # order. density 0.25, gamma 0.25: drop ranks 0, 1 (i = 0, 1), keep ranks 2, 3 (i = 2, 3).
    # density 0.5, gamma 0.125: drop rank 0 (i = 0), keep ranks 1..4: i = 1, 2, 3 and 4.
    model = torch.tensor([3.0, -3, 3, -3, 2, -2, 2, 1])
    base = torch.zeros(8)
    got = breadcrumbs_merge(base, [model], [1.0], 0.25, gamma=0.25, backend=backend)
    assert torch.equal(got, torch.tensor([0.0, 0, 3, -3, 0, 0, 0, 0]))
    got = breadcrumbs_merge(base, [model], [1.0], 0.5, gamma=0.125, backend=backend)
    assert torch.equal(got, torch.tensor([0.0, -3, 3, -3, 2, 0, 0, 0]))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("trial", range(6))
def test_breadcrumbs_random_small_cases(backend, trial):
    # Several models, per-model densities and gammas, consensus and rescale, against the
    # fp64 loops (which state the band as mergekit does).
    g = gen(200 + trial)
    base, models, weights, density = small_case(g, 1 + trial % 4)
    gamma = [float(x) for x in torch.rand(len(models), generator=g, dtype=torch.float64) * 0.5]
    for consensus, rescale in ((None, None), ("sum", "l1"), ("count", "density")):
        for normalize in (False, True):
            kw = dict(density=density, gamma=gamma, consensus=consensus, rescale=rescale, normalize=normalize,
                      lam=0.9)
            got = breadcrumbs_merge(base, models, weights, backend=backend, **kw)
            want = merge_oracle(flat(base), [flat(m) for m in models], weights, sparsify="magnitude_outliers", **kw)
            torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_breadcrumbs_global_scope_spans_tensors(backend):
    # Global scope ranks the whole list: n = 8, density 0.5, gamma 0.25 drop the two
    # largest of the list (8, 7: both in tensor 1) and keep the next four (6, 5, 4, 3).
    base = [torch.zeros(3), torch.zeros(5)]
    model = [torch.tensor([5.0, 1, 4]), torch.tensor([8.0, 2, 7, 3, 6])]
    got = breadcrumbs_merge(base, [model], [1.0], 0.5, gamma=0.25, scope="global", backend=backend)
    assert torch.equal(got[0], torch.tensor([5.0, 0, 4]))
    assert torch.equal(got[1], torch.tensor([0.0, 0, 0, 3, 6]))


# ---------------------------------------------------------------------------
# TIES: the sign election, worked out by hand.
# ---------------------------------------------------------------------------

# Six elements, K = 3, weights 1, 2, 0.5, density 1 (every element kept):
#   d1 = [ 1, -2,  3, 0, -1,  4]      e1 = d1 * 1   = [ 1, -2,  3, 0, -1,  4]
#   d2 = [ 2,  1, -1, 0, -1, -1]      e2 = d2 * 2   = [ 4,  2, -2, 0, -2, -2]
#   d3 = [-4,  2, -2, 0,  0, -2]      e3 = d3 * 0.5 = [-2,  1, -1, 0,  0, -1]
#   sum_k e_k        = [3, 1,  0, 0, -3,  1]
#   sum_k sign(e_k)  = [1, 1, -1, 0, -2, -1]
# consensus "sum": sigma = [+, +, +, +, -, +]
#   0: e1, e2 agree: x = 5, D = 1 + 2 = 3          1: e2, e3: x = 3, D = 2.5
#   2: sum 0 -> +: e1: x = 3, D = 1                 3: nothing agrees: x = 0, D = 0 -> 1
#   4: e1, e2 (e3 = 0 never agrees): x = -3, D = 3  5: e1: x = 4, D = 1
# consensus "count": sigma = [+, +, -, + (0 >= 0), -, -]
#   0, 1, 3, 4 as above; 2: e2, e3: x = -3, D = 2.5; 5: e2, e3: x = -3, D = 2.5
D1 = [1.0, -2.0, 3.0, 0.0, -1.0, 4.0]
D2 = [2.0, 1.0, -1.0, 0.0, -1.0, -1.0]
D3 = [-4.0, 2.0, -2.0, 0.0, 0.0, -2.0]
ELECTION_WEIGHTS = [1.0, 2.0, 0.5]
ELECTION = {
    "sum": ([5.0, 3.0, 3.0, 0.0, -3.0, 4.0], [3.0, 2.5, 1.0, 1.0, 3.0, 1.0]),
    "count": ([5.0, 3.0, -3.0, 0.0, -3.0, -3.0], [3.0, 2.5, 2.5, 1.0, 3.0, 2.5]),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("consensus", ["sum", "count"])
@pytest.mark.parametrize("normalize,lam", [(True, 1.0), (False, 1.0), (True, 0.5), (False, -2.0)])
def test_sign_election_by_hand(backend, dtype, consensus, normalize, lam):
    base = torch.tensor([1.0, -1.0, 0.5, 2.0, 0.25, -3.0], dtype=dtype)
    models = [base + torch.tensor(d, dtype=dtype) for d in (D1, D2, D3)]
    x, D = ELECTION[consensus]
    want = [b + lam * (xi / Di if normalize else xi) for b, xi, Di in zip(flat(base), x, D)]
    tol = dict(rtol=1e-15, atol=1e-15) if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-6)
    got = ties_merge(base, models, ELECTION_WEIGHTS, 1.0, consensus=consensus, normalize=normalize, lam=lam,
                     backend=backend)
    torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.float64), **tol)
    # The same election without sparsification.
    got = task_merge(base, models, ELECTION_WEIGHTS, consensus=consensus, normalize=normalize, lam=lam,
                     backend=backend)
    torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.float64), **tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_consensus_divisor(backend):
    base = torch.tensor([0.5], dtype=torch.float64)
    models = [base + 2.0, base - 3.0]
    # Weights 1, -1: e = 2, 3, both agree; D = 1 - 1 = 0 becomes 1: out = 0.5 + 5.
    got = ties_merge(base, models, [1.0, -1.0], 1.0, backend=backend)
    assert got.item() == 5.5
    # D = 2^-30, nonzero: with consensus only D = 0 becomes 1, so x is divided by it
    # (without consensus, |D| < 1e-8 divides by 1).
    w2 = -1.0 + 2.0**-30
    x = 2.0 + (-3.0 * w2)
    got = ties_merge(base, models, [1.0, w2], 1.0, backend=backend)
    assert got.item() == pytest.approx(0.5 + x / 2.0**-30, rel=1e-15)
    got = task_arithmetic(base, models, [1.0, w2], normalize=True, backend=backend)
    assert got.item() == pytest.approx(0.5 + (2.0 - 3.0 * w2), rel=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_delta_never_agrees_after_trimming(backend):
    # TIES trims model 2's smaller delta to 0 (density 0.5 of 2 elements: k = 1);
    # the trimmed element must not count in the divisor.
    base = torch.zeros(2, dtype=torch.float64)
    models = [torch.tensor([4.0, 2.0], dtype=torch.float64), torch.tensor([1.0, 6.0], dtype=torch.float64)]
    # e1 = [4, 0], e2 = [0, 6]: element 0: x = 4, D = 1; element 1: x = 6, D = 1.
    got = ties_merge(base, models, [1.0, 1.0], 0.5, backend=backend)
    assert got.tolist() == [4.0, 6.0]


# ---------------------------------------------------------------------------
# TIES: scope.
# ---------------------------------------------------------------------------


def two_scales(n1=200, n2=300, seed=9):
    """Tensor 1: |d| in [0.1, 1); tensor 2: |d| in [100, 200): every element of the
    second is larger than every element of the first."""
    g = gen(seed)
    sign = lambda n: torch.randint(0, 2, (n,), generator=g).float() * 2 - 1  # noqa: E731
    small = (0.1 + 0.9 * torch.rand(n1, generator=g)) * sign(n1)
    large = (100 + 100 * torch.rand(n2, generator=g)) * sign(n2)
    return [torch.zeros(n1), torch.zeros(20, 15)], [small, large.reshape(20, 15)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("density,tensor_counts,global_counts", [
    (0.2, (40, 60), (0, 100)),  # global: k = 100, all from the large tensor
    (0.7, (140, 210), (50, 300)),  # global: k = 350: all 300 large, the 50 largest small
    (0.001, (1, 1), (0, 1)),  # max(1, int(...)) per unit
    (1.0, (200, 300), (200, 300)),
    (0.0, (0, 0), (0, 0)),
])
def test_scope_tensor_vs_global(backend, density, tensor_counts, global_counts):
    base, model = two_scales()
    for scope, counts in (("tensor", tensor_counts), ("global", global_counts)):
        got = ties_merge(base, [model], [1.0], density, scope=scope, normalize=False, backend=backend)
        assert tuple(int((g != 0).sum()) for g in got) == counts, scope
        # The kept set, from the docs: per tensor, or over the list as one flat vector.
        units = [[0], [1]] if scope == "tensor" else [[0, 1]]
        want = []
        for unit in units:
            d = [v for i in unit for v in flat(model[i])]
            keep = kept_by_magnitude(d, density)
            want += [d[j] if j in keep else 0.0 for j in range(len(d))]
        assert torch.equal(torch.cat([g.reshape(-1) for g in got]), torch.tensor(want, dtype=torch.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_global_ties_across_tensors_lowest_flat_index(backend):
    # Every |d| equal: global keeps the first k of the flat list, across tensors.
    base = [torch.zeros(3), torch.zeros(2, 2), torch.zeros(0), torch.zeros(()), torch.zeros(5)]
    model = [torch.full_like(b, -2.0) for b in base]
    n = 13
    for density in (0.1, 0.3, 0.5, 0.8):
        k = max(1, int(density * n))
        got = ties_merge(base, [model], [1.0], density, scope="global", normalize=False, backend=backend)
        flat_got = torch.cat([g.reshape(-1) for g in got])
        assert torch.equal(flat_got, torch.tensor([-2.0] * k + [0.0] * (n - k)))


# ---------------------------------------------------------------------------
# DARE.
# ---------------------------------------------------------------------------


def test_dare_uniform24_known_answer():
    # Random123's philox4x32_10 known answer for counter 0, key 0: words 6627e8d5,
    # e169c58d, bc57ac4c, 9b00dbd8. Elements 0 .. 7 (seed 0, stream 0) take their high
    # 16 bits from these words, low half first; their low bytes come from counter 0 of
    # stream 2^48, low byte first.
    from m2n2_kernels.reference import DARE_LOW_FLIP, philox_words

    u24 = (dare_uniform24(0, 0, torch.arange(8)) * 2**24).long().tolist()
    assert [v >> 8 for v in u24] == [0xE8D5, 0x6627, 0xC58D, 0xE169, 0xAC4C, 0xBC57, 0xDBD8, 0x9B00]
    low = torch.stack(philox_words(0, DARE_LOW_FLIP, torch.tensor([0]))).reshape(-1).tolist()  # 4 words
    assert [v & 0xFF for v in u24] == [(low[i >> 2] >> (8 * (i & 3))) & 0xFF for i in range(8)]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rescale", [None, "l1", "density"])
@pytest.mark.parametrize("consensus", [None, "sum"])
def test_dare_density_one_is_task_arithmetic(backend, dtype, rescale, consensus):
    base = randn((5, 7), dtype, 1)
    models = [randn((5, 7), dtype, 2), randn((5, 7), dtype, 3)]
    got = dare_merge(base, models, [0.3, 0.9], 1.0, seed=4, rescale=rescale, consensus=consensus, lam=0.8,
                     backend=backend)
    want = task_merge(base, models, [0.3, 0.9], consensus=consensus, lam=0.8, backend=backend)
    assert torch.equal(got, want)
    if consensus is None:
        assert torch.equal(got, task_arithmetic(base, models, [0.3, 0.9], lam=0.8, backend=backend))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rescale", [None, "l1"])
def test_dare_density_zero_is_base(backend, dtype, rescale):
    base = randn(101, dtype, 1)
    models = [randn(101, dtype, 2), randn(101, dtype, 3)]
    for consensus, normalize in ((None, False), (None, True), ("sum", True)):
        got = dare_merge(base, models, [0.3, 0.9], 0.0, seed=4, rescale=rescale, consensus=consensus,
                         normalize=normalize, backend=backend)
        assert torch.equal(got, base)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sparsify", ["random", "magnitude"])
def test_density_rescale_at_density_zero_is_base(backend, sparsify):
    # Nothing kept: s = 1 (not 1 / 0), out = base.
    base, model = torch.zeros(10), torch.ones(10)
    got = task_merge(base, [model], [1.0], sparsify=sparsify, density=0.0, rescale="density", backend=backend)
    assert torch.equal(got, base)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("n", [0, 1, 7, 1003, 4096 + 5])
@pytest.mark.parametrize("seed", [0, 12345, 2**64 - 1])
@pytest.mark.parametrize("density", [0.1, 0.5, 0.93])
def test_dare_mask_is_philox(backend, n, seed, density):
    # K = 2: model 0 equals base (a zero delta), model 1 is base + 1, so out - base is
    # model 1's mask exactly, drawn from stream DARE_STREAM + 1.
    base = torch.zeros(n)
    got = dare_merge(base, [base.clone(), torch.ones(n)], [1.0, 1.0], density, seed=seed, rescale=None,
                     backend=backend)
    want = dare_uniform24(seed, DARE_STREAM + 1, torch.arange(n)) < density
    assert torch.equal(got, want.float())
    # K = 1: model 0's stream.
    got = dare_merge(base, [torch.ones(n)], [1.0], density, seed=seed, rescale=None, backend=backend)
    assert torch.equal(got, (dare_uniform24(seed, DARE_STREAM, torch.arange(n)) < density).float())


@pytest.mark.parametrize("backend", BACKENDS)
def test_dare_density_compared_exactly(backend):
    # u is a multiple of 2^-24; a density 2^-40 above one u keeps that element (u < rho
    # in exact arithmetic), which rounding rho to fp32 would lose. Element j's high 16
    # bits tie with the threshold's, so the kernels draw its low byte (their rare path).
    n, seed = 64, 77
    u = dare_uniform24(seed, DARE_STREAM, torch.arange(n))
    j = int(torch.argsort(u)[n // 2])
    base, model = torch.zeros(n), torch.ones(n)
    for rho in (u[j].item(), u[j].item() + 2.0**-40, u[j].item() - 2.0**-40):
        got = dare_merge(base, [model], [1.0], rho, seed=seed, rescale=None, backend=backend)
        assert torch.equal(got, (u < rho).float()), rho
        assert bool(got[j]) == (rho > u[j].item())


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("density", [0.05, 0.5])
def test_dare_kept_fraction(backend, density):
    n = 100_000
    got = dare_merge(torch.zeros(n), [torch.ones(n)], [1.0], density, seed=2024, rescale=None, backend=backend)
    frac = float(got.sum()) / n
    assert abs(frac - density) < 5 * math.sqrt(density * (1 - density) / n)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_dare_seeds(backend):
    base = randn(1000, torch.float32, 1)
    models = [randn(1000, torch.float32, 2), randn(1000, torch.float32, 3)]
    run = lambda seed: dare_merge(base, models, [0.5, 0.5], 0.5, seed=seed, backend=backend)  # noqa: E731
    a = run(1)
    assert torch.equal(a, run(1))
    for other in (2, 2**32 + 1, 2**63, 2**64 - 1):
        assert not torch.equal(a, run(other)), other
    # Per-model densities: model k's draws depend on k, not on the other model.
    m1 = dare_merge(base, models, [0.5, 0.5], [0.3, 0.7], seed=5, backend=backend)
    m2 = dare_merge(base, models, [0.5, 0.5], [0.9, 0.7], seed=5, backend=backend)
    assert not torch.equal(m1, m2)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("density", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("scope", ["tensor", "global"])
def test_dare_l1_rescale_keeps_l1_norm(backend, density, scope):
    base = [randn(1000, torch.float64, 1), randn((3, 4), torch.float64, 2)]
    model = [randn(1000, torch.float64, 3), randn((3, 4), torch.float64, 4)]
    got = dare_merge(base, [model], [1.0], density, seed=8, rescale="l1", scope=scope, backend=backend)
    deltas = [(g - b).abs().sum().item() for g, b in zip(got, base)]
    fulls = [(m - b).abs().sum().item() for m, b in zip(model, base)]
    if scope == "global":
        deltas, fulls = [sum(deltas)], [sum(fulls)]
    for after, before in zip(deltas, fulls):
        assert after == pytest.approx(before, rel=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("rescale", ["l1", "density"])
def test_dare_rescale_values(backend, dtype, rescale):
    # K = 2, per-model densities, against the fp64 loops.
    n = 257
    base = randn(n, dtype, 1)
    models = [randn(n, dtype, 2), randn(n, dtype, 3, scale=3.0)]
    got = dare_merge(base, models, [0.7, -0.4], [0.25, 0.6], seed=31, rescale=rescale, lam=1.1, backend=backend)
    want = torch.tensor(merge_oracle(flat(base), [flat(m) for m in models], [0.7, -0.4], sparsify="random",
                                     density=[0.25, 0.6], rescale=rescale, lam=1.1, seed=31), dtype=torch.float64)
    b = base.double()
    scale = b.abs() + 1.1 * sum(abs(w) / rho * (m.double() - b).abs()
                                for w, rho, m in zip([0.7, -0.4], [0.25, 0.6], models))
    assert_close_to_fp64(got, want, scale, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dare_density_rescale_divides_kept(backend):
    n, rho = 500, 0.4
    base = torch.zeros(n, dtype=torch.float64)
    model = randn(n, torch.float64, 6)
    got = dare_merge(base, [model], [1.0], rho, seed=3, rescale="density", backend=backend)
    kept = dare_uniform24(3, DARE_STREAM, torch.arange(n)) < rho
    torch.testing.assert_close(got[kept], model[kept] / rho, rtol=1e-15, atol=0)
    assert torch.equal(got[~kept], torch.zeros(int((~kept).sum()), dtype=torch.float64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_rescale_follows_the_rule_not_the_draws(backend):
    # A density below 1 whose draws happen to keep every element: the rule keeps some,
    # so "density" still divides by rho; "l1" gives sum / sum = 1.
    n, seed = 6, 11
    u = dare_uniform24(seed, DARE_STREAM, torch.arange(n))
    rho = u.max().item() + 2.0**-30
    assert rho < 1
    base, model = torch.zeros(n, dtype=torch.float64), randn(n, torch.float64, 1)
    got = dare_merge(base, [model], [1.0], rho, seed=seed, rescale="density", backend=backend)
    torch.testing.assert_close(got, model / rho, rtol=1e-15, atol=0)
    assert torch.equal(dare_merge(base, [model], [1.0], rho, seed=seed, rescale="l1", backend=backend), model)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,density,scaled", [
    (1, 0.5, False),  # k = max(1, int(0.5)) = 1 = n: every element kept, s = 1
    (3, 0.9, True),  # k = int(2.7) = 2 < 3: s = 1 / 0.9
    (10, 0.05, True),  # k = max(1, 0) = 1 < 10
    (10, 1.0, False),
])
def test_magnitude_density_rescale(backend, n, density, scaled):
    base = torch.zeros(n, dtype=torch.float64)
    model = torch.arange(n, 0, -1, dtype=torch.float64)  # descending: the first k kept
    k = n if density >= 1 else max(1, int(density * n))
    got = ties_merge(base, [model], [1.0], density, rescale="density", normalize=False, backend=backend)
    want = torch.where(torch.arange(n) < k, model / density if scaled else model, base)
    torch.testing.assert_close(got, want, rtol=1e-15, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_l1_rescale_below_threshold_is_one(backend):
    # sum |d| = 64 * 1e-9 < 1e-7: s = 1 (the kept deltas are not scaled up).
    n, seed = 64, 5
    base = torch.zeros(n, dtype=torch.float64)
    model = torch.full((n,), 1e-9, dtype=torch.float64)
    got = dare_merge(base, [model], [1.0], 0.5, seed=seed, rescale="l1", backend=backend)
    kept = dare_uniform24(seed, DARE_STREAM, torch.arange(n)) < 0.5
    assert 0 < int(kept.sum()) < n
    assert torch.equal(got, torch.where(kept, model, base))
    # Above the threshold (1e-6 each): scaled by n / kept.
    model = torch.full((n,), 1e-6, dtype=torch.float64)
    got = dare_merge(base, [model], [1.0], 0.5, seed=seed, rescale="l1", backend=backend)
    torch.testing.assert_close(got[kept], model[kept] * (n / int(kept.sum())), rtol=1e-14, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dare_ties_by_hand(backend):
    # DARE-TIES on 8 elements, K = 3, density 0.5, rescale "density" (s = 2), weights
    # 1, 1, 1, normalize on. The masks come from the Philox draws; the election below
    # is written out per element.
    n, seed = 8, 7
    d = [[3.0, -1.0, 2.0, 4.0, -2.0, 1.0, -3.0, 2.0],
         [-2.0, 2.0, 1.0, -4.0, -1.0, 2.0, 3.0, -1.0],
         [1.0, -3.0, -2.0, 1.0, 2.0, -1.0, -1.0, 3.0]]
    masks = [(dare_uniform24(seed, DARE_STREAM + k, torch.arange(n)) < 0.5).tolist() for k in range(3)]
    want = []
    for i in range(n):
        e = [2.0 * d[k][i] if masks[k][i] else 0.0 for k in range(3)]
        sigma = 1.0 if sum(e) >= 0 else -1.0
        agree = [v for v in e if v * sigma > 0]
        want.append(sum(agree) / (len(agree) or 1))
    base = torch.zeros(n, dtype=torch.float64)
    models = [torch.tensor(dk, dtype=torch.float64) for dk in d]
    got = dare_merge(base, models, [1.0, 1.0, 1.0], 0.5, seed=seed, consensus="sum", rescale="density",
                     normalize=True, backend=backend)
    assert got.tolist() == want
    assert any(not all(m) for m in masks) and any(any(m) for m in masks)  # a real mix


# ---------------------------------------------------------------------------
# Lists.
# ---------------------------------------------------------------------------


def mixed_list(seed):
    shapes_dtypes = [((5, 3), torch.bfloat16), ((7,), torch.float32), ((2, 2), torch.float64),
                     ((0,), torch.float32), ((), torch.float64), ((4,), torch.float16)]
    return [randn(s, dt, seed + i) for i, (s, dt) in enumerate(shapes_dtypes)]


MERGES = {
    "task_arithmetic": dict(),
    "task_arithmetic_normalized": dict(normalize=True, lam=0.6),
    "ties": dict(sparsify="magnitude", density=0.4, consensus="sum", normalize=True),
    "ties_count_global": dict(sparsify="magnitude", density=0.3, consensus="count", scope="global"),
    "dare": dict(sparsify="random", density=0.5, rescale="l1", seed=3),
    "dare_density": dict(sparsify="random", density=[0.3, 0.8], rescale="density", seed=2**63 + 5),
    "dare_ties": dict(sparsify="random", density=0.6, rescale="l1", consensus="sum", normalize=True, seed=9),
}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("merge", [m for m in MERGES if "global" not in m])
def test_list_equals_per_tensor_calls(backend, merge):
    kw = MERGES[merge]
    base = mixed_list(0)
    models = [mixed_list(10), mixed_list(20)]
    got = task_merge(base, models, [0.6, 0.5], backend=backend, **kw)
    assert isinstance(got, list) and len(got) == len(base)
    for i, b in enumerate(base):
        one = task_merge(b, [m[i] for m in models], [0.6, 0.5], backend=backend, **kw)
        assert got[i].dtype == b.dtype and got[i].shape == b.shape
        assert torch.equal(got[i], one), i


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("merge", list(MERGES))
def test_global_list_equals_concatenation(backend, merge):
    # scope "global": a list is one flat vector (one dtype here, so one compute type).
    kw = dict(MERGES[merge], scope="global")
    shapes = [(3, 4), (5,), (0,), (), (2, 1, 9)]
    base = [randn(s, torch.float32, i) for i, s in enumerate(shapes)]
    models = [[randn(s, torch.float32, 10 * k + i) for i, s in enumerate(shapes)] for k in (1, 2)]
    got = task_merge(base, models, [0.6, 0.5], backend=backend, **kw)
    cat = lambda ts: torch.cat([t.reshape(-1) for t in ts])  # noqa: E731
    want = task_merge(cat(base), [cat(m) for m in models], [0.6, 0.5], backend=backend, **kw)
    assert all(g.shape == b.shape and g.dtype == b.dtype for g, b in zip(got, base))
    if kw.get("rescale") == "l1":  # fp64 sums in another order may move s by one fp32 unit
        torch.testing.assert_close(cat(got), want, rtol=1e-6, atol=1e-6)
    else:
        assert torch.equal(cat(got), want)


# ---------------------------------------------------------------------------
# out=.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("merge", list(MERGES))
def test_out_is_base_in_place(backend, merge):
    kw = MERGES[merge]
    base = randn((6, 11), torch.float32, 0)
    models = [randn((6, 11), torch.float32, 1), randn((6, 11), torch.float32, 2)]
    want = task_merge(base, models, [0.6, 0.5], backend=backend, **kw)
    before = base.clone()
    got = task_merge(base, models, [0.6, 0.5], out=base, backend=backend, **kw)
    assert got is base
    assert torch.equal(base, want) and not torch.equal(base, before)
    # Lists: every entry written in place.
    blist = mixed_list(0)
    mlists = [mixed_list(10), mixed_list(20)]
    want = task_merge(blist, mlists, [0.6, 0.5], backend=backend, **kw)
    ids = [id(b) for b in blist]
    got = task_merge(blist, mlists, [0.6, 0.5], out=blist, backend=backend, **kw)
    assert [id(g) for g in got] == ids and [id(b) for b in blist] == ids
    assert all(torch.equal(g, w) for g, w in zip(got, want))


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_in_place_refusals(backend):
    # In place needs a contiguous base, and no model may share its memory.
    b = torch.zeros(4, 3).t()
    with pytest.raises(ValueError, match=r"out must be contiguous"):
        task_arithmetic(b, [torch.ones(3, 4)], [1.0], out=b, backend=backend)
    b = torch.zeros(3)
    with pytest.raises(ValueError, match=r"out must not overlap models\[0\]"):
        task_arithmetic(b, [b, torch.ones(3)], [1.0, 1.0], out=b, backend=backend)
    buf = torch.zeros(6)
    head = buf[:3]
    with pytest.raises(ValueError, match=r"out must not overlap models\[1\]"):
        task_arithmetic(head, [torch.ones(3), buf[2:5]], [1.0, 1.0], out=head, backend=backend)
    bl = [torch.zeros(2), torch.zeros(3)]
    with pytest.raises(ValueError, match=r"out\[1\] must not overlap models\[0\]\[1\]"):
        task_arithmetic(bl, [[torch.ones(2), bl[1]]], [1.0], out=bl, backend=backend)
    assert torch.equal(buf, torch.zeros(6)) and torch.equal(bl[1], torch.zeros(3))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("merge", list(MERGES))
def test_non_contiguous_inputs(backend, merge):
    # Transposed and strided inputs merge as their contiguous copies (out-of-place).
    kw = MERGES[merge]
    base = randn((9, 5), torch.float32, 0).t()
    models = [randn((9, 5), torch.float32, 1).t(), randn((5, 18), torch.float32, 2)[:, ::2]]
    got = task_merge(base, models, [0.6, 0.5], backend=backend, **kw)
    want = task_merge(base.contiguous(), [m.contiguous() for m in models], [0.6, 0.5], backend=backend, **kw)
    assert got.shape == (5, 9) and torch.equal(got, want)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("merge", list(MERGES))
def test_out_fresh_buffer(backend, merge):
    # out= a buffer like base: written whole, returned, inputs untouched.
    kw = MERGES[merge]
    base = randn((6, 11), torch.float32, 0)
    models = [randn((6, 11), torch.float32, 1), randn((6, 11), torch.float32, 2)]
    want = task_merge(base, models, [0.6, 0.5], backend=backend, **kw)
    before = [base.clone()] + [m.clone() for m in models]
    out = torch.full_like(base, math.nan)
    got = task_merge(base, models, [0.6, 0.5], out=out, backend=backend, **kw)
    assert got is out and torch.equal(out, want)
    assert all(torch.equal(x, y) for x, y in zip([base] + models, before))
    blist = mixed_list(0)
    mlists = [mixed_list(10), mixed_list(20)]
    want = task_merge(blist, mlists, [0.6, 0.5], backend=backend, **kw)
    outs = [torch.full_like(b, math.nan) for b in blist]
    got = task_merge(blist, mlists, [0.6, 0.5], out=outs, backend=backend, **kw)
    assert all(g is o for g, o in zip(got, outs))
    assert all(torch.equal(g, w) for g, w in zip(got, want))


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_bad_buffers_refused(backend):
    base, models = torch.zeros(4), [torch.ones(4)]
    cases = [
        (torch.empty(5), ValueError, r"out must have shape \(4,\) \(as base\), got \(5,\)"),
        (torch.empty(4, dtype=torch.float64), TypeError, r"out must be torch.float32 \(as base\)"),
        (torch.empty(8)[::2], ValueError, r"out must be contiguous"),
        (models[0], ValueError, r"out must not overlap models\[0\]"),
        ([torch.empty(4)], TypeError, r"out must be a tensor like base"),
    ]
    for out, err, match in cases:
        with pytest.raises(err, match=match):
            task_arithmetic(base, models, [1.0], out=out, backend=backend)
    storage = torch.zeros(5)  # out overlaps base without being base
    with pytest.raises(ValueError, match=r"out must not overlap base"):
        task_arithmetic(storage[:4], models, [1.0], out=storage[1:], backend=backend)
    blist, mlist = [torch.zeros(2), torch.zeros(3)], [[torch.ones(2), torch.ones(3)]]
    buf = torch.empty(5)
    cases = [
        (blist[0], TypeError, r"out must be a list of tensors like base"),
        (blist[:1], ValueError, r"out must hold as many tensors as base \(2\), got 1"),
        ([blist[0], torch.zeros(2)], ValueError, r"out\[1\] must have shape \(3,\) \(as base\[1\]\)"),
        ([buf[:2], buf[1:4]], ValueError, r"out\[0\] must not overlap out\[1\]"),
    ]
    for out, err, match in cases:
        with pytest.raises(err, match=match):
            task_arithmetic(blist, mlist, [1.0], out=out, backend=backend)
    assert torch.equal(base, torch.zeros(4)) and torch.equal(models[0], torch.ones(4))



def test_dare_draws_avx512_equal_portable(tmp_path):
    """The CPU kernel draws DARE's masks with an AVX-512 loop where the CPU has it:
    tests/native/dare_draws_check.cpp holds it equal to the portable loop and to
    dare_draw_at, bit for bit, at counters whose low word wraps (at multiples of 2^35
    elements), which no tensor here could reach, and the shortcut (the low byte drawn
    only where the high half ties with the threshold's) equal to u24 compared in full."""
    from conftest import run_native_check

    returncode, stdout = run_native_check(tmp_path, "dare_draws_check", ["-fopenmp-simd"])
    if returncode == 2:
        pytest.skip(f"this CPU has no AVX-512 (the portable draws were checked): {stdout.strip()}")
    assert returncode == 0, stdout


def test_window_tiles_avx512_equal_portable(tmp_path):
    """TIES' candidate-window pass reads each tile with an AVX-512 loop where the CPU has
    it (fp32 and bf16 storage): tests/native/window_tiles_check.cpp holds the portable
    loops equal to a scalar oracle (every storage type, 32- and 64-bit keys) and the
    AVX-512 loop equal to them (the counts above, at and inside the window, and the keys
    stored, in order) at every tile length, unaligned, with keys tied to the window's
    ends, zeros of both signs, infinities and NaNs."""
    from conftest import run_native_check

    returncode, stdout = run_native_check(tmp_path, "window_tiles_check", ["-fopenmp-simd"])
    if returncode == 2:
        pytest.skip(f"this CPU has no AVX-512 (the portable loops were checked): {stdout.strip()}")
    assert returncode == 0, stdout


def test_radix_select_equals_sorting(tmp_path):
    """The exact order statistics under TIES' and PCB's thresholds (radix_select.h):
    tests/native/radix_select_check.cpp holds every rank's key, and the keys below and
    equal to it, to sorting, for 32- and 64-bit keys spread thinly (the second pass
    collects the few keys left under a prefix) and heavily tied (it histograms), at
    1 to 3 threads."""
    from conftest import run_native_check

    returncode, stdout = run_native_check(tmp_path, "radix_select_check", ["-fopenmp"])
    assert returncode == 0, stdout


# ---------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------

B = torch.zeros(3)
M = torch.ones(3)
BL = [torch.zeros(3), torch.zeros(2, dtype=torch.float64)]
ML = [torch.ones(3), torch.ones(2, dtype=torch.float64)]

BAD = [
    ("no models", lambda: (B, [], [], {}), ValueError, r"models must hold at least one model \(K >= 1\)"),
    ("65 models", lambda: (B, [M] * 65, [1.0] * 65, {}), ValueError, r"models must hold at most 64 models, got 65"),
    ("empty base list", lambda: ([], [[]], [1.0], {}), ValueError, r"base must hold at least one tensor"),
    ("models not a list", lambda: (B, M, [1.0], {}), TypeError, r"models must be a list of K models"),
    ("model not a tensor", lambda: (B, [[M]], [1.0], {}), TypeError, r"models\[0\] must be a tensor like base"),
    ("shape", lambda: (B, [M, torch.ones(4)], [1.0, 1.0], {}), ValueError,
     r"models\[1\] must have shape \(3,\) \(as base\), got \(4,\)"),
    ("shape 2-D", lambda: (B, [M.reshape(1, 3)], [1.0], {}), ValueError,
     r"models\[0\] must have shape \(3,\) \(as base\), got \(1, 3\)"),
    ("dtype", lambda: (B, [M.double()], [1.0], {}), TypeError,
     r"models\[0\] must be torch.float32 \(as base\), got torch.float64"),
    ("device", lambda: (B, [torch.ones(3, device="meta")], [1.0], {}), ValueError,
     r"models\[0\] must be on cpu \(as base\), got meta"),
    ("list dtype", lambda: (BL, [[ML[0], ML[1].float()]], [1.0], {}), TypeError,
     r"models\[0\]\[1\] must be torch.float64 \(as base\[1\]\), got torch.float32"),
    ("list device", lambda: ([BL[0], BL[1].to("meta")], [ML], [1.0], {}), ValueError,
     r"base\[1\] must be on cpu"),
    ("model not a list", lambda: (BL, [ML, ML[0]], [1.0, 1.0], {}), TypeError,
     r"models\[1\] must be a list of tensors like base, got Tensor"),
    ("list length short", lambda: (BL, [ML[:1]], [1.0], {}), ValueError,
     r"models\[0\] must hold as many tensors as base \(2\), got 1"),
    ("list length long", lambda: (BL, [ML + ML[:1]], [1.0], {}), ValueError,
     r"models\[0\] must hold as many tensors as base \(2\), got 3"),
    ("weights too many", lambda: (B, [M, M], [1.0, 1.0, 1.0], {}), ValueError,
     r"weights must hold one number per model \(K = 2\), got 3"),
    ("weights too few", lambda: (B, [M, M], [1.0], {}), ValueError,
     r"weights must hold one number per model \(K = 2\), got 1"),
    ("weights a number", lambda: (B, [M, M], 1.0, {}), TypeError,
     r"weights must hold one number per model \(K = 2\), got a single number"),
    ("weights an int", lambda: (B, [M], 1, {}), TypeError, r"got a single number"),
    ("weight nan", lambda: (B, [M, M], [1.0, math.nan], {}), ValueError, r"weights\[1\] must be finite, got nan"),
    ("weight inf", lambda: (B, [M, M], [math.inf, 1.0], {}), ValueError, r"weights\[0\] must be finite, got inf"),
    ("weight -inf tensor", lambda: (B, [M], torch.tensor([-math.inf]), {}), ValueError,
     r"weights\[0\] must be finite, got -inf"),
    ("density negative", lambda: (B, [M], [1.0], dict(density=-0.1)), ValueError,
     r"density must lie in \[0, 1\], got -0.1"),
    ("density above 1", lambda: (B, [M], [1.0], dict(density=1.5)), ValueError,
     r"density must lie in \[0, 1\], got 1.5"),
    ("density nan", lambda: (B, [M], [1.0], dict(density=math.nan)), ValueError,
     r"density\[0\] must be finite, got nan"),
    ("density per model nan", lambda: (B, [M, M], [1.0, 1.0], dict(density=[0.5, math.nan])), ValueError,
     r"density\[1\] must be finite, got nan"),
    ("density per model length", lambda: (B, [M, M], [1.0, 1.0], dict(density=[0.5])), ValueError,
     r"density must hold one number per model \(K = 2\), got 1"),
    ("gamma above 1", lambda: (B, [M], [1.0], dict(sparsify="magnitude_outliers", gamma=1.5)), ValueError,
     r"gamma must lie in \[0, 1\], got 1.5"),
    ("gamma nan", lambda: (B, [M], [1.0], dict(gamma=math.nan)), ValueError, r"gamma\[0\] must be finite, got nan"),
    ("gamma per model length", lambda: (B, [M, M], [1.0, 1.0], dict(gamma=[0.5])), ValueError,
     r"gamma must hold one number per model \(K = 2\), got 1"),
    ("outliers K > 32", lambda: (B, [M] * 33, [1.0] * 33, dict(sparsify="magnitude_outliers")), ValueError,
     r"models must hold at most 32 models with sparsify='magnitude_outliers', got 33"),
    ("sparsify", lambda: (B, [M], [1.0], dict(sparsify="topk")), ValueError,
     r"sparsify must be one of \('none', 'magnitude', 'random', 'magnitude_outliers'\), got 'topk'"),
    ("consensus", lambda: (B, [M], [1.0], dict(consensus="vote")), ValueError,
     r"consensus must be one of \('none', 'sum', 'count'\), got 'vote'"),
    ("rescale", lambda: (B, [M], [1.0], dict(rescale="l2")), ValueError,
     r"rescale must be one of \('none', 'l1', 'density'\), got 'l2'"),
    ("rescale bool", lambda: (B, [M], [1.0], dict(rescale=True)), ValueError,
     r"rescale must be one of \('none', 'l1', 'density'\), got True"),
    ("scope", lambda: (B, [M], [1.0], dict(scope="layer")), ValueError,
     r"scope must be one of \('tensor', 'global'\), got 'layer'"),
    ("lam nan", lambda: (B, [M], [1.0], dict(lam=math.nan)), ValueError, r"lam must be finite, got nan"),
    ("lam inf", lambda: (B, [M], [1.0], dict(lam=-math.inf)), ValueError, r"lam must be finite, got -inf"),
    ("seed negative", lambda: (B, [M], [1.0], dict(seed=-1)), ValueError, r"seed must lie in \[0, 2\*\*64\), got -1"),
    ("seed too large", lambda: (B, [M], [1.0], dict(seed=2**64)), ValueError,
     r"seed must lie in \[0, 2\*\*64\), got 18446744073709551616"),
    ("seed float", lambda: (B, [M], [1.0], dict(seed=1.5)), TypeError, r"seed must be an integer, got float"),
    ("base int64", lambda: (torch.zeros(3, dtype=torch.int64), [torch.ones(3, dtype=torch.int64)], [1.0], {}),
     TypeError, r"base must be float32, float64, float16 or bfloat16, got torch.int64"),
    ("base list int", lambda: ([BL[0], torch.zeros(2, dtype=torch.int32)], [ML], [1.0], {}), TypeError,
     r"base\[1\] must be float32, float64, float16 or bfloat16, got torch.int32"),
    ("base not a tensor", lambda: (3.0, [M], [1.0], {}), TypeError, r"base must be a tensor or a list of tensors"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input(backend, case):
    _, make, error, message = case
    base, models, weights, kw = make()
    with pytest.raises(error, match=message):
        task_merge(base, models, weights, backend=backend, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_through_named_merges(backend):
    with pytest.raises(ValueError, match=r"density must lie in \[0, 1\], got 1.5"):
        ties_merge(B, [M], [1.0], 1.5, backend=backend)
    with pytest.raises(ValueError, match=r"density must lie in \[0, 1\], got -0.1"):
        dare_merge(B, [M], [1.0], -0.1, seed=0, backend=backend)
    with pytest.raises(ValueError, match=r"seed must lie in \[0, 2\*\*64\), got -5"):
        dare_merge(B, [M], [1.0], 0.5, seed=-5, backend=backend)
    with pytest.raises(ValueError, match=r"weights\[0\] must be finite, got nan"):
        task_arithmetic(B, [M], [math.nan], backend=backend)
    with pytest.raises(ValueError, match=r"lam must be finite, got inf"):
        task_arithmetic(B, [M], [1.0], lam=math.inf, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_leaves_base_untouched(backend):
    base = torch.zeros(3)
    with pytest.raises(ValueError, match=r"weights\[1\] must be finite"):
        task_merge(base, [M, M], [1.0, math.inf], out=base, backend=backend)
    with pytest.raises(ValueError, match=r"seed must lie in"):
        dare_merge(base, [M], [1.0], 0.5, seed=-1, out=base, backend=backend)
    assert torch.equal(base, torch.zeros(3))


# ---------------------------------------------------------------------------
# The C++ kernel against the reference, bit for bit (the l1 rescale of fp64
# tensors within an ulp: its fp64 sums are added in another order).
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("sparsify,consensus,rescale", [
    (None, None, None), ("magnitude", "sum", None), ("magnitude", "count", "l1"), ("magnitude", None, "density"),
    ("random", None, "l1"), ("random", "sum", "density"), ("random", "count", None),
    ("magnitude_outliers", None, "l1"), ("magnitude_outliers", "sum", None), ("magnitude_outliers", "count", "density"),
])
@pytest.mark.parametrize("density", [0.0, 1 / 7, 0.5, 1.0])
def test_cpp_equals_reference(dtype, sparsify, consensus, rescale, density):
    g = torch.Generator().manual_seed(5)
    sizes = [(70001,), (3, 5), (1,), (0,)]
    base = [torch.randn(s, generator=g).to(dtype) for s in sizes]
    models = []
    for k in range(3):
        step = 0.01 if k else 0.25  # model 0's deltas on a coarse grid: many ties at the threshold
        models.append([(b.double() + torch.randint(-3, 4, b.shape, generator=g) * step).to(dtype) for b in base])
    for scope in ("tensor", "global"):
        kw = dict(sparsify=sparsify, density=density, consensus=consensus, rescale=rescale, normalize=True,
                  lam=0.7, scope=scope, seed=11, gamma=[0.0, 0.01, 0.6])
        want = task_merge(base, models, [0.5, 1.0, -0.25], backend="torch", **kw)
        got = task_merge(base, models, [0.5, 1.0, -0.25], backend="cpp", **kw)
        for x, y in zip(got, want):
            if dtype == torch.float64 and rescale == "l1":
                torch.testing.assert_close(x, y, rtol=4e-16, atol=0)
            else:
                assert torch.equal(x, y), (scope, (x != y).sum())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("K", range(1, 10))
@pytest.mark.parametrize("merge", [
    dict(),  # task arithmetic: one loop per tile
    dict(sparsify="magnitude", density=0.3, consensus="sum"),
    dict(sparsify="magnitude", density=0.3, consensus="count", rescale="l1"),
    dict(sparsify="random", density=0.4, rescale="l1", seed=5),
    dict(sparsify="random", density=0.4, consensus="sum", seed=6),
    dict(sparsify="magnitude_outliers", density=0.5, gamma=0.1, consensus="sum", rescale="l1"),
], ids=["ta", "ties_sum", "ties_count_l1", "dare_l1", "dare_ties", "breadcrumbs_ties_l1"])
def test_cpp_every_model_count(dtype, K, merge):
    """The C++ fused pass combines and writes in one loop compiled per model count up
    to 8 (task arithmetic also forms its factors there), and takes the general loops
    past it: each count equal to the reference bit for bit (fp64 with an l1 rescale
    within an ulp of the base's size: its fp64 sums are added in another order), with
    and without normalize, at sizes that end in a partial tile."""
    g = torch.Generator().manual_seed(K)
    sizes = [(1000,), (3, 5), (257,)]
    base = [torch.randn(s, generator=g).to(dtype) for s in sizes]
    models = [[(b.double() + 0.01 * torch.randn(b.shape, generator=g, dtype=torch.float64)).to(dtype) for b in base]
              for _ in range(K)]
    w = [0.3 + 0.25 * k * (-1) ** k for k in range(K)]
    for normalize, lam in ((False, 1.0), (True, 0.7)):
        want = task_merge(base, models, w, normalize=normalize, lam=lam, backend="torch", **merge)
        got = task_merge(base, models, w, normalize=normalize, lam=lam, backend="cpp", **merge)
        for x, y, b in zip(got, want, base):
            if dtype == torch.float64 and merge.get("rescale") == "l1":
                # An ulp of the l1 ratio, on base + delta: an ulp of the base's size.
                torch.testing.assert_close(x, y, rtol=4e-16, atol=4e-16 * float(b.abs().max()))
            else:
                assert torch.equal(x, y), (normalize, (x != y).sum())


@pytest.mark.parametrize("in_place", [False, True])
def test_opcheck(in_place):
    """The op's schema, fake kernel and dispatcher registration (torch.library.opcheck)."""
    g = torch.Generator().manual_seed(0)
    base = [torch.randn(37, generator=g), torch.randn(3, 4, generator=g).double()]
    models = [torch.randn(37, generator=g), torch.randn(3, 4, generator=g).double(),
              torch.randn(37, generator=g), torch.randn(3, 4, generator=g).double()]
    out = base if in_place else [torch.empty_like(b) for b in base]
    args = ([0.6, 0.4], [0.5, 0.5], [0.1, 0.2], "magnitude_outliers", "sum", "l1", True, 1.0, "global", 7)
    torch.library.opcheck(torch.ops.m2n2.task_merge_out, (base, models, out, *args))


def test_torch_compile():
    """task_merge inside torch.compile: one op, the same values."""
    g = torch.Generator().manual_seed(1)
    base, m0, m1 = (torch.randn(1000, generator=g) for _ in range(3))

    def f(b, x, y):
        return ties_merge(b, [x, y], [0.5, 0.5], 0.3) * 2

    torch.testing.assert_close(torch.compile(f, fullgraph=False)(base, m0, m1), f(base, m0, m1), rtol=0, atol=0)


# ---------------------------------------------------------------------------
# The Triton kernels (on a CUDA GPU where there is one, else in the interpreter on
# CPU tensors) against the reference and the C++ kernel on the CPU, bit for bit.
# Sizes are small: the interpreter runs each program's operations one numpy call at
# a time. bf16 results are exact too:
# the kernels round to bf16 on the bits, not with the interpreter's truncating cast.
# One tolerance, for the l1 rescale of fp64 tensors: its fp64 sums are added per
# block and then across blocks, the reference's by torch.sum, so s may move by an
# ulp (as between the C++ kernel and the reference), and the result by an ulp of
# its terms (values here are of order 1: an absolute 1e-15).
# ---------------------------------------------------------------------------

TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif("triton" not in available_backends(TRITON_DEVICE),
                                  reason="Triton needs a CUDA GPU or TRITON_INTERPRET=1 (conftest.py)")

COMBOS = [(None, None, None), ("magnitude", "sum", None), ("magnitude", "count", "l1"), ("magnitude", None, "density"),
          ("random", None, "l1"), ("random", "sum", "density"), ("random", "count", None)]


def assert_same(got, want, rescale=None):
    for i, (x, y) in enumerate(zip(got, want)):
        assert x.dtype == y.dtype and x.shape == y.shape
        if x.dtype == torch.float64 and rescale == "l1":
            torch.testing.assert_close(x, y, rtol=4e-16, atol=1e-15)
        else:
            assert torch.equal(x, y), (i, int((x != y).sum()))


def coarse_models(base, K, seed):
    """Model 0's deltas on a grid of 1/4 (many ties at any threshold), the others'
    on 1/100; a few deltas exactly 0."""
    g = gen(seed)
    return [[(b.double() + torch.randint(-3, 4, b.shape, generator=g) * (0.25 if k == 0 else 0.01)).to(b.dtype)
             for b in base] for k in range(K)]


def moved(x, device):
    """A tensor, or (nested) lists of them, on `device`."""
    if isinstance(x, torch.Tensor):
        return x.to(device)
    return [moved(t, device) for t in x]


def merge_all_backends(base, models, weights, **kw):
    """task_merge by torch (the reference) and cpp on the CPU, and by triton."""
    got = task_merge(moved(base, TRITON_DEVICE), moved(models, TRITON_DEVICE), weights, backend="triton", **kw)
    return [task_merge(base, models, weights, backend=b, **kw) for b in ("torch", "cpp")] + [moved(got, "cpu")]


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("sparsify,consensus,rescale", COMBOS)
def test_triton_equals_reference(dtype, sparsify, consensus, rescale):
    # Densities 0, 1/n, 0.1, 0.5 and 1 as the per-model densities of K = 5 (scope
    # "tensor"), K = 2 (scope "global"); K = 1: test_triton_single_model. Sizes 37
    # (odd) and 2 x 3.
    base = [randn(s, dtype, 7 + i) for i, s in enumerate([(37,), (2, 3)])]
    for scope, K, density in (("tensor", 5, [0.0, 1 / 37, 0.1, 0.5, 1.0]), ("global", 2, [1 / 43, 0.5])):
        models = coarse_models(base, K, 100 + K)
        weights = [0.5, -0.25, 1.0, 0.75, 0.3][:K]
        kw = dict(sparsify=sparsify, density=density, consensus=consensus, rescale=rescale, normalize=True,
                  lam=0.7, scope=scope, seed=2**64 - 11)
        want, cpp, got = merge_all_backends(base, models, weights, **kw)
        assert_same(got, want, rescale)
        assert_same(got, cpp, rescale)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_triton_single_model(dtype):
    # K = 1 at every density, each sparsification, consensus off and on.
    base = [randn(9, dtype, 1), randn((), dtype, 2)]
    models = coarse_models(base, 1, 3)
    for sparsify, consensus, rescale in (("magnitude", "sum", "l1"), ("random", None, "density")):
        for density in (0.0, 0.1, 0.5, 1.0):
            kw = dict(sparsify=sparsify, density=density, consensus=consensus, rescale=rescale, scope="global",
                      seed=4)
            want, cpp, got = merge_all_backends(base, models, [0.8], **kw)
            assert_same(got, want, rescale)
            assert_same(got, cpp, rescale)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64], ids=str)
def test_triton_ties_across_blocks(dtype):
    # Integer deltas in {-3..3}: each magnitude ~17 times in 120 elements, so the
    # threshold is shared; blocks of 16 split the ties, whose scan across blocks keeps
    # the lowest indices first, as one block of 2048 does.
    from m2n2_kernels.triton import task_merge as ttm

    n, g = 120, gen(12)
    base = [torch.randint(-4, 5, (n,), generator=g).to(dtype), torch.zeros(45, dtype=dtype)]
    models = [[b + torch.randint(-3, 4, b.shape, generator=g).to(dtype) for b in base] for _ in range(2)]
    for scope in ("tensor", "global"):
        kw = dict(sparsify="magnitude", density=[0.1, 0.55], consensus="sum", rescale="l1", normalize=True,
                  scope=scope)
        want = task_merge(base, models, [1.0, 0.5], backend="torch", **kw)
        for block in (16, 2048):  # 16: two histogram programs of four blocks each
            out = [torch.empty_like(b, device=TRITON_DEVICE) for b in base]
            ttm.task_merge_out(moved(base, TRITON_DEVICE), [t.to(TRITON_DEVICE) for m in models for t in m], out,
                               [1.0, 0.5], [0.1, 0.55], [0.0, 0.0], "magnitude", "sum", "l1", True, 1.0, scope, 0,
                               block=block)
            assert_same(moved(out, "cpu"), want, "l1")


@needs_triton
def test_triton_block_size_does_not_change_dare():
    from m2n2_kernels.triton import task_merge as ttm

    base = [randn(101, torch.float32, 1), randn(7, torch.float16, 2)]
    models = coarse_models(base, 3, 5)
    flat_models = [t.to(TRITON_DEVICE) for m in models for t in m]
    outs = []
    for block in (32, 2048):
        out = [torch.empty_like(b, device=TRITON_DEVICE) for b in base]
        ttm.task_merge_out(moved(base, TRITON_DEVICE), flat_models, out, [0.5, 0.3, 0.2], [0.3, 0.6, 0.9],
                           [0.0] * 3, "random", "count", "l1", True, 1.1, "global", 2**63 + 3, block=block)
        outs.append(moved(out, "cpu"))
    assert_same(outs[0], outs[1])
    assert_same(outs[0], task_merge(base, models, [0.5, 0.3, 0.2], sparsify="random", density=[0.3, 0.6, 0.9],
                                    consensus="count", rescale="l1", normalize=True, lam=1.1, scope="global",
                                    seed=2**63 + 3, backend="cpp"))


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_all_zero_deltas(dtype):
    # Every key 0: the k-th largest is 0, the ties are all elements, the l1 sums are
    # 0 (s = 1); out = base.
    base = randn(40, dtype, 3)
    for kw in (dict(sparsify="magnitude", density=0.3, consensus="sum", rescale="l1", normalize=True),
               dict(sparsify="random", density=0.5, consensus="count", rescale="l1"),
               dict(sparsify="magnitude", density=0.5, rescale="density")):
        want, cpp, got = merge_all_backends(base, [base.clone(), base.clone()], [0.5, 1.0], **kw)
        assert torch.equal(got, base) and torch.equal(got, want) and torch.equal(got, cpp)


@needs_triton
@pytest.mark.parametrize("merge,scope", [("ties", "tensor"), ("ties_count_global", "global"),
                                         ("dare_density", "global"), ("dare_ties", "tensor")])
def test_triton_mixed_list(merge, scope):
    # bf16, fp32, fp64, empty, 0-d and fp16 positions in one call: a global unit
    # with fp64 selects on 64-bit keys.
    kw = dict(MERGES[merge], scope=scope)
    base = mixed_list(0)
    models = [mixed_list(10), mixed_list(20)]
    want, cpp, got = merge_all_backends(base, models, [0.6, -0.2], **kw)
    assert_same(got, want, kw.get("rescale"))
    assert_same(got, cpp, kw.get("rescale"))


@needs_triton
@pytest.mark.parametrize("merge", ["ties_count_global", "dare_ties"])
def test_triton_out_in_place_and_fresh(merge):
    # In place: each element is read, by the program that writes it, before it is.
    kw = MERGES[merge]
    base = moved([randn((6, 11), torch.float32, 0), randn(5, torch.bfloat16, 1)], TRITON_DEVICE)
    models = [[randn(b.shape, b.dtype, 10 * k + i).to(TRITON_DEVICE) for i, b in enumerate(base)] for k in (1, 2)]
    want = task_merge(base, models, [0.6, 0.5], backend="triton", **kw)
    outs = [torch.full_like(b, math.nan) for b in base]
    got = task_merge(base, models, [0.6, 0.5], out=outs, backend="triton", **kw)
    assert all(g is o for g, o in zip(got, outs))
    assert_same(got, want)
    got = task_merge(base, models, [0.6, 0.5], out=base, backend="triton", **kw)
    assert all(g is b for g, b in zip(got, base))
    assert_same(base, want)


@needs_triton
def test_triton_registered_op_wrapper():
    # The function ops.py registers as the op's CUDA implementation where no CUDA C++
    # was compiled: the op's checks first, then the Triton launcher.
    from m2n2_kernels import ops

    base, models = [randn(50, torch.float32, 1)], [randn(50, torch.float32, 2), randn(50, torch.float32, 3)]
    args = ([0.6, 0.4], [0.3, 0.7], [0.01, 0.01], "magnitude", "count", "l1", True, 0.9, "tensor", 5)
    want = [torch.empty(50)]
    torch.ops.m2n2.task_merge_out(base, models, want, *args)
    base, models = moved(base, TRITON_DEVICE), moved(models, TRITON_DEVICE)
    got = [torch.empty(50, device=TRITON_DEVICE)]
    ops.triton_task_merge_out(base, models, got, *args)
    assert torch.equal(got[0].cpu(), want[0])
    with pytest.raises(ValueError, match=r"density must lie in \[0, 1\], got 1.5"):
        ops.triton_task_merge_out(base, models, got, [0.6, 0.4], [0.3, 1.5], *args[2:])
    with pytest.raises(ValueError, match=r"weights must hold one number per model \(K = 2\), got 1"):
        ops.triton_task_merge_out(base, models, got, [0.6], *args[1:])


def _virtual_zeros(numel, dtype):
    """A zero tensor whose pages exist only once touched (an anonymous mapping)."""
    if sys.maxsize < 2**40 or not sys.platform.startswith("linux"):
        pytest.skip("needs a 64-bit Linux address space")
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    try:
        mem = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x4000)  # MAP_NORESERVE
    except (OSError, OverflowError, ValueError) as e:
        pytest.skip(f"cannot map {nbytes} bytes of address space: {e}")
    return torch.frombuffer(mem, dtype=dtype)


@needs_triton
@pytest.mark.parametrize("start", [5 * 2**31, 5 * 2**31 + 3], ids=["aligned", "unaligned"])
def test_triton_index_past_2_pow_31(start):
    # The last blocks of a tensor of 2**31 + 3000 elements (launched through
    # block_offset): addresses, unit indices and the DARE counters past 2**31 must be
    # computed in 64 bits; a 32-bit wrap would read, draw or write elsewhere. Interpreter
    # only (on a GPU this would need gigabytes).
    import triton.language as tl
    from m2n2_kernels.triton import task_merge as ttm
    from m2n2_kernels.triton._utils import double_bits

    if torch.cuda.is_available():
        pytest.skip("runs the interpreter on CPU tensors")
    n, block, seed = 2**31 + 3000, 1024, 2**64 - 77
    base, model, out = (_virtual_zeros(n, torch.float16) for _ in range(3))
    first = n // block - 1  # the last two blocks (the last one partial)
    lo = first * block
    model[lo:] = 1.0
    # start: the tensor's first unit index (a position of a global unit): draws past
    # 2**33, by Philox calls per 8 (hi16) and 16 (lo8) elements (aligned) or one
    # element at a time.
    table = torch.tensor([model.data_ptr()], dtype=torch.int64)
    one = torch.ones(1, dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.int64)
    kinds = torch.tensor([ttm.KEEP_SOME.value], dtype=torch.int32)
    dthr = torch.tensor([ttm.dare_threshold(0.4)], dtype=torch.int64)
    ttm._fused_kernel[(2,)](
        base, out, table, kinds, one, one, zero, zero, zero, dthr, n, start, 1, 1, 0, double_bits(1.0),
        double_bits(1.0), seed & 0xFFFFFFFF, seed >> 32, ttm._DARE_STREAM_HI, first,
        BLOCK=block, CDT=tl.float32, WIDE=False, SPARSIFY=2, CONSENSUS=0, NORMALIZE=False, ALIGNED=start % 16 == 0,
    )
    want = dare_uniform24(seed, DARE_STREAM, torch.arange(start + lo, start + n)) < 0.4
    assert torch.equal(out[lo:], want.to(torch.float16))
    assert not out[lo - 64:lo].any()  # nothing written before the first block launched
    # The histogram of the top digit over the same blocks: every key is that of 1.0.
    hist = torch.zeros((1, ttm.BINS), dtype=torch.int64)
    ttm._hist_kernel[(2,)](base, table, kinds, zero, hist, n, 1, 20, 11, first, BLOCK=block, TILES=1, BINS=ttm.BINS,
                           CDT=tl.float32, WIDE=False)
    assert hist.sum() == n - lo and hist[0, 0x3F800000 >> 20] == n - lo
    # TIES over the same blocks, every |d| at the threshold: the statistics count the
    # ties per block (rows of the per-block tables: block_base = -first), and the fused
    # pass keeps the first `need` of them by the scan.
    thr = torch.tensor([0x3F800000], dtype=torch.int64)
    abs_part, kept_part = torch.zeros(1, 2, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64)
    ties = torch.zeros(1, 2, dtype=torch.int64)
    ttm._stats_kernel[(2,)](base, table, kinds, thr, dthr, abs_part, kept_part, ties, n, start, 1, 2, -first,
                            seed & 0xFFFFFFFF, seed >> 32, ttm._DARE_STREAM_HI, first, BLOCK=block, CDT=tl.float32,
                            WIDE=False, SPARSIFY=1, ALIGNED=start % 16 == 0)
    assert ties.tolist() == [[block, n - lo - block]] and abs_part.tolist() == [[block, n - lo - block]]
    need = torch.tensor([1500], dtype=torch.int64)
    ttm._fused_kernel[(2,)](
        base, out, table, kinds, one, one, thr, need, ties.cumsum(1) - ties, dthr, n, start, 1, 2, -first,
        double_bits(1.0), double_bits(1.0), 0, 0, 0, first,
        BLOCK=block, CDT=tl.float32, WIDE=False, SPARSIFY=1, CONSENSUS=0, NORMALIZE=False, ALIGNED=True,
    )
    assert torch.equal(out[lo:], (torch.arange(n - lo) < 1500).to(torch.float16))


try:  # a kernel that stores _draws24's draws (module level: the interpreter resolves names in its globals)
    import triton
    import triton.language as tl
    from m2n2_kernels.triton import task_merge as ttm

    @triton.jit
    def _draws24_kernel(out_ptr, first, k, seed_lo, seed_hi, stream_hi, BLOCK: tl.constexpr, ALIGNED: tl.constexpr):
        tl.store(out_ptr + tl.arange(0, BLOCK), ttm._draws24(first, k, seed_lo, seed_hi, stream_hi, BLOCK, ALIGNED))
except ImportError:
    pass


@needs_triton
@pytest.mark.parametrize("first,block", [(0, 16), (2**35 - 32, 64), (2**36 - 32, 64), (5, 64), (2**35 - 37, 64),
                                         (2**36 - 37, 64)],
                         ids=["aligned", "aligned_wrap_hi", "aligned_wrap_lo", "unaligned", "unaligned_wrap_hi",
                              "unaligned_wrap_lo"])
def test_triton_draws24_equal_reference(first, block):
    # _draws24 alone, bit for bit against dare_uniform24: the aligned path (one Philox
    # call per 8 elements for hi16 and per 16 for lo8, interleaved into element order;
    # block 16: two calls for hi16, one for lo8) and the unaligned one (a call per
    # element), across the counters whose low word wraps: hi16's i >> 3 = 2**32 (past
    # 2**35) and lo8's i >> 4 = 2**32 (past 2**36).
    seed, k = 2**64 - 77, 3
    out = torch.empty(block, dtype=torch.int32, device=TRITON_DEVICE)
    _draws24_kernel[(1,)](out, first, k, seed & 0xFFFFFFFF, seed >> 32, ttm._DARE_STREAM_HI, BLOCK=block,
                          ALIGNED=first % 16 == 0)
    want = dare_uniform24(seed, DARE_STREAM + k, torch.arange(first, first + block)) * 2**24
    assert torch.equal(out.cpu().to(torch.int64), want.to(torch.int64))


# Compiled for a GPU (sm_90) without one, in a process without the interpreter: the
# kernels lower (pointer tables, histograms, int64 atomics), and the PTX of the
# fused pass holds no FMA (Triton would contract a * b + c) and no approximate
# division: the roundings that make it equal the C++ kernel.
_COMPILE_CHECK = r"""
from m2n2_kernels.triton import task_merge as ttm

fused = ["*bf16", "*bf16", "*i64", "*i32", "*fp64", "*fp64", "*i64", "*i64", "*i64", "*i64"]
ptx = [compile_ptx(ttm._fused_kernel, fused, dict(BLOCK=2048, CDT=tl.float32, WIDE=False, SPARSIFY=1, CONSENSUS=1,
                                                  NORMALIZE=True, ALIGNED=True)),
       compile_ptx(ttm._fused_kernel, fused, dict(BLOCK=2048, CDT=tl.float32, WIDE=True, SPARSIFY=2, CONSENSUS=2,
                                                  NORMALIZE=True, ALIGNED=False)),
       compile_ptx(ttm._fused_kernel, fused, dict(BLOCK=2048, CDT=tl.float32, WIDE=False, SPARSIFY=2, CONSENSUS=0,
                                                  NORMALIZE=False, ALIGNED=True)),
       compile_ptx(ttm._fused_kernel, ["*fp64", "*fp64"] + fused[2:],
                   dict(BLOCK=2048, CDT=tl.float64, WIDE=True, SPARSIFY=0, CONSENSUS=0, NORMALIZE=True, ALIGNED=True))]
compile_ptx(ttm._hist_kernel, ["*bf16", "*i64", "*i32", "*i64", "*i64"],
            dict(BLOCK=2048, TILES=4, BINS=ttm.BINS, CDT=tl.float32, WIDE=True))
compile_ptx(ttm._stats_kernel, ["*fp64", "*i64", "*i32", "*i64", "*i64", "*fp64", "*fp64", "*i64"],
            dict(BLOCK=2048, CDT=tl.float64, WIDE=True, SPARSIFY=1, ALIGNED=True))
for p in ptx:
    assert "fma." not in p and "div.full" not in p and "div.approx" not in p, "contracted or approximate"
print("ok")
"""


@pytest.mark.skipif(not TRITON, reason="needs triton")
def test_triton_compiles_for_gpu_without_fma():
    from conftest import run_triton_compile_check

    run_triton_compile_check(_COMPILE_CHECK)


# ---------------------------------------------------------------------------
# The C++ TIES thresholds by candidate window (task_merge_kernels.cpp): a sample
# of each model's keys picks a window around its k-th largest; one pass counts and
# keeps the keys inside it; where the window misses (or its candidates would not
# fit), the radix passes select instead. Both paths must equal the reference bit
# for bit; M2N2_TIES_SELECT=window makes a fallback an error, so each case also
# asserts which path ran. Units of >= 2^18 elements: smaller ones skip the window.
# The candidates of a unit stay within the call's memory budget (0.5% of its inputs,
# 512 KiB at least: task_merge_kernels.h), which the cases here (one tensor) hold at
# the least.
# ---------------------------------------------------------------------------

WINDOW_N = 1 << 21


def window_case(kind, dtype, n=WINDOW_N, K=3, seed=0):
    """A base and K models whose deltas follow `kind`."""
    g = torch.Generator().manual_seed(seed)
    base = (torch.randn(n, generator=g) * 0.02).to(dtype)
    models = []
    for k in range(K):
        if kind == "normal":  # the benchmark's: N(0, 0.001^2) deltas
            d = torch.randn(n, generator=g) * 1e-3
        elif kind == "equal":  # every |d| equal: the threshold's ties are the whole unit
            d = (torch.randint(0, 2, (n,), generator=g) * 2 - 1) * 2.0 ** -8
        elif kind == "gap":  # 25% near 1, the rest near 1e-3: the 0.2 quantile inside the top cluster's spread,
            top = torch.rand(n, generator=g) < 0.25  # density 0.25 exactly at the gap
            d = torch.where(top, 1 + torch.rand(n, generator=g), 1e-3 * torch.rand(n, generator=g))
        elif kind == "grid":  # 7 magnitudes: many ties at the threshold
            d = torch.randint(-3, 4, (n,), generator=g) * 2.0 ** -6
        elif kind == "aliased":  # large deltas only where the deterministic sample does not look
            i = torch.arange(n)
            d = torch.where(i % 128 < 32, 1.0 + torch.rand(n, generator=g), 1e-3 * torch.rand(n, generator=g))
        else:
            raise ValueError(kind)
        models.append((base.double() + d.double()).to(dtype))
    return base, models


def ties_by(select, monkeypatch, base, models, **kw):
    monkeypatch.setenv("M2N2_TIES_SELECT", select)
    return task_merge(base, models, [0.5, 1.0, -0.25][:len(models)], backend="cpp", sparsify="magnitude",
                      consensus="sum", normalize=True, lam=0.7, **kw)


@pytest.mark.parametrize("kind,dtype,density,rescale,path", [
    ("normal", torch.float32, 0.2, None, "window"),
    ("normal", torch.bfloat16, 0.2, None, "window"),  # bf16 deltas tie at lo and hi: few keys inside
    ("normal", torch.float16, 0.2, None, "window"),
    # 8-byte keys: K = 3 windows' candidates (~0.8% of the inputs) exceed the call's memory budget (0.5%)
    ("normal", torch.float64, 0.2, None, "radix"),
    ("normal", torch.float64, 0.02, None, "window"),  # a narrower window: within it
    ("normal", torch.bfloat16, 0.2, "l1", "window"),
    ("normal", torch.float32, 1 / WINDOW_N, None, "window"),  # k = 1
    ("normal", torch.float32, 0.999, None, "window"),
    ("normal", torch.float32, 1.0, None, "window"),  # every element kept: nothing to select
    ("equal", torch.float32, 0.2, None, "window"),
    ("equal", torch.bfloat16, 0.5, "l1", "window"),
    ("gap", torch.float32, 0.25, None, "window"),
    ("gap", torch.float32, 0.2, None, "window"),
    ("grid", torch.bfloat16, 0.3, None, "window"),
    ("grid", torch.float32, 0.1, "l1", "window"),
    ("aliased", torch.float32, 0.2, None, "radix"),
    ("aliased", torch.bfloat16, 0.2, "l1", "radix"),
])
def test_cpp_ties_window_equals_reference(monkeypatch, kind, dtype, density, rescale, path):
    base, models = window_case(kind, dtype)
    want = task_merge(base, models, [0.5, 1.0, -0.25], backend="torch", sparsify="magnitude", density=density,
                      consensus="sum", rescale=rescale, normalize=True, lam=0.7)
    got = ties_by("auto", monkeypatch, base, models, density=density, rescale=rescale)
    radix = ties_by("radix", monkeypatch, base, models, density=density, rescale=rescale)
    if dtype == torch.float64 and rescale == "l1":
        torch.testing.assert_close(got, want, rtol=4e-16, atol=0)
    else:
        assert torch.equal(got, want), (got != want).sum()
    assert torch.equal(got, radix)
    if path == "window":  # the window selected every threshold
        ties_by("window", monkeypatch, base, models, density=density, rescale=rescale)
    else:  # the window missed: the radix passes selected
        with pytest.raises(RuntimeError, match="needed the radix passes"):
            ties_by("window", monkeypatch, base, models, density=density, rescale=rescale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cpp_ties_window_smallest_unit(monkeypatch, dtype):
    """The smallest units the window takes (2^18 elements and up; an odd length, so the
    last tile is partial): the sample is n / 16 keys, the window wider; equal to the
    reference and to the radix passes, and the window selected every threshold."""
    base, models = window_case("normal", dtype, n=(1 << 18) + 17, seed=9)
    kw = dict(density=0.2, rescale="l1")
    want = task_merge(base, models, [0.5, 1.0, -0.25], backend="torch", sparsify="magnitude", consensus="sum",
                      normalize=True, lam=0.7, **kw)
    got = ties_by("window", monkeypatch, base, models, **kw)
    assert torch.equal(got, want), (got != want).sum()
    assert torch.equal(got, ties_by("radix", monkeypatch, base, models, **kw))


@pytest.mark.parametrize("kind,dtype,density,gamma,rescale", [
    ("normal", torch.float32, 0.5, 0.01, None),
    ("grid", torch.bfloat16, 0.3, 0.05, "l1"),  # ties at both thresholds
    ("normal", torch.float64, 0.9, 0.2, "l1"),  # n - t < top: the t smallest
])
def test_cpp_breadcrumbs_window_equals_reference(monkeypatch, kind, dtype, density, gamma, rescale):
    """magnitude_outliers selects its two thresholds per model as TIES selects one (2K
    virtual models): by the candidate windows in a 2^21-element unit, equal to the
    reference and to the radix passes."""
    base, models = window_case(kind, dtype)
    kw = dict(sparsify="magnitude_outliers", density=density, gamma=gamma, consensus="sum", rescale=rescale,
              normalize=True, lam=0.7)
    want = task_merge(base, models, [0.5, 1.0, -0.25], backend="torch", **kw)
    got = {}
    for select in ("auto", "radix"):
        monkeypatch.setenv("M2N2_TIES_SELECT", select)
        got[select] = task_merge(base, models, [0.5, 1.0, -0.25], backend="cpp", **kw)
    if dtype == torch.float64 and rescale == "l1":  # an ulp of the l1 ratio, on base + delta
        torch.testing.assert_close(got["auto"], want, rtol=4e-16, atol=4e-16 * float(base.abs().max()))
    else:
        assert torch.equal(got["auto"], want), (got["auto"] != want).sum()
    assert torch.equal(got["auto"], got["radix"])


def test_cpp_ties_window_global_scope_and_small_units(monkeypatch):
    """A global unit over several tensors (chunks of different tensors, ties kept in
    flat index order across them) takes the window; per tensor, the unit below 2^18
    elements takes the radix passes; both equal the reference."""
    b1, m1 = window_case("grid", torch.bfloat16, n=WINDOW_N - 1000, seed=1)
    b2, m2 = window_case("normal", torch.bfloat16, n=3000, seed=2)
    base = [b1, b2.reshape(30, 100)]
    models = [[x, y.reshape(30, 100)] for x, y in zip(m1, m2)]
    for scope, path in (("global", "window"), ("tensor", "radix")):
        kw = dict(density=0.3, scope=scope)
        want = task_merge(base, models, [0.5, 1.0, -0.25], backend="torch", sparsify="magnitude", consensus="sum",
                          normalize=True, lam=0.7, **kw)
        got = ties_by("auto", monkeypatch, base, models, **kw)
        for x, y in zip(got, want):
            assert torch.equal(x, y), scope
        if path == "window":
            ties_by("window", monkeypatch, base, models, **kw)
        else:
            with pytest.raises(RuntimeError, match="needed the radix passes"):
                ties_by("window", monkeypatch, base, models, **kw)


@pytest.mark.parametrize("memory,path", [("0", "radix"), ("4000000000", "window")])
def test_cpp_selection_memory_budget(monkeypatch, memory, path):
    """M2N2_SELECTION_MEMORY overrides the call's memory budget (task_merge_kernels.h).
    0: every radix digit 8 bits wide (4 passes over 32-bit keys, 8 over 64-bit ones),
    nothing collected and no room for a window's candidates (the radix passes select);
    4 GB: 16-bit digits, and the window's sample stored rather than recomputed in each
    of its passes. TIES and Model Breadcrumbs over a window-sized fp32 tensor and a
    small fp64 one (64-bit keys; one unit of them with the global scope): equal to the
    reference either way."""
    monkeypatch.setenv("M2N2_SELECTION_MEMORY", memory)
    b1, m1 = window_case("normal", torch.float32, seed=5)
    b2, m2 = window_case("grid", torch.float64, n=5000, seed=6)
    base = [b1, b2]
    models = [[x, y] for x, y in zip(m1, m2)]
    w = [0.5, 1.0, -0.25]
    for scope in ("tensor", "global"):
        for kw in (dict(sparsify="magnitude", density=0.2, consensus="sum", normalize=True, lam=0.7),
                   dict(sparsify="magnitude_outliers", density=0.3, gamma=0.02, rescale="l1", lam=0.7)):
            want = task_merge(base, models, w, backend="torch", scope=scope, **kw)
            got = task_merge(base, models, w, backend="cpp", scope=scope, **kw)
            for x, y in zip(got, want):
                if x.dtype == torch.float64 and "rescale" in kw:  # an ulp of the l1 ratio, as above
                    torch.testing.assert_close(x, y, rtol=4e-16, atol=4e-16 * float(b2.abs().max()))
                else:
                    assert torch.equal(x, y), (scope, kw["sparsify"], (x != y).sum())
    if path == "window":
        ties_by("window", monkeypatch, b1, m1, density=0.2)
    else:
        with pytest.raises(RuntimeError, match="needed the radix passes"):
            ties_by("window", monkeypatch, b1, m1, density=0.2)


def test_cpp_ties_select_env_checked(monkeypatch):
    base, models = window_case("normal", torch.float32, n=100)
    monkeypatch.setenv("M2N2_TIES_SELECT", "fast")
    with pytest.raises(ValueError, match="M2N2_TIES_SELECT"):
        task_merge(base, models, [1.0, 1.0, 1.0], backend="cpp", sparsify="magnitude", density=0.5)
    monkeypatch.setenv("M2N2_TIES_SELECT", "auto")
    for bad in ("-1", "1e6", "lots"):
        monkeypatch.setenv("M2N2_SELECTION_MEMORY", bad)
        with pytest.raises(ValueError, match="M2N2_SELECTION_MEMORY"):
            task_merge(base, models, [1.0, 1.0, 1.0], backend="cpp", sparsify="magnitude", density=0.5)


@pytest.mark.parametrize("scope", ["tensor", "global"])
def test_cpp_independent_of_the_thread_count(monkeypatch, scope):
    """The C++ kernel's results do not depend on its threads: chunks are cut whatever
    the thread count, counts are integers, fp64 sums are added in chunk order, the
    window's sample has fixed places. TIES by the window (a 2^21-element tensor) and
    by the radix passes (small tensors), with an l1 rescale; DARE with the l1 rescale
    and DARE-TIES; Model Breadcrumbs with the l1 rescale; at 1, 2 and 3 threads, bit
    for bit."""
    b1, m1 = window_case("normal", torch.float32, n=WINDOW_N + 12345, seed=3)
    b2, m2 = window_case("grid", torch.bfloat16, n=70_001, seed=4)
    base = [b1, b2]
    models = [[x, y] for x, y in zip(m1, m2)]
    w = [0.5, 1.0, -0.25]
    merges = {
        "ties": dict(sparsify="magnitude", density=0.2, consensus="sum", normalize=True),
        "ties_l1": dict(sparsify="magnitude", density=0.3, consensus="count", rescale="l1"),
        "dare_l1": dict(sparsify="random", density=0.3, rescale="l1", seed=11),
        "dare_ties": dict(sparsify="random", density=0.5, consensus="sum", rescale="l1", normalize=True, seed=12),
        "breadcrumbs_l1": dict(sparsify="magnitude_outliers", density=0.4, gamma=0.02, rescale="l1"),
    }
    monkeypatch.setenv("M2N2_TIES_SELECT", "auto")
    threads = torch.get_num_threads()
    try:
        results = {}
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            for name, kw in merges.items():
                results.setdefault(name, []).append(task_merge(base, models, w, backend="cpp", scope=scope, **kw))
    finally:
        torch.set_num_threads(threads)
    for name, runs in results.items():
        for other in runs[1:]:
            for x, y in zip(runs[0], other):
                assert torch.equal(x.view(torch.int16 if x.dtype == torch.bfloat16 else torch.int32),
                                   y.view(torch.int16 if y.dtype == torch.bfloat16 else torch.int32)), name
