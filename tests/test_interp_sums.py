"""Slerp in two phases: interp_sums over pieces, then split_interpolate(..., sums=).

A vector too large to hold (a checkpoint streamed from disk) or spread over ranks is
seen piece by piece. Phase 1 adds up each piece's interp_sums (the six fp64 sums of
the slerp angle, placed by the piece's global offset); phase 2 writes each piece with
the totals. The pieces of the child must then be, bit for bit, the child of the
whole vector computed with the same sums, on every backend.
"""
import pytest
import torch
from conftest import available_backends

import m2n2_kernels as mk
from m2n2_kernels import crossover, reference

BACKENDS = available_backends("cpu")
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def sizes(backend):
    # Sizes past one block of every kernel; the largest only where it is cheap (the
    # Triton interpreter runs programs one by one; the torch reference draws its
    # noise with int64 tensor ops).
    return {"cpp": [1, 7, 4099, 2**18 + 5], "torch": [1, 7, 4099], "triton": [7, 2049]}[backend]


def parents(n, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, generator=g, dtype=torch.float64)
    b = 0.8 * a + 0.6 * torch.randn(n, generator=g, dtype=torch.float64)  # cos ~ 0.8: the angle matters
    return a.to(dtype), b.to(dtype)


def cuts(n, seed):
    """Piece boundaries: empty pieces, single elements, odd lengths."""
    g = torch.Generator().manual_seed(seed)
    inner = sorted(torch.randint(0, n + 1, (4,), generator=g).tolist())
    return [0, *inner, inner[-1], n]  # a repeated boundary: an empty piece


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("omega", ["global", "segment"])
def test_pieces_equal_the_whole(backend, dtype, omega):
    for n in sizes(backend):
        a, b = parents(n, dtype, seed=n)
        bounds = cuts(n, seed=n + 1)
        for split in sorted({0, n // 3, n}):
            whole_sums = mk.interp_sums(a, b, split, backend=backend)
            assert whole_sums.dtype == torch.float64 and whole_sums.shape == (2, 3)
            # the sums of a and b as stored, in fp64, by another route than the kernels
            x, y = a.double(), b.double()
            want = torch.tensor([[x[:split] @ y[:split], x[:split] @ x[:split], y[:split] @ y[:split]],
                                 [x[split:] @ y[split:], x[split:] @ x[split:], y[split:] @ y[split:]]])
            torch.testing.assert_close(whole_sums, want, rtol=1e-12, atol=1e-9)

            pieces = [(lo, hi) for lo, hi in zip(bounds, bounds[1:])]
            total = sum(mk.interp_sums(a[lo:hi], b[lo:hi], split, index_offset=lo, backend=backend) for lo, hi in pieces)
            torch.testing.assert_close(total, whole_sums, rtol=1e-12, atol=1e-9)

            kw = dict(method="slerp", omega=omega, noise_std=0.01, seed=9, backend=backend)
            child = mk.split_interpolate(a, b, split, 0.3, sums=total, **kw)
            streamed = torch.cat([mk.split_interpolate(a[lo:hi], b[lo:hi], split, 0.3, sums=total, index_offset=lo, **kw)
                                  for lo, hi in pieces])
            assert torch.equal(streamed, child), f"n={n} split={split}: a piece differs from the whole"
            # the whole vector's own sums give the one-pass child exactly
            assert torch.equal(mk.split_interpolate(a, b, split, 0.3, sums=whole_sums, **kw),
                               mk.split_interpolate(a, b, split, 0.3, **kw))


@pytest.mark.parametrize("backend", BACKENDS)
def test_lists_of_mixed_dtypes(backend):
    g = torch.Generator().manual_seed(4)
    a = [torch.randn(33, generator=g).bfloat16(), torch.randn(0), torch.randn(7, 3, generator=g)]
    b = [t + 0.5 * torch.randn(t.shape, generator=g).to(t.dtype) for t in a]
    sums = mk.interp_sums(a, b, 40, backend=backend)
    flat = [torch.cat([t.reshape(-1).double() for t in ts]) for ts in (a, b)]
    torch.testing.assert_close(sums, reference.interp_sums(flat[0], flat[1], 40), rtol=1e-12, atol=1e-12)
    # the list as two pieces of one vector
    first = mk.interp_sums(a[:1], b[:1], 40, backend=backend)
    rest = mk.interp_sums(a[1:], b[1:], 40, index_offset=33, backend=backend)
    torch.testing.assert_close(first + rest, sums, rtol=1e-12, atol=1e-12)
    whole = mk.split_interpolate(a, b, 40, 0.7, sums=sums, backend=backend)
    parts = (mk.split_interpolate(a[:1], b[:1], 40, 0.7, sums=sums, backend=backend)
             + mk.split_interpolate(a[1:], b[1:], 40, 0.7, sums=sums, index_offset=33, backend=backend))
    assert all(torch.equal(x, y) for x, y in zip(whole, parts))


@pytest.mark.parametrize("backend", BACKENDS)
def test_sums_from_elsewhere_are_used(backend):
    # Sums are taken as given (e.g. after an all-reduce), not recomputed: lerp-like
    # sums (parallel vectors, sin omega = 0) make slerp fall back to lerp exactly.
    a, b = parents(100, torch.float32)
    parallel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    got = mk.split_interpolate(a, b, 30, 0.2, sums=parallel, backend=backend)
    assert torch.equal(got, mk.split_interpolate(a, b, 30, 0.2, method="lerp", backend=backend))
    # in place, and lerp ignores the sums
    x = a.clone()
    mk.split_interpolate_(x, b, 30, 0.2, sums=parallel, backend=backend)
    assert torch.equal(x, got)
    assert torch.equal(mk.split_interpolate(a, b, 30, 0.2, method="lerp", sums=parallel, backend=backend),
                       mk.split_interpolate(a, b, 30, 0.2, method="lerp", backend=backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_piece_may_end_before_the_split(backend):
    a, b = parents(10, torch.float32)
    # a piece at offset 0 of a longer vector: its split lies past its end
    assert torch.equal(mk.interp_sums(a, b, 25, backend=backend)[1], torch.zeros(3, dtype=torch.float64))
    sums = mk.interp_sums(a, b, 25, backend=backend)
    mk.split_interpolate(a, b, 25, 0.3, sums=sums, backend=backend)
    # without sums the tensors are the whole vector: a split past the end is an error
    with pytest.raises(ValueError, match=r"split must lie in \[0, 10\]"):
        mk.split_interpolate(a, b, 25, 0.3, backend=backend)


def test_bad_sums_are_named():
    a, b = parents(10, torch.float32)
    with pytest.raises(TypeError, match=r"sums must be float64, got torch.float32"):
        mk.split_interpolate(a, b, 3, 0.3, sums=torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"sums must hold 6 numbers, shape \(2, 3\)"):
        mk.split_interpolate(a, b, 3, 0.3, sums=torch.zeros(5, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"sums must be a torch.Tensor, got list"):
        mk.split_interpolate(a, b, 3, 0.3, sums=[0.0] * 6)
    with pytest.raises(ValueError, match=r"split must lie in \[0, 10\]"):
        mk.interp_sums(a, b, -1)
    with pytest.raises(ValueError, match="index_offset must be >= 0"):
        mk.interp_sums(a, b, 3, index_offset=-2)


def test_op_contract_of_sums():
    # C++ and the Python checks of the canonical op say the same.
    a, b, out = [torch.randn(6)], [torch.randn(6)], [torch.empty(6)]
    for bad in (torch.zeros(6, dtype=torch.float64), torch.zeros(2, 3), torch.zeros(3, 2, dtype=torch.float64).t()):
        with pytest.raises((TypeError, ValueError)) as cpp:
            torch.ops.m2n2.split_interpolate_out(a, b, out, 2, 0.3, "slerp", "global", 0.0, 0, 0, 0, bad)
        with pytest.raises(cpp.type) as py:
            crossover.check_op_sums(bad, torch.device("cpu"))
        assert str(py.value) == str(cpp.value).splitlines()[0]


def test_opcheck():
    a, b = torch.randn(100), torch.randn(100)
    torch.library.opcheck(torch.ops.m2n2.interp_sums, ([a], [b], 30, 0))
    sums = mk.interp_sums(a, b, 30)
    torch.library.opcheck(torch.ops.m2n2.split_interpolate_out,
                          ([a], [b], [torch.empty(100)], 30, 0.3, "slerp", "global", 0.0, 0, 0, 0, sums))
