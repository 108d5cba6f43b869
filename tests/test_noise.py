"""The mutation noise of the crossover ops: z(seed, stream, i), Philox4x32-10 and Box-Muller.

docs/semantics.md: child_i += sigma * z_i, z_i a standard normal keyed by (seed, stream, i),
the same whatever the thread count, chunking, launch shape or backend. split_interpolate
uses stream 0 and global index index_offset + position; crossover_batch gives child k
stream k. The public API does not expose the stream: the op-level entry points
(torch.ops.m2n2.split_interpolate_out, the Triton launcher, reference.split_interpolate)
take it, and are used here only where a stream other than a child's index is needed.

How the noise is read back: with zero parents and lerp (split 0, w 0: ca = 0, cb = 1) the
child is fl(0 * 0 + 1 * 0) + fl(sigma * z) = fl(sigma * z), so for sigma = 1 the output
IS z (an fp32 value; fp64 storage widens it exactly, bf16/fp16 round it once).

What the backends compute, found out here (test_*_exact_box_muller):
- cpp and triton evaluate the log and sin/cos with the same polynomials in the same
  order (philox.h, triton/philox.py): their noise is bit-identical, and within ~4 ulp of
  the exact value of Box-Muller on the same Philox words (computed here in fp64).
- the torch reference uses torch.log/cos/sin on an angle 2 pi u2 rounded to fp32, which
  is off by up to 2^-22 + 2 pi * 2.8e-8 ~ 4.13e-7 rad; its noise is therefore off by up
  to ~4.13e-7 * r (r <= 5.77) + a few ulp: not within a ulp of cpp, but within ~1.5e-6.

Statistics are at fixed seeds (deterministic), with thresholds at about 5 sigma of the
statistic under the hypothesis; test_statistics_reject_broken_generators checks that
they do fail for plausible generator bugs.
The Triton interpreter is slow: every Triton call here handles at most 4096 elements;
longer Triton samples are drawn in pieces through index_offset (bit-identical to one
call, test_chunking_is_bit_identical).
"""
import functools
import math

import pytest
import torch
from conftest import available_backends

import m2n2_kernels as mk
from m2n2_kernels import _checks, reference

BACKENDS = available_backends("cpu")
DTYPES = [torch.float32, torch.float64]
ALL_DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
TRITON_MAX = 4096  # elements per Triton call (interpreter)
M32 = 0xFFFFFFFF
M64 = 2**64 - 1
# u1 >= 2^-24, so |z| <= r <= sqrt(-2 ln 2^-24).
R_MAX = math.sqrt(-2 * math.log(2.0**-24))
# Backends that share philox.h's polynomials: distance to exact Box-Muller, in fp32 ulp
# of z (measured: at most 4.1 over 3 * 2^20 samples).
POLY_ULPS = 6
# The torch reference: its fp32 angle is off by <= 4.13e-7 rad (see the docstring).
TORCH_ANGLE_ERR = 4.5e-7
TORCH_ULPS = 6
# Hence |cpp - torch| <= 4.13e-7 * 5.77 + a few ulp; measured at most 1.43e-6.
TORCH_CPP_MAX_DIFF = 2.5e-6


# Small tensors: one torch thread (conftest.py); the thread-count tests set their own.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _ids(x):
    return str(x).replace("torch.", "")


def stat_n(backend):
    """Samples for a distribution test: 2^16 (2^14 through the Triton interpreter)."""
    return 2**14 if backend == "triton" else 2**16


def key_n(backend):
    """Samples per key for the tests across keys: 2^16 (one call, 4096, through the
    Triton interpreter, whose noise is also checked bit for bit against cpp's)."""
    return TRITON_MAX if backend == "triton" else 2**16


# ---------------------------------------------------------------------------
# Reading the noise back.
# ---------------------------------------------------------------------------


def _noise_call(backend, n, dtype, seed, index_offset, sigma):
    zero = torch.zeros(n, dtype=dtype)
    return mk.split_interpolate(
        zero, zero, 0, 0.0, method="lerp", noise_std=sigma, seed=seed, index_offset=index_offset, backend=backend
    )


def noise(backend, n, *, dtype=torch.float32, seed=0, index_offset=0, sigma=1.0):
    """sigma * z(seed, 0, index_offset + i), i < n, through the public split_interpolate
    (rounded to `dtype`). Triton samples longer than TRITON_MAX come in pieces."""
    if backend != "triton" or n <= TRITON_MAX:
        return _noise_call(backend, n, dtype, seed, index_offset, sigma)
    return torch.cat([
        _noise_call(backend, min(TRITON_MAX, n - lo), dtype, seed, index_offset + lo, sigma)
        for lo in range(0, n, TRITON_MAX)
    ])


@functools.lru_cache(maxsize=None)
def _cached(backend, n, dtype, seed, index_offset):
    return noise(backend, n, dtype=dtype, seed=seed, index_offset=index_offset).double()


