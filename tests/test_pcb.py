"""PCB merging (docs/semantics.md, "PCB merging"): the C++ CPU kernel against the
sort-based torch reference (bit for bit), the Triton kernels against the C++ kernel
(bit for bit), the reference against an independent transcription of the authors'
formulas, and the API's contract (lists, out=, checks)."""
import importlib.util
import os

import numpy as np
import pytest
import torch

from m2n2_kernels import pcb_merge, reference

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64, torch.bfloat16: torch.int16,
            torch.float16: torch.int16}


def gen(seed):
    return torch.Generator().manual_seed(seed)


def make_models(shapes, dtype, K, seed, *, step=None, zeros=0.05):
    """base and K models as lists of tensors; deltas ~ N(0, 0.01^2) (on a grid of
    `step` when given: many ties), about `zeros` of them exactly 0."""
    g = gen(seed)
    base = [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]
    models = []
    for _ in range(K):
        ms = []
        for b in base:
            if step is None:
                d = 0.01 * torch.randn(b.shape, generator=g, dtype=torch.float64)
            else:
                d = torch.randint(-3, 4, b.shape, generator=g).double() * step
            d = torch.where(torch.rand(b.shape, generator=g) < zeros, 0.0, d)
            ms.append(torch.where(d == 0, b.double(), b.double() + d).to(dtype))
        models.append(ms)
    return base, models


