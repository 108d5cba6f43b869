"""Split-point crossover: every backend against reference.py (the semantics)."""
import math

import pytest
import torch
from conftest import DEVICES, available_backends, device_backend_params

import m2n2_kernels as mk
from m2n2_kernels import reference

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
SIZES = [0, 1, 7, 1023, 2**20 + 3]
# The Triton interpreter runs programs one by one in numpy: keep its sizes small.
INTERPRETED_MAX = 5000
METHODS = [("lerp", "global"), ("slerp", "global"), ("slerp", "segment")]


def tolerances(dtype):
    # Slerp coefficients come from fp64 sums whose summation order differs between
    # backends, so a coefficient may differ in its last fp32 bit; fp16/bf16 results
    # may then round to the neighbouring value (one unit in the last place).
    return {
        torch.float32: dict(rtol=4e-6, atol=1e-6),
        torch.float64: dict(rtol=1e-12, atol=1e-12),
        torch.float16: dict(rtol=1e-3, atol=1e-3),
        torch.bfloat16: dict(rtol=8e-3, atol=8e-3),
    }[dtype]


def interpreted(device, backend):
    return device == "cpu" and backend == "triton"


def skip_slow(device, backend, n):
    if interpreted(device, backend) and n > INTERPRETED_MAX:
        pytest.skip("too large for the Triton interpreter")


def split_points(n):
    g = torch.Generator().manual_seed(n)
    random_split = int(torch.randint(0, n + 1, (1,), generator=g)) if n > 0 else 0
    return sorted({0, min(1, n), max(n - 1, 0), n, random_split})


def parents(n, dtype, device, seed=0, shape=None):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, generator=g).to(dtype)
    b = torch.randn(n, generator=g).to(dtype)
    if shape is not None:
        a, b = a.view(shape), b.view(shape)
    return a.to(device), b.to(device)


@pytest.mark.parametrize("device,backend", device_backend_params(with_torch=False))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("method,omega", METHODS)
def test_matches_reference(device, backend, dtype, n, method, omega):
    skip_slow(device, backend, n)
    a, b = parents(n, dtype, device)
    for split in split_points(n):
        got = mk.split_interpolate(a, b, split, 0.3, method=method, omega=omega, backend=backend)
        want = reference.split_interpolate(a, b, split, 0.3, method=method, omega=omega)
        assert got.dtype == dtype and got.shape == a.shape
        torch.testing.assert_close(got, want, **tolerances(dtype), msg=lambda m: f"split={split}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_lerp_cpp_is_bitwise_reference(dtype):
    # Coefficients are exact functions of w and the element maths rounds like torch
    # (two roundings, no FMA), so the C++ kernel equals the reference to the bit.
    a, b = parents(100_003, dtype, "cpu", seed=3)
    got = mk.split_interpolate(a, b, 40_000, 0.37, method="lerp", backend="cpp")
    assert torch.equal(got, reference.split_interpolate(a, b, 40_000, 0.37, method="lerp"))


@pytest.mark.parametrize("device,backend", device_backend_params(with_torch=False))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [1, 7, 1023, 4099, 2**18 + 5])
def test_mutation_matches_reference(device, backend, dtype, n):
    skip_slow(device, backend, n)
    a, b = parents(n, dtype, device, seed=1)
    split = n // 3
    got = mk.split_interpolate(a, b, split, 0.8, noise_std=0.05, seed=2**40 + 7, backend=backend)
    want = reference.split_interpolate(a, b, split, 0.8, noise_std=0.05, seed=2**40 + 7)
    tol = tolerances(dtype)
    # The noise uses fp32 log/sin/cos whose last bits differ between libraries.
    torch.testing.assert_close(got, want, rtol=max(tol["rtol"], 1e-5), atol=max(tol["atol"], 1e-6))


def test_semantics_from_the_formula():
    # Orthogonal unit vectors: omega = pi/2, so with t = w everywhere (split = n) the
    # child is sin((1-w) pi/2) a + sin(w pi/2) b; past the split t = 1 - w.
    a = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    b = torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    for backend in available_backends("cpu"):
        child = mk.split_interpolate(a, b, 4, 0.25, backend=backend)
        want = math.sin(0.75 * math.pi / 2) * a + math.sin(0.25 * math.pi / 2) * b
        torch.testing.assert_close(child, want)
        child = mk.split_interpolate(a, b, 1, 0.25, backend=backend)
        assert child[0] == pytest.approx(math.sin(0.75 * math.pi / 2))  # t = w on element 0
        assert child[1] == pytest.approx(math.sin(0.75 * math.pi / 2))  # t = 1 - w after the split
        # Lerp fallback: parallel parents (sin(omega) = 0) and a zero parent.
        torch.testing.assert_close(mk.split_interpolate(a, 3 * a, 4, 0.25, backend=backend), 1.5 * a)
        zero = torch.zeros(4, dtype=torch.float64)
        torch.testing.assert_close(mk.split_interpolate(zero, b, 4, 0.25, backend=backend), 0.25 * b)


