"""Niche statistics: every backend against reference.py, and reference.py against a
direct transcription of the docs/semantics.md formulas."""
import pytest
import torch
from conftest import device_backend_params

import m2n2_kernels as mk
from m2n2_kernels import reference

DTYPES = [torch.bool, torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64]
# (N, D): one row or column, odd sizes, sizes around the vector widths and the
# 64-bit words of packed 0/1 scores, and the digits experiment's archive.
SHAPES = [(1, 1), (1, 9), (3, 1), (2, 64), (5, 13), (7, 65), (20, 1437), (33, 200), (67, 130)]
ALPHAS = [0.0, 0.5, 1.0, 2.0]


def make_scores(n, d, dtype, device="cpu", seed=0):
    """Right-or-wrong scores for bool/uint8, values in [0, 1] on a coarse grid for
    floats (so that columns share z values, as real scores do), with an all-zero row
    and an all-zero column where the shape has room."""
    g = torch.Generator().manual_seed(seed)
    if dtype in (torch.bool, torch.uint8):
        S = torch.rand(n, d, generator=g) < 0.4
    else:
        S = torch.randint(0, 5, (n, d), generator=g) / 4.0
        S = torch.where(torch.rand(n, d, generator=g) < 0.5, S, torch.rand(n, d, generator=g))
    if n > 2:
        S[1] = 0
    if d > 2:
        S[:, 2] = 0
    return S.to(dtype).to(device)


def make_capacity(d, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed + 1000)
    c = torch.rand(d, generator=g) * 2
    if d > 3:
        c[3] = 0.0
    return c.to(device)


def transcription(S, capacity=None, alpha=1.0, eps=0.0, child=None):
    """docs/semantics.md word for word, in float64, with the N x N x D broadcast."""
    S = S.double()
    if child is not None:
        S = torch.cat([S, child.double().unsqueeze(0)])
    z = S.sum(0)
    zhat = torch.where(z != 0, z, torch.ones_like(z)) ** alpha + eps
    c = torch.ones_like(z) if capacity is None else capacity.double()
    fitness = (c * S / zhat).sum(1)
    A = (c / zhat * (S.unsqueeze(0) - S.unsqueeze(1)).clamp(min=0)).sum(-1)  # A[a, b]: b - a
    return z, fitness, A


def tolerance(dtype):
    return dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=1e-5)


def close(got, want, dtype):
    want_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert got.dtype == want_dtype, (got.dtype, want_dtype)
    torch.testing.assert_close(got.cpu().double(), want.cpu().double(), **tolerance(dtype))


def interpreter_sized(device, backend, n, d):
    """The Triton interpreter runs programs one after another: keep its cases small."""
    return not (device == "cpu" and backend == "triton" and n * n * d > 300_000)


# ---- the reference against the formulas ----


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,d", [(1, 1), (5, 13), (20, 200)])
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("with_capacity", [False, True])
def test_reference_is_the_formula(dtype, n, d, alpha, with_capacity):
    S = make_scores(n, d, dtype, seed=n + d)
    capacity = make_capacity(d) if with_capacity else None
    eps = 0.25 if with_capacity else 0.0
    z, fit, A = transcription(S, capacity, alpha, eps)
    rz, rfit, rA = reference.niche_stats(S, alpha=alpha, capacity=capacity, eps=eps)
    close(rz, z, dtype)
    close(rfit, fit, dtype)
    close(rA, A, dtype)
    close(reference.attraction(S, alpha=alpha, capacity=capacity, eps=eps, parent=n - 1), A[n - 1], dtype)


def test_reference_streams_over_columns(monkeypatch):
    # Chunks of a few columns give the same result as one chunk.
    S = make_scores(9, 50, torch.float32, seed=3)
    whole = reference.niche_stats(S, alpha=0.5)
    monkeypatch.setattr(reference, "_NICHE_CHUNK", 7)
    for got, want in zip(reference.niche_stats(S, alpha=0.5), whole):
        torch.testing.assert_close(got, want)


# ---- every backend against the reference ----


