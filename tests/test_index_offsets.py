"""index_offsets= (one global offset per list entry) and stream= of split_interpolate
and interp_sums: the pieces of a sharded model, in any order and not adjacent, give
bit for bit the slices of the whole vector's child.

The layout is FSDP2's: a model is a list of parameters taken in order as one global
vector; each parameter is chunked along dim 0 over R ranks (chunks of ceil(d0 / R)
rows, so the last ranks may hold an empty chunk); a rank holds one chunk of every
parameter, here in a shuffled order. The backends run on CPU tensors (Triton under
its interpreter, see conftest.py), so the sizes stay small.
"""
import random

import pytest
import torch
from conftest import available_backends, device_backend_params

import m2n2_kernels as mk
from m2n2_kernels import _checks, reference

BACKENDS = available_backends("cpu")
# (device, backend): every CPU backend here, and the CUDA ones (skipped without a GPU).
DEVICE_BACKENDS = device_backend_params()
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
# Parameter shapes of a model, by total size: 0, 1, odd, and an even size that is not a
# multiple of any vector width (8 fp32 lanes, 16 bf16 lanes) with a 1-row parameter.
SHAPES = {
    "n0": [(0,), (0, 3)],
    "n1": [(1,)],
    "n33": [(7, 3), (5,), (1,), (3, 2)],
    "n94": [(13, 5), (11, 2), (1, 4), (3,)],
}
# cpp and triton share the noise polynomials (bit-identical); the torch reference's
# noise is within 2.5e-6 of theirs (tests/test_noise.py, TORCH_CPP_MAX_DIFF).
TORCH_NOISE_DIFF = 2.5e-6


# Small tensors: one torch thread (conftest.py); the thread-count tests set their own.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def model_pair(shapes, dtype, seed=0, device="cpu"):
    """Two models (lists of parameters) of the given shapes and dtype."""
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=g, dtype=torch.float64).to(device, dtype) for s in shapes] for _ in range(2)]


