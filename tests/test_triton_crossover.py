"""Triton split-point crossover against reference.py (and, for the noise, bit for
bit against the C++ CPU kernels, which share philox.h's maths).

Without a GPU this runs in Triton's interpreter on CPU tensors (conftest.py sets
TRITON_INTERPRET=1 before anything imports triton), so sizes stay small.
Tolerances: lerp without noise is exact in every dtype. Slerp's fp64 sums are
added in another order than the reference's and torch's acos/sin may differ from
Python's in the last bit, so its coefficients may too: up to 2 ulp (of the storage
dtype) of |ca a| + |cb b|. The noise
uses philox.h's polynomial log/sin/cos, the reference torch's: see _noise_tol.
"""
import mmap
import sys

import pytest
import torch

from m2n2_kernels import _backend, reference
from m2n2_kernels.crossover import crossover_batch, split_interpolate

triton = pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not _backend.triton_interpreting():
    pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1 (see conftest.py)", allow_module_level=True)

import triton.language as tl  # noqa: E402

from m2n2_kernels.triton import crossover as tc  # noqa: E402
from m2n2_kernels.triton import philox as tp  # noqa: E402
from m2n2_kernels.triton._utils import double_bits, launch_opts  # noqa: E402

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
MODES = [("lerp", "global"), ("slerp", "global"), ("slerp", "segment")]
_MANTISSA = {torch.float32: 23, torch.float64: 52, torch.float16: 10, torch.bfloat16: 7}


def _ulp(x, dtype):
    """Spacing of `dtype` numbers at |x| (x in fp64), subnormals included."""
    mag = x.abs().clamp_min(torch.finfo(dtype).tiny)
    return torch.exp2(torch.floor(torch.log2(mag)) - _MANTISSA[dtype])


def _noise_tol(z):
    """How far our z may be from reference.normal_noise: the reference rounds the
    angle 2 pi u2 to fp32 (up to 2.4e-7 off) before torch's cos/sin, and r <= 5.8;
    our angle reduction is exact. Plus a few ulp of z for the rest."""
    return 4 * _ulp(z, torch.float32) + 1.5e-6


def _randn(n, dtype, gen):
    return torch.randn(n, generator=gen, dtype=torch.float64).to(dtype).to(DEVICE)


def _signed(seed):
    return seed - 2**64 if seed >= 2**63 else seed


def _expected(a, b, split, w, method, omega, noise_std, seed, stream=0, index_offset=0):
    """(reference child, tolerance per element) for one tensor."""
    ref = reference.split_interpolate(
        a, b, split, w, method=method, omega=omega, noise_std=noise_std, seed=seed, stream=stream,
        index_offset=index_offset,
    )
    x, y = a.double().reshape(-1).cpu(), b.double().reshape(-1).cpu()
    n = x.numel()
    local = min(max(split - index_offset, 0), n)
    sums = reference.split_sums(x, y, local) if method == "slerp" else None
    (ca0, cb0), (ca1, cb1) = reference.split_coefs(method, omega, sums, w)
    side0 = torch.arange(n) < local
    ca = torch.where(side0, ca0, ca1)
    cb = torch.where(side0, cb0, cb1)
    scale = (ca * x).abs() + (cb * y).abs()
    if method == "lerp" and noise_std == 0.0:
        tol = torch.zeros(n, dtype=torch.float64)
    else:
        tol = 2 * _ulp(scale, a.dtype)
    if noise_std != 0.0:
        z = reference.normal_noise(seed, stream, torch.arange(n) + index_offset).double()
        tol = tol + _ulp(scale + noise_std * z.abs(), a.dtype) + noise_std * _noise_tol(z)
    return ref, tol.view(a.shape)