def sample(backend, n, *, dtype=torch.float32, seed=0, index_offset=0):
    """noise() in fp64, cached (the statistics tests share their samples)."""
    return _cached(backend, n, dtype, seed, index_offset).clone()


def batch_noise(backend, k, n, *, dtype=torch.float32, seed=0, sigma=1.0, params_seed=0):
    """crossover_batch of a zero archive: row c is sigma * z(seed, c, i). The children's
    parents, splits and ratios are random (they must not matter)."""
    g = torch.Generator().manual_seed(params_seed)
    archive = torch.zeros(3, n, dtype=dtype)
    ia = torch.randint(0, 3, (k,), generator=g)
    ib = torch.randint(0, 3, (k,), generator=g)
    split = torch.randint(0, n + 1, (k,), generator=g)
    w = torch.rand(k, generator=g, dtype=torch.float64)
    return mk.crossover_batch(archive, ia, ib, split, w, method="lerp", noise_std=sigma, seed=seed, backend=backend)


def stream_noise(backend, n, *, seed, stream, index_offset=0, dtype=torch.float32):
    """z(seed, stream, index_offset + i) through the op-level entry points, which take the
    stream (the public API does not)."""
    zero = torch.zeros(n, dtype=dtype)
    if backend == "torch":
        return reference.split_interpolate(
            zero, zero, 0, 0.0, method="lerp", noise_std=1.0, seed=seed, stream=stream, index_offset=index_offset
        )
    out = torch.empty_like(zero)
    args = ([zero], [zero], [out], 0, 0.0, "lerp", "global", 1.0, _checks.as_seed(seed), _checks.as_seed(stream),
            index_offset)
    if backend == "cpp":
        torch.ops.m2n2.split_interpolate_out(*args)
    else:
        from m2n2_kernels.triton import crossover as tc

        tc.split_interpolate_out(*args)
    return out


def exact_noise(seed, stream, index):
    """(z, r) in fp64: Box-Muller evaluated exactly (to fp64 rounding) on the Philox
    words of the documented key: counter (g, g >> 32, stream, stream >> 32), g = i >> 2,
    key (seed, seed >> 32); words (0, 1) feed lanes 0 (r cos) and 1 (r sin), words (2, 3)
    lanes 2 and 3; u1 = ((w >> 8) + 1) 2^-24, u2 = (w >> 8) 2^-24. The angle 2 pi u2 is
    reduced to the nearest quarter turn exactly (u2 has 24 bits) before sin/cos."""
    seed &= M64
    stream &= M64
    g, lane = index >> 2, index & 3
    zeros = torch.zeros_like(g)
    c = (g & M32, (g >> 32) & M32, zeros + (stream & M32), zeros + (stream >> 32))
    w = reference.philox4x32_10(c, (seed & M32, seed >> 32))
    first = torch.where(lane < 2, w[0], w[2])
    second = torch.where(lane < 2, w[1], w[3])
    u1 = ((first >> 8) + 1).double() * 2.0**-24
    u2 = (second >> 8).double() * 2.0**-24
    r = torch.sqrt(-2 * torch.log(u1))
    v = 4 * u2
    q = torch.floor(v + 0.5)
    x = (v - q) * (math.pi / 2)
    s, co = torch.sin(x), torch.cos(x)
    quad = q.long() & 3
    sin2pi = torch.where(quad == 0, s, torch.where(quad == 1, co, torch.where(quad == 2, -s, -co)))
    cos2pi = torch.where(quad == 0, co, torch.where(quad == 1, -s, torch.where(quad == 2, -co, s)))
    return torch.where(lane % 2 == 0, r * cos2pi, r * sin2pi), r


def ulp32(x):
    """Spacing of fp32 numbers at |x| (x in fp64)."""
    return torch.exp2(torch.floor(torch.log2(x.abs().clamp_min(2.0**-126))) - 23)


def assert_within(got, want, tol, what):
    diff = (got.double() - want.double()).abs()
    bad = ~(diff <= tol)
    if bad.any():
        i = int(bad.nonzero()[0])
        pytest.fail(f"{what}: {int(bad.sum())} of {diff.numel()} off; first at {i}: got {got[i].item()!r}, "
                    f"want {want[i].item()!r}, tolerance {float(tol[i])!r}")


def assert_bitwise(got, want, what):
    assert got.dtype == want.dtype and got.shape == want.shape, what
    same = got.reshape(-1).view(_INT[got.element_size()]) == want.reshape(-1).view(_INT[want.element_size()])
    if not bool(same.all()):
        i = int((~same).nonzero()[0])
        pytest.fail(f"{what}: {int((~same).sum())} of {same.numel()} elements differ; first at {i}: "
                    f"{got.view(-1)[i].item()!r} vs {want.view(-1)[i].item()!r}")


_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}


# ---------------------------------------------------------------------------
# Statistics (fp64; each returns the list of what failed, empty when all pass).
# ---------------------------------------------------------------------------


def _phi(x):
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