def assert_same_bits(got, want, what=""):
    for i, (x, y) in enumerate(zip(got, want)):
        assert x.dtype == y.dtype and x.shape == y.shape
        xb, yb = x.view(INT_VIEW[x.dtype]), y.view(INT_VIEW[y.dtype])
        bad = xb != yb
        assert not bad.any(), (f"{what} position {i}: {int(bad.sum())} of {x.numel()} differ, "
                               f"got {x[bad][:4].tolist()}, want {y[bad][:4].tolist()}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_cpp_large_products_take_the_full_tanh(dtype):
    """The CPU kernel evaluates tanh(d S) by its series alone over a tile whose every
    |d S| is below 1/8 (the common case) and by the full pcb_tanh elsewhere: tiles of
    large deltas (|d S| up to past 22, where tanh rounds to 1), tiles of small ones
    with one large element, a NaN-free mix at every position of a 256-element tile,
    all equal to the reference."""
    g = gen(7)
    n = 5 * 256 + 77
    base = torch.randn(n, generator=g, dtype=torch.float64)
    spread = torch.full((n,), 0.01, dtype=torch.float64)
    spread[256:512] = 3.0  # a tile of large deltas
    spread[700] = 5.0  # one large delta in a tile of small ones
    spread[1024::7] = 0.6  # a scattered mix
    models = [(base + spread * torch.randn(n, generator=g, dtype=torch.float64)).to(dtype) for _ in range(3)]
    base = base.to(dtype)
    for ratio in (0.1, 0.5):
        kw = dict(ratio=ratio, lam=1.0, scope="tensor", clamp=1e-4)
        want = pcb_merge([base], [[m] for m in models], backend="torch", **kw)
        got = pcb_merge([base], [[m] for m in models], backend="cpp", **kw)
        assert_same_bits(got, want, f"ratio {ratio}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 2, 7, 3001])
@pytest.mark.parametrize("K", [1, 2, 5])
@pytest.mark.parametrize("ratio", [1e-3, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("clamp", [0.0, 1e-4, 0.1])
def test_cpp_equals_reference(dtype, n, K, ratio, clamp):
    base, models = make_models([(n,), (3, 5)], dtype, K, seed=n * 31 + K)
    for scope in ("tensor", "global"):
        kw = dict(ratio=ratio, lam=0.7, scope=scope, clamp=clamp)
        want = pcb_merge(base, models, backend="torch", **kw)
        got = pcb_merge(base, models, backend="cpp", **kw)
        assert_same_bits(got, want, scope)


@pytest.mark.parametrize("ratio", [0.05, 0.3, 1.0])
@pytest.mark.parametrize("scope", ["tensor", "global"])
def test_ties_bf16(ratio, scope):
    """Deltas on a coarse grid: the magnitudes and the scores tie everywhere."""
    base, models = make_models([(2000,), (7,)], torch.bfloat16, 3, seed=3, step=0.25, zeros=0.2)
    kw = dict(ratio=ratio, scope=scope, clamp=0.1)
    assert_same_bits(pcb_merge(base, models, backend="cpp", **kw), pcb_merge(base, models, backend="torch", **kw))


@pytest.mark.parametrize("backend", ["torch", "cpp"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_all_zero_deltas_give_base(backend, dtype):
    base = torch.randn(1000, generator=gen(1)).to(dtype)
    out = pcb_merge(base, [base.clone(), base.clone()], ratio=0.2, lam=3.0, backend=backend)
    assert torch.equal(out, base)


def test_signed_zeros_order_as_the_reference():
    """Scores of -0 and +0 (zero deltas of either sign): -0 orders just below +0 in
    both the radix selection and the reference's sort."""
    base = torch.zeros(64)
    m0 = torch.tensor([-0.0, 0.0] * 16 + [0.5, -0.25] * 16)
    m1 = torch.tensor([0.0, -0.0] * 16 + [-0.5, 0.75] * 16)
    for ratio in (0.2, 0.5, 0.6, 0.9):
        for b in (base, -base):
            kw = dict(ratio=ratio, clamp=0.0)
            assert_same_bits([pcb_merge(b, [m0, m1], backend="cpp", **kw)],
                             [pcb_merge(b, [m0, m1], backend="torch", **kw)], f"ratio {ratio}")
    keys = reference.order_key(torch.tensor([-1.0, -0.0, 0.0, 1.0]))
    assert keys.tolist() == sorted(keys.tolist()) and len(set(keys.tolist())) == 4


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_model_equal_to_base_contributes_nothing(backend):
    """A model equal to base scores 0 everywhere: scale 0, so each merged element is
    the other model's clamped delta where it is kept (to rounding) and 0 elsewhere."""
    base = torch.randn(4000, generator=gen(2), dtype=torch.float64)
    m0 = base + 0.01 * torch.randn(4000, generator=gen(3), dtype=torch.float64)
    out = pcb_merge(base, [m0, base.clone()], ratio=0.25, clamp=0.0, backend=backend)
    got, d = (out - base), (m0 - base)
    kept = got != 0
    assert abs(int(kept.sum()) - 1000) <= 1
    torch.testing.assert_close(got[kept], d[kept], rtol=1e-12, atol=0)
    # the kept ones are the largest scores: the largest |d| with d's sign agreeing with S = d
    assert d[kept].abs().min() >= d[~kept].abs().max()


@pytest.mark.parametrize("scope", ["tensor", "global"])
def test_lists_of_mixed_dtypes(scope):
    g = gen(4)
    dtypes = [torch.float32, torch.bfloat16, torch.float64, torch.float16]
    shapes = [(300,), (5, 7), (70001,), (1,)]
    base = [torch.randn(s, generator=g).to(dt) for s, dt in zip(shapes, dtypes)]
    models = [[(b.double() + 0.01 * torch.randn(b.shape, generator=g, dtype=torch.float64)).to(b.dtype)
               for b in base] for _ in range(3)]
    kw = dict(ratio=0.3, lam=1.3, scope=scope)
    got = pcb_merge(base, models, backend="cpp", **kw)
    want = pcb_merge(base, models, backend="torch", **kw)
    assert_same_bits(got, want, scope)
    # the other positions of a tensor-scoped list are merged exactly as alone
    if scope == "tensor":
        alone = pcb_merge(base[1], [m[1] for m in models], backend="cpp", ratio=0.3, lam=1.3)
        assert_same_bits([got[1]], [alone])


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_out_in_place_and_fresh(backend):
    base, models = make_models([(500,), (4, 4)], torch.float32, 2, seed=5)
    want = pcb_merge(base, models, ratio=0.4, backend=backend)
    fresh = [torch.full_like(b, float("nan")) for b in base]
    res = pcb_merge(base, models, ratio=0.4, out=fresh, backend=backend)
    assert res is not fresh and all(r is f for r, f in zip(res, fresh))
    assert_same_bits(fresh, want)
    inplace = [b.clone() for b in base]
    res = pcb_merge(inplace, models, ratio=0.4, out=inplace, backend=backend)
    assert all(r is b for r, b in zip(res, inplace))
    assert_same_bits(inplace, want)
    single = base[0].clone()
    assert pcb_merge(single, [m[0] for m in models], ratio=0.4, out=single, backend=backend) is single
    assert_same_bits([single], [want[0]])


def test_independent_of_the_thread_count():
    base, models = make_models([(300_000,), (70_000,)], torch.float32, 3, seed=6)
    threads = torch.get_num_threads()
    try:
        results = []
        for t in (1, 2):
            torch.set_num_threads(t)
            results.append(pcb_merge(base, models, ratio=0.1, scope="global", backend="cpp"))
    finally:
        torch.set_num_threads(threads)
    assert_same_bits(results[0], results[1])


def authors_transcription(base, models, ratio, lam, c):
    """The authors' formulas (PCB_merge over the flattened task vectors), transcribed
    in numpy fp64: sort-based clamps, min-max normalisation, exp(K x^2), tanh(d sum)."""
    tv = np.stack([m - base for m in models])  # K x n
    K, n = tv.shape

    def clamp_rows(x, lo_ratio, hi_ratio):
        s = np.sort(x, axis=1)
        return np.clip(x, s[:, [int(n * lo_ratio)]], s[:, [int(n * (1 - hi_ratio) - 1)]])

    def normalize_rows(x):
        lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
        return (x - lo) / (hi - lo)

    mags = clamp_rows(np.abs(tv), c, c)
    clamped = np.sign(tv) * mags
    score = np.exp(K * normalize_rows(mags) ** 2) * np.tanh(tv * tv.sum(axis=0))
    scale = normalize_rows(clamp_rows(score, 1 - ratio, 0))
    merged = (clamped * scale).sum(axis=0) / np.maximum(scale.sum(axis=0), 1e-12)
    return base + lam * merged


@pytest.mark.parametrize("backend", ["torch", "cpp"])
@pytest.mark.parametrize("ratio,c", [(0.1, 1e-4), (0.3, 0.01), (1.0, 1e-4)])
def test_against_the_authors_formulas(backend, ratio, c):
    """fp32 storage against an fp64 transcription: scores rounded to fp32 can reorder
    near the drop threshold, where scales are near 0; elsewhere fp32 rounding."""
    g = gen(7)
    base = torch.randn(5000, generator=g)
    models = [base + 0.01 * torch.randn(5000, generator=g) for _ in range(3)]
    got = pcb_merge(base, models, ratio=ratio, lam=1.2, clamp=c, backend=backend).double().numpy()
    want = authors_transcription(base.double().numpy(), [m.double().numpy() for m in models], ratio, 1.2, c)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


@pytest.mark.parametrize("in_place", [False, True])
def test_opcheck(in_place):
    g = gen(8)
    base = [torch.randn(37, generator=g), torch.randn(3, 4, generator=g).double()]
    models = [torch.randn(37, generator=g), torch.randn(3, 4, generator=g).double(),
              torch.randn(37, generator=g), torch.randn(3, 4, generator=g).double()]
    out = base if in_place else [torch.empty_like(b) for b in base]
    torch.library.opcheck(torch.ops.m2n2.pcb_merge_out, (base, models, out, 0.3, 1.0, "global", 1e-4))


def test_torch_compile():
    g = gen(9)
    base, m0, m1 = (torch.randn(1000, generator=g) for _ in range(3))

    def f(b, x, y):
        return pcb_merge(b, [x, y], ratio=0.3) * 2

    torch.testing.assert_close(torch.compile(f, fullgraph=False)(base, m0, m1), f(base, m0, m1), rtol=0, atol=0)


def _bad_cases():
    b, m = torch.randn(6), torch.randn(6)
    ok = dict(ratio=0.5)
    return [
        ((b, [m]), dict(ratio=0.0), ValueError, r"ratio must lie in \(0, 1\], got 0.0"),
        ((b, [m]), dict(ratio=1.5), ValueError, r"ratio must lie in \(0, 1\], got 1.5"),
        ((b, [m]), dict(ratio=float("nan")), ValueError, "ratio must be finite, got nan"),
        ((b, [m]), dict(ratio="x"), TypeError, "ratio must be a real number"),
        ((b, [m]), dict(ok, clamp=0.5), ValueError, r"clamp must lie in \[0, 0.5\), got 0.5"),
        ((b, [m]), dict(ok, clamp=-1e-3), ValueError, r"clamp must lie in \[0, 0.5\), got -0.001"),
        ((b, [m]), dict(ok, clamp=float("inf")), ValueError, "clamp must be finite, got inf"),
        ((b, [m]), dict(ok, lam=float("-inf")), ValueError, "lam must be finite, got -inf"),
        ((b, [m]), dict(ok, scope="layer"), ValueError, r"scope must be one of \('tensor', 'global'\)"),
        ((b, []), ok, ValueError, r"models must hold at least one model \(K >= 1\)"),
        ((b, [m] * 65), ok, ValueError, "models must hold at most 64 models, got 65"),
        ((b, [m[:5]]), ok, ValueError, r"models\[0\] must have shape \(6,\) \(as base\), got \(5,\)"),
        ((b, [m.double()]), ok, TypeError, r"models\[0\] must be torch.float32 \(as base\)"),
        ((b.long(), [m]), ok, TypeError, "base must be"),
        (([b], [m]), ok, TypeError, r"models\[0\] must be a list of tensors like base"),
        ((b, [m]), dict(ok, out=torch.empty(6, dtype=torch.float64)), TypeError, "out must be torch.float32"),
        ((b, [m]), dict(ok, out=m), ValueError, r"out must not overlap models\[0\]"),
    ]


@pytest.mark.parametrize("backend", ["torch", "cpp"])
@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_bad_input(backend, case):
    args, kw, error, match = _bad_cases()[case]
    base_before = args[0].clone() if isinstance(args[0], torch.Tensor) else None
    with pytest.raises(error, match=match):
        pcb_merge(*args, backend=backend, **kw)
    if base_before is not None:
        assert torch.equal(args[0], base_before)


def test_exp_and_tanh_accuracy(tmp_path):
    """The kernel's own exp and tanh (pcb.h, fp32 and fp64), compiled here, against long double:
    within the ulp docs/semantics.md states, tanh(-0) = -0, NaN kept."""
    from conftest import run_native_check

    returncode, stdout = run_native_check(tmp_path, "pcb_math_check")
    assert returncode == 0, stdout


def test_extreme_select_native(tmp_path):
    """The one-pass selection of ranks near either end (the clamp bounds' path,
    tests/native/extreme_select_check.cpp) against sorting, and its compare of each
    piece with the bound (portable and AVX-512 loops) against a scalar oracle."""
    from conftest import run_native_check

    returncode, stdout = run_native_check(tmp_path, "extreme_select_check", ["-fopenmp"])
    assert returncode == 0, stdout


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("clamp", [0.0, 1e-4, 2e-3, 0.02])
def test_clamp_bounds_by_either_selection(monkeypatch, dtype, clamp):
    """The clamp bounds by extreme_select (ranks near the ends: c = 0, 1e-4 and 2e-3;
    0.02 lies past its depth limit of n / 64, so radix selection serves it) and by
    radix selection (M2N2_PCB_SELECT=radix) give the reference's bits, on spread
    deltas and on tied ones."""
    for step in (None, 0.25):
        base, models = make_models([(40000,), (300,)], dtype, 3, seed=11, step=step, zeros=0.05)
        kw = dict(ratio=0.2, clamp=clamp, scope="tensor")
        want = pcb_merge(base, models, backend="torch", **kw)
        for select in ("auto", "radix"):
            monkeypatch.setenv("M2N2_PCB_SELECT", select)
            assert_same_bits(pcb_merge(base, models, backend="cpp", **kw), want, f"{select} step {step}")


WINDOW_N = (1 << 18) + 5  # the smallest units whose drop thresholds the window selects, and a partial tile


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("step,ratio", [(None, 0.2), (None, 0.9), (0.25, 0.5)])
def test_drop_thresholds_by_window(monkeypatch, dtype, step, ratio):
    """The C++ kernel selects each model's drop threshold by a candidate window in
    units of 2^18 elements and more (a sample of every 16th to 64th tile, then one
    pass that counts and keeps the scores inside the window), by radix selection where the
    window misses: both give the reference's bits. Spread deltas: the window holds
    every threshold (M2N2_PCB_SELECT=window makes a miss an error); tied ones (scores
    tie in classes): whichever path, the same bits."""
    base, models = make_models([(WINDOW_N,)], dtype, 3, seed=21, step=step, zeros=0.05)
    kw = dict(ratio=ratio, lam=0.7, scope="tensor")
    want = pcb_merge(base, models, backend="torch", **kw)
    for select in ("auto", "radix") + (("window",) if step is None else ()):
        monkeypatch.setenv("M2N2_PCB_SELECT", select)
        assert_same_bits(pcb_merge(base, models, backend="cpp", **kw), want, select)


def test_score_bound_native(tmp_path):
    """The score bound that lets the C++ kernel skip most exact scores
    (csrc/cpu/pcb_skip.h, tests/native/pcb_skip_check.cpp): every element it skips
    scores below the floor, on spread and adversarial inputs; the AVX-512 filter keeps
    what the scalar rule keeps."""
    from conftest import run_native_check

    returncode, stdout = run_native_check(tmp_path, "pcb_skip_check")
    assert returncode == 0, stdout


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("K,ratio", [(1, 0.2), (2, 0.05), (3, 0.2), (3, 0.9), (5, 0.5)])
def test_score_bound_changes_no_bit(monkeypatch, dtype, K, ratio):
    """With the bound's skips (the default) and without (M2N2_PCB_SKIP=0) the C++
    kernel gives the reference's bits: a unit the window serves (heavy-tailed deltas,
    some models' larger than others'), and a small one with zeros (the fused pass's
    skips alone). Data with infs and NaNs, whose NaNs the definition leaves aside
    (docs/semantics.md), gives the same bits both ways."""
    g = gen(40 + K)
    n = WINDOW_N
    base = [torch.randn(n, generator=g, dtype=torch.float64), torch.randn(3001, generator=g, dtype=torch.float64),
            torch.randn(7, 13, generator=g, dtype=torch.float64)]
    models = []
    for k in range(K):
        ms = []
        for b in base:
            t = torch.distributions.StudentT(1.5).sample(b.shape).double()  # heavy tails
            ms.append(b + (0.001 * (k + 1)) * t)
        models.append(ms)
    models[0][2][1, 5] = float("inf")
    models[-1][2][2, 9] = float("-inf")
    models[0][2][3, 4] = float("nan")
    models[-1][1][100:200] = base[1][100:200]  # zero deltas
    base = [b.to(dtype) for b in base]
    models = [[m.to(dtype) for m in ms] for ms in models]
    kw = dict(ratio=ratio, lam=0.7, scope="tensor")
    want = pcb_merge(base, models, backend="torch", **kw)
    got = {}
    for skip in ("1", "0"):
        monkeypatch.setenv("M2N2_PCB_SKIP", skip)
        monkeypatch.setenv("M2N2_PCB_SELECT", "window")  # the large unit: by the window, or an error
        got[skip] = pcb_merge(base[:1], [ms[:1] for ms in models], backend="cpp", **kw)
        monkeypatch.setenv("M2N2_PCB_SELECT", "auto")
        got[skip] += pcb_merge(base[1:], [ms[1:] for ms in models], backend="cpp", **kw)
        assert_same_bits(got[skip][:2], want[:2], f"M2N2_PCB_SKIP={skip}")
    assert_same_bits(got["1"][2:], got["0"][2:], "infs and NaNs")


@pytest.mark.parametrize("memory,stride", [("170000", 16), ("300000", 32), ("4000000000", 64)])
def test_drop_thresholds_window_sample_stride(monkeypatch, memory, stride):
    """The window's sample is every 64th tile where the call's memory budget holds
    twice the scores it expects inside the window (and 16 KB a thread), else every
    32nd, else every 16th (pcb_pick_sample): with 2^18 + 5 fp32 elements and K = 3
    those need about 320 KB, 230 KB and 160 KB, so with 1 to 4 threads these budgets
    take 16, 32 and 64 (by the benchmark's copy of the rule, which counts the passes).
    Each holds every threshold (a miss would be an error under M2N2_PCB_SELECT=window)
    with the reference's bits."""
    spec = importlib.util.spec_from_file_location("bench_merge_methods", os.path.join(BENCH, "bench_merge_methods.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert round(1 / bench.pcb_sample_fraction(WINDOW_N, 3, int(memory), 4)) == stride
    base, models = make_models([(WINDOW_N,)], torch.float32, 3, seed=23, zeros=0.05)
    kw = dict(ratio=0.2, lam=0.7, scope="tensor")
    want = pcb_merge(base, models, backend="torch", **kw)
    monkeypatch.setenv("M2N2_SELECTION_MEMORY", memory)
    monkeypatch.setenv("M2N2_PCB_SELECT", "window")
    assert_same_bits(pcb_merge(base, models, backend="cpp", **kw), want, memory)


def test_drop_thresholds_window_global_and_fallbacks(monkeypatch):
    """A global unit over two tensors (one below 2^18 alone) takes the window; per
    tensor, the small one needs the radix passes (an error with
    M2N2_PCB_SELECT=window); with no memory for the kept scores
    (M2N2_SELECTION_MEMORY=0) the window gives way to the radix passes. The
    reference's bits every time."""
    base, models = make_models([(WINDOW_N - 1000,), (40, 25)], torch.bfloat16, 3, seed=22)
    for scope, strict_ok in (("global", True), ("tensor", False)):
        kw = dict(ratio=0.3, scope=scope)
        want = pcb_merge(base, models, backend="torch", **kw)
        monkeypatch.setenv("M2N2_PCB_SELECT", "auto")
        assert_same_bits(pcb_merge(base, models, backend="cpp", **kw), want, scope)
        monkeypatch.setenv("M2N2_PCB_SELECT", "window")
        if strict_ok:
            assert_same_bits(pcb_merge(base, models, backend="cpp", **kw), want, scope)
        else:
            with pytest.raises(RuntimeError, match="needed the radix passes"):
                pcb_merge(base, models, backend="cpp", **kw)
    monkeypatch.setenv("M2N2_SELECTION_MEMORY", "0")
    monkeypatch.setenv("M2N2_PCB_SELECT", "auto")
    kw = dict(ratio=0.3, scope="global")
    assert_same_bits(pcb_merge(base, models, backend="cpp", **kw), pcb_merge(base, models, backend="torch", **kw))
    monkeypatch.setenv("M2N2_PCB_SELECT", "window")
    with pytest.raises(RuntimeError, match="needed the radix passes"):
        pcb_merge(base, models, backend="cpp", **kw)


def test_bad_select_switch(monkeypatch):
    monkeypatch.setenv("M2N2_PCB_SELECT", "fast")
    with pytest.raises(ValueError, match="M2N2_PCB_SELECT"):
        pcb_merge(torch.zeros(10), [torch.ones(10)], ratio=0.5, backend="cpp")


def test_sixty_four_models():
    """The most models a call takes: 128 selection targets in each radix pass."""
    base, models = make_models([(300,), (2, 3)], torch.float32, 64, seed=10)
    for scope in ("tensor", "global"):
        kw = dict(ratio=0.2, scope=scope, clamp=0.05)
        assert_same_bits(pcb_merge(base, models, backend="cpp", **kw), pcb_merge(base, models, backend="torch", **kw))


# ---------------------------------------------------------------------------
# The Triton kernels (on a CUDA GPU where there is one, else in the interpreter on
# CPU tensors) against the C++ kernel, bit for bit, in every dtype: they compute
# the same scores with pcb.h's own exp and tanh, ported operation for operation.
# Sizes are small (the interpreter runs each operation as one numpy call), and each
# call covers several settings.
# ---------------------------------------------------------------------------

from conftest import available_backends  # noqa: E402

from m2n2_kernels import _backend  # noqa: E402

TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif("triton" not in available_backends(TRITON_DEVICE),
                                  reason="Triton needs a CUDA GPU or TRITON_INTERPRET=1 (conftest.py)")


def moved(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device)
    return [moved(t, device) for t in x]


def triton_out(base, models, block=None, **kw):
    """pcb_merge by the Triton launcher (a given block size) or the API's triton route."""
    base, models = moved(base, TRITON_DEVICE), moved(models, TRITON_DEVICE)
    if block is None:
        return moved(pcb_merge(base, models, backend="triton", **kw), "cpu")
    from m2n2_kernels.triton import pcb as tpcb

    out = [torch.empty_like(b) for b in base]
    tpcb.pcb_merge_out(base, [t for m in models for t in m], out, kw["ratio"], kw.get("lam", 1.0),
                       kw.get("scope", "tensor"), kw.get("clamp", 1e-4), block=block)
    return moved(out, "cpu")


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_triton_equals_cpp(dtype):
    # Each K, ratio, clamp and scope once; sizes 37 (odd), 1 and 0 (scope "tensor":
    # each its own unit), 37 + 6 (global).
    for K, ratio, clamp, scope, shapes in ((1, 1.0, 0.0, "tensor", [(37,), (1,), (0,)]),
                                           (2, 0.5, 1e-4, "global", [(37,), (2, 3)]),
                                           (5, 1e-3, 0.1, "tensor", [(37,)])):
        base, models = make_models(shapes, dtype, K, seed=K + len(shapes))
        kw = dict(ratio=ratio, lam=0.7, scope=scope, clamp=clamp)
        got = triton_out(base, models, **kw)
        assert_same_bits(got, pcb_merge(base, models, backend="cpp", **kw), f"K={K} {scope}")
        assert_same_bits(got, pcb_merge(base, models, backend="torch", **kw), scope)


@needs_triton
@pytest.mark.parametrize("scope", ["tensor", "global"])
def test_triton_lists_of_mixed_dtypes(scope):
    # A global unit with fp64 selects on 64-bit keys; the fp32, bf16 and fp16 deltas
    # are widened to fp64 exactly.
    g = gen(14)
    dtypes = [torch.float32, torch.bfloat16, torch.float64, torch.float16, torch.float32]
    shapes = [(30,), (5, 7), (21,), (1,), (0,)]
    base = [torch.randn(s, generator=g).to(dt) for s, dt in zip(shapes, dtypes)]
    models = [[(b.double() + 0.01 * torch.randn(b.shape, generator=g, dtype=torch.float64)).to(b.dtype)
               for b in base] for _ in range(2)]
    kw = dict(ratio=0.3, lam=1.3, scope=scope, clamp=0.05)
    assert_same_bits(triton_out(base, models, **kw), pcb_merge(base, models, backend="cpp", **kw), scope)


@needs_triton
def test_triton_ties_bf16_and_block_size():
    # Deltas on a grid of 1/4: magnitudes and scores tie everywhere; blocks of 16
    # (many programs adding into each histogram) and of 1024 give the same bits.
    base, models = make_models([(90,), (7,)], torch.bfloat16, 3, seed=3, step=0.25, zeros=0.2)
    for ratio, scope, blocks in ((0.05, "global", (16, 1024)), (0.3, "tensor", (1024,))):
        kw = dict(ratio=ratio, scope=scope, clamp=0.1)
        want = pcb_merge(base, models, backend="cpp", **kw)
        assert_same_bits(pcb_merge(base, models, backend="torch", **kw), want)
        for block in blocks:
            assert_same_bits(triton_out(base, models, block=block, **kw), want, f"block {block}")


@needs_triton
def test_triton_model_equal_to_base_and_zero_deltas():
    base = torch.randn(300, generator=gen(2))
    m0 = base + 0.01 * torch.randn(300, generator=gen(3))
    kw = dict(ratio=0.25, clamp=0.0)
    assert_same_bits([triton_out(base, [m0, base.clone()], **kw)], [pcb_merge(base, [m0, base.clone()],
                                                                              backend="cpp", **kw)])
    assert torch.equal(triton_out(base, [base.clone(), base.clone()], ratio=0.2, lam=3.0), base)


@needs_triton
def test_triton_out_in_place_and_registered_wrapper():
    # In place: each element is read, by the program that writes it, before it is.
    # ops.triton_pcb_merge_out (the op's CUDA implementation where no CUDA C++ was
    # compiled) runs the op's checks first.
    from m2n2_kernels import ops

    base, models = make_models([(50,), (2, 3)], torch.float32, 2, seed=5)
    want = pcb_merge(base, models, ratio=0.4, backend="cpp")
    b, ms = [t.to(TRITON_DEVICE, copy=True) for t in base], moved(models, TRITON_DEVICE)
    got = pcb_merge(b, ms, ratio=0.4, out=b, backend="triton")
    assert all(x is y for x, y in zip(got, b))
    assert_same_bits(moved(b, "cpu"), want)
    b = moved(base, TRITON_DEVICE)
    out = [torch.full_like(t, float("nan")) for t in b]
    ops.triton_pcb_merge_out(b, [t for m in ms for t in m], out, 0.4, 1.0, "tensor", 1e-4)
    assert_same_bits(moved(out, "cpu"), want)
    with pytest.raises(ValueError, match=r"ratio must lie in \(0, 1\], got 1.5"):
        ops.triton_pcb_merge_out(b, [t for m in ms for t in m], out, 1.5, 1.0, "tensor", 1e-4)


@needs_triton
def test_triton_index_past_2_pow_31():
    # The last blocks of a tensor of 2**31 + 3000 elements (launched through
    # block_offset): addresses past 2**31 must be computed in 64 bits; a 32-bit wrap
    # would read or write elsewhere. Interpreter only (on a GPU this would need
    # gigabytes).
    import math

    import triton.language as tl
    from m2n2_kernels.triton import pcb as tpcb
    from m2n2_kernels.triton._utils import double_bits
    from test_task_merge import _virtual_zeros

    if torch.cuda.is_available():
        pytest.skip("runs the interpreter on CPU tensors")
    n, block = 2**31 + 3000, 1024
    base, model, out = (_virtual_zeros(n, torch.float16) for _ in range(3))
    first = n // block - 1  # the last two blocks (the last one partial)
    lo = first * block
    model[lo:] = 1.0
    table = torch.tensor([model.data_ptr()], dtype=torch.int64)
    stats = torch.tensor([[0.0, 1.0, 0.0, 4.0]])  # lo, hi, theta, G
    prefix = torch.zeros(2, dtype=torch.int64)
    # The top digit of |d| = 1 (both targets), and of the score exp(1) tanh(1): all
    # n - lo keys in one bin.
    g = torch.tensor(math.exp(1.0) * math.tanh(1.0), dtype=torch.float32).view(torch.int32).item() | 2**31
    for score, shift, key in ((False, 20, 0x3F800000), (True, 21, g)):
        hist = torch.zeros((2, tpcb.BINS), dtype=torch.int64)
        tpcb._hist_kernel[(2,)](base, table, stats, prefix, hist, n, 1, shift, 11, 0, tpcb._SIGN64, first,
                                BLOCK=block, BINS=tpcb.BINS, CDT=tl.float32, UDT=tl.float32, SCORE=score)
        assert hist[:, key >> shift].tolist() == [n - lo] * 2 and hist.sum() == 2 * (n - lo)
    # every kept delta 1 with scale s: s / s = 1
    tpcb._fused_kernel[(2,)](base, out, table, stats, n, 1, double_bits(1.0), first, BLOCK=block, CDT=tl.float32,
                             UDT=tl.float32)
    assert torch.equal(out[lo:], torch.ones(n - lo, dtype=torch.float16))
    assert not out[lo - 64:lo].any()  # nothing written before the first block launched


# Compiled for a GPU (sm_90) without one, in a process without the interpreter: the
# kernels lower, the PTX holds no FMA (Triton would contract a * b + c), no
# approximate division, no hardware exp or tanh, and pcb.h's constants in fp64.
_COMPILE_CHECK = r"""
import re
import struct
from m2n2_kernels.triton import pcb as tp

hist = [compile_ptx(tp._hist_kernel, [f"*{dt}", "*i64", f"*{u}", "*i64", "*i64"],
                    dict(BLOCK=1024, BINS=tp.BINS, CDT=c, UDT=getattr(tl, "float" + u[2:]), SCORE=s))
        for dt, c, u, s in (("bf16", tl.float32, "fp32", True), ("fp32", tl.float32, "fp64", True),
                            ("fp64", tl.float64, "fp64", False))]
fused = [compile_ptx(tp._fused_kernel, [f"*{dt}", f"*{dt}", "*i64", f"*{u}"],
                     dict(BLOCK=1024, CDT=c, UDT=getattr(tl, "float" + u[2:])))
         for dt, c, u in (("bf16", tl.float32, "fp32"), ("fp16", tl.float32, "fp64"), ("fp64", tl.float64, "fp64"))]
for p in hist + fused:
    assert "fma." not in p and "div.full" not in p and "div.approx" not in p, "contracted or approximate"
    assert "ex2." not in p and "tanh." not in p, "hardware exp or tanh"
wide, narrow = hist[1:2] + fused[1:], hist[:1] + fused[:1]  # scores in fp64 / fp32 units
for c in (1.0 / 6227020800.0, 1.44269504088896338700e+00, 6404582.0 / 10854718875.0, 1.90821492927058770002e-10):
    assert all("0d" + struct.pack(">d", c).hex().upper() in p for p in wide), c
for c in (1.0 / 5040.0, 1.44269504088896338700e+00, 17.0 / 315.0, 2.12194440054690582e-4):
    # either sign: a subtraction of a negated product may be compiled as an addition (exact)
    assert all(any("0f" + struct.pack(">f", v).hex().upper() in p for v in (c, -c)) for p in narrow), c
for p in narrow:  # fp32 units do no fp64 arithmetic (a GPU without fp64 units runs them at speed)
    assert not re.search(r"\b(add|sub|mul|div|fma)(\.rn)?\.f64", p), "fp64 arithmetic in an fp32 unit"
print("ok")
"""


@pytest.mark.skipif(not _backend.triton_importable(), reason="needs triton")
def test_triton_compiles_for_gpu_without_fma():
    from conftest import run_triton_compile_check

    run_triton_compile_check(_COMPILE_CHECK)


@pytest.mark.parametrize("memory", ["0", "4000000000"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpp_selection_memory_budget(monkeypatch, memory, dtype):
    """M2N2_SELECTION_MEMORY, the call's memory budget (task_merge_kernels.h): 0 selects
    the clamp bounds and the drop thresholds with 8-bit radix digits and nothing
    collected, 4 GB with 16-bit ones; the same bits as the reference either way."""
    monkeypatch.setenv("M2N2_SELECTION_MEMORY", memory)
    base, models = make_models([(70001,), (300, 7)], dtype, 3, seed=5)
    for scope in ("tensor", "global"):
        kw = dict(ratio=0.2, lam=0.7, scope=scope, clamp=1e-3)
        assert_same_bits(pcb_merge(base, models, backend="cpp", **kw), pcb_merge(base, models, backend="torch", **kw),
                         scope)