@pytest.mark.parametrize("device,backend", device_backend_params(with_torch=False))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,d", SHAPES)
def test_matches_reference(device, backend, dtype, n, d):
    if not interpreter_sized(device, backend, n, d):
        pytest.skip("too large for the Triton interpreter")
    S = make_scores(n, d, dtype, device, seed=n * d)
    capacity = make_capacity(d, device)
    parent = n // 2
    for alpha, cap, eps in ((1.0, None, 0.0), (0.0, None, 0.0), (2.0, capacity, 0.5), (0.5, None, 1e-3)):
        kw = dict(alpha=alpha, capacity=cap, eps=eps)
        z, fit, A = reference.niche_stats(S, **kw)
        close(mk.fitness(S, backend=backend, **kw), fit, dtype)
        close(mk.attraction(S, parent=parent, backend=backend, **kw), A[parent], dtype)
        close(mk.attraction(S, backend=backend, **kw), A, dtype)
        stats = mk.niche_stats(S, parent=parent, backend=backend, **kw)
        close(stats.z, z, dtype)
        close(stats.fitness, fit, dtype)
        close(stats.attraction, A[parent], dtype)
        stats = mk.niche_stats(S, backend=backend, **kw)
        close(stats.z, z, dtype)
        close(stats.attraction, A, dtype)


@pytest.mark.parametrize("device,backend", device_backend_params())
@pytest.mark.parametrize("dtype", [torch.bool, torch.float32], ids=str)
def test_matches_the_formula(device, backend, dtype):
    S = make_scores(11, 37, dtype, device, seed=4)
    capacity = make_capacity(37, device)
    for alpha in ALPHAS:
        z, fit, A = transcription(S.cpu(), capacity.cpu(), alpha, 0.1)
        stats = mk.niche_stats(S, alpha=alpha, capacity=capacity, eps=0.1, backend=backend)
        close(stats.z, z, dtype)
        close(stats.fitness, fit, dtype)
        close(stats.attraction, A, dtype)


@pytest.mark.parametrize("device,backend", device_backend_params())
@pytest.mark.parametrize("dtype", [torch.bool, torch.float32], ids=str)
def test_large_archive(device, backend, dtype):
    # Many rows and columns: every tile and word remainder, many distinct z values.
    n, d = (40, 300) if device == "cpu" and backend == "triton" else (300, 5000)
    S = make_scores(n, d, dtype, device, seed=9)
    z, fit, A = reference.niche_stats(S, alpha=0.7)
    stats = mk.niche_stats(S, alpha=0.7, backend=backend)
    close(stats.fitness, fit, dtype)
    close(stats.attraction, A, dtype)
    close(mk.attraction(S, alpha=0.7, parent=n - 1, backend=backend), A[n - 1], dtype)


@pytest.mark.parametrize("device,backend", device_backend_params())
def test_degenerate_archives(device, backend):
    # All-zero scores: z = 0 everywhere, zhat = 1, fitness and attraction 0.
    S = torch.zeros(4, 6, dtype=torch.bool, device=device)
    stats = mk.niche_stats(S, backend=backend)
    assert torch.equal(stats.z.cpu(), torch.zeros(6))
    assert torch.equal(stats.fitness.cpu(), torch.zeros(4))
    assert torch.equal(stats.attraction.cpu(), torch.zeros(4, 4))
    # One model: its fitness is the capacity-weighted count of its successes.
    S = torch.tensor([[1, 0, 1, 1]], dtype=torch.bool, device=device)
    cap = torch.tensor([1.0, 2.0, 3.0, 4.0], device=device)
    assert mk.fitness(S, capacity=cap, backend=backend).tolist() == [8.0]
    assert mk.attraction(S, backend=backend).tolist() == [[0.0]]
    # No datapoints: every fitness is 0.
    S = torch.zeros(3, 0, device=device)
    stats = mk.niche_stats(S, parent=1, backend=backend)
    assert stats.z.shape == (0,) and torch.equal(stats.fitness.cpu(), torch.zeros(3))
    assert torch.equal(stats.attraction.cpu(), torch.zeros(3))
    # No models: an empty fitness vector.
    assert mk.fitness(torch.zeros(0, 5, device=device), backend=backend).shape == (0,)