def _assert_within(actual, expected, tol, what=""):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    diff = (actual.double().cpu() - expected.double().cpu()).abs()
    bad = ~(diff <= tol)  # NaN counts as bad
    if bad.any():
        i = int(bad.nonzero()[0])
        pytest.fail(
            f"{what}: {int(bad.sum())} of {diff.numel()} elements off; first at {i}: "
            f"got {actual.reshape(-1)[i].item()!r}, expected {expected.reshape(-1)[i].item()!r}, "
            f"tolerance {tol.reshape(-1)[i].item()!r}"
        )


def _splits(n, gen):
    picks = {0, 1, n - 1, n, int(torch.randint(0, n + 1, (1,), generator=gen))}
    return sorted(s for s in picks if 0 <= s <= n)


# ---------------------------------------------------------------------------
# Philox and the noise.
# ---------------------------------------------------------------------------


@triton.jit
def _philox_words_kernel(c_ptr, ours_ptr, tritons_ptr, k0, k1, N: tl.constexpr):
    i = tl.arange(0, N)
    c0 = tl.load(c_ptr + 4 * i).to(tl.uint32)
    c1 = tl.load(c_ptr + 4 * i + 1).to(tl.uint32)
    c2 = tl.load(c_ptr + 4 * i + 2).to(tl.uint32)
    c3 = tl.load(c_ptr + 4 * i + 3).to(tl.uint32)
    key0 = tl.cast(k0, tl.uint32)
    key1 = tl.cast(k1, tl.uint32)
    w0, w1, w2, w3 = tp.philox4x32_10(c0, c1, c2, c3, key0, key1)
    tl.store(ours_ptr + 4 * i, w0.to(tl.int64))
    tl.store(ours_ptr + 4 * i + 1, w1.to(tl.int64))
    tl.store(ours_ptr + 4 * i + 2, w2.to(tl.int64))
    tl.store(ours_ptr + 4 * i + 3, w3.to(tl.int64))
    seed = key0.to(tl.uint64) | (key1.to(tl.uint64) << 32)
    v0, v1, v2, v3 = tl.philox(seed, c0, c1, c2, c3)
    tl.store(tritons_ptr + 4 * i, v0.to(tl.int64))
    tl.store(tritons_ptr + 4 * i + 1, v1.to(tl.int64))
    tl.store(tritons_ptr + 4 * i + 2, v2.to(tl.int64))
    tl.store(tritons_ptr + 4 * i + 3, v3.to(tl.int64))


@pytest.mark.parametrize("key", [(0, 0), (0xFFFFFFFF, 0xFFFFFFFF), (0x12345678, 0x9ABCDEF0)])
def test_philox_rounds_bit_for_bit(key):
    gen = torch.Generator().manual_seed(1)
    n = 64
    c = torch.randint(0, 2**32, (n, 4), generator=gen, dtype=torch.int64)
    c[0] = 0
    c[1] = 2**32 - 1
    ours = torch.empty(n, 4, dtype=torch.int64, device=DEVICE)
    tritons = torch.empty_like(ours)
    _philox_words_kernel[(1,)](c.to(DEVICE), ours, tritons, key[0], key[1], N=n)
    want = torch.stack(reference.philox4x32_10(tuple(c.unbind(1)), key), dim=1)
    assert torch.equal(ours.cpu(), want)
    assert torch.equal(tritons.cpu(), want)  # tl.philox runs the same rounds


@pytest.mark.parametrize(
    "seed,stream,index_offset",
    [(0, 0, 0), (2**64 - 1, 2**32 + 5, 2**34 - 10), (12345, 7, 3)],
)
def test_noise_matches_cpp_bitwise_and_reference(seed, stream, index_offset):
    # a = b = 0, lerp, noise_std = 1: the child is z itself.
    n = 1030
    zeros = torch.zeros(n, dtype=torch.float32, device=DEVICE)
    z = torch.empty_like(zeros)
    tc.split_interpolate_out([zeros], [zeros], [z], 0, 0.5, "lerp", "global", 1.0, _signed(seed), stream, index_offset)
    want = reference.normal_noise(seed, stream, torch.arange(n) + index_offset)
    _assert_within(z, want, _noise_tol(want.double()), "noise vs reference")
    cpu = torch.zeros(n, dtype=torch.float32)
    cpp = torch.empty_like(cpu)
    torch.ops.m2n2.split_interpolate_out([cpu], [cpu], [cpp], 0, 0.5, "lerp", "global", 1.0, _signed(seed), stream,
                                         index_offset)
    assert torch.equal(z.cpu(), cpp)


