"""Tests that tell the semantic rules apart (docs/semantics.md), on every backend.

The other op tests compare the backends with reference.py, so a rule broken in the
reference and in the kernels alike passes them. Each test here checks a rule against
values worked out independently (by hand, or by the formula in fp64 written out
again here), on inputs chosen so that the rule's alternatives give different answers:
- the slerp angle on correlated and nearly antiparallel parents, where its precision
  matters (on unrelated parents, cos omega ~ 0, a sloppy angle passes);
- the lerp fallback at sin(omega) <= 1e-6, on both sides of the threshold;
- the child counted in z when replacing;
- the zero guard of z, alpha, capacity, eps, and replacement ties;
- negative scores refused, with the same words everywhere.
"""
import math

import pytest
import torch
from conftest import available_backends

import m2n2_kernels as mk

BACKENDS = available_backends("cpu")
# The Triton interpreter runs programs one by one in numpy: smaller vectors there.
BIG = {"torch": 2**20 + 3, "cpp": 2**20 + 3, "triton": 2**16 + 3}


# ---------------------------------------------------------------------------
# Crossover: the angle and the fallback.
# ---------------------------------------------------------------------------


def parents_at_angle(n, cosine, seed=0):
    """fp64 parents with <a/|a|, b/|b|> = cosine (to fp64 rounding), |b| = 2 |a|."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, generator=g, dtype=torch.float64)
    c = torch.randn(n, generator=g, dtype=torch.float64)
    c -= (c @ a) / (a @ a) * a  # orthogonal to a
    c *= a.norm() / c.norm()
    b = 2 * (cosine * a + math.sqrt(max(0.0, 1 - cosine**2)) * c)
    return a, b


def slerp_oracle(a, b, split, w, omega):
    """The child by the formula of docs/semantics.md, in fp64, with the angle's sums
    in fp64 over the values as stored. Returns (child, |ca| |a| + |cb| |b|), the
    second bounding the rounding of a kernel's fp32 arithmetic."""
    a, b = a.double(), b.double()

    def coefs(x, y, t):
        na, nb = x.norm().item(), y.norm().item()
        if na > 0 and nb > 0:
            om = math.acos(max(-1.0, min(1.0, (x @ y).item() / (na * nb))))
            if math.sin(om) > 1e-6:
                return math.sin((1 - t) * om) / math.sin(om), math.sin(t * om) / math.sin(om)
        return 1 - t, t

    sides = [(slice(0, split), w), (slice(split, a.numel()), 1 - w)]
    child, scale = torch.empty_like(a), torch.empty_like(a)
    for side, t in sides:
        x, y = (a, b) if omega == "global" else (a[side], b[side])
        ca, cb = coefs(x, y, t)
        child[side] = ca * a[side] + cb * b[side]
        scale[side] = abs(ca) * a[side].abs() + abs(cb) * b[side].abs()
    return child, scale


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("cosine", [0.9, 0.99, -0.999])
@pytest.mark.parametrize("omega", ["global", "segment"])
def test_slerp_angle_on_correlated_parents(backend, dtype, cosine, omega):
    n = BIG[backend]
    a, b = (t.to(dtype) for t in parents_at_angle(n, cosine, seed=3))
    split, w = n // 3, 0.3
    want, scale = slerp_oracle(a, b, split, w, omega)
    got = mk.split_interpolate(a, b, split, w, method="slerp", omega=omega, backend=backend).double()
    # fp32 element maths: a few roundings of the terms; bf16 storage: one rounding of
    # the result. An angle off by a sloppy sum moves the child far more (the
    # coefficients are ~18 for the nearly antiparallel pair).
    unit = 2.0**-24 if dtype == torch.float32 else 2.0**-8
    err = (got - want).abs() - 4 * unit * scale - (want.abs() * unit if dtype != torch.float32 else 0)
    worst = int(err.argmax())
    assert err[worst] <= 0, f"element {worst}: got {got[worst].item()}, want {want[worst].item()}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sin_omega,falls_back", [(1e-7, True), (3e-6, False), (1e-5, False)])
def test_lerp_fallback_threshold(backend, sin_omega, falls_back):
    # In fp64 the slerp coefficients differ from lerp's by ~omega^2 / 6 relative
    # (1e-11 at omega = 1e-5): visible in the output, so the threshold is pinned from
    # both sides (moved to 1e-3 or to 1e-8, one of these cases fails).
    a, b = parents_at_angle(4097, math.cos(math.asin(sin_omega)), seed=5)
    kw = dict(backend=backend)
    slerp = mk.split_interpolate(a, b, 1000, 0.3, method="slerp", **kw)
    lerp = mk.split_interpolate(a, b, 1000, 0.3, method="lerp", **kw)
    assert torch.equal(slerp, lerp) == falls_back
    if not falls_back:
        want, scale = slerp_oracle(a, b, 1000, 0.3, "global")
        assert bool(((slerp - want).abs() <= 16 * 2.0**-53 * scale).all())  # a few roundings, both sides