@pytest.mark.parametrize("device,backend", device_backend_params())
def test_strided_scores(device, backend):
    S = make_scores(9, 40, torch.float32, device, seed=5)
    want = reference.niche_stats(S[:, 3:31], alpha=1.5)
    for view in (S[:, 3:31], S.t().contiguous().t()[:, 3:31]):  # row-major view, column-major copy
        got = mk.niche_stats(view, alpha=1.5, backend=backend)
        for g, w in zip(got, want):
            close(g, w, torch.float32)


@pytest.mark.parametrize("device,backend", device_backend_params())
def test_rows_past_two_to_the_31_elements(device, backend):
    # S[i, j] lies at i * row_stride + j with row_stride ~ 2^30: the last row starts
    # past 2^31 elements. Only the touched pages of the (lazily allocated) storage
    # become resident, so this needs a few kB of memory.
    if backend == "torch":
        pytest.skip("the reference is plain torch indexing")
    rows, cols, stride = 3, 70, 2**30 + 3
    storage = torch.empty((rows - 1) * stride + cols, dtype=torch.bool, device=device)
    S = storage.as_strided((rows, cols), (stride, 1))
    small = make_scores(rows, cols, torch.bool, device, seed=6)
    S.copy_(small)
    want = reference.niche_stats(small, alpha=1.0)
    got = mk.niche_stats(S, backend=backend)
    for g, w in zip(got, want):
        close(g, w, torch.bool)
    assert mk.replace_index(S, small[0], backend=backend) == reference.replace_index(small, small[0])


# ---- replacement ----


@pytest.mark.parametrize("device,backend", device_backend_params())
@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_replace_index_matches_reference(device, backend, dtype):
    for seed, (n, d) in enumerate([(1, 5), (6, 17), (20, 300)]):
        S = make_scores(n, d, dtype, device, seed=seed)
        g = torch.Generator().manual_seed(seed + 77)
        children = [
            (torch.rand(d, generator=g) < 0.6).to(dtype).to(device),
            torch.zeros(d, dtype=dtype, device=device),
            torch.ones(d, dtype=dtype, device=device),
        ]
        for child in children:
            for kw in (dict(), dict(alpha=0.0), dict(alpha=2.0, capacity=make_capacity(d, device), eps=0.1)):
                want = reference.replace_index(S, child, **kw)
                assert mk.replace_index(S, child, backend=backend, **kw) == want
                z, fit, _ = transcription(S.cpu(), kw.get("capacity"), kw.get("alpha", 1.0), kw.get("eps", 0.0), child.cpu())
                assert want == (-1 if int(fit.argmin()) == n else int(fit.argmin()))


@pytest.mark.parametrize("device,backend", device_backend_params())
@pytest.mark.parametrize("dtype", [torch.bool, torch.float32], ids=str)
def test_fitness_with_child_is_fitness_over_n_plus_one_rows(device, backend, dtype):
    # The form the engine replaces from without a host sync: fitness [N + 1] (the
    # child counted as row N, in z too), whose argmin is replace_index's row.
    S = make_scores(6, 41, dtype, device, seed=3)
    g = torch.Generator().manual_seed(4)
    for child in ((torch.rand(41, generator=g) < 0.5).to(dtype).to(device), torch.zeros(41, dtype=dtype, device=device)):
        for kw in (dict(), dict(alpha=0.0), dict(alpha=2.0, capacity=make_capacity(41, device), eps=0.1)):
            fit = mk.fitness(S, child=child, backend=backend, **kw)
            assert fit.shape == (7,)
            want = reference.fitness(torch.cat([S, child[None]]), **kw)
            torch.testing.assert_close(fit, want, rtol=1e-5, atol=1e-6)
            worst = int(fit.argmin())
            assert mk.replace_index(S, child, backend=backend, **kw) == (-1 if worst == 6 else worst)
    with pytest.raises(ValueError, match="child must have shape"):
        mk.fitness(S, child=child[:-1], backend=backend)