def test_segment_angle_differs_from_global():
    a = torch.tensor([1.0, 0.0, 1.0, 0.0])
    b = torch.tensor([0.0, 1.0, 1.0, 0.0])  # orthogonal on [0, 2), parallel on [2, 4)
    seg = mk.split_interpolate(a, b, 2, 0.5, omega="segment")
    # Side 1 (t = 0.5) has parallel halves: lerp, so element 2 is exactly 1.
    assert seg[2] == 1.0
    assert seg[0] == pytest.approx(math.sin(math.pi / 4))
    glob = mk.split_interpolate(a, b, 2, 0.5, omega="global")
    assert glob[2] != pytest.approx(1.0)


@pytest.mark.parametrize("device,backend", device_backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_in_place_and_aliasing(device, backend, dtype):
    a, b = parents(3000, dtype, device, seed=5, shape=(3, 1000))  # a 2-D parameter
    kwargs = dict(noise_std=0.01, seed=11, backend=backend)
    want = reference.split_interpolate(a, b, 1234, 0.6, noise_std=0.01, seed=11)
    tol = dict(rtol=max(tolerances(dtype)["rtol"], 1e-5), atol=max(tolerances(dtype)["atol"], 1e-6))

    x = a.clone()
    assert mk.split_interpolate_(x, b, 1234, 0.6, **kwargs) is x
    torch.testing.assert_close(x, want, **tol)

    y = b.clone()
    assert mk.split_interpolate(a, y, 1234, 0.6, out=y, **kwargs) is y
    torch.testing.assert_close(y, want, **tol)

    out = torch.empty_like(a)
    assert mk.split_interpolate(a, b, 1234, 0.6, out=out, **kwargs) is out
    torch.testing.assert_close(out, want, **tol)

    # a is b: the child of a model with itself (omega = 0: lerp) is the model + noise.
    z = a.clone()
    mk.split_interpolate_(z, z, 1234, 0.6, **kwargs)
    torch.testing.assert_close(z, reference.split_interpolate(a, a, 1234, 0.6, noise_std=0.01, seed=11), **tol)


@pytest.mark.parametrize("device,backend", device_backend_params())
@pytest.mark.parametrize("method,omega", METHODS)
def test_multi_tensor_equals_concatenation(device, backend, method, omega):
    shapes = [(7, 3), (0,), (1,), (64, 33), (5,)]
    g = torch.Generator().manual_seed(2)
    a = [torch.randn(s, generator=g).to(device) for s in shapes]
    b = [torch.randn(s, generator=g).to(device) for s in shapes]
    n = sum(t.numel() for t in a)
    for split in (0, 22, 23, 1000, n):
        kwargs = dict(method=method, omega=omega, noise_std=0.1, seed=9)
        got = mk.split_interpolate(a, b, split, 0.7, backend=backend, **kwargs)
        flat = mk.split_interpolate(
            torch.cat([t.reshape(-1) for t in a]), torch.cat([t.reshape(-1) for t in b]), split, 0.7,
            backend=backend, **kwargs,
        )
        assert [t.shape for t in got] == [t.shape for t in a]
        torch.testing.assert_close(torch.cat([t.reshape(-1) for t in got]), flat, rtol=0, atol=0)
        # in place into the list
        a_copy = [t.clone() for t in a]
        assert mk.split_interpolate_(a_copy, b, split, 0.7, backend=backend, **kwargs) is a_copy
        torch.testing.assert_close(torch.cat([t.reshape(-1) for t in a_copy]), flat, rtol=0, atol=0)


@pytest.mark.parametrize("device,backend", device_backend_params())
@pytest.mark.parametrize("method,omega", METHODS)
def test_mixed_dtype_list(device, backend, method, omega):
    # A checkpoint as it is: bf16 weights beside fp32 norms (and fp16, fp64 pieces).
    # One split and one angle over the whole list; each piece in its own dtype.
    dtypes = [torch.bfloat16, torch.float32, torch.float16, torch.float64, torch.float32]
    shapes = [(33, 5), (7,), (0,), (1000,), (3, 3)]
    g = torch.Generator().manual_seed(4)
    a = [torch.randn(s, generator=g).to(device, d) for s, d in zip(shapes, dtypes)]
    b = [torch.randn(s, generator=g).to(device, d) for s, d in zip(shapes, dtypes)]
    n = sum(t.numel() for t in a)
    for split in (0, 170, n):
        kwargs = dict(method=method, omega=omega, noise_std=0.01, seed=3)
        got = mk.split_interpolate(a, b, split, 0.3, backend=backend, **kwargs)
        want = reference.split_interpolate([t.cpu() for t in a], [t.cpu() for t in b], split, 0.3, **kwargs)
        for x, y, d in zip(got, want, dtypes):
            assert x.dtype == d
            tol = tolerances(d)  # the noise's fp32 log/sin/cos differ in their last bits
            torch.testing.assert_close(x.cpu(), y, rtol=max(tol["rtol"], 1e-5), atol=max(tol["atol"], 1e-6))
        if method == "lerp":  # no angle: each piece alone, at its global offset, bit for bit
            start = 0
            for i, (x, y) in enumerate(zip(a, b)):
                cut = split if start > 0 else min(split, x.numel())
                alone = mk.split_interpolate(x, y, cut, 0.3, backend=backend, index_offset=start, **kwargs)
                assert torch.equal(alone, got[i])
                start += x.numel()


@pytest.mark.parametrize("device,backend", device_backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("noise_std", [0.0, 0.02])
def test_batch_equals_loop(device, backend, dtype, noise_std):
    p, n, k = 5, 777, 6
    g = torch.Generator().manual_seed(4)
    archive = torch.randn(p, n, generator=g).to(dtype).to(device)
    ia = torch.tensor([0, 1, 2, 3, 4, 0])
    ib = torch.tensor([1, 2, 3, 4, 0, 0])
    split = torch.tensor([0, 1, 300, 776, 777, 5])
    w = torch.tensor([0.1, 0.5, 0.9, 0.0, 1.0, 0.3])
    got = mk.crossover_batch(archive, ia, ib, split, w, noise_std=noise_std, seed=3, backend=backend)
    want = reference.crossover_batch(archive, ia, ib, split, w, noise_std=noise_std, seed=3)
    assert got.shape == (k, n)
    tol = tolerances(dtype)
    torch.testing.assert_close(got, want, rtol=max(tol["rtol"], 1e-5), atol=max(tol["atol"], 1e-6))
    if noise_std == 0.0:  # without noise, child k is exactly the single op's child
        for c in range(k):
            single = mk.split_interpolate(archive[ia[c]], archive[ib[c]], int(split[c]), float(w[c]), backend=backend)
            torch.testing.assert_close(got[c], single, rtol=0, atol=0)


def test_mutation_independent_of_thread_count():
    a, b = parents(2**20 + 3, torch.float32, "cpu", seed=6)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = mk.split_interpolate(a, b, 12345, 0.4, noise_std=0.1, seed=77)
        torch.set_num_threads(max(2, threads))
        many = mk.split_interpolate(a, b, 12345, 0.4, noise_std=0.1, seed=77)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)
    assert not torch.equal(one, mk.split_interpolate(a, b, 12345, 0.4, noise_std=0.1, seed=78))


@pytest.mark.parametrize("device,backend", device_backend_params())
def test_noise_statistics(device, backend):
    n = 4096 if interpreted(device, backend) else 2**20
    zero = torch.zeros(n, device=device)
    noise = mk.split_interpolate(zero, zero, 0, 0.5, method="lerp", noise_std=0.5, seed=123, backend=backend)
    x = noise.double().cpu() / 0.5
    assert abs(x.mean().item()) < 5 / math.sqrt(n)
    assert abs(x.std().item() - 1) < 5 / math.sqrt(2 * n)
    within_one = (x.abs() < 1).double().mean().item()
    assert abs(within_one - 0.682689) < 5 * math.sqrt(0.2166 / n)
    # neighbouring elements (lanes of one Philox call) are uncorrelated
    corr = torch.corrcoef(torch.stack([x[:-1], x[1:]]))[0, 1].item()
    assert abs(corr) < 5 / math.sqrt(n)


@pytest.mark.parametrize("device,backend", device_backend_params())
def test_indices_past_2_pow_32(device, backend):
    # A piece of a very long vector: global indices 2^32 - 6 ... 2^32 + 994 cross both
    # 2^31 boundaries of 32-bit counters (the split side and the Philox counter words)
    # without allocating gigabytes.
    n, offset = 1000, 2**32 - 6
    a, b = parents(n, torch.float32, device, seed=8)
    for split in (offset + 3, offset + 500, 2**40):
        got = mk.split_interpolate(
            a, b, split, 0.2, method="lerp", noise_std=0.1, seed=5, index_offset=offset, backend=backend
        )
        want = reference.split_interpolate(a, b, split, 0.2, method="lerp", noise_std=0.1, seed=5, index_offset=offset)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # the same elements, computed as part of the whole vector, agree with the piece
    head = reference.normal_noise(5, 0, torch.tensor([2**31 - 1, 2**31, 2**32 + 1]))
    assert torch.isfinite(head).all() and len(set(head.tolist())) == 3


def test_in_place_list_starting_with_an_empty_tensor():
    # An empty tensor is never written, so it does not decide whether out is a or b.
    a = [torch.randn(0), torch.randn(5)]
    b = [torch.randn(0), torch.randn(5)]
    want = mk.split_interpolate(a, b, 2, 0.3)
    assert mk.split_interpolate_(a, b, 2, 0.3) is a
    assert torch.equal(a[1], want[1])


def test_empty_is_a_no_op():
    for dtype in DTYPES:
        e = torch.empty(0, dtype=dtype)
        assert mk.split_interpolate(e, e, 0, 0.5).numel() == 0
        assert mk.split_interpolate_(e, e.clone(), 0, 0.5, noise_std=1.0).numel() == 0
    out = mk.crossover_batch(torch.empty(3, 0), [0], [1], [0], [0.5])
    assert out.shape == (1, 0)


# ---------------------------------------------------------------------------
# Bad input: a clear error naming the argument, before anything is written.
# ---------------------------------------------------------------------------


def _bad_calls():
    a, b = torch.randn(10), torch.randn(10)
    archive = torch.randn(3, 10)
    return [
        (TypeError, r"a\[0\] must be a torch.Tensor", lambda: mk.split_interpolate([1, 2], b, 1, 0.5)),
        (TypeError, "a must be a tensor or a list", lambda: mk.split_interpolate("a", b, 1, 0.5)),
        (ValueError, r"b must have shape \(10,\) \(as a\), got \(11,\)", lambda: mk.split_interpolate(a, torch.randn(11), 1, 0.5)),
        (ValueError, r"b must have shape \(10,\) \(as a\), got \(2, 5\)", lambda: mk.split_interpolate(a, torch.randn(2, 5), 1, 0.5)),
        (TypeError, r"b must be torch.float32 \(as a\), got torch.float64", lambda: mk.split_interpolate(a, b.double(), 1, 0.5)),
        (TypeError, "a must be float32", lambda: mk.split_interpolate(a.int(), b.int(), 1, 0.5)),
        (TypeError, "a must be float32", lambda: mk.split_interpolate(a.bool(), b.bool(), 1, 0.5)),
        (ValueError, "split must lie in", lambda: mk.split_interpolate(a, b, 11, 0.5)),
        (ValueError, "split must lie in", lambda: mk.split_interpolate(a, b, -1, 0.5)),
        (TypeError, "split must be an integer", lambda: mk.split_interpolate(a, b, 1.5, 0.5)),
        (ValueError, "w must be finite", lambda: mk.split_interpolate(a, b, 1, float("nan"))),
        (ValueError, "w must be finite", lambda: mk.split_interpolate(a, b, 1, float("inf"))),
        (ValueError, "noise_std must be >= 0", lambda: mk.split_interpolate(a, b, 1, 0.5, noise_std=-0.1)),
        (ValueError, "noise_std must be finite", lambda: mk.split_interpolate(a, b, 1, 0.5, noise_std=float("nan"))),
        (ValueError, "method must be", lambda: mk.split_interpolate(a, b, 1, 0.5, method="cubic")),
        (ValueError, "omega must be", lambda: mk.split_interpolate(a, b, 1, 0.5, omega="local")),
        (ValueError, "backend must be", lambda: mk.split_interpolate(a, b, 1, 0.5, backend="fortran")),
        (ValueError, "seed must lie", lambda: mk.split_interpolate(a, b, 1, 0.5, seed=-1)),
        (ValueError, "out must be contiguous", lambda: mk.split_interpolate(a, b, 1, 0.5, out=torch.empty(20)[::2])),
        (ValueError, "out must not overlap a", lambda: mk.split_interpolate(a[:-1], b[:-1], 1, 0.5, out=a[1:])),
        (ValueError, r"out must have shape \(10,\) \(as a\), got \(9,\)", lambda: mk.split_interpolate(a, b, 1, 0.5, out=torch.empty(9))),
        (TypeError, r"out must be torch.float32 \(as a\), got torch.float64", lambda: mk.split_interpolate(a, b, 1, 0.5, out=torch.empty(10, dtype=torch.float64))),
        (ValueError, "as many tensors", lambda: mk.split_interpolate([a, a], [b], 1, 0.5)),
        (ValueError, "a must be contiguous", lambda: mk.split_interpolate_(torch.randn(20)[::2], b, 1, 0.5)),
        (IndexError, r"ia must lie in \[0, 3\) \(rows of archive\), got 3", lambda: mk.crossover_batch(torch.randn(3, 10), [0, 3], [1, 1], [1, 1], [0.5, 0.5])),
        (ValueError, "split must lie in", lambda: mk.crossover_batch(torch.randn(3, 10), [0], [1], [11], [0.5])),
        (ValueError, r"w must have length 1 \(the length of ia\), got 2", lambda: mk.crossover_batch(torch.randn(3, 10), [0], [1], [1], [0.5, 0.2])),
        (ValueError, "archive must be 2-D", lambda: mk.crossover_batch(torch.randn(10), [0], [0], [1], [0.5])),
        (ValueError, "out must not overlap archive", lambda: mk.crossover_batch(
            archive, [0], [1], [1], [0.5], out=archive[2:])),
    ]


@pytest.mark.parametrize("case", range(len(_bad_calls())))
def test_bad_input_raises_clear_error(case):
    exc, message, call = _bad_calls()[case]
    with pytest.raises(exc, match=message):
        call()


def test_bad_input_leaves_output_untouched():
    a, b = torch.randn(10), torch.randn(10)
    out = torch.full((10,), 7.0)
    for bad in (dict(split=11), dict(w=float("nan")), dict(method="x"), dict(noise_std=-1.0)):
        kwargs = dict(split=3, w=0.5) | bad
        with pytest.raises((ValueError, TypeError)):
            mk.split_interpolate(a, b, kwargs.pop("split"), kwargs.pop("w"), out=out, **kwargs)
        assert torch.equal(out, torch.full((10,), 7.0))


def test_device_mismatch_is_rejected():
    if not torch.cuda.is_available():
        meta = torch.empty(10, device="meta")
        with pytest.raises(ValueError, match=r"b must be on cpu \(as a\), got meta"):
            mk.split_interpolate(torch.randn(10), meta, 1, 0.5)
    else:
        with pytest.raises(ValueError, match=r"b must be on cpu \(as a\), got cuda:0"):
            mk.split_interpolate(torch.randn(10), torch.randn(10, device="cuda"), 1, 0.5)


# ---------------------------------------------------------------------------
# Dispatcher integration: opcheck and torch.compile.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    a, b = parents(1000, torch.float32, device, seed=10)
    out = torch.empty_like(a)
    args = (300, 0.25, "slerp", "global", 0.01, 5, 0, 0)
    torch.library.opcheck(torch.ops.m2n2.split_interpolate_out, ([a], [b], [out], *args))
    torch.library.opcheck(torch.ops.m2n2.split_interpolate_, ([a.clone()], [b], *args, True))
    archive = torch.randn(4, 100, device=device)
    ia = torch.tensor([0, 1, 3], device=device)
    ib = torch.tensor([1, 2, 0], device=device)
    split = torch.tensor([0, 50, 100], device=device)
    w = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64, device=device)
    out = torch.empty(3, 100, device=device)
    torch.library.opcheck(
        torch.ops.m2n2.crossover_batch_out, (archive, ia, ib, split, w, out, "lerp", "global", 0.0, 1)
    )


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    a, b = parents(4097, torch.float32, device, seed=12)

    @torch.compile(fullgraph=True)
    def merged(x, y):
        child = mk.split_interpolate(x, y, 1000, 0.3, noise_std=0.01, seed=4)
        return child * 2

    eager = mk.split_interpolate(a, b, 1000, 0.3, noise_std=0.01, seed=4) * 2
    torch.testing.assert_close(merged(a, b), eager, rtol=0, atol=0)

    @torch.compile(fullgraph=True)
    def in_place(x, y):
        mk.split_interpolate_(x, y, 10, 0.5, method="lerp")
        return x

    x = a.clone()
    in_place(x, b)
    torch.testing.assert_close(x, reference.split_interpolate(a, b, 10, 0.5, method="lerp"), rtol=0, atol=0)


def test_backend_env_override(monkeypatch):
    a, b = parents(100, torch.float32, "cpu")
    monkeypatch.setenv("M2N2_BACKEND", "torch")
    want = reference.split_interpolate(a, b, 10, 0.5)
    assert torch.equal(mk.split_interpolate(a, b, 10, 0.5), want)
    monkeypatch.setenv("M2N2_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="M2N2_BACKEND must be one of"):
        mk.split_interpolate(a, b, 10, 0.5)