@pytest.mark.parametrize("backend", BACKENDS)
def test_fallback_for_a_zero_parent(backend):
    a, b = torch.zeros(33), torch.randn(33)
    got = mk.split_interpolate(a, b, 10, 0.25, method="slerp", backend=backend)
    assert torch.equal(got, mk.split_interpolate(a, b, 10, 0.25, method="lerp", backend=backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_split_side(backend):
    # t = w before the split, 1 - w from it on: element `split` itself takes 1 - w.
    a, b = torch.zeros(8, dtype=torch.float64), torch.ones(8, dtype=torch.float64)
    got = mk.split_interpolate(a, b, 3, 0.25, method="lerp", backend=backend)
    assert got.tolist() == [0.25] * 3 + [0.75] * 5


# ---------------------------------------------------------------------------
# Niche statistics: hand-worked cases.
# ---------------------------------------------------------------------------

SCORE_DTYPES = [torch.bool, torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", SCORE_DTYPES, ids=str)
def test_the_child_counts_in_z(backend, dtype):
    # With the child in z: z = [1, 2, 2, 2, 3], fitness [11/6, 11/6, 4/3], the child is
    # the worst (-1). Without it: z = [1, 1, 2, 1, 2], fitness [3, 2, 5/2]: row 1.
    S = torch.tensor([[0, 1, 1, 1, 1], [1, 0, 1, 0, 1]]).to(dtype)
    child = torch.tensor([0, 1, 0, 1, 1]).to(dtype)
    fit = mk.fitness(S, child=child, backend=backend).double()
    torch.testing.assert_close(fit, torch.tensor([11 / 6, 11 / 6, 4 / 3], dtype=torch.float64), rtol=1e-6, atol=0)
    assert mk.replace_index(S, child, backend=backend) == -1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bool, torch.float32, torch.float64], ids=str)
def test_zero_guard_alpha_capacity_eps(backend, dtype):
    # Column 2 is all zero (z = 0 becomes 1 before the power: no division by zero and
    # no effect, as its scores are 0). z = [2, 1, 0, 1].
    S = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 1]]).to(dtype)
    cap = torch.tensor([1.0, 2.0, 5.0, 0.5], dtype=torch.float64)

    def want(alpha, eps, c):
        u = [c[j] / ((z if z != 0 else 1) ** alpha + eps) for j, z in enumerate([2, 1, 0, 1])]
        fit = [sum(u[j] * float(S[i, j]) for j in range(4)) for i in range(2)]
        att = [[sum(u[j] * max(float(S[q, j]) - float(S[p, j]), 0) for j in range(4)) for q in range(2)]
               for p in range(2)]
        return torch.tensor(fit, dtype=torch.float64), torch.tensor(att, dtype=torch.float64)

    for alpha, eps, c in [(1.0, 0.0, None), (0.0, 0.0, None), (2.0, 0.0, None), (0.5, 0.25, None), (1.0, 0.0, cap),
                          (1.0, 1.0, cap)]:
        fit, att = want(alpha, eps, [1.0] * 4 if c is None else c.tolist())
        st = mk.niche_stats(S, alpha=alpha, eps=eps, capacity=c, backend=backend)
        torch.testing.assert_close(st.fitness.double(), fit, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(st.attraction.double(), att, rtol=1e-6, atol=1e-7)
        assert st.z.tolist() == [2, 1, 0, 1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_replacement_ties_go_to_the_lowest_index(backend):
    S = torch.tensor([[1, 0], [0, 1], [1, 0]], dtype=torch.float32)
    assert mk.replace_index(S, torch.tensor([0.0, 1.0]), backend=backend) == 0
    # the child tied with the worst rows: the lowest index is a row, not the child
    S2 = torch.tensor([[1, 0], [0, 1]], dtype=torch.float32)
    assert mk.replace_index(S2, torch.tensor([1.0, 0.0]), backend=backend) == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_negative_scores_are_refused_in_the_same_words(backend, dtype):
    # Scores are resources shared among the models that earn them: a negative one
    # (a log-probability) would make z, and so every weight, meaningless.
    S = torch.tensor([[0.0, 0.5, 0.25], [1.0, -0.5, 0.5]], dtype=dtype)
    msg = r"S\[1, 1\] = -0.5: scores must be >= 0 \(log-probabilities are not: use sample_scores\(kind='prob'\)\)"
    for call in (lambda: mk.fitness(S, backend=backend), lambda: mk.attraction(S, backend=backend),
                 lambda: mk.niche_stats(S, parent=0, backend=backend)):
        with pytest.raises(ValueError, match=msg):
            call()
    with pytest.raises(ValueError, match=r"child\[2\] = -0.25: scores must be >= 0"):
        mk.replace_index(S.abs(), torch.tensor([0.0, 1.0, -0.25], dtype=dtype), backend=backend)
    # scores above 1 are fine (a count, a reward): every backend agrees
    fit = mk.fitness(S.abs() * 3, backend=backend)
    torch.testing.assert_close(fit, mk.fitness(S.abs() * 3, backend="torch"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_replace_index_without_datapoints(backend):
    assert mk.replace_index(torch.rand(3, 0), torch.rand(0), backend=backend) == 0
    assert mk.fitness(torch.rand(3, 0), child=torch.rand(0), backend=backend).tolist() == [0.0] * 4