@pytest.mark.parametrize("device,backend", device_backend_params())
def test_replace_index_ties_and_worst_child(device, backend):
    S = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0], [1, 0, 0, 1]], dtype=torch.bool, device=device)
    # The child equals rows 1 and 2 (the worst): the lowest index of the tie goes.
    assert mk.replace_index(S, S[1].clone(), backend=backend) == 1
    # A child that scores nothing is the worst: nothing changes.
    assert mk.replace_index(S, torch.zeros(4, dtype=torch.bool, device=device), backend=backend) == -1
    # A child that solves everything: the least fit row goes (rows 1 and 2 tie again).
    assert mk.replace_index(S, torch.ones(4, dtype=torch.bool, device=device), backend=backend) == 1
    # All equal, child included: the first row goes, never the child.
    same = torch.ones(3, 4, dtype=torch.bool, device=device)
    assert mk.replace_index(same, same[0].clone(), backend=backend) == 0


def test_same_result_with_any_thread_count():
    # Large enough for the kernels to use several threads (they stay on one below
    # 2^18 element operations).
    S = make_scores(100, 3001, torch.float32, seed=7)
    B = make_scores(100, 3001, torch.bool, seed=7)
    saved = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(mk.niche_stats(S, alpha=0.5, backend="cpp") + mk.niche_stats(B, parent=3, backend="cpp"))
    finally:
        torch.set_num_threads(saved)
    for other in results[1:]:
        for x, y in zip(results[0], other):
            assert torch.equal(x, y)


# ---- bad input ----


@pytest.mark.parametrize("device,backend", device_backend_params())
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64], ids=str)
def test_non_finite_scores_are_located(device, backend, dtype):
    S = make_scores(6, 30, dtype, device, seed=8)
    for value in (float("nan"), float("inf")):
        bad = S.clone()
        bad[4, 17] = value
        for call in (
            lambda: mk.fitness(bad, backend=backend),
            lambda: mk.attraction(bad, parent=0, backend=backend),
            lambda: mk.attraction(bad, backend=backend),
        ):
            with pytest.raises(ValueError, match=r"S\[4, 17\] = (nan|inf): scores must be finite"):
                call()
        child = S[0].clone()
        child[9] = value
        with pytest.raises(ValueError, match=r"child\[9\] = (nan|inf): scores must be finite"):
            mk.replace_index(S, child, backend=backend)


def test_bad_arguments():
    S = make_scores(4, 10, torch.float32)
    with pytest.raises(TypeError, match="S must be a torch.Tensor"):
        mk.fitness([[1.0, 0.0]])
    with pytest.raises(TypeError, match="S must be bool, uint8"):
        mk.fitness(S.int())
    with pytest.raises(ValueError, match=r"S must be 2-D"):
        mk.fitness(S[0])
    with pytest.raises(ValueError, match=r"S\[1, 2\] = 2: uint8 scores must be 0 or 1"):
        bad = S.ge(0.5).to(torch.uint8)
        bad[1, 2] = 2
        mk.fitness(bad)
    with pytest.raises(ValueError, match=r"capacity must have shape \(10,\)"):
        mk.fitness(S, capacity=torch.ones(9))
    with pytest.raises(ValueError, match=r"capacity\[3\] = -1.0: capacities must be finite and >= 0"):
        cap = torch.ones(10)
        cap[3] = -1
        mk.fitness(S, capacity=cap)
    with pytest.raises(ValueError, match="capacity must be on cpu"):
        mk.fitness(S, capacity=torch.ones(10, device="meta"))
    with pytest.raises(TypeError, match="capacity must be a torch.Tensor"):
        mk.fitness(S, capacity=[1.0] * 10)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        mk.fitness(S, eps=-0.1)
    with pytest.raises(ValueError, match="alpha must be finite"):
        mk.fitness(S, alpha=float("nan"))
    with pytest.raises(TypeError, match="alpha must be a real number"):
        mk.fitness(S, alpha="1")
    with pytest.raises(IndexError, match=r"parent must lie in \[0, 4\)"):
        mk.attraction(S, parent=4)
    with pytest.raises(IndexError, match=r"parent must lie in \[0, 4\)"):
        mk.attraction(S, parent=-1)
    with pytest.raises(TypeError, match="parent must be an integer"):
        mk.attraction(S, parent=1.0)
    with pytest.raises(ValueError, match="N = 0"):
        mk.attraction(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="N = 0"):
        mk.replace_index(torch.zeros(0, 3), torch.zeros(3))
    with pytest.raises(ValueError, match=r"child must have shape \(10,\)"):
        mk.replace_index(S, S[0, :9])
    with pytest.raises(TypeError, match="child must be torch.float32"):
        mk.replace_index(S, S[0].double())
    with pytest.raises(ValueError, match="child must be on cpu"):
        mk.replace_index(S, S[0].to("meta"))
    with pytest.raises(ValueError, match="backend must be one of"):
        mk.fitness(S, backend="numpy")