def fsdp_shards(params, ranks, seed=0):
    """Rank r's pieces of the model `params`: the dim-0 chunk r of every parameter (a
    view), with its global offset, in a shuffled order. Returns [(pieces, offsets)] per
    rank, and a function that maps a piece back to its (parameter, flat slice)."""
    starts, start = [], 0
    for p in params:
        starts.append(start)
        start += p.numel()
    rng = random.Random(seed)
    shards = []
    for r in range(ranks):
        entries = []
        for i, p in enumerate(params):
            d0 = p.shape[0]
            rows = -(-d0 // ranks)  # torch.chunk's chunk size, as FSDP2 shards dim 0
            lo, hi = min(r * rows, d0), min((r + 1) * rows, d0)
            row = p[0].numel() if d0 else 0
            entries.append((i, lo * row, p.reshape(-1)[lo * row: hi * row].view(hi - lo, *p.shape[1:])))
        rng.shuffle(entries)
        shards.append(([t for _, _, t in entries], [starts[i] + o for i, o, _ in entries],
                       [(i, o) for i, o, _ in entries]))
    return shards


def assert_bitwise(got, want, what):
    assert got.dtype == want.dtype and got.shape == want.shape, what
    same = got.view(-1).view(torch.uint8 if got.element_size() == 1 else getattr(torch, f"int{8 * got.element_size()}"))
    other = want.reshape(-1).view(same.dtype)
    bad = (same != other).nonzero()
    assert bad.numel() == 0, f"{what}: {bad.numel()} of {got.numel()} elements differ, first at {bad[0].item()}"


def assert_pieces_are_slices(children, whole, where, what):
    for child, (i, o) in zip(children, where):
        want = whole[i].reshape(-1)[o: o + child.numel()]
        assert_bitwise(child.reshape(-1), want, f"{what}: piece of param {i} at {o}")


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("size", list(SHAPES))
def test_shards_equal_the_whole(device, backend, dtype, size):
    shapes = SHAPES[size]
    a, b = model_pair(shapes, dtype, device=device)
    n = sum(p.numel() for p in a)
    ranks = 3 if size != "n33" else 2
    shards = fsdp_shards(a, ranks), fsdp_shards(b, ranks)
    split = (2 * n) // 5
    kw = dict(backend=backend, seed=2**64 - 5, stream=7)

    # lerp with noise: each piece is its slice of the whole vector's child.
    whole = mk.split_interpolate(a, b, split, 0.3, method="lerp", noise_std=0.05, **kw)
    for (pa, offsets, where), (pb, _, _) in zip(*shards):
        got = mk.split_interpolate(pa, pb, split, 0.3, method="lerp", noise_std=0.05, index_offsets=offsets, **kw)
        assert_pieces_are_slices(got, whole, where, "lerp")

    # slerp: the ranks' interp_sums add up to the whole vector's (fp64 rounding); given
    # that one total, every piece is the slice of the whole vector's child.
    parts = [mk.interp_sums(pa, pb, split, index_offsets=offsets, backend=backend)
             for (pa, offsets, _), (pb, _, _) in zip(*shards)]
    total = sum(parts)
    want = mk.interp_sums(a, b, split, backend=backend)
    scale = float(want[:, 1:].abs().sum()) + 1.0
    torch.testing.assert_close(total, want, rtol=1e-12, atol=1e-12 * scale)
    # One angle mode per dtype (the Triton interpreter is slow): both are covered.
    for omega in ("segment",) if dtype in (torch.float16, torch.float64) else ("global",):
        whole = mk.split_interpolate(a, b, split, 0.6, omega=omega, noise_std=0.05, sums=total, **kw)
        for (pa, offsets, where), (pb, _, _) in zip(*shards):
            got = mk.split_interpolate(pa, pb, split, 0.6, omega=omega, noise_std=0.05, index_offsets=offsets,
                                       sums=total, **kw)
            assert_pieces_are_slices(got, whole, where, f"slerp/{omega}")


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_shards_in_place_and_mixed_dtypes(device, backend):
    """bf16 weights beside fp32 norms; each rank updates its pieces in place."""
    shapes = [(9, 4), (5,), (6, 3), (1,)]
    dtypes = [torch.bfloat16, torch.float32, torch.float16, torch.float64]
    models = model_pair(shapes, torch.float64, seed=3, device=device)
    a, b = ([p.to(d) for p, d in zip(model, dtypes)] for model in models)
    split = 31
    total = mk.interp_sums(a, b, split, backend=backend)
    whole = mk.split_interpolate(a, b, split, 0.4, noise_std=0.1, seed=9, stream=2, sums=total, backend=backend)
    child = [p.clone() for p in a]
    shards = fsdp_shards(child, 3, seed=1), fsdp_shards(b, 3, seed=1)
    for (pa, offsets, _), (pb, _, _) in zip(*shards):
        assert mk.split_interpolate_(pa, pb, split, 0.4, noise_std=0.1, seed=9, stream=2, sums=total,
                                     index_offsets=torch.tensor(offsets), backend=backend) is pa
    for c, w in zip(child, whole):
        assert_bitwise(c, w, "in place")


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("method", ["lerp", "slerp"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_sharded_children_of_a_batch(device, backend, method, dtype):
    """What the distributed engine does: child k of crossover_batch from the parents'
    pieces, with stream=k (and, for slerp, the sums crossover_batch itself uses: those
    of the two whole rows)."""
    g = torch.Generator().manual_seed(5)
    shapes = [(7, 3), (10,), (2, 5)]
    n = sum(torch.Size(s).numel() for s in shapes)
    archive = torch.randn(4, n, generator=g).to(device, dtype)
    ia, ib = torch.tensor([0, 3, 1]), torch.tensor([2, 1, 1])
    split, w = torch.tensor([9, 0, 41]), torch.tensor([0.3, 0.8, 0.55], dtype=torch.float64)
    seed = 12345
    batch = mk.crossover_batch(archive, ia, ib, split, w, method=method, noise_std=0.02, seed=seed, backend=backend)

    def params(row):
        out, start = [], 0
        for s in shapes:
            m = torch.Size(s).numel()
            out.append(row[start: start + m].view(s))
            start += m
        return out

    for k in range(len(ia)):
        pa_all, pb_all = params(archive[int(ia[k])]), params(archive[int(ib[k])])
        sums = None
        if method == "slerp":
            sums = mk.interp_sums(archive[int(ia[k])], archive[int(ib[k])], int(split[k]), backend=backend)
        whole = [batch[k]]
        for (pa, offsets, where), (pb, _, _) in zip(fsdp_shards(pa_all, 2, seed=k), fsdp_shards(pb_all, 2, seed=k)):
            got = mk.split_interpolate(pa, pb, int(split[k]), float(w[k]), method=method, noise_std=0.02, seed=seed,
                                       stream=k, index_offsets=offsets, sums=sums, backend=backend)
            # where: (parameter, offset in it) -> the offset in the row
            starts = [0]
            for s in shapes:
                starts.append(starts[-1] + torch.Size(s).numel())
            assert_pieces_are_slices(got, whole, [(0, starts[i] + o) for i, o in where], f"child {k}")


@pytest.mark.parametrize("device,backend", device_backend_params(with_torch=False))
@pytest.mark.parametrize("method", ["lerp", "slerp"])
def test_global_indices_past_2_31(device, backend, method):
    """Pieces near 2**31, 2**32 and 2**40 (int64 indices, the noise's counter words
    past 32 bits), out of order: as one call at index_offset (old API) bit for bit,
    as the other native backend, and as the reference within its noise error."""
    g = torch.Generator().manual_seed(11)
    layout = [(2**40 - 3, 7), (2**31 - 5, 11), (2**32 - 2, 6), (2**40 + 4, 0), (2**40 + 4, 9)]
    a = [torch.randn(m, generator=g).to(device) for _, m in layout]
    b = [torch.randn(m, generator=g).to(device) for _, m in layout]
    offsets = [o for o, _ in layout]
    split = 2**40 + 1
    kw = dict(method=method, noise_std=1.0, seed=2**63 + 17, stream=2**40 + 3)
    sums = mk.interp_sums(a, b, split, index_offsets=offsets, backend=backend)
    want_sums = reference.interp_sums(a, b, split, index_offsets=offsets)
    torch.testing.assert_close(sums, want_sums, rtol=1e-12, atol=1e-12)
    got = mk.split_interpolate(a, b, split, 0.3, index_offsets=offsets, backend=backend, **kw)
    ref = reference.split_interpolate(a, b, split, 0.3, index_offsets=offsets, **kw)
    other = "triton" if backend == "cpp" else "cpp"
    with_sums = mk.split_interpolate(a, b, split, 0.3, index_offsets=offsets, sums=sums, backend=backend, **kw)
    for i, ((o, m), x, y) in enumerate(zip(layout, a, b)):
        alone = mk.split_interpolate(x, y, split, 0.3, index_offset=o, sums=sums, backend=backend, **kw)
        assert_bitwise(with_sums[i], alone, f"piece {i} at {o}")
        torch.testing.assert_close(got[i], ref[i], rtol=1e-6, atol=2e-6 + TORCH_NOISE_DIFF)
    # On CPU cpp and triton share the noise polynomials (tests/test_noise.py).
    if device == "cpu" and other in BACKENDS:
        twin = mk.split_interpolate(a, b, split, 0.3, index_offsets=offsets, sums=sums, backend=other, **kw)
        for i, (x, y) in enumerate(zip(twin, with_sums)):
            assert_bitwise(x, y, f"{backend} and {other}, piece {i}")
    # Without sums, the angle of the tensors given; the split by global index: side 0
    # holds the pieces below 2**40 + 1 and the first 4 elements of the one at 2**40 - 3.
    if method == "slerp":
        side0 = sum(float(t.double().square().sum()) for t in a[1:3]) + float(a[0][:4].double().square().sum())
        assert float(sums[0, 1]) == pytest.approx(side0, rel=1e-12)


def _bad_offset_cases():
    a = [torch.randn(5), torch.randn(0), torch.randn(3)]
    return a, [
        (dict(index_offsets=[0, 5]), ValueError, "index_offsets must hold one offset per tensor of a (3), got 2"),
        (dict(index_offsets=[0, 5, 8], index_offset=2), ValueError,
         "index_offset must be 0 when index_offsets is given, got 2"),
        (dict(index_offsets=[4, 0, -1]), ValueError, "index_offsets[2] must be >= 0, got -1"),
        (dict(index_offsets=[2**63 - 4, 0, 9]), ValueError,
         "index_offsets[0] must be <= 2**63 - 5 (global indices must fit in int64), got 9223372036854775804"),
        (dict(index_offsets=[10, 0, 12]), ValueError,
         "index_offsets must give disjoint global ranges: a[0] covers [10, 15) and a[2] covers [12, 15)"),
        (dict(index_offsets=[3, 100, 1]), ValueError,
         "index_offsets must give disjoint global ranges: a[2] covers [1, 4) and a[0] covers [3, 8)"),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_offsets_are_named(backend):
    a, cases = _bad_offset_cases()
    b = [t + 1 for t in a]
    snapshot = [t.clone() for t in a]
    extra = [  # past int64, or not ints: refused by the Python API before any op
        (dict(index_offsets=[10, 2**63, 0]), ValueError,
         "index_offsets[1] must be <= 2**63 - 1 (global indices must fit in int64), got 9223372036854775808"),
        (dict(index_offsets=[2**100, 0, 9]), ValueError,
         "index_offsets[0] must be <= 2**63 - 5 (global indices must fit in int64), got an integer of 101 bits"),
        (dict(index_offsets=[0, 1.5, 9]), TypeError, "index_offsets[1] must be an integer, got float"),
        (dict(index_offsets=7), TypeError, "index_offsets must be a sequence of ints (one per tensor of a), got int"),
        (dict(index_offsets=torch.tensor([0.0, 5.0, 9.0])), TypeError,
         "index_offsets must be a 1-D integer tensor or a sequence of ints, got torch.float32 of shape (3,)"),
        (dict(index_offsets=torch.tensor([[0, 5, 9]])), TypeError,
         "index_offsets must be a 1-D integer tensor or a sequence of ints, got torch.int64 of shape (1, 3)"),
        (dict(index_offsets=[0, 5, 9], stream=-1), ValueError, "stream must lie in [0, 2**64), got -1"),
        (dict(stream=2**64), ValueError, "stream must lie in [0, 2**64), got 18446744073709551616"),
        (dict(stream=0.5), TypeError, "stream must be an integer, got float"),
        (dict(index_offsets=[0, 5, 9], split=-1), ValueError,
         "split must lie in [0, 8] (the number of elements), got -1"),
        (dict(index_offsets=[0, 5, 9], split=2**63), ValueError, "split must fit in int64"),
    ]
    for kw, error, message in cases + extra:
        kw = {"split": 4, **kw}
        split = kw.pop("split")
        with pytest.raises(error, match=_checks_escape(message)):
            mk.split_interpolate_(a, b, split, 0.3, noise_std=1.0, backend=backend, **kw)
        for t, s in zip(a, snapshot):
            assert torch.equal(t, s), f"{kw}: a was written before the error"
        if "stream" not in kw:
            with pytest.raises(error, match=_checks_escape(message)):
                mk.interp_sums(a, b, split, backend=backend, **kw)
    # Accepted: any order, empty entries anywhere (even inside another's range), a split
    # far past the pieces, a single tensor with one offset, the top of int64.
    mk.split_interpolate(a, b, 2**62, 0.3, index_offsets=[9, 11, 2], backend=backend)
    mk.split_interpolate(a[0], b[0], 0, 0.3, index_offsets=[2**63 - 5], noise_std=1.0, stream=2**64 - 1,
                         backend=backend)
    mk.interp_sums(a[0], b[0], 2**63 - 1, index_offsets=(3,), backend=backend)


def _checks_escape(message):
    import re

    return re.escape(message)


def test_op_checks_match_the_python_checks():
    """The C++ ops (direct torch.ops callers) refuse the same offsets in the same words
    as the Python checks of the Triton ops (m2n2_kernels/ops.py)."""
    from m2n2_kernels import ops as ops_glue

    a, cases = _bad_offset_cases()
    b = [t + 1 for t in a]
    out = [torch.empty_like(t) for t in a]
    args = (4, 0.3, "lerp", "global", 1.0, 0, 0)
    for kw, error, message in cases:
        offset, offsets = kw.get("index_offset", 0), kw["index_offsets"]
        calls = {
            "cpp out": lambda: torch.ops.m2n2.split_interpolate_out(a, b, out, *args, offset, None, offsets),
            "cpp in place": lambda: torch.ops.m2n2.split_interpolate_(out, b, *args, offset, True, None, offsets),
            "cpp sums": lambda: torch.ops.m2n2.interp_sums(a, b, 4, offset, offsets),
            "python out": lambda: ops_glue.triton_split_interpolate_out(a, b, out, *args, offset, None, offsets),
            "python in place": lambda: ops_glue.triton_split_interpolate_(out, b, *args, offset, True, None, offsets),
            "python sums": lambda: ops_glue.triton_interp_sums(a, b, 4, offset, offsets),
        }
        if "cpp" not in BACKENDS:
            calls = {k: v for k, v in calls.items() if not k.startswith("cpp")}
        for name, call in calls.items():
            with pytest.raises(error) as info:
                call()
            assert str(info.value).splitlines()[0] == message, name


def test_op_with_offsets_traces():
    a, b = [torch.randn(6), torch.randn(4)], [torch.randn(6), torch.randn(4)]
    out = [torch.empty(6), torch.empty(4)]
    torch.library.opcheck(torch.ops.m2n2.interp_sums, (a, b, 7, 0, [10, 2]))
    sums = mk.interp_sums(a, b, 7, index_offsets=[10, 2])
    torch.library.opcheck(torch.ops.m2n2.split_interpolate_out,
                          (a, b, out, 7, 0.3, "slerp", "global", 0.5, 3, 4, 0, sums, [10, 2]))
    torch.library.opcheck(torch.ops.m2n2.split_interpolate_,
                          ([t.clone() for t in a], b, 7, 0.3, "lerp", "global", 0.5, 3, 4, 0, True, None, [10, 2]))