def ks_distance(x):
    """Kolmogorov-Smirnov distance sup |F_n - Phi| of the sample x."""
    xs, _ = torch.sort(x.double())
    n = xs.numel()
    f = _phi(xs)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return max(float((i / n - f).max()), float((f - (i - 1) / n).max()))


# P(sqrt(n) D > 2.75) ~ 2 exp(-2 * 2.75^2) ~ 5e-7: a 5-sigma event.
KS_LIMIT = 2.75


def normal_failures(x, what=""):
    """x (fp64) against N(0, 1): range, mean, variance, skewness, kurtosis, tails, KS."""
    x = x.double().reshape(-1)
    n = x.numel()
    bad = []

    def check(name, value, expected, sd):
        if not abs(value - expected) <= 5 * sd:
            bad.append(f"{what}{name} = {value:.6g}, expected {expected:.6g} +- {5 * sd:.3g}")

    if not bool(torch.isfinite(x).all()):
        return [f"{what}non-finite noise"]
    if float(x.abs().max()) > R_MAX * (1 + 1e-6):
        bad.append(f"{what}|z| = {float(x.abs().max())} beyond the largest Box-Muller radius {R_MAX}")
    mean = float(x.mean())
    c = x - mean
    m2 = float((c * c).mean())
    check("mean", mean, 0.0, 1 / math.sqrt(n))
    check("variance", m2, 1.0, math.sqrt(2 / n))
    check("skewness", float((c**3).mean()) / m2**1.5, 0.0, math.sqrt(6 / n))
    check("excess kurtosis", float((c**4).mean()) / m2**2 - 3, 0.0, math.sqrt(24 / n))
    for t in (1.0, 2.0, 3.0, 4.0):
        p = math.erfc(t / math.sqrt(2))  # P(|z| > t)
        check(f"P(|z| > {t})", float((x.abs() > t).double().mean()), p, math.sqrt(p * (1 - p) / n))
    d = ks_distance(x)
    if not math.sqrt(n) * d < KS_LIMIT:
        bad.append(f"{what}KS distance {d:.5f} >= {KS_LIMIT / math.sqrt(n):.5f} (sqrt(n) D = {math.sqrt(n) * d:.3f})")
    return bad


def corr(x, y):
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    return float((x * y).sum() / torch.sqrt((x * x).sum() * (y * y).sum()))


def _chi2_limit(df, z=5.0):
    """Wilson-Hilferty: the chi-square quantile at a z-sigma tail."""
    h = 2 / (9 * df)
    return df * (1 - h + z * math.sqrt(h)) ** 3


def independence_failures(x, y, what=""):
    """x, y (paired samples, fp64) uncorrelated, and their squares uncorrelated (a shared
    Box-Muller radius), and jointly uniform on an 8 x 8 grid of (Phi(x), Phi(y))."""
    m = x.numel()
    bad = []
    lim = 5 / math.sqrt(m)
    for name, (u, v) in (("corr", (x, y)), ("corr of squares", (x * x, y * y))):
        r = corr(u, v)
        if not abs(r) < lim:
            bad.append(f"{what}{name} = {r:.5f}, |.| must be < {lim:.5f}")
    bins = 8
    cx = (_phi(x.double()) * bins).long().clamp_(0, bins - 1)
    cy = (_phi(y.double()) * bins).long().clamp_(0, bins - 1)
    counts = torch.bincount(cx * bins + cy, minlength=bins * bins).double()
    expected = m / bins**2
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    if not chi2 < _chi2_limit(bins**2 - 1):
        bad.append(f"{what}chi-square of the joint grid {chi2:.1f} >= {_chi2_limit(bins**2 - 1):.1f}")
    return bad


LAGS = (1, 2, 3, 4, 5, 7, 8, 64, 1000, 4096)