def test_direct_op_checks():
    # torch.ops callers skip the Python API: the C++ checks still name the argument.
    S = make_scores(3, 5, torch.float32)
    op = torch.ops.m2n2.niche_stats_out
    z, fit, row = torch.empty(5), torch.empty(3), torch.empty(3)
    with pytest.raises(ValueError, match="S must be 2-D"):
        op(S[0], None, None, 1.0, 0.0, 0, "row", z, fit, row)
    with pytest.raises(ValueError, match="mode must be"):
        op(S, None, None, 1.0, 0.0, 0, "column", z, fit, row)
    with pytest.raises(IndexError, match="parent must lie"):
        op(S, None, None, 1.0, 0.0, 3, "row", z, fit, row)
    with pytest.raises(TypeError, match=r"capacity must be torch.float64 \(one per column of S\), got torch.float32"):
        op(S, None, torch.ones(5), 1.0, 0.0, 0, "row", z, fit, row)
    with pytest.raises(ValueError, match="fitness must have shape"):
        op(S, None, None, 1.0, 0.0, 0, "row", z, torch.empty(4), row)
    with pytest.raises(ValueError, match="attraction must have shape"):
        op(S, None, None, 1.0, 0.0, 0, "matrix", z, fit, row)
    with pytest.raises(TypeError, match="z must be torch.float32"):
        op(S, None, None, 1.0, 0.0, 0, "row", z.double(), fit, row)
    with pytest.raises(ValueError, match=r"eps must be >= 0.0, got -1.0"):
        op(S, None, None, 1.0, -1.0, 0, "row", z, fit, row)
    bad = S.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"S\[2, 1\] = nan"):
        op(bad, None, None, 1.0, 0.0, 0, "row", z, fit, row)


# ---- torch.library and torch.compile ----


def test_opcheck():
    S = make_scores(6, 21, torch.float32, seed=10)
    B = make_scores(6, 21, torch.bool, seed=10)
    cap = make_capacity(21).double()
    for args in (
        (S, None, cap, 0.5, 0.1, 2, "row", torch.empty(21), torch.empty(6), torch.empty(6)),
        (B, None, None, 1.0, 0.0, -1, "matrix", torch.empty(21), torch.empty(6), torch.empty(6, 6)),
        (B, B[0].clone(), None, 1.0, 0.0, -1, "none", torch.empty(21), torch.empty(7), torch.empty(0)),
    ):
        torch.library.opcheck(torch.ops.m2n2.niche_stats_out, args)


def test_torch_compile_fullgraph():
    S = make_scores(8, 30, torch.float32, seed=11)

    def step(S, parent):
        stats = mk.niche_stats(S, alpha=1.0, parent=parent)
        return stats.fitness / stats.fitness.sum(), stats.attraction

    compiled = torch.compile(step, fullgraph=True)
    for got, want in zip(compiled(S, 3), step(S, 3)):
        torch.testing.assert_close(got, want)