# ---------------------------------------------------------------------------
# The single op against the reference.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("noise_std", [0.0, 0.25], ids=["plain", "noise"])
@pytest.mark.parametrize("method,omega", MODES, ids=["lerp", "slerp-global", "slerp-segment"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference(dtype, method, omega, noise_std):
    gen = torch.Generator().manual_seed(10 * DTYPES.index(dtype) + MODES.index((method, omega)))
    # Tails, one block, several blocks of both kernels. Noise is the slow part in
    # the interpreter and does not depend on the split: fewer cases there.
    for n in (1, 7, 1023, 4099) if noise_std == 0.0 else (1, 7, 4099):
        a, b = _randn(n, dtype, gen), _randn(n, dtype, gen)
        for split in _splits(n, gen) if noise_std == 0.0 else _splits(n, gen)[::2]:
            w = float(torch.rand((), generator=gen, dtype=torch.float64))
            got = split_interpolate(a, b, split, w, method=method, omega=omega, noise_std=noise_std, seed=99,
                                    backend="triton")
            want, tol = _expected(a, b, split, w, method, omega, noise_std, 99)
            _assert_within(got, want, tol, f"n={n} split={split} w={w}")


def test_empty_tensors_are_left_alone():
    e = torch.empty(0, device=DEVICE)
    tc.split_interpolate_out([e], [e], [e], 0, 0.5, "slerp", "global", 1.0, 0, 0, 0)
    got = split_interpolate(e, e, 0, 0.5, method="slerp", noise_std=1.0, backend="triton")
    assert got.shape == (0,)


@pytest.mark.parametrize("case", ["parallel", "zero"])
def test_slerp_falls_back_to_lerp(case):
    gen = torch.Generator().manual_seed(5)
    a = _randn(1500, torch.float32, gen)
    b = a.clone() if case == "parallel" else torch.zeros_like(a)
    for omega in ("global", "segment"):
        got = split_interpolate(a, b, 600, 0.3, method="slerp", omega=omega, backend="triton")
        lerp = split_interpolate(a, b, 600, 0.3, method="lerp", backend="triton")
        assert torch.equal(got, lerp)
        want, _ = _expected(a, b, 600, 0.3, "slerp", omega, 0.0, 0)
        assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("split", [1, 1499])
def test_one_element_side_is_lerp(split):
    # With omega="segment" a side of one element has a and b exactly parallel or
    # antiparallel: sin(omega) is 0 and the reference falls back to lerp there.
    # Sums with fp32 products get cos(omega) = -1 + 6e-8 and coefficients ~1e3.
    gen = torch.Generator().manual_seed(8)
    a, b = _randn(1500, torch.float32, gen), _randn(1500, torch.float32, gen)
    i = 0 if split == 1 else 1499
    a[i], b[i] = 1.3, -0.7
    got = split_interpolate(a, b, split, 0.3, method="slerp", omega="segment", backend="triton")
    want, tol = _expected(a, b, split, 0.3, "slerp", "segment", 0.0, 0)
    _assert_within(got, want, tol, "slerp with a one-element side")
    lerp = split_interpolate(a, b, split, 0.3, method="lerp", backend="triton")
    assert got[i].item() == lerp[i].item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("target", ["a", "b"])
def test_in_place(dtype, target):
    gen = torch.Generator().manual_seed(3)
    a, b = _randn(4099, dtype, gen), _randn(4099, dtype, gen)
    kw = dict(method="slerp", omega="segment", noise_std=0.1, seed=7, backend="triton")
    fresh = split_interpolate(a, b, 2000, 0.4, **kw)
    a_in, b_in = a.clone(), b.clone()
    result = split_interpolate(a_in, b_in, 2000, 0.4, out=a_in if target == "a" else b_in, **kw)
    assert result is (a_in if target == "a" else b_in)
    assert torch.equal(result, fresh)
    assert torch.equal(b_in if target == "a" else a_in, b if target == "a" else a)  # the other parent is untouched


# ---------------------------------------------------------------------------
# Global indices past 2**31 and 2**32 through index_offset: the side of each
# element is decided on global indices (split - index_offset lands inside the
# buffer), and the noise counters (g = i >> 2, whose high word becomes 1 past
# 2**34) must be computed in 64 bits. The interpreter also passes integer
# arguments in [2**31, 2**32) in an odd form (see crossover._i64): this catches it.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("index_offset", [2**31 - 3, 2**32 - 5, 2**34 - 6, 2**40 + 1])
def test_index_offset_past_2_pow_32(index_offset):
    gen = torch.Generator().manual_seed(11)
    n = 1023
    a, b = _randn(n, torch.float32, gen), _randn(n, torch.float32, gen)
    split = index_offset + 300
    for method in ("lerp", "slerp"):
        got = split_interpolate(a, b, split, 0.3, method=method, noise_std=0.5, seed=2**64 - 2,
                                index_offset=index_offset, backend="triton")
        want, tol = _expected(a, b, split, 0.3, method, "global", 0.5, 2**64 - 2, index_offset=index_offset)
        _assert_within(got, want, tol, method)
        if method == "lerp":  # same maths as the C++ kernels, bit for bit
            cpp = split_interpolate(a.cpu(), b.cpu(), split, 0.3, method=method, noise_std=0.5, seed=2**64 - 2,
                                    index_offset=index_offset, backend="cpp")
            assert torch.equal(got.cpu(), cpp)


# ---------------------------------------------------------------------------
# Lists of tensors and batches.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("method,omega", MODES, ids=["lerp", "slerp-global", "slerp-segment"])
def test_multi_tensor_equals_concatenated(method, omega):
    gen = torch.Generator().manual_seed(21)
    sizes = [5, 0, 1023, 2, 2100]  # odd sizes: the pieces start at every phase of the counter groups
    a = [_randn(m, torch.float32, gen) for m in sizes]
    b = [_randn(m, torch.float32, gen) for m in sizes]
    kw = dict(method=method, omega=omega, noise_std=0.2, seed=5, index_offset=2**32 - 3, backend="triton")
    split = 2**32 - 3 + 1100
    got = split_interpolate(a, b, split, 0.7, **kw)
    whole = split_interpolate(torch.cat(a), torch.cat(b), split, 0.7, **kw)
    want, tol = _expected(torch.cat(a), torch.cat(b), split, 0.7, method, omega, 0.2, 5, index_offset=2**32 - 3)
    flat = torch.cat([t.reshape(-1) for t in got])
    _assert_within(flat, want, tol, "list vs reference")
    if method == "lerp":
        assert torch.equal(flat, whole)
    else:  # the fp32 block sums are grouped per tensor: the coefficients may differ in the last bit
        _assert_within(flat, whole, tol, "list vs concatenated")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("method,omega", MODES, ids=["lerp", "slerp-global", "slerp-segment"])
def test_batch_equals_loop_of_single_ops(dtype, method, omega):
    gen = torch.Generator().manual_seed(31)
    n = 1500
    archive = torch.randn(4, n, generator=gen, dtype=torch.float64).to(dtype).to(DEVICE)
    ia = torch.tensor([0, 1, 2, 3, 0])
    ib = torch.tensor([1, 0, 3, 3, 2])  # child 3: identical parents (slerp falls back to lerp)
    split = torch.tensor([0, n, 1, n - 1, 700])
    w = torch.tensor([0.3, 0.9, 0.5, 0.0, 1.0], dtype=torch.float64)
    got = crossover_batch(archive, ia, ib, split, w, method=method, omega=omega, noise_std=0.1, seed=2**63 + 9,
                          backend="triton")
    for k in range(5):
        want, tol = _expected(archive[ia[k]], archive[ib[k]], int(split[k]), float(w[k]), method, omega, 0.1,
                              2**63 + 9, stream=k)
        _assert_within(got[k], want, tol, f"child {k}")
        single = torch.empty(n, dtype=dtype, device=DEVICE)
        tc.split_interpolate_out([archive[ia[k]]], [archive[ib[k]]], [single], int(split[k]), float(w[k]), method,
                                 omega, 0.1, _signed(2**63 + 9), k, 0)
        if method == "lerp":
            assert torch.equal(got[k], single)
        else:
            _assert_within(got[k], single, tol, f"child {k} vs single op")


# ---------------------------------------------------------------------------
# Addresses past 2**32 elements. Each kernel takes `block_offset`, the first
# block it handles; here only the last blocks of vectors longer than 2**32
# elements run, on buffers that exist in address space only (an anonymous
# mapping whose pages appear when touched; real memory on a GPU). The results
# equal the C++ kernels on copies of those tails, which proves that offsets
# (block * BLOCK, row * n), the split comparison and the noise counters are all
# computed in 64 bits: a 32-bit wrap would read and write other addresses.
# ---------------------------------------------------------------------------


def _virtual_zeros(numel, dtype):
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    if DEVICE == "cuda":
        if torch.cuda.mem_get_info()[0] < nbytes + 2**30:
            pytest.skip("not enough GPU memory for a 2**32-element buffer")
        return torch.zeros(numel, dtype=dtype, device=DEVICE)
    if sys.maxsize < 2**40:
        pytest.skip("needs a 64-bit address space")
    noreserve = 0x4000 if sys.platform.startswith("linux") else 0  # MAP_NORESERVE
    try:
        mem = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | noreserve)
    except (OSError, OverflowError, ValueError) as e:
        pytest.skip(f"cannot map {nbytes} bytes of address space: {e}")
    return torch.frombuffer(mem, dtype=dtype)


def _assert_sums_close(part_rows, a, b, local_split):
    """Partial-sum rows [..., 6] against the reference's fp64 sums of (a, b), up to
    rounding (relative to sum |terms| <= (|a|^2 + |b|^2) / 2 per side)."""
    got = part_rows.reshape(-1, 6).sum(0).cpu().view(2, 3)
    want = torch.tensor(reference.split_sums(a.cpu(), b.cpu(), local_split), dtype=torch.float64)
    tol = 1e-12 * (want[:, 1:].sum(1, keepdim=True) + 1)
    assert ((got - want).abs() <= tol).all(), f"sums {got.tolist()} != {want.tolist()}"


def _fill(t, start, stop, gen):
    t[start:stop] = torch.randn(stop - start, generator=gen, dtype=torch.float64).to(t.dtype).to(t.device)


def test_kernels_address_past_2_pow_32():
    gen = torch.Generator().manual_seed(41)
    n = 2**32 + 3001
    first = 3 * 2**32 + 1  # global index of element 0: phase 1, counter groups cross 2**32
    seed, stream, sigma, w = 2**64 - 12345, 2**32 + 7, 0.5, 0.3
    a, b, out = (_virtual_zeros(n, torch.float16) for _ in range(3))
    phase = first & 3
    blocks = triton.cdiv(n + phase, tc.INTERP_BLOCK)
    block0 = blocks - 3
    lo = block0 * tc.INTERP_BLOCK - phase  # first element the launched blocks touch
    sum_block0 = triton.cdiv(n, tc.SUM_BLOCK) - 3
    sum_lo = sum_block0 * tc.SUM_BLOCK
    fill_lo = min(lo, sum_lo)
    _fill(a, fill_lo, n, gen)
    _fill(b, fill_lo, n, gen)
    local_split = n - 1000  # side 0 up to a local index past 2**32
    assert local_split > 2**32
    tc._split_interp_kernel[(blocks - block0,)](
        a, b, out, out, double_bits(w), n, local_split, double_bits(sigma), seed & 0xFFFFFFFF, seed >> 32,
        stream & 0xFFFFFFFF, stream >> 32, first, block0, BLOCK=tc.INTERP_BLOCK, CDT=tl.float32, LERP=True,
        NOISE=True, PHASE=phase, **launch_opts(tc.INTERP_WARPS),
    )
    want = torch.empty(n - lo, dtype=torch.float16)
    torch.ops.m2n2.split_interpolate_out([a[lo:].cpu()], [b[lo:].cpu()], [want], first + local_split, w, "lerp",
                                         "global", sigma, _signed(seed), stream, first + lo)
    assert torch.equal(out[lo:].cpu(), want)
    assert not out[lo - 64 : lo].any()  # the element before the first block is not written

    part = torch.empty(3, 6, dtype=torch.float64, device=DEVICE)
    tc._split_sums_kernel[(3,)](a, b, part, n, local_split, 0, sum_block0, BLOCK=tc.SUM_BLOCK,
                               **launch_opts(tc.SUM_WARPS))
    _assert_sums_close(part, a[sum_lo:], b[sum_lo:], local_split - sum_lo)


def test_batch_kernels_address_past_2_pow_32():
    gen = torch.Generator().manual_seed(43)
    n = 2**31 + 1001  # row 2 of the archive starts past element 2**32
    archive = _virtual_zeros(3 * n, torch.float16)
    out = _virtual_zeros(2 * n, torch.float16)
    block0 = triton.cdiv(n, tc.INTERP_BLOCK) - 2
    lo = block0 * tc.INTERP_BLOCK
    sum_block0 = triton.cdiv(n, tc.SUM_BLOCK) - 2
    sum_lo = sum_block0 * tc.SUM_BLOCK
    for row in (1, 2):
        _fill(archive, row * n + min(lo, sum_lo), (row + 1) * n, gen)
    ia = torch.tensor([2, 1], device=DEVICE)
    ib = torch.tensor([1, 2], device=DEVICE)
    split = torch.tensor([n - 300, n], device=DEVICE)
    w = torch.tensor([0.25, 0.75], dtype=torch.float64, device=DEVICE)
    seed, sigma = 77, 0.5
    tc._batch_interp_kernel[(2, 2)](
        archive, ia, ib, split, w, w, out, n, double_bits(sigma), seed, 0, 0, block0,
        BLOCK=tc.INTERP_BLOCK, CDT=tl.float32, LERP=True, NOISE=True, **launch_opts(tc.INTERP_WARPS),
    )
    part = torch.empty(2, 2, 6, dtype=torch.float64, device=DEVICE)
    tc._batch_sums_kernel[(2, 2)](archive, ia, ib, split, part, n, 2, 0, sum_block0, BLOCK=tc.SUM_BLOCK,
                                  **launch_opts(tc.SUM_WARPS))
    for k in range(2):
        row_a, row_b = int(ia[k]) * n, int(ib[k]) * n
        want = torch.empty(n - lo, dtype=torch.float16)
        torch.ops.m2n2.split_interpolate_out(
            [archive[row_a + lo : row_a + n].cpu()], [archive[row_b + lo : row_b + n].cpu()], [want],
            int(split[k]), float(w[k]), "lerp", "global", sigma, seed, k, lo,
        )
        assert torch.equal(out[k * n + lo : (k + 1) * n].cpu(), want), f"child {k}"
        _assert_sums_close(part[k], archive[row_a + sum_lo : row_a + n], archive[row_b + sum_lo : row_b + n],
                           int(split[k]) - sum_lo)