def lag_failures(x, lags=LAGS):
    bad = []
    for lag in lags:
        if lag < x.numel() // 2:
            bad += independence_failures(x[:-lag], x[lag:], f"lag {lag}: ")
    lanes = x[: x.numel() // 4 * 4].view(-1, 4)  # the four lanes of each Philox call
    for i in range(4):
        bad += normal_failures(lanes[:, i], f"lane {i}: ")
        for j in range(i + 1, 4):
            bad += independence_failures(lanes[:, i], lanes[:, j], f"lanes {i},{j}: ")
    return bad


# ---------------------------------------------------------------------------
# The generator itself.
# ---------------------------------------------------------------------------


def test_philox_known_answers():
    # Random123's known-answer vectors for philox4x32_10 (kat_vectors): the words under
    # the noise are the published generator's, not a look-alike.
    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((M32, M32, M32, M32), (M32, M32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
         (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ]
    for counter, key, want in cases:
        got = reference.philox4x32_10(tuple(torch.tensor([c]) for c in counter), key)
        assert tuple(int(w) for w in got) == want, (counter, key)


def test_ks_distance_of_known_samples():
    # The normal quantiles at (i - 1/2) / n are at distance 1/(2n) exactly; moved by d
    # (small), the distance grows to ~ d * phi(0).
    n = 1000
    q = torch.special.ndtri((torch.arange(n, dtype=torch.float64) + 0.5) / n)
    assert ks_distance(q) == pytest.approx(0.5 / n, rel=1e-9)
    assert ks_distance(q + 0.1) == pytest.approx(0.1 / math.sqrt(2 * math.pi), rel=0.05)


def test_statistics_reject_broken_generators():
    # The checks below must fail for plausible generator bugs, at the sizes used.
    n = stat_n("triton")  # the smallest sample any backend is tested with
    z = sample("cpp", 4 * n, seed=21)
    x, y = z[:n], z[n: 2 * n]
    assert not normal_failures(x)
    assert not independence_failures(x, y)
    assert not lag_failures(x)
    assert normal_failures(x * 1.05), "variance 1.1025"
    assert normal_failures(x + 0.05), "mean 0.05"
    assert normal_failures((torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) - 0.5)
                           * math.sqrt(12)), "uniform with unit variance"
    assert normal_failures(torch.where(x.abs() > 3, x / 2, x)), "tails beyond 3 sigma halved"
    assert normal_failures(torch.where(x > 0, x * 1.1, x * 0.9) - 0.08), "skewed"
    assert independence_failures(x, 0.1 * x + y), "correlated"
    assert independence_failures(x, y * x.abs()), "a shared radius (correlated squares)"
    median = 0.6744897501960817  # of |x|: the sign of y' follows |x|, y' stays N(0, 1)
    dependent = torch.where(x.abs() > median, y.abs(), -y.abs())
    assert abs(corr(x, dependent)) < 5 / math.sqrt(n) and abs(corr(x * x, dependent**2)) < 5 / math.sqrt(n)
    assert independence_failures(x, dependent), "dependent, yet uncorrelated (seen by the joint grid)"
    lanes = x.view(-1, 4).clone()
    lanes[:, 2:] = lanes[:, :2]  # words (2, 3) a copy of words (0, 1)
    assert lag_failures(lanes.view(-1))
    r = lanes[:, :2].norm(dim=1, keepdim=True)
    polar = lanes.clone()
    polar[:, 2:] = r * torch.nn.functional.normalize(y.view(-1, 4)[:, 2:], dim=1)  # both pairs share one radius
    assert lag_failures(polar.view(-1))


# ---------------------------------------------------------------------------
# Distribution.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("backend", BACKENDS)
def test_noise_is_standard_normal(backend, dtype):
    n = stat_n(backend)
    for seed, offset in ((0, 0), (2**64 - 1, 2**34 - 7)):  # also the counter's high word
        x = sample(backend, n, dtype=dtype, seed=seed, index_offset=offset)
        failures = normal_failures(x, f"seed {seed}, offset {offset}: ")
        assert not failures, failures


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("backend", BACKENDS)
def test_noise_uncorrelated_along_the_index(backend, dtype):
    x = sample(backend, stat_n(backend), dtype=dtype, seed=0)
    failures = lag_failures(x)
    assert not failures, failures


@pytest.mark.parametrize("backend", BACKENDS)
def test_noise_independent_across_seeds(backend):
    n = key_n(backend)
    s = 0x1234_5678_9ABC_DEF0
    base = sample(backend, n, seed=s)
    failures = []
    # seeds adjacent, differing in the high word only, or in the top bit only
    for other in (s + 1, s - 1, s ^ (1 << 32), s ^ (1 << 63), s ^ 1):
        x = sample(backend, n, seed=other)
        assert not torch.equal(x, base), f"seed {other:#x} gives the noise of seed {s:#x}"
        failures += independence_failures(base, x, f"seed {other:#x}: ")
    # keys adjacent in both the seed and the index: z(s, i) against z(s + 1, i + 1), ...
    shifted = sample(backend, n + 8, seed=s + 1)
    for d in (1, 2, 4, 5):
        failures += independence_failures(base, shifted[d: d + n], f"seed s+1, index i+{d}: ")
    back = sample(backend, n, seed=s - 1, index_offset=1)
    failures += independence_failures(base[1:], back[:-1], "seed s-1, index i: ")
    assert not failures, failures


@pytest.mark.parametrize("backend", BACKENDS)
def test_noise_independent_across_far_indices(backend):
    # indices 2^32 and 2^34 apart: the counter's group number differs in bit 30 of its low
    # word, or in its high word only
    n = key_n(backend)
    base = sample(backend, n, seed=3)
    failures = []
    for offset in (2**32, 2**34, 2**34 + 4, 2**40):
        x = sample(backend, n, seed=3, index_offset=offset)
        assert not torch.equal(x, base), f"offset {offset} repeats offset 0"
        failures += independence_failures(base, x, f"offset {offset}: ")
    assert not failures, failures


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_children_independent(backend, dtype):
    k = 4
    n = TRITON_MAX // k if backend == "triton" else 2**14
    rows = batch_noise(backend, k, n, dtype=dtype, seed=17).double()
    failures = []
    for c in range(k):
        for d in range(c + 1, k):
            failures += independence_failures(rows[c], rows[d], f"children {c},{d}: ")
            failures += independence_failures(rows[c, :-1], rows[d, 1:], f"child {c} i, child {d} i+1: ")
    failures += normal_failures(rows.view(-1), "all children: ")
    assert not failures, failures


@pytest.mark.parametrize("backend", BACKENDS)
def test_stream_high_word(backend):
    # The stream fills two counter words: streams 2^32 + k are not streams k. Only the
    # op-level entry points take a stream (crossover_batch would need 2^32 children).
    n = TRITON_MAX
    zs = {st: stream_noise(backend, n, seed=9, stream=st).double() for st in (0, 1, 2**32, 2**32 + 1, 2**63)}
    failures = []
    for a, b in ((0, 2**32), (1, 2**32 + 1), (0, 2**63), (0, 1), (2**32, 2**32 + 1)):
        assert not torch.equal(zs[a], zs[b]), f"stream {a} == stream {b}"
        failures += independence_failures(zs[a], zs[b], f"streams {a:#x},{b:#x}: ")
    assert not failures, failures
    for st, z in zs.items():
        want, r = exact_noise(9, st, torch.arange(n))
        tol = TORCH_ANGLE_ERR * r + TORCH_ULPS * ulp32(want) if backend == "torch" else POLY_ULPS * ulp32(want)
        assert_within(z, want, tol, f"stream {st:#x}")


# ---------------------------------------------------------------------------
# How the noise enters the child.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=_ids)
@pytest.mark.parametrize("backend", BACKENDS)
def test_noise_is_rounded_once_to_storage(backend, dtype):
    # z is an fp32 value: fp64 storage holds it exactly, bf16/fp16 round it once (to
    # nearest even, as torch's .to does).
    n = 4096
    z = noise(backend, n, seed=41, index_offset=6)
    assert_bitwise(noise(backend, n, dtype=dtype, seed=41, index_offset=6), z.to(dtype), f"{dtype} noise")


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method,omega", [("lerp", "global"), ("slerp", "segment")])
def test_noise_scales_and_adds_exactly(backend, dtype, method, omega):
    # child = fl(fl(ca a + cb b) + fl(sigma z)): the noisy child is the clean child plus
    # the scaled noise, with one rounding each, in the compute type (= storage here).
    n, split, sigma, seed = 4093, 1500, 0.037, 2**63 + 5
    g = torch.Generator().manual_seed(1)
    a = torch.randn(n, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(n, generator=g, dtype=torch.float64).to(dtype)
    z = noise(backend, n, dtype=dtype, seed=seed, index_offset=3)
    scaled = noise(backend, n, dtype=dtype, seed=seed, index_offset=3, sigma=sigma)
    assert_bitwise(scaled, z * torch.tensor(sigma, dtype=dtype), "sigma * z")
    kw = dict(method=method, omega=omega, seed=seed, index_offset=3, backend=backend)
    clean = mk.split_interpolate(a, b, split, 0.3, **kw)
    noisy = mk.split_interpolate(a, b, split, 0.3, noise_std=sigma, **kw)
    assert_bitwise(noisy, clean + scaled, "noisy child")
    # read back in fp64, the noise is sigma * z to the rounding of the child
    got = (noisy.double() - clean.double()) / sigma
    # half an ulp for fl(sigma z), half an ulp for the sum, and clean's own half ulp
    tol = (ulp32(clean.double()) + ulp32(noisy.double())) / sigma + ulp32(z.double()) if dtype == torch.float32 \
        else torch.full((n,), 1e-13)
    assert_within(got, z.double(), tol, "extracted noise")


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_noise_adds_exactly(backend, dtype):
    k, n, sigma, seed = 3, 1000, 0.02, 77
    g = torch.Generator().manual_seed(2)
    archive = torch.randn(4, n, generator=g, dtype=torch.float64).to(dtype)
    ia, ib = torch.tensor([0, 3, 1]), torch.tensor([2, 1, 1])
    split, w = torch.tensor([10, 999, 500]), torch.tensor([0.25, 0.5, 0.9], dtype=torch.float64)
    for method, omega in (("lerp", "global"), ("slerp", "segment")):
        kw = dict(method=method, omega=omega, seed=seed, backend=backend)
        clean = mk.crossover_batch(archive, ia, ib, split, w, **kw)
        noisy = mk.crossover_batch(archive, ia, ib, split, w, noise_std=sigma, **kw)
        z = batch_noise(backend, k, n, dtype=dtype, seed=seed, sigma=sigma)
        assert_bitwise(noisy, clean + z, f"{method}/{omega}: noisy children")


# ---------------------------------------------------------------------------
# Keying: z depends on (seed, stream, global index) only.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("backend", BACKENDS)
def test_chunking_is_bit_identical(backend, dtype):
    # A piece [o, o + m) computed alone with index_offset = base + o is the slice of the
    # whole call, noise included: pieces of every phase (o % 4), crossing Triton's
    # 2048-element blocks, the C++ kernels' 512-element noise tiles and 2^16-element
    # thread chunks, and the 2^34 boundary where the counter's high word changes.
    if backend == "cpp":
        n = 2**17 + 5
        pieces = [(0, 1), (1, 6), (7, 4096), (511, 514), (65533, 7), (65535, 65540), (3, n - 3), (n - 1, 1)]
    else:  # the interpreter, and the reference (chunked by construction): small sizes
        n, pieces = 4096, [(0, 1), (1, 2046), (2047, 2049), (3, 4093), (4095, 1)]
    g = torch.Generator().manual_seed(3)
    a = torch.randn(n, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(n, generator=g, dtype=torch.float64).to(dtype)
    for base in (0, 2**34 - 2050):
        split = base + n // 3  # the split is global too (lerp: no angle over the piece)
        kw = dict(method="lerp", noise_std=0.5, seed=2**40 + 3, backend=backend)
        whole = mk.split_interpolate(a, b, split, 0.3, index_offset=base, **kw)
        for o, m in pieces:
            # (at index_offset 0 the API takes split <= the piece's length; min() is the same split)
            s = split if base + o > 0 else min(split, m)
            piece = mk.split_interpolate(a[o: o + m], b[o: o + m], s, 0.3, index_offset=base + o, **kw)
            assert_bitwise(piece, whole[o: o + m], f"piece ({o}, {m}) at base {base}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_list_pieces_share_one_index(backend):
    # A list is one long vector: piece j's noise is that of its global indices, in its own
    # dtype, whatever the other pieces' dtypes (one empty piece is skipped, not counted).
    sizes, dtypes = (3, 0, 1025, 2050, 1), (torch.float32, torch.float64, torch.bfloat16, torch.float64, torch.float16)
    offset, seed = 5, 2**64 - 2
    z = noise(backend, sum(sizes), seed=seed, index_offset=offset)
    zeros = [torch.zeros(m, dtype=d) for m, d in zip(sizes, dtypes)]
    got = mk.split_interpolate(zeros, [t.clone() for t in zeros], 0, 0.0, method="lerp", noise_std=1.0, seed=seed,
                               index_offset=offset, backend=backend)
    start = 0
    for j, (m, d) in enumerate(zip(sizes, dtypes)):
        assert_bitwise(got[j], z[start: start + m].to(d), f"piece {j} ({d})")
        start += m


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=_ids)
@pytest.mark.parametrize("backend", BACKENDS)
def test_noise_keyed_by_logical_index_whatever_the_layout(backend, dtype):
    # In place (out is a, out is b), and column-major inputs: element i is the i-th in
    # row-major order, and gets the same noise.
    g = torch.Generator().manual_seed(8)
    a = torch.randn(64, 33, generator=g).to(dtype)
    b = torch.randn(64, 33, generator=g).to(dtype)
    kw = dict(method="slerp", noise_std=0.1, seed=2**63 + 3, index_offset=7, backend=backend)
    want = mk.split_interpolate(a, b, 1000, 0.3, **kw)
    x = a.clone()
    assert_bitwise(mk.split_interpolate_(x, b, 1000, 0.3, **kw), want, "in place into a")
    y = b.clone()
    assert_bitwise(mk.split_interpolate(a, y, 1000, 0.3, out=y, **kw), want, "in place into b")
    col_a, col_b = a.t().contiguous().t(), b.t().contiguous().t()
    assert_bitwise(mk.split_interpolate(col_a, col_b, 1000, 0.3, **kw), want, "column-major parents")
    archive = torch.randn(4, 2000, generator=g).to(dtype)
    bargs = ([0, 1], [2, 3], [5, 1500], [0.2, 0.8])
    bkw = dict(method="slerp", noise_std=0.1, seed=5, backend=backend)
    rows = mk.crossover_batch(archive, *bargs, **bkw)
    assert_bitwise(mk.crossover_batch(archive.t().contiguous().t(), *bargs, **bkw), rows, "column-major archive")
    out = torch.full((2, 2000), float("nan"), dtype=dtype)
    assert mk.crossover_batch(archive, *bargs, out=out, **bkw) is out
    assert_bitwise(out, rows, "batch into out=")


def test_global_indices_past_int64():
    # The last representable global index is 2**63 - 1. A piece that ends there works on
    # every backend alike; one that runs past it is refused by every backend (ValueError).
    def attempt(backend, offset, n):
        try:
            return noise(backend, n, seed=5, index_offset=offset)
        except (ValueError, RuntimeError, OverflowError) as e:
            return type(e)

    fits = {b: attempt(b, 2**63 - 8, 8) for b in BACKENDS}
    want, r = exact_noise(5, 0, torch.arange(8) + (2**63 - 8))
    for b, z in fits.items():
        assert torch.is_tensor(z), f"{b}: {z}"
        tol = TORCH_ANGLE_ERR * r + TORCH_ULPS * ulp32(want) if b == "torch" else POLY_ULPS * ulp32(want)
        assert_within(z, want, tol, f"{b}: the last global indices")
    past = {b: attempt(b, 2**63 - 4, 8) for b in BACKENDS}
    assert all(v is ValueError for v in past.values()), f"a piece past 2**63 must be refused: {past}"


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_child_noise_keyed_by_k_only(backend, dtype):
    # Child k's noise is z(seed, k, i): whatever its parents, split and ratio, whatever
    # the other children and how many there are.
    n, seed = 1000, 123
    five = batch_noise(backend, 5, n, dtype=dtype, seed=seed, params_seed=0)
    three = batch_noise(backend, 3, n, dtype=dtype, seed=seed, params_seed=1)
    assert_bitwise(three, five[:3], "children 0..2 of batches of 3 and of 5")
    # child 0 is stream 0: the public split_interpolate's noise
    assert_bitwise(five[0], noise(backend, n, dtype=dtype, seed=seed), "child 0 vs split_interpolate")
    for c in range(5):
        for d in range(c + 1, 5):
            assert not torch.equal(five[c], five[d]), f"children {c} and {d} share their noise"
    assert not torch.equal(five, batch_noise(backend, 5, n, dtype=dtype, seed=seed + 1))

    # with real parents: child 1 of two batches that share only child 1
    g = torch.Generator().manual_seed(4)
    archive = torch.randn(4, n, generator=g, dtype=torch.float64).to(dtype)
    kw = dict(method="slerp", noise_std=0.1, seed=seed, backend=backend)
    x = mk.crossover_batch(archive, [0, 1, 2], [3, 2, 0], [10, 400, 999], [0.1, 0.7, 0.4], **kw)
    y = mk.crossover_batch(archive, [3, 1], [3, 2], [0, 400], [0.9, 0.7], **kw)
    assert_bitwise(x[1], y[1], "child 1 of two batches")


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_child_is_stream_k(backend):
    # Child k of crossover_batch has the noise of the op-level split_interpolate with
    # stream k (bit for bit on one backend).
    k, n, seed = 4, 1000, 2**63 + 99
    rows = batch_noise(backend, k, n, seed=seed)
    for c in range(k):
        assert_bitwise(rows[c], stream_noise(backend, n, seed=seed, stream=c), f"child {c} vs stream {c}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_seed_uses_all_64_bits(backend):
    # Seeds of the top half (passed to the ops as negative int64) and seeds differing
    # in one high bit give their own noise, the documented one.
    n = 1024
    seen = {}
    for seed in (0, 1, 2**32, 2**32 + 1, 2**63 - 1, 2**63, 2**64 - 1):
        z = noise(backend, n, seed=seed)
        for other, prev in seen.items():
            assert not torch.equal(z, prev), f"seeds {seed:#x} and {other:#x} give the same noise"
        seen[seed] = z
        want, r = exact_noise(seed, 0, torch.arange(n))
        tol = TORCH_ANGLE_ERR * r + TORCH_ULPS * ulp32(want) if backend == "torch" else POLY_ULPS * ulp32(want)
        assert_within(z, want, tol, f"seed {seed:#x}")


# ---------------------------------------------------------------------------
# Threads (the C++ CPU kernels run OpenMP over fixed chunks).
# ---------------------------------------------------------------------------


def _with_threads(count, fn):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(count)
        assert mk.build_info()["omp_max_threads"] == count or not mk.build_info()["openmp"]
        return fn()
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=_ids)
def test_thread_count_split_interpolate(dtype):
    n = 2**20 + 3
    g = torch.Generator().manual_seed(5)
    a = torch.randn(n, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(n, generator=g, dtype=torch.float64).to(dtype)

    def run():
        out = [mk.split_interpolate(a, b, 300_001, 0.35, method="slerp", omega="segment", noise_std=0.05,
                                    seed=2**63 + 1, index_offset=index_offset, backend="cpp")
               for index_offset in (0, 3)]
        zero = torch.zeros(n, dtype=dtype)
        out.append(mk.split_interpolate(zero, zero, 0, 0.0, method="lerp", noise_std=1.0, seed=8, index_offset=2**34 - 1,
                                        backend="cpp"))
        return out

    one, two = _with_threads(1, run), _with_threads(2, run)
    for i, (x, y) in enumerate(zip(one, two)):
        assert_bitwise(x, y, f"call {i}: 1 thread vs 2")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=_ids)
def test_thread_count_crossover_batch(dtype):
    n = 2**18 + 3  # four thread chunks per child
    g = torch.Generator().manual_seed(6)
    archive = torch.randn(4, n, generator=g, dtype=torch.float64).to(dtype)
    ia, ib = torch.tensor([0, 1, 3]), torch.tensor([2, 2, 0])
    split, w = torch.tensor([5, 2**17 + 1, n]), torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)

    def run():
        return mk.crossover_batch(archive, ia, ib, split, w, method="slerp", noise_std=0.01, seed=31, backend="cpp")

    assert_bitwise(_with_threads(1, run), _with_threads(2, run), "1 thread vs 2")


# ---------------------------------------------------------------------------
# Backends agree.
# ---------------------------------------------------------------------------

KEYS = [  # (seed, stream, index_offset)
    (0, 0, 0),
    (12345, 0, 3),
    (2**64 - 1, 0, 2**34 - 2),
    (2**63, 1, 2**32 + 1),
    (7, 2**32 + 3, 5),
    (2**32, 65535, 2**40 + 2),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("key", KEYS, ids=lambda k: "-".join(hex(v) for v in k))
def test_noise_matches_exact_box_muller(backend, key):
    # cpp and triton: a few ulp of the exact value; torch: its fp32 angle's error.
    seed, stream, offset = key
    n = 4096
    z = stream_noise(backend, n, seed=seed, stream=stream, index_offset=offset)
    want, r = exact_noise(seed, stream, torch.arange(n) + offset)
    tol = TORCH_ANGLE_ERR * r + TORCH_ULPS * ulp32(want) if backend == "torch" else POLY_ULPS * ulp32(want)
    assert_within(z, want, tol, f"{backend} vs exact Box-Muller")
    if backend == "torch":  # the reference is normal_noise itself
        assert_bitwise(z, reference.normal_noise(seed, stream, torch.arange(n) + offset), "torch vs normal_noise")


def test_cpp_noise_matches_exact_box_muller_at_scale():
    n = 2**18
    z = noise("cpp", n, seed=99, index_offset=2**33 + 1).double()
    want, _ = exact_noise(99, 0, torch.arange(n) + 2**33 + 1)
    assert_within(z, want, POLY_ULPS * ulp32(want), "cpp vs exact Box-Muller")


@pytest.mark.parametrize("key", KEYS, ids=lambda k: "-".join(hex(v) for v in k))
def test_cpp_matches_torch_reference(key):
    # Not bit for bit (torch's fp32 angle, see the module docstring), within both errors.
    seed, stream, offset = key
    n = 2**16
    cpp = stream_noise("cpp", n, seed=seed, stream=stream, index_offset=offset).double()
    ref = stream_noise("torch", n, seed=seed, stream=stream, index_offset=offset).double()
    _, r = exact_noise(seed, stream, torch.arange(n) + offset)
    tol = TORCH_ANGLE_ERR * r + (TORCH_ULPS + POLY_ULPS) * ulp32(ref)
    assert_within(cpp, ref, tol, "cpp vs torch")
    assert float((cpp - ref).abs().max()) < TORCH_CPP_MAX_DIFF


@pytest.mark.skipif("triton" not in BACKENDS, reason="triton is not available here")
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=_ids)
@pytest.mark.parametrize("key", KEYS, ids=lambda k: "-".join(hex(v) for v in k))
def test_triton_bitwise_equals_cpp(key, dtype):
    seed, stream, offset = key
    n = TRITON_MAX - 3
    assert_bitwise(
        stream_noise("triton", n, seed=seed, stream=stream, index_offset=offset, dtype=dtype),
        stream_noise("cpp", n, seed=seed, stream=stream, index_offset=offset, dtype=dtype),
        "triton vs cpp",
    )


@pytest.mark.skipif("triton" not in BACKENDS, reason="triton is not available here")
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
def test_triton_batch_bitwise_equals_cpp(dtype):
    g = torch.Generator().manual_seed(7)
    archive = torch.randn(3, 1001, generator=g, dtype=torch.float64).to(dtype)
    args = (archive, [0, 1, 2, 2], [1, 2, 0, 2], [0, 500, 1001, 3], [0.3, 0.6, 0.1, 0.9])
    kw = dict(method="lerp", noise_std=0.25, seed=2**63 + 17)
    assert_bitwise(mk.crossover_batch(*args, backend="triton", **kw), mk.crossover_batch(*args, backend="cpp", **kw),
                   "triton vs cpp batch")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
@pytest.mark.parametrize("backend", ["cpp", "triton"])
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_cuda_noise_is_the_cpu_noise(backend, dtype):
    # philox.h (CUDA C++) and triton/philox.py evaluate Box-Muller with the same
    # polynomials, without FMA contraction: the GPU's noise is the CPU's, bit for bit,
    # for a single child and for a batch.
    n, kw = 2**20 + 3, dict(method="lerp", noise_std=1.0, seed=2**40 + 9, index_offset=2**33 + 1)
    zero = torch.zeros(n, dtype=dtype)
    cpu = mk.split_interpolate(zero, zero, 0, 0.0, backend="cpp", **kw)
    gpu = mk.split_interpolate(zero.cuda(), zero.cuda(), 0, 0.0, backend=backend, **kw)
    assert torch.equal(gpu.cpu(), cpu)
    archive = torch.zeros(2, 4099, dtype=dtype)
    args = ([0, 1, 1], [1, 0, 1], [0, 0, 0], [0.0, 0.0, 0.0])
    bkw = dict(method="lerp", noise_std=1.0, seed=11)
    want = mk.crossover_batch(archive, *args, backend="cpp", **bkw)
    assert torch.equal(mk.crossover_batch(archive.cuda(), *args, backend=backend, **bkw).cpu(), want)
