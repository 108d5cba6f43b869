"""Property-based tests (Hypothesis) of the contract of every public op (issue 13).

For each public op (split_interpolate, split_interpolate_, crossover_batch, fitness,
attraction, niche_stats, replace_index, sample_scores):

1. a valid input (small shapes including 0 and 1, every dtype, contiguous, transposed,
   strided, offset and expanded layouts, random scalars) is accepted and matches the
   torch reference backend, on every backend;
2. a bad input raises exactly TypeError, ValueError or IndexError, whose message
   names the offending argument;
3. a call that raises has written nothing (the bytes of every tensor of the call,
   outputs and in-place targets included, are unchanged);
4. aliasing: a written tensor may share memory only with itself at its own position
   (out[i] exactly a[i] or b[i], the in-place case); any other overlap with another
   tensor of the call is a ValueError raised before anything is written;
5. the niche ops refuse scores < 0 (a ValueError naming the entry) and accept any
   score >= 0, including > 1.

Parts of the contract being implemented while these tests were written carry one of
the comments "# aliasing contract (issue 13)", "# negative scores (issue 13)" or
"# int64 range (issue 13)" (Python ints outside int64).

Budgets: the Hypothesis profile comes from the environment variable
M2N2_HYPOTHESIS_PROFILE:
  ci    (default) derandomized (the same examples on every run), small budgets, no
        example database, no shrinking of a failing example: under a minute on a
        2-core machine;
  long  random examples, 25 times the budgets, failing examples shrunk (a quarter
        of an hour or so), to hunt for bugs:
        M2N2_HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest tests/test_properties.py
Each test states its budget in "ci" examples; the profile scales it. The Triton
backend runs in its (slow) interpreter here, so its tensors stay tiny and its
budgets small.
"""
import math
import os
import re

import pytest
import torch
from conftest import available_backends

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, Phase, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import m2n2_kernels as mk  # noqa: E402
from m2n2_kernels import reference  # noqa: E402

# ---------------------------------------------------------------------------
# Profiles and budgets.
# ---------------------------------------------------------------------------

_QUIET = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large,
          HealthCheck.function_scoped_fixture]
# ci does not shrink a failing example (shrinking costs seconds per failure); long does.
settings.register_profile("ci", deadline=None, derandomize=True, database=None, print_blob=True,
                          suppress_health_check=_QUIET, phases=(Phase.explicit, Phase.reuse, Phase.generate))
settings.register_profile("long", deadline=None, derandomize=False, print_blob=True, suppress_health_check=_QUIET)
PROFILE = os.environ.get("M2N2_HYPOTHESIS_PROFILE", "ci")
if PROFILE not in ("ci", "long"):
    raise ValueError(f"M2N2_HYPOTHESIS_PROFILE must be 'ci' or 'long', got {PROFILE!r}")
_SCALE = {"ci": 1, "long": 25}[PROFILE]

BACKENDS = available_backends("cpu")  # torch (the reference), cpp and, interpreted, triton


def budget(examples, backend=None):
    """Settings for `examples` ci examples (fewer for the interpreted Triton kernels)."""
    if backend == "triton":
        examples = max(2, examples // 5)
    return settings(settings.get_profile(PROFILE), max_examples=examples * _SCALE)


# ---------------------------------------------------------------------------
# Tensors: values, layouts, snapshots.
# ---------------------------------------------------------------------------

FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
LAYOUTS = ("contiguous", "transposed", "strided", "offset", "expanded")
WRITABLE_LAYOUTS = ("contiguous", "offset")  # what an output or in-place target may be


def grid(shape, dtype, seed, lo=-32, hi=32, denom=8):
    """Values k / denom: exact in every float dtype, and with exact fp64 sums, so that
    the backends agree on the slerp angle and the niche sums whatever their order
    (random reals could land next to the lerp fallback threshold)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(lo, hi + 1, tuple(shape), generator=g).double() / denom).to(dtype)


def laid_out(values, shape, layout):
    """A tensor of `shape` in `layout`, its values from values(shape) (for "expanded",
    values of one row broadcast along dimension 0)."""
    shape = tuple(shape)
    if layout == "expanded" and len(shape) > 0:
        return values((1,) + shape[1:]).expand(shape)
    t = values(shape)
    if layout == "transposed" and t.dim() >= 2:
        return t.transpose(0, -1).contiguous().transpose(0, -1)
    if layout in ("strided", "transposed") and t.dim() >= 1:
        buf = torch.zeros(shape[:-1] + (2 * shape[-1] + 1,), dtype=t.dtype)
        view = buf[..., 1::2]
        view.copy_(t)
        return view
    if layout == "offset":
        buf = torch.zeros(t.numel() + 3, dtype=t.dtype)
        buf[3:].copy_(t.reshape(-1))
        return buf[3:].view(shape)
    return t


def storage_bytes(t):
    """A copy of every byte of t's storage (also the bytes outside the view)."""
    return torch.empty(0, dtype=torch.uint8).set_(t.untyped_storage()).clone()


def snapshot(*objs):
    """(tensor, bytes) for every tensor among objs (lists are searched)."""
    found = []
    for o in objs:
        if isinstance(o, torch.Tensor):
            found.append(o)
        elif isinstance(o, (list, tuple)):
            found.extend(t for t in o if isinstance(t, torch.Tensor))
    return [(t, storage_bytes(t)) for t in found]


def assert_unchanged(snap, what="a tensor of the call"):
    for t, before in snap:
        assert torch.equal(storage_bytes(t), before), f"{what} was written ({tuple(t.shape)}, {t.dtype})"


def close(got, want, rtol, atol, msg=""):
    torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=atol, equal_nan=True,
                               msg=lambda m: f"{msg}\n{m}")


def names_argument(message, name):
    """Whether `message` names the argument `name`, itself or an entry like name[1], as
    a word. The article 'a' ('a tensor') does not name the argument a: a must be
    followed by an index, ' must', ' and', ' is', ' partly', '=' or punctuation."""
    if name == "a":
        after = r"(?=\s+(?:must|and|is|partly)\b|\s*=|\[|[,;:)']|$)"
    else:
        after = r"(?!\w)"
    return re.search(rf"(?<![\w.]){re.escape(name)}(?:\[[^\]]*\])?{after}", message) is not None


def expect_contract_error(call, names, snap):
    """call() raises TypeError, ValueError or IndexError naming one of `names`, and
    writes nothing. Returns the exception."""
    try:
        call()
    except (TypeError, ValueError, IndexError) as e:
        assert any(names_argument(str(e), n) for n in names), (
            f"{type(e).__name__} does not name {' or '.join(names)}: {e}")
        assert_unchanged(snap, "after the error, a tensor of the call")
        return e
    except Exception as e:  # noqa: BLE001 (the property: nothing else may come out)
        raise AssertionError(f"expected TypeError/ValueError/IndexError naming {names}, "
                             f"got {type(e).__name__}: {e}") from e
    raise AssertionError(f"accepted a bad {' or '.join(names)}")


# ---------------------------------------------------------------------------
# Crossover: strategies.
# ---------------------------------------------------------------------------

CROSSOVER_FORMS = ("new", "out", "inplace", "out=a", "out=b")
SHAPES = st.one_of(
    st.integers(0, 40).map(lambda n: (n,)),
    st.lists(st.integers(0, 4), min_size=2, max_size=3).map(tuple),
    st.sampled_from([(0,), (1,), (1, 1), (0, 3), (3, 0), (7,), (33,)]),
)
SEEDS = st.integers(0, 2**32 - 1)
W_VALUES = st.floats(-0.5, 1.5, allow_nan=False)


def sentinel_like(t, value=7.0):
    return torch.full(t.shape, value, dtype=t.dtype)


@st.composite
def scalars(draw):
    """Valid scalars of split_interpolate except split (which depends on n)."""
    w = draw(st.one_of(W_VALUES, st.sampled_from([0, 1]), W_VALUES.map(torch.tensor)))
    index_offset = draw(st.one_of(st.just(0), st.just(0), st.integers(0, 100), st.integers(0, 2**62)))
    return dict(
        w=w,
        method=draw(st.sampled_from(("lerp", "slerp"))),
        omega=draw(st.sampled_from(("global", "segment"))),
        noise_std=draw(st.one_of(st.just(0.0), st.floats(0.0, 0.1))),
        seed=draw(st.integers(0, 2**64 - 1)),
        index_offset=index_offset,
    )


@st.composite
def crossover_cases(draw, forms=CROSSOVER_FORMS, bounded_split=False, nonempty=False):
    """A valid call of split_interpolate(_): a, b (lists of up to 3 pieces, mixed
    dtypes, any read layout, or one tensor), the scalars, and how the child is
    written: "new" (out=None), "out" (a fresh out), "inplace" (split_interpolate_),
    "out=a", "out=b"; b is sometimes a itself. bounded_split: index_offset 0;
    nonempty: no piece without elements."""
    is_list = draw(st.booleans())
    count = draw(st.integers(1, 3)) if is_list else 1
    form = draw(st.sampled_from(forms))
    b_is_a = draw(st.integers(0, 7)) == 0
    a, b = [], []
    for _ in range(count):
        shape = draw(SHAPES.filter(lambda s: math.prod(s) > 0) if nonempty else SHAPES)
        dtype = draw(st.sampled_from(FLOATS))
        a_layout = draw(st.sampled_from(WRITABLE_LAYOUTS if form in ("inplace", "out=a") or (
            b_is_a and form == "out=b") else LAYOUTS))
        b_layout = draw(st.sampled_from(WRITABLE_LAYOUTS if form == "out=b" else LAYOUTS))
        sa, sb = draw(SEEDS), draw(SEEDS)
        a.append(laid_out(lambda s: grid(s, dtype, sa), shape, a_layout))
        b.append(a[-1] if b_is_a else laid_out(lambda s: grid(s, dtype, sb), shape, b_layout))
    kwargs = draw(scalars())
    if bounded_split:
        kwargs["index_offset"] = 0
    n = sum(t.numel() for t in a)
    top = n if kwargs["index_offset"] == 0 else kwargs["index_offset"] + n + 2
    split = draw(st.one_of(st.integers(0, top), st.sampled_from([0, n])) if kwargs["index_offset"] == 0
                 else st.one_of(st.integers(0, top), st.just(2**63 - 1)))
    return dict(a=a, b=b, is_list=is_list, form=form, split=split, n=n, kwargs=kwargs)


def crossover_tolerance(dtype, noisy):
    # Slerp coefficients come from fp64 sums and libm calls that may differ in the last
    # bit between backends; fp16/bf16 children may then round one unit apart. The
    # noise uses fp32 log/sin/cos (last bits differ between libraries).
    tol = {torch.float32: (4e-6, 1e-6), torch.float64: (1e-12, 1e-12), torch.float16: (1e-3, 1e-3),
           torch.bfloat16: (8e-3, 8e-3)}[dtype]
    return (max(tol[0], 1e-5), max(tol[1], 1e-6)) if noisy else tol


def as_arg(pieces, is_list):
    return list(pieces) if is_list else pieces[0]


def crossover_call(case, backend_, a=None, b=None, out=None, **overrides):
    """The call of `case` (optionally with other a, b, out or keyword values, a bad
    backend among them) as a thunk, and the tensors it writes."""
    a = case["a"] if a is None else a
    b = case["b"] if b is None else b
    kwargs = {**case["kwargs"], "backend": backend_}
    split, w = overrides.pop("split", case["split"]), kwargs.pop("w")
    w = overrides.pop("w", w)
    kwargs.update(overrides)
    A, B = as_arg(a, case["is_list"]), as_arg(b, case["is_list"])
    form = case["form"]
    if form == "inplace":
        return (lambda: mk.split_interpolate_(A, B, split, w, **kwargs)), a
    if form == "out=a":
        return (lambda: mk.split_interpolate(A, B, split, w, out=A, **kwargs)), a
    if form == "out=b":
        return (lambda: mk.split_interpolate(A, B, split, w, out=B, **kwargs)), b
    if form == "out":
        if out is None:
            out = [sentinel_like(t) for t in case["a"]]
        O = as_arg(out, case["is_list"]) if isinstance(out, list) else out
        return (lambda: mk.split_interpolate(A, B, split, w, out=O, **kwargs)), out
    return (lambda: mk.split_interpolate(A, B, split, w, **kwargs)), []


def crossover_reference(a, b, split, kwargs):
    """reference.split_interpolate on copies of the parents (taken before the call)."""
    kw = {k: v for k, v in kwargs.items() if k != "w"}
    w = float(kwargs["w"])
    return reference.split_interpolate([t.clone() for t in a], [t.clone() for t in b], split, w, **kw)


# ---------------------------------------------------------------------------
# Crossover: properties.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_split_interpolate_matches_reference(backend):
    """Any valid call is accepted, writes exactly its output (or in-place target),
    keeps each piece's dtype and shape, and matches the reference."""

    @budget(100, backend)
    @given(case=crossover_cases())
    def check(case):
        want = crossover_reference(case["a"], case["b"], case["split"], case["kwargs"])
        call, written = crossover_call(case, backend)
        written_ids = {id(t) for t in written}
        reads = snapshot([t for t in case["a"] + case["b"] if id(t) not in written_ids])
        got = call()
        got_list = got if case["is_list"] else [got]
        assert isinstance(got, list) == case["is_list"]
        if written:
            assert all(g is t for g, t in zip(got_list, written)), "the result must be the tensors written"
        assert_unchanged(reads, "an input that is only read")
        noisy = case["kwargs"]["noise_std"] > 0
        for i, (g, x, ref) in enumerate(zip(got_list, case["a"], want)):
            assert g.dtype == x.dtype and g.shape == x.shape, f"piece {i}"
            close(g, ref, *crossover_tolerance(x.dtype, noisy), msg=f"piece {i} of {case['form']}")

    check()


# Bad scalars of split_interpolate: (argument, value, other keyword arguments); a value
# may be a function of n (the element count). The message must name the argument.
INT64_SPLIT_INTERPOLATE = [  # int64 range (issue 13)
    ("split", 2**63, dict(index_offset=1)),
    ("split", 2**70, dict(index_offset=1)),
    ("index_offset", 2**63, {}),
    ("index_offset", 2**70, {}),
    ("w", 2**2000, {}),  # an int too large for a float: not finite
    ("noise_std", 2**2000, {}),
]
BAD_SPLIT_INTERPOLATE_SCALARS = [
    ("w", math.nan, {}), ("w", math.inf, {}), ("w", -math.inf, {}), ("w", None, {}), ("w", "0.5", {}),
    ("w", True, {}), ("w", 0.5j, {}), ("w", torch.tensor([0.1, 0.2]), {}), ("w", torch.tensor(0.5j), {}),
    ("w", [0.5], {}),
    ("noise_std", -0.01, {}), ("noise_std", -1e-300, {}), ("noise_std", -math.inf, {}), ("noise_std", math.inf, {}),
    ("noise_std", math.nan, {}), ("noise_std", None, {}), ("noise_std", "0", {}), ("noise_std", True, {}),
    ("noise_std", 1j, {}),
    ("split", -1, {}), ("split", lambda n: n + 1, {}), ("split", -(2**70), {}), ("split", 2**70, {}),
    ("split", 2**63, {}), ("split", 1.5, {}), ("split", None, {}), ("split", "1", {}), ("split", True, {}),
    ("split", 1j, {}), ("split", torch.tensor(1.5), {}), ("split", torch.tensor([1, 2]), {}), ("split", [1], {}),
    ("split", -1, dict(index_offset=5)),
    ("seed", -1, {}), ("seed", 2**64, {}), ("seed", 2**70, {}), ("seed", -(2**70), {}), ("seed", 1.5, {}),
    ("seed", None, {}), ("seed", "1", {}), ("seed", True, {}), ("seed", torch.tensor(1.0), {}),
    ("index_offset", -1, {}), ("index_offset", -(2**70), {}), ("index_offset", 1.5, {}),
    ("index_offset", None, {}), ("index_offset", True, {}), ("index_offset", "0", {}),
    ("method", "cubic", {}), ("method", None, {}), ("method", 1, {}), ("method", "LERP", {}), ("method", "", {}),
    ("omega", "local", {}), ("omega", None, {}), ("omega", 0, {}),
    ("backend", "gpu", {}), ("backend", "", {}), ("backend", 1, {}), ("backend", "CPP", {}),
    ("foo", 1, {}),  # an unknown keyword argument
] + INT64_SPLIT_INTERPOLATE


def _scalar_id(entry):
    arg, value, extra = entry
    if callable(value):
        v = "n+1"
    elif isinstance(value, torch.Tensor):
        v = f"tensor{list(value.shape)}"
    elif isinstance(value, int) and abs(value) >= 2**62:
        v = ("-" if value < 0 else "") + f"2**{abs(value).bit_length() - 1}"
    else:
        v = repr(value)
    return f"{arg}={v[:20]}" + ("".join(f",{k}={x}" for k, x in extra.items()))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("entry", BAD_SPLIT_INTERPOLATE_SCALARS, ids=_scalar_id)
def test_split_interpolate_rejects_bad_scalars(entry, backend):
    """A bad scalar is a TypeError/ValueError/IndexError naming it, raised before the
    output (or the in-place target) is touched."""
    arg, value, extra = entry

    @budget(3)
    @given(case=crossover_cases(forms=("out", "inplace"), bounded_split=True, nonempty=True))
    def check(case):
        bad = value(case["n"]) if callable(value) else value
        call, written = crossover_call(case, backend, **{**extra, arg: bad})
        expect_contract_error(call, [arg], snapshot(case["a"], case["b"], written))

    check()


@st.composite
def out_of_range_scalar(draw):
    """(argument, value, extra keyword arguments): a number outside its range."""
    kind = draw(st.sampled_from(["split_high", "split_low", "noise_std", "seed_low", "seed_high", "index_offset",
                                 "w"]))
    if kind == "split_high":
        return "split", lambda n: n + draw(st.integers(1, 2**62)), {}
    if kind == "split_low":
        return "split", draw(st.integers(-(2**63), -1)), draw(st.sampled_from([{}, dict(index_offset=3)]))
    if kind == "noise_std":
        return "noise_std", draw(st.one_of(st.floats(max_value=-1e-300), st.integers(max_value=-1))), {}
    if kind == "seed_low":
        return "seed", draw(st.integers(-(2**64), -1)), {}
    if kind == "seed_high":
        return "seed", draw(st.integers(2**64, 2**64 + 2**40)), {}
    if kind == "index_offset":
        return "index_offset", draw(st.integers(-(2**63), -1)), {}
    return "w", draw(st.sampled_from([math.nan, math.inf, -math.inf])), {}


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_split_interpolate_rejects_out_of_range_numbers(backend):
    """Numbers just or far outside their range, on random calls."""

    @budget(40)
    @given(case=crossover_cases(forms=("out", "inplace"), bounded_split=True), bad=out_of_range_scalar())
    def check(case, bad):
        arg, value, extra = bad
        value = value(case["n"]) if callable(value) else value
        call, written = crossover_call(case, backend, **{**extra, arg: value})
        expect_contract_error(call, [arg], snapshot(case["a"], case["b"], written))

    check()


def _other_float(dtype):
    return torch.float64 if dtype != torch.float64 else torch.float32


# Bad tensors (or containers) of split_interpolate: name -> (forms it applies to,
# function (a, b, out) -> (a, b, out) of the bad call, names the message may give).
# a, b, out are lists (one piece when the call passes plain tensors).
def _gappy(t):
    """A view with gaps where t would go (of the wrong shape where t holds < 2 elements,
    since such a view would count as contiguous): an out that cannot be written."""
    shape = t.shape if t.numel() >= 2 else (2,)
    return laid_out(lambda s: sentinel_like(torch.empty(s, dtype=t.dtype)), shape, "strided")


BAD_CROSSOVER_TENSORS = {
    "a_int": (("out", "inplace", "new"), lambda a, b, o: ([a[0].to(torch.int32)] + a[1:], b, o), ["a"]),
    "a_complex": (("out", "new"), lambda a, b, o: ([a[0].to(torch.complex64)] + a[1:], b, o), ["a"]),
    "a_bool": (("out", "new"), lambda a, b, o: ([a[0].bool()] + a[1:], b, o), ["a"]),
    "a_none": (("out", "new"), lambda a, b, o: ([None] + a[1:], b, o), ["a"]),
    "a_float_list": (("out", "new"), lambda a, b, o: ([a[0].tolist()] + a[1:], b, o), ["a"]),
    "b_dtype": (("out", "inplace", "new"), lambda a, b, o: (a, b[:-1] + [b[-1].to(_other_float(b[-1].dtype))], o),
                ["b"]),
    "b_shape": (("out", "inplace", "new"), lambda a, b, o: (a, b[:-1] + [torch.zeros(b[-1].numel() + 1,
                                                                                        dtype=b[-1].dtype)], o), ["b"]),
    "b_none": (("out", "inplace", "new"), lambda a, b, o: (a, b[:-1] + [None], o), ["b"]),
    "b_longer": (("out", "inplace", "new"), lambda a, b, o: (a, b + [b[-1].clone()], o), ["b"]),
    "out_dtype": (("out",), lambda a, b, o: (a, b, o[:-1] + [torch.zeros(o[-1].shape,
                                                                         dtype=_other_float(o[-1].dtype))]), ["out"]),
    "out_shape": (("out",), lambda a, b, o: (a, b, o[:-1] + [torch.zeros(o[-1].numel() + 1, dtype=o[-1].dtype)]),
                  ["out"]),
    "out_int": (("out",), lambda a, b, o: (a, b, o[:-1] + [o[-1].to(torch.int64)]), ["out"]),
    "out_not_contiguous": (("out",), lambda a, b, o: (a, b, o[:-1] + [_gappy(o[-1])]), ["out"]),
    "out_none_entry": (("out",), lambda a, b, o: (a, b, o[:-1] + [None]), ["out"]),
    "out_shorter": (("out",), lambda a, b, o: (a, b, o[:-1]), ["out"]),
}


def _list_call(case, backend, a, b, out):
    """The call with the (bad) lists; one-piece calls that passed plain tensors keep
    doing so when the bad list still has one entry."""
    plain = not case["is_list"]

    def arg(x):  # [None] stays a list: out=None would be a valid call
        return x[0] if plain and len(x) == 1 and x[0] is not None else x

    kwargs = {**case["kwargs"], "backend": backend}
    w = kwargs.pop("w")
    A, B = arg(a), arg(b)
    if case["form"] == "inplace":
        return lambda: mk.split_interpolate_(A, B, case["split"], w, **kwargs)
    if case["form"] == "out":
        O = arg(out) if out else out
        return lambda: mk.split_interpolate(A, B, case["split"], w, out=O, **kwargs)
    return lambda: mk.split_interpolate(A, B, case["split"], w, **kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", sorted(BAD_CROSSOVER_TENSORS))
def test_split_interpolate_rejects_bad_tensors(bad, backend):
    """Wrong dtypes, shapes, containers or layouts are errors naming the argument,
    raised before anything is written."""
    forms, corrupt, names = BAD_CROSSOVER_TENSORS[bad]

    @budget(3)
    @given(case=crossover_cases(forms=forms, bounded_split=True))
    def check(case):
        out = [sentinel_like(t) for t in case["a"]] if case["form"] == "out" else None
        a, b, out = corrupt(list(case["a"]), list(case["b"]), out)
        call = _list_call(case, backend, a, b, out)
        expect_contract_error(call, names, snapshot(case["a"], case["b"], a, b, out))

    check()


@pytest.mark.parametrize("backend", ["torch", "cpp"])
@pytest.mark.parametrize("container", ["plain_a_list_b", "list_a_plain_b", "list_out_for_plain", "empty_lists",
                                       "a_string", "out_string"])
def test_split_interpolate_rejects_bad_containers(container, backend):
    """a, b and out are all plain tensors or all lists; lists are not empty."""
    x, y = torch.randn(5), torch.randn(5)
    o = sentinel_like(x)
    calls = {
        "plain_a_list_b": (lambda: mk.split_interpolate(x, [y], 2, 0.3, out=o, backend=backend), ["b"]),
        "list_a_plain_b": (lambda: mk.split_interpolate([x], y, 2, 0.3, out=[o], backend=backend), ["b"]),
        "list_out_for_plain": (lambda: mk.split_interpolate(x, y, 2, 0.3, out=[o], backend=backend), ["out"]),
        "empty_lists": (lambda: mk.split_interpolate([], [], 0, 0.3, backend=backend), ["a"]),
        "a_string": (lambda: mk.split_interpolate("x", y, 2, 0.3, out=o, backend=backend), ["a"]),
        "out_string": (lambda: mk.split_interpolate(x, y, 2, 0.3, out="o", backend=backend), ["out"]),
    }
    call, names = calls[container]
    expect_contract_error(call, names, snapshot(x, y, o))


@pytest.mark.parametrize("backend", ["torch", "cpp"])
@pytest.mark.parametrize("layout", ["strided", "transposed", "expanded"])
def test_split_interpolate_inplace_needs_a_writable_a(layout, backend):
    """split_interpolate_ refuses an a it cannot write (a view with gaps, or an
    expanded one) and out=, naming them."""
    a = laid_out(lambda s: grid(s, torch.float32, 1), (3, 4), layout)
    b = grid((3, 4), torch.float32, 2)
    expect_contract_error(lambda: mk.split_interpolate_(a, b, 5, 0.3, backend=backend), ["a"], snapshot(a, b))
    expect_contract_error(lambda: mk.split_interpolate_(b.clone(), b, 5, 0.3, out=b, backend=backend), ["out"],
                          snapshot(a, b))


# ---------------------------------------------------------------------------
# Crossover: aliasing contract (issue 13).
# ---------------------------------------------------------------------------


def _elements(t, base):
    """The arena elements (indices) a 1-D view holds; none for a fresh tensor."""
    if t.untyped_storage().data_ptr() != base.untyped_storage().data_ptr() or t.numel() == 0:
        return set()
    start = (t.data_ptr() - base.data_ptr()) // t.element_size()
    return {start + k * t.stride(0) for k in range(t.numel())}


def _span(t, base):
    e = _elements(t, base)
    return (min(e), max(e) + 1) if e else None


def _same_view(x, y):
    return (x.data_ptr(), x.shape, x.stride(), x.dtype) == (y.data_ptr(), y.shape, y.stride(), y.dtype)


@st.composite
def aliased_crossover_calls(draw):
    """A call whose pieces are fresh tensors or 1-D views of one shared arena (reads
    contiguous or strided, writes contiguous): any mix of overlaps. Returns the
    case and the arena."""
    dtype = draw(st.sampled_from(FLOATS))
    is_list = draw(st.booleans())
    count = draw(st.integers(1, 3)) if is_list else 1
    sizes = [draw(st.integers(1, 6)) for _ in range(count)]
    arena = grid((draw(st.integers(max(sizes), 2 * sum(sizes) + 2)),), dtype, draw(SEEDS))
    form = draw(st.sampled_from(("out", "inplace", "out=a", "out=b")))

    def piece(size, written):
        if draw(st.integers(0, 3)) == 0:
            return grid((size,), dtype, draw(SEEDS))
        step = 1 if written else draw(st.sampled_from([1, 1, 2]))
        last = (size - 1) * step
        if last >= arena.numel():
            step, last = 1, size - 1
        start = draw(st.integers(0, arena.numel() - 1 - last))
        return arena[start:start + last + 1:step]

    a = [piece(s, form in ("inplace", "out=a")) for s in sizes]
    b = []
    for i, s in enumerate(sizes):
        same = draw(st.integers(0, 5)) == 0  # b[i] is a[i] (a written b[i] must be contiguous)
        b.append(a[i] if same and (form != "out=b" or a[i].is_contiguous()) else piece(s, form == "out=b"))
    out = [piece(s, True) for s in sizes] if form == "out" else None
    case = dict(a=a, b=b, is_list=is_list, form=form, split=draw(st.integers(0, sum(sizes))), n=sum(sizes),
                kwargs=dict(w=draw(W_VALUES), method=draw(st.sampled_from(("lerp", "slerp"))), omega="global",
                            noise_std=0.0, seed=0, index_offset=0))
    return case, out, arena


def aliasing_verdict(written, a, b, arena):
    """'must' raise (a written piece shares an element with another piece, other than
    being exactly a[i] or b[i] at its own position i), 'may' raise (their byte spans
    meet without a common element, or the in-place roles mix), or 'no'."""
    verdict = "no"
    roles = {"a", "b", "none"}  # the roles every position allows: out is a, b, or fresh
    for i, w in enumerate(written):
        mine = _elements(w, arena)
        here = {name for name, x in (("a", a[i]), ("b", b[i])) if _same_view(w, x)} or {"none"}
        roles &= here
        others = [(x, j == i and _same_view(w, x)) for j, x in enumerate(a)]
        others += [(x, j == i and _same_view(w, x)) for j, x in enumerate(b)]
        others += [(x, False) for j, x in enumerate(written) if j != i]
        for x, allowed in others:
            if allowed:
                continue
            if mine & _elements(x, arena):
                return "must"
            sw, sx = _span(w, arena), _span(x, arena)
            if sw and sx and sw[0] < sx[1] and sx[0] < sw[1]:
                verdict = "may"
    if not roles:
        verdict = "may"  # out in place at some positions, fresh at others: may be refused
    return verdict


@pytest.mark.parametrize("backend", BACKENDS)
def test_aliasing_split_interpolate(backend):
    # aliasing contract (issue 13)
    """A written piece may be exactly a[i] or b[i] at its own position; any other
    overlap with a piece of the call (read or written, any position) is a ValueError
    naming the written argument, raised before anything is written. Calls the
    contract allows match the reference."""

    @budget(200, backend)
    @given(drawn=aliased_crossover_calls())
    def check(drawn):
        case, out, arena = drawn
        want = crossover_reference(case["a"], case["b"], case["split"], case["kwargs"])
        call, written = crossover_call(case, backend, out=out)
        verdict = aliasing_verdict(list(written), case["a"], case["b"], arena)
        snap = snapshot(arena, case["a"], case["b"], written)
        # A fresh out must be named; in place (out exactly a or b, at some position),
        # the message may name either side of the overlap: a[i] or the b[j] it meets.
        in_place = case["form"] != "out" or any(
            _same_view(o, x) for o, pair in zip(written, zip(case["a"], case["b"])) for x in pair)
        written_names = ["a", "b", "out"] if in_place else ["out"]
        if verdict == "must":
            e = expect_contract_error(call, written_names, snap)
            assert isinstance(e, ValueError), f"an overlap must be a ValueError, got {type(e).__name__}: {e}"
            return
        try:
            got = call()
        except ValueError as e:
            assert verdict == "may", f"refused a call the aliasing contract allows: {e}"
            assert_unchanged(snap, "after the error, a tensor of the call")
            return
        got_list = got if case["is_list"] else [got]
        for i, (g, ref) in enumerate(zip(got_list, want)):
            close(g, ref, *crossover_tolerance(g.dtype, False), msg=f"piece {i} ({case['form']}, {verdict})")

    check()


def test_aliasing_split_interpolate_examples():
    # aliasing contract (issue 13)
    """The contract's plain cases, by hand."""
    x = grid((8,), torch.float32, 3)
    y = grid((8,), torch.float32, 4)
    # exactly a (or b) at its own position: in place, allowed; b may be a itself
    want = reference.split_interpolate(x, y, 3, 0.3)
    torch.testing.assert_close(mk.split_interpolate_(x.clone(), y, 3, 0.3), want)
    z = x.clone()
    torch.testing.assert_close(mk.split_interpolate_(z, z, 3, 0.3), reference.split_interpolate(x, x, 3, 0.3))
    # reads may overlap one another
    got = mk.split_interpolate([x[:4], x[2:6]], [y[:4], x[:4]], 3, 0.3)
    for g, r in zip(got, reference.split_interpolate([x[:4], x[2:6]], [y[:4], x[:4]], 3, 0.3)):
        torch.testing.assert_close(g, r)
    cases = {
        "out[1] is a[0]": lambda: mk.split_interpolate([x[:4], x[4:]], [y[:4], y[4:]], 3, 0.3, out=[torch.empty(4),
                                                                                                       x[:4]]),
        "out[0] is out[1]": lambda: mk.split_interpolate([x[:4], x[4:]], [y[:4], y[4:]], 3, 0.3, out=[z[:4], z[:4]]),
        "in place, a[0] is a[1]": lambda: mk.split_interpolate_([z[:4], z[:4]], [y[:4], y[4:]], 3, 0.3),
        "in place, a[0] overlaps b[1]": lambda: mk.split_interpolate_([z[:4], z[4:]], [y[:4], z[2:6]], 3, 0.3),
        "out partly overlaps a": lambda: mk.split_interpolate(z[:6], x[:6], 3, 0.3, out=z[1:7]),
    }
    for what, call in cases.items():
        snap = snapshot(x, y, z)
        e = expect_contract_error(call, ["out", "a"], snap)
        assert isinstance(e, ValueError), f"{what}: {type(e).__name__}: {e}"


# ---------------------------------------------------------------------------
# crossover_batch.
# ---------------------------------------------------------------------------

INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8)


@st.composite
def index_vector(draw, values):
    """`values` (a list of ints) as a list, a tuple or an integer tensor of any layout."""
    form = draw(st.sampled_from(["list", "tuple", "tensor", "strided"]))
    if form == "list":
        return list(values)
    if form == "tuple":
        return tuple(values)
    t = torch.tensor(values, dtype=draw(st.sampled_from(INDEX_DTYPES)))
    return laid_out(lambda s: t, t.shape, "strided") if form == "strided" else t


@st.composite
def batch_cases(draw, small=False, at_least_one=False):
    """A valid crossover_batch call: archive P x n of any float dtype and layout, K
    children, indices and splits as lists or integer tensors, w as a list or a real
    tensor, out None or fresh."""
    dtype = draw(st.sampled_from(FLOATS))
    low = 1 if at_least_one else 0
    p, n, k = draw(st.integers(1, 4)), draw(st.integers(low, 10 if small else 24)), draw(st.integers(low, 5))
    seed = draw(SEEDS)
    archive = laid_out(lambda s: grid(s, dtype, seed), (p, n), draw(st.sampled_from(LAYOUTS)))
    ia_v = [draw(st.integers(0, p - 1)) for _ in range(k)]
    ib_v = [draw(st.integers(0, p - 1)) for _ in range(k)]
    split_v = [draw(st.integers(0, n)) for _ in range(k)]
    w_v = [draw(W_VALUES) for _ in range(k)]
    w_form = draw(st.sampled_from(["list", "float64", "float32", "strided"]))
    w = w_v if w_form == "list" else (
        torch.tensor(w_v, dtype=torch.float64 if w_form != "float32" else torch.float32))
    if w_form == "strided":
        w = laid_out(lambda s: w, w.shape, "strided")
    out = sentinel_like(torch.empty(k, n, dtype=dtype)) if draw(st.booleans()) else None
    return dict(
        archive=archive, ia=draw(index_vector(ia_v)), ib=draw(index_vector(ib_v)), split=draw(index_vector(split_v)),
        w=w, out=out, p=p, n=n, k=k,
        kwargs=dict(method=draw(st.sampled_from(("lerp", "slerp"))), omega=draw(st.sampled_from(("global", "segment"))),
                    noise_std=draw(st.one_of(st.just(0.0), st.floats(0.0, 0.1))), seed=draw(st.integers(0, 2**64 - 1))),
    )


def batch_call(case, backend_, **overrides):
    args = {k: case[k] for k in ("archive", "ia", "ib", "split", "w")}
    kwargs = {**case["kwargs"], "out": case["out"], "backend": backend_}
    for key, value in overrides.items():
        (args if key in args else kwargs)[key] = value
    return lambda: mk.crossover_batch(*args.values(), **kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_crossover_batch_matches_reference(backend):
    """Any valid call matches the reference (child k from rows ia[k], ib[k], noise
    stream k), returns out when given, and reads its inputs only."""

    @budget(80, backend)
    @given(case=batch_cases(small=backend == "triton"))
    def check(case):
        as_long = [torch.as_tensor(case[k]).long() for k in ("ia", "ib", "split")]
        w = case["w"]
        w64 = w.double() if isinstance(w, torch.Tensor) else torch.tensor(w, dtype=torch.float64)
        want = reference.crossover_batch(case["archive"].contiguous(), *as_long, w64, **case["kwargs"])
        reads = snapshot(*(case[k] for k in ("archive", "ia", "ib", "split", "w")))
        got = batch_call(case, backend)()
        assert_unchanged(reads, "an input of crossover_batch")
        if case["out"] is not None:
            assert got is case["out"]
        assert got.shape == (case["k"], case["n"]) and got.dtype == case["archive"].dtype
        close(got, want, *crossover_tolerance(got.dtype, case["kwargs"]["noise_std"] > 0))

    check()


def _batch_bad(arg, make):
    return (arg, make)


# (argument, function case -> bad value); the message must name the argument
INT64_CROSSOVER_BATCH = [  # int64 range (issue 13)
    _batch_bad("ia", lambda c: [2**70] * c["k"]),
    _batch_bad("split", lambda c: [2**70] * c["k"]),
    _batch_bad("w", lambda c: [2**2000] * c["k"]),
]
BAD_CROSSOVER_BATCH = [
    _batch_bad("archive", lambda c: None), _batch_bad("archive", lambda c: "x"),
    _batch_bad("archive", lambda c: c["archive"].long()), _batch_bad("archive", lambda c: c["archive"][0]),
    _batch_bad("archive", lambda c: c["archive"][None]),
    _batch_bad("archive", lambda c: c["archive"].to(torch.complex64)),
    _batch_bad("ia", lambda c: None), _batch_bad("ia", lambda c: "ab"), _batch_bad("ia", lambda c: 0),
    _batch_bad("ia", lambda c: [0.0] * c["k"]), _batch_bad("ia", lambda c: torch.zeros(c["k"], dtype=torch.bool)),
    _batch_bad("ia", lambda c: torch.zeros(c["k"], 1, dtype=torch.int64)),
    _batch_bad("ia", lambda c: [c["p"]] * c["k"]),
    _batch_bad("ia", lambda c: [-1] * c["k"]), _batch_bad("ia", lambda c: [1j] * c["k"]),
    _batch_bad("ib", lambda c: [c["p"]] * c["k"]), _batch_bad("ib", lambda c: [-1] * c["k"]),
    _batch_bad("ib", lambda c: None), _batch_bad("ib", lambda c: [0] * (c["k"] + 1)),
    _batch_bad("split", lambda c: [-1] * c["k"]), _batch_bad("split", lambda c: [c["n"] + 1] * c["k"]),
    _batch_bad("split", lambda c: [0.5] * c["k"]), _batch_bad("split", lambda c: None),
    _batch_bad("split", lambda c: [0] * (c["k"] + 1)),
    _batch_bad("w", lambda c: [math.nan] * c["k"]), _batch_bad("w", lambda c: [math.inf] * c["k"]),
    _batch_bad("w", lambda c: [0.5j] * c["k"]), _batch_bad("w", lambda c: "x"), _batch_bad("w", lambda c: None),
    _batch_bad("w", lambda c: 0.5), _batch_bad("w", lambda c: [0.5] * (c["k"] + 1)),
    _batch_bad("w", lambda c: torch.ones(c["k"], dtype=torch.bool)),
    _batch_bad("method", lambda c: "cubic"), _batch_bad("method", lambda c: None),
    _batch_bad("omega", lambda c: "local"), _batch_bad("noise_std", lambda c: -0.1),
    _batch_bad("noise_std", lambda c: math.nan), _batch_bad("noise_std", lambda c: "0"),
    _batch_bad("seed", lambda c: -1), _batch_bad("seed", lambda c: 2**64), _batch_bad("seed", lambda c: 1.5),
    _batch_bad("backend", lambda c: "gpu"),
    _batch_bad("out", lambda c: "x"),
    _batch_bad("out", lambda c: torch.zeros(c["k"], c["n"], dtype=_other_float(c["archive"].dtype))),
    _batch_bad("out", lambda c: torch.zeros(c["k"], c["n"] + 1, dtype=c["archive"].dtype)),
    _batch_bad("out", lambda c: torch.zeros(c["n"], c["k"], dtype=c["archive"].dtype).t() if c["n"] > 1 and c["k"] > 1
               else torch.zeros(c["k"] + 1, c["n"], dtype=c["archive"].dtype)),
    _batch_bad("out", lambda c: torch.zeros(c["k"], c["n"], dtype=torch.int64)),
] + INT64_CROSSOVER_BATCH


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arg,make", BAD_CROSSOVER_BATCH,
                         ids=[f"{e[0]}-{i}" for i, e in enumerate(BAD_CROSSOVER_BATCH)])
def test_crossover_batch_rejects_bad_arguments(arg, make, backend):
    """A bad argument is a TypeError/ValueError/IndexError naming it; out and the
    inputs are untouched."""

    @budget(3)
    @given(case=batch_cases(small=True, at_least_one=True))
    def check(case):
        case["out"] = sentinel_like(torch.empty(case["k"], case["n"], dtype=case["archive"].dtype))
        bad = make(case)
        snap = snapshot(*(case[k] for k in ("archive", "ia", "ib", "split", "w", "out")), bad)
        expect_contract_error(batch_call(case, backend, **{arg: bad}), [arg], snap)

    check()


def _carve(raw, offset, shape, dtype):
    """A contiguous tensor of `shape` and `dtype` over raw's bytes at `offset`."""
    size = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
    return raw[offset:offset + size].view(dtype).view(shape)


def _nbytes(shape, dtype):
    return math.prod(shape) * torch.empty(0, dtype=dtype).element_size()


@st.composite
def arena_layout(draw, reads, written):
    """Byte offsets (multiples of 8) in one arena for the read tensors, which do not
    overlap one another, and the written one, placed anywhere (often across them).
    reads, written: lists of (name, nbytes). Returns (arena size, {name: offset})."""
    offsets, end = {}, 0
    for name, size in reads:
        end += 8 * draw(st.integers(0, 2))
        offsets[name] = end
        end += -(-size // 8) * 8
    for name, size in written:
        offsets[name] = 8 * draw(st.integers(0, max(0, (end + 16) // 8)))
        end = max(end, offsets[name] + size)
    return end + 8, offsets


def _meets(o0, o1, x0, x1):
    """Byte ranges [o0, o1) and [x0, x1) share a byte."""
    return o0 < x1 and x0 < o1


@pytest.mark.parametrize("backend", BACKENDS)
def test_aliasing_crossover_batch(backend):
    # aliasing contract (issue 13)
    """out may not overlap archive, ia, ib, split or w: a ValueError naming out, with
    nothing written; without an overlap the call matches the reference."""

    @budget(100, backend)
    @given(data=st.data())
    def check(data):
        draw = data.draw
        dtype = draw(st.sampled_from((torch.float32, torch.float64)))
        p, n, k = draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 3))
        shapes = dict(archive=((p, n), dtype), ia=((k,), torch.int64), ib=((k,), torch.int64),
                      split=((k,), torch.int64), w=((k,), torch.float64), out=((k, n), dtype))
        reads = [(name, _nbytes(*shapes[name])) for name in ("archive", "ia", "ib", "split", "w")]
        size, offsets = draw(arena_layout(reads, [("out", _nbytes(*shapes["out"]))]))
        raw = torch.zeros(size, dtype=torch.uint8)
        t = {name: _carve(raw, offsets[name], *shapes[name]) for name in shapes}
        # The reads hold valid values (out is not filled: its bytes are the reads' own).
        t["archive"].copy_(grid((p, n), dtype, draw(SEEDS)))
        for name, hi in (("ia", p - 1), ("ib", p - 1), ("split", n)):
            t[name].copy_(torch.tensor([draw(st.integers(0, hi)) for _ in range(k)]))
        t["w"].copy_(torch.tensor([draw(W_VALUES) for _ in range(k)]))
        method = draw(st.sampled_from(("lerp", "slerp")))
        o0 = offsets["out"]
        o1 = o0 + _nbytes(*shapes["out"])
        clash = [name for name, nb in reads if _meets(o0, o1, offsets[name], offsets[name] + nb)]
        want = reference.crossover_batch(t["archive"].clone(), t["ia"].clone(), t["ib"].clone(), t["split"].clone(),
                                         t["w"].clone(), method=method)

        def call():
            return mk.crossover_batch(t["archive"], t["ia"], t["ib"], t["split"], t["w"], method=method,
                                      out=t["out"], backend=backend)

        if clash:
            e = expect_contract_error(call, ["out"], snapshot(raw))
            assert isinstance(e, ValueError), f"out over {clash}: {type(e).__name__}: {e}"
        else:
            close(call(), want, *crossover_tolerance(dtype, False))

    check()


# ---------------------------------------------------------------------------
# Niche statistics.
# ---------------------------------------------------------------------------

SCORE_DTYPES = (torch.bool, torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64)
NICHE_OPS = ("fitness", "fitness_child", "attraction_matrix", "attraction_row", "niche_stats_matrix",
             "niche_stats_row", "replace_index")


def score_values(dtype, seed, negative_zero=False):
    """0/1 for bool and uint8; k/8 in [0, 3] (scores above 1 are valid) otherwise,
    -0.0 among them when asked (it is >= 0)."""
    def values(shape):
        if dtype in (torch.bool, torch.uint8):
            return grid(shape, torch.float64, seed, 0, 1, 1).to(dtype)
        t = grid(shape, torch.float64, seed, 0, 24, 8)
        if negative_zero:
            t = torch.where(t == 0, torch.tensor(-0.0, dtype=torch.float64), t)
        return t.to(dtype)

    return values


@st.composite
def niche_cases(draw, small=False, ops=NICHE_OPS, nonempty=False):
    """A valid call of a niche op: S of any score dtype and layout, capacity None or
    real >= 0 of any dtype, alpha, eps, parent, child."""
    op = draw(st.sampled_from(ops))
    dtype = draw(st.sampled_from(SCORE_DTYPES))
    needs_rows = op != "fitness" or nonempty
    rows = draw(st.integers(1 if needs_rows else 0, 4 if small else 6))
    cols = draw(st.integers(1 if nonempty else 0, 6 if small else 12))
    neg_zero = draw(st.integers(0, 4)) == 0
    S = laid_out(score_values(dtype, draw(SEEDS), neg_zero), (rows, cols), draw(st.sampled_from(LAYOUTS)))
    if draw(st.integers(0, 5)) == 0 and rows > 0:  # rows of a larger matrix: used as they are
        big = laid_out(score_values(dtype, draw(SEEDS), neg_zero), (2 * rows, cols), "contiguous")
        S = big[::2]
    capacity = None
    if draw(st.booleans()):
        cap_dtype, cap_seed = draw(st.sampled_from((torch.float64, torch.float32, torch.int64))), draw(SEEDS)
        hi, denom = (24, 8) if cap_dtype.is_floating_point else (3, 1)  # k/8 in [0, 3] (0..3 for int64)
        capacity = laid_out(lambda s: grid(s, torch.float64, cap_seed, 0, hi, denom).to(cap_dtype),
                            (cols,), draw(st.sampled_from(("contiguous", "strided"))))
    child = None
    if op in ("fitness_child", "replace_index"):
        child = laid_out(score_values(dtype, draw(SEEDS), neg_zero), (cols,),
                         draw(st.sampled_from(("contiguous", "strided", "offset"))))
    return dict(op=op, S=S, capacity=capacity, child=child,
                alpha=draw(st.one_of(st.sampled_from([0, 1, 1.0, 0.5, 2.0, -1.0]), st.floats(-2, 3))),
                eps=draw(st.one_of(st.just(0.0), st.floats(0, 2))),
                parent=draw(st.integers(0, rows - 1)) if rows > 0 else 0)


def niche_call(case, backend_, **overrides):
    c = {"backend": backend_, **case, **overrides}
    common = dict(alpha=c["alpha"], capacity=c["capacity"], eps=c["eps"], backend=c["backend"])
    op, S = c["op"], c["S"]
    return {
        "fitness": lambda: mk.fitness(S, **common),
        "fitness_child": lambda: mk.fitness(S, child=c["child"], **common),
        "attraction_matrix": lambda: mk.attraction(S, **common),
        "attraction_row": lambda: mk.attraction(S, parent=c["parent"], **common),
        "niche_stats_matrix": lambda: mk.niche_stats(S, **common),
        "niche_stats_row": lambda: mk.niche_stats(S, parent=c["parent"], **common),
        "replace_index": lambda: mk.replace_index(S, c["child"], **common),
    }[op]


def niche_tolerance(S):
    return (1e-12, 1e-12) if S.dtype == torch.float64 else (2e-5, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_niche_ops_match_reference(backend):
    """Any valid call (scores >= 0, above 1 and -0.0 included) is accepted, reads S,
    child and capacity only, and matches the reference; replace_index picks a row
    of lowest fitness (ties by rounding may go either way), -1 for the child."""

    @budget(100, backend)
    @given(case=niche_cases(small=backend == "triton"))
    @example(case=dict(op="fitness", S=torch.zeros(0, 22)[:, ::2], capacity=None, child=None, alpha=1.0, eps=0.0,
                       parent=0))  # no rows, and a D with gaps (a layout that is copied when S has elements)
    def check(case):
        S, op = case["S"], case["op"]
        mode = "none" if op.startswith("fitness") or op == "replace_index" else (
            "row" if op.endswith("row") else "matrix")
        z, fit, att = reference.niche_stats(S.contiguous(), alpha=float(case["alpha"]), capacity=case["capacity"],
                                            eps=float(case["eps"]), parent=case["parent"] if mode == "row" else None,
                                            mode=mode, child=case["child"])
        snap = snapshot(S, case["capacity"], case["child"])
        got = niche_call(case, backend)()
        assert_unchanged(snap, "an input of a niche op")
        tol = niche_tolerance(S)
        out_dtype = torch.float64 if S.dtype == torch.float64 else torch.float32
        if op == "replace_index":
            full = mk.fitness(S, child=case["child"], alpha=case["alpha"], capacity=case["capacity"],
                              eps=case["eps"], backend=backend)
            row = full.numel() - 1 if got == -1 else got
            assert isinstance(got, int) and -1 <= got < S.shape[0]
            assert float(full[row]) <= float(full.min()) + tol[1] + tol[0] * abs(float(full.min())), (got, full)
            close(full, fit, *tol, msg="fitness with the child")
            return
        if op.startswith("niche_stats"):
            assert isinstance(got, mk.NicheStats)
            for name, g, w in (("z", got.z, z), ("fitness", got.fitness, fit), ("attraction", got.attraction, att)):
                assert g.dtype == out_dtype, name
                close(g, w, *tol, msg=name)
            return
        want = fit if op.startswith("fitness") else att
        assert got.dtype == out_dtype and got.shape == want.shape
        close(got, want, *tol, msg=op)

    check()


INT64_NICHES = [  # int64 range (issue 13): a float argument given an int too large for a float
    ("alpha", lambda c: 2**2000, NICHE_OPS), ("eps", lambda c: 2**2000, NICHE_OPS),
]
ROW_OPS = ("attraction_row", "niche_stats_row")
CHILD_OPS = ("fitness_child", "replace_index")


def _at(t, value, i, j=None):
    t = t.clone()
    if j is None:
        t[i] = value
    else:
        t[i, j] = value
    return t


BAD_NICHES = [  # (argument, function case -> bad value, the ops it applies to)
    ("S", lambda c: None, NICHE_OPS), ("S", lambda c: [[0.5]], NICHE_OPS),
    ("S", lambda c: c["S"].to(torch.int32), NICHE_OPS), ("S", lambda c: c["S"].to(torch.complex64), NICHE_OPS),
    ("S", lambda c: c["S"][0], NICHE_OPS), ("S", lambda c: c["S"][None], NICHE_OPS),
    ("S", lambda c: _at(c["S"].double(), math.nan, -1, -1), NICHE_OPS),
    ("S", lambda c: _at(c["S"].float(), math.inf, 0, 0), NICHE_OPS),
    ("S", lambda c: _at(c["S"].to(torch.uint8), 2, -1, 0), NICHE_OPS),
    ("alpha", lambda c: math.nan, NICHE_OPS), ("alpha", lambda c: math.inf, NICHE_OPS),
    ("alpha", lambda c: None, NICHE_OPS), ("alpha", lambda c: "1", NICHE_OPS), ("alpha", lambda c: True, NICHE_OPS),
    ("alpha", lambda c: 1j, NICHE_OPS),
    ("eps", lambda c: -1e-3, NICHE_OPS), ("eps", lambda c: math.nan, NICHE_OPS), ("eps", lambda c: None, NICHE_OPS),
    ("eps", lambda c: True, NICHE_OPS),
    ("capacity", lambda c: "x", NICHE_OPS), ("capacity", lambda c: [1.0] * c["S"].shape[1], NICHE_OPS),
    ("capacity", lambda c: torch.ones(c["S"].shape[1] + 1, dtype=torch.float64), NICHE_OPS),
    ("capacity", lambda c: torch.ones(c["S"].shape[1], dtype=torch.bool), NICHE_OPS),
    ("capacity", lambda c: torch.ones(c["S"].shape[1], dtype=torch.complex64), NICHE_OPS),
    ("capacity", lambda c: _at(torch.ones(c["S"].shape[1], dtype=torch.float64), -0.5, -1), NICHE_OPS),
    ("capacity", lambda c: _at(torch.ones(c["S"].shape[1], dtype=torch.float64), math.nan, 0), NICHE_OPS),
    ("parent", lambda c: -1, ROW_OPS), ("parent", lambda c: c["S"].shape[0], ROW_OPS),
    ("parent", lambda c: 2**70, ROW_OPS), ("parent", lambda c: 1.5, ROW_OPS), ("parent", lambda c: True, ROW_OPS),
    ("parent", lambda c: "0", ROW_OPS), ("parent", lambda c: torch.tensor(0.5), ROW_OPS),
    ("child", lambda c: None, ("replace_index",)), ("child", lambda c: "x", CHILD_OPS),
    ("child", lambda c: c["child"].to(torch.int32), CHILD_OPS),
    ("child", lambda c: torch.zeros(c["S"].shape[1] + 1, dtype=c["S"].dtype), CHILD_OPS),
    ("child", lambda c: _at(c["child"].double(), math.nan, 0), CHILD_OPS),
    ("child", lambda c: _at(c["child"].to(torch.uint8), 3, -1), CHILD_OPS),
    ("backend", lambda c: "gpu", NICHE_OPS),
] + INT64_NICHES

def as_scores(t, dtype):
    """t's scores in dtype (0/1 for bool and uint8)."""
    return (t != 0).to(dtype) if dtype in (torch.bool, torch.uint8) else t.to(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arg,make,ops", BAD_NICHES, ids=[f"{e[0]}-{i}" for i, e in enumerate(BAD_NICHES)])
def test_niche_ops_reject_bad_arguments(arg, make, ops, backend):
    """A bad argument (non-finite scores and uint8 scores other than 0/1 included) is
    a TypeError/ValueError/IndexError naming it (or its entry), whichever op it goes
    to; inputs untouched."""

    @budget(5)
    @given(case=niche_cases(small=True, ops=ops, nonempty=True))
    def check(case):
        S, bad = case["S"], make(case)
        over = {arg: bad}
        # A bad value in S (or the child) of another dtype: the other follows, so that
        # only the value is wrong.
        if arg == "child" and isinstance(bad, torch.Tensor) and bad.dtype in SCORE_DTYPES and bad.dtype != S.dtype:
            over["S"] = as_scores(S, bad.dtype)
        if arg == "S" and isinstance(bad, torch.Tensor) and bad.dtype in SCORE_DTYPES and case["child"] is not None:
            over["child"] = as_scores(case["child"], bad.dtype)
        snap = snapshot(*over.values(), S, case["capacity"], case["child"])
        expect_contract_error(niche_call(case, backend, **over), [arg], snap)

    check()


@pytest.mark.parametrize("backend", BACKENDS)
def test_negative_scores_are_refused(backend):
    # negative scores (issue 13)
    """A score < 0 in S (or in the child) is a ValueError naming an entry that is
    negative, with its value: "S[i, j] = v: scores must be >= 0 ..." (any float
    dtype, any layout, any op)."""

    @budget(30, backend)
    @given(case=niche_cases(small=True), data=st.data())
    def check(case, data):
        S, child = case["S"], case["child"]
        hypothesis.assume(S.dtype.is_floating_point and S.numel() > 0)
        in_child = child is not None and data.draw(st.booleans())
        target = (child if in_child else S).contiguous().clone()
        flat = target.view(-1)
        for _ in range(data.draw(st.integers(1, 3))):
            pos = data.draw(st.integers(0, flat.numel() - 1))
            flat[pos] = -data.draw(st.sampled_from([0.5, 0.125, 1.0, 2.0**-10, 3.0]))
        over = {"child": target} if in_child else {"S": target}
        snap = snapshot(target, S, case["capacity"], child)
        e = expect_contract_error(niche_call(case, backend, **over), ["child" if in_child else "S"], snap)
        assert isinstance(e, ValueError), f"{type(e).__name__}: {e}"
        pattern = r"child\[(\d+)\] = (\S+):" if in_child else r"S\[(\d+), (\d+)\] = (\S+):"
        m = re.search(pattern, str(e))
        assert m, f"the message does not name an entry: {e}"
        *index, value = m.groups()
        entry = target[tuple(int(i) for i in index)]
        assert float(entry) < 0 and float(value) == float(entry), f"{e} (the entry holds {float(entry)})"

    check()


# ---------------------------------------------------------------------------
# sample_scores.
# ---------------------------------------------------------------------------

LOGITS_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TARGET_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8)


@st.composite
def score_cases(draw, small=False, at_least_one=False):
    """A valid sample_scores call: logits [B, V] or [B, T, V] of any layout (special
    values sometimes), integer targets of any dtype with ignored entries, a bool or
    integer mask, kind and reduce, out None or a float (or 0/1) vector written at
    out_index."""
    dtype = draw(st.sampled_from(LOGITS_DTYPES))
    three_d = draw(st.booleans())
    batch = draw(st.integers(1 if at_least_one else 0, 4 if small else 6))
    tokens = draw(st.integers(1 if at_least_one else 0, 3 if small else 5)) if three_d else 1
    vocab = draw(st.integers(1, 6 if small else 12))
    shape = (batch, tokens, vocab) if three_d else (batch, vocab)
    specials = draw(st.integers(0, 3)) == 0
    seed = draw(SEEDS)

    def values(s):
        t = grid(s, torch.float32, seed, -16, 16, 4)  # many ties
        if specials and t.numel() > 0:
            g = torch.Generator().manual_seed(seed + 1)
            pick = torch.randint(0, 6, t.shape, generator=g)
            t = torch.where(pick == 0, torch.tensor(-math.inf), t)
            t = torch.where(pick == 1, torch.tensor(math.inf), t) if draw(st.booleans()) else t
            t = torch.where(pick == 2, torch.tensor(math.nan), t) if draw(st.booleans()) else t
        return t.to(dtype)

    layout = draw(st.sampled_from(LAYOUTS + ("batch_major",)))
    if layout == "batch_major" and three_d:  # [T, B, V] memory seen as [B, T, V]
        logits = values((tokens, batch, vocab)).transpose(0, 1)
    elif layout == "batch_major":
        logits = values((batch, vocab + 1))[:, 1:]  # rows of a wider tensor
    else:
        logits = laid_out(values, shape, layout)
    tdtype = draw(st.sampled_from(TARGET_DTYPES))
    ignore_index = draw(st.one_of(st.just(-100), st.integers(0, vocab + 2))) if tdtype != torch.uint8 else draw(
        st.integers(0, 255))
    g = torch.Generator().manual_seed(draw(SEEDS))
    target = torch.randint(0, vocab, shape[:-1], generator=g)
    target = torch.where(torch.rand(shape[:-1], generator=g) < 0.2, torch.tensor(ignore_index), target)
    target = laid_out(lambda s: target.to(tdtype), shape[:-1], draw(st.sampled_from(("contiguous", "strided"))))
    mask = None
    if draw(st.booleans()):
        mask_dtype = draw(st.sampled_from((torch.bool, torch.uint8, torch.int64)))
        mask = (torch.rand(shape[:-1], generator=g) < 0.7).to(mask_dtype)
    kind = draw(st.sampled_from(("correct", "logprob", "prob")))
    reduce = draw(st.sampled_from(("mean", "sum", "all") if kind == "correct" else ("mean", "sum")))
    zero_one = kind == "correct" and (reduce == "all" or not three_d)
    out, out_index = None, None
    if draw(st.booleans()):
        out_dtype = draw(st.sampled_from((torch.float32, torch.float64, torch.float16, torch.bfloat16)
                                         + ((torch.bool, torch.uint8) if zero_one else ())))
        length = batch + draw(st.integers(0, 3))
        out = laid_out(lambda s: torch.full(s, 1, dtype=out_dtype), (length,),
                       draw(st.sampled_from(("contiguous", "strided", "offset"))))
        if length != batch or draw(st.booleans()):
            index = torch.randperm(length, generator=g)[:batch]
            out_index = draw(st.sampled_from([lambda: index, lambda: index.to(torch.int32), lambda: index.tolist()]))()
    return dict(logits=logits, target=target, mask=mask, ignore_index=ignore_index, kind=kind, reduce=reduce,
                out=out, out_index=out_index)


def scores_call(case, backend_, **overrides):
    c = {"backend": backend_, **case, **overrides}
    return lambda: mk.sample_scores(c["logits"], c["target"], kind=c["kind"], mask=c["mask"],
                                    ignore_index=c["ignore_index"], reduce=c["reduce"], out=c["out"],
                                    out_index=c["out_index"], backend=c["backend"])


SCORE_TOL = {"correct": (1e-6, 1e-7), "logprob": (2e-5, 2e-5), "prob": (2e-5, 1e-7)}


@pytest.mark.parametrize("backend", BACKENDS)
def test_sample_scores_match_reference(backend):
    """Any valid call matches the reference (special values included), writes out
    only at out_index, and reads its inputs only."""

    @budget(100, backend)
    @given(case=score_cases(small=backend == "triton"))
    @example(case=dict(logits=torch.zeros(2, 0, 6)[..., ::2], target=torch.zeros(2, 0, dtype=torch.long), mask=None,
                       ignore_index=-100, kind="logprob", reduce="mean", out=None, out_index=None))  # T = 0, V gaps
    def check(case):
        want = reference.sample_scores(case["logits"].clone(), case["target"].long(), kind=case["kind"],
                                       mask=case["mask"], ignore_index=case["ignore_index"], reduce=case["reduce"])
        reads = snapshot(case["logits"], case["target"], case["mask"], case["out_index"])
        out = case["out"]
        before = None if out is None else out.clone()
        got = scores_call(case, backend)()
        assert_unchanged(reads, "an input of sample_scores")
        rtol, atol = SCORE_TOL[case["kind"]]
        if out is None:
            assert got.dtype == torch.float32 and got.shape == (case["logits"].shape[0],)
            close(got, want, rtol, atol)
            return
        assert got is out
        index = torch.arange(out.numel()) if case["out_index"] is None else torch.as_tensor(case["out_index"]).long()
        expected = before.clone()
        expected[index] = want.to(out.dtype)
        if out.dtype in (torch.float16, torch.bfloat16):
            rtol, atol = 1e-2, 1e-3
        close(got, expected, rtol, atol, msg=f"out {out.dtype}")

    check()


INT64_SCORES = [  # int64 range (issue 13)
    ("ignore_index", lambda c: 2**70), ("ignore_index", lambda c: -(2**70)),
    ("out_index", lambda c: [2**70] * c["logits"].shape[0]),
]
BAD_SCORES = [
    ("logits", lambda c: None), ("logits", lambda c: c["logits"].double()), ("logits", lambda c: c["logits"].long()),
    ("logits", lambda c: c["logits"].reshape(-1)), ("logits", lambda c: c["logits"].reshape(1, 1, *c["logits"].shape)),
    ("logits", lambda c: c["logits"][..., :0]),
    ("target", lambda c: None), ("target", lambda c: c["target"].float()), ("target", lambda c: c["target"].bool()),
    ("target", lambda c: c["target"][:-1]),
    ("target", lambda c: torch.full_like(c["target"], c["logits"].shape[-1])),
    ("target", lambda c: torch.full_like(c["target"], -1)),
    ("mask", lambda c: "x"), ("mask", lambda c: torch.ones(c["target"].shape)),
    ("mask", lambda c: torch.ones(c["target"][:-1].shape, dtype=torch.bool)),
    ("kind", lambda c: "top5"), ("kind", lambda c: None),
    ("reduce", lambda c: "max"), ("reduce", lambda c: None),
    ("ignore_index", lambda c: 1.5), ("ignore_index", lambda c: None), ("ignore_index", lambda c: True),
    ("ignore_index", lambda c: "0"),
    ("out", lambda c: "x"), ("out", lambda c: torch.zeros(c["out"].shape, dtype=torch.int64)),
    ("out", lambda c: torch.zeros(c["out"].shape + (1,))),
    ("out_index", lambda c: "ab"), ("out_index", lambda c: [0.0] * c["logits"].shape[0]),
    ("out_index", lambda c: list(range(c["logits"].shape[0] + 1))),
    ("out_index", lambda c: [c["out"].shape[0]] * c["logits"].shape[0]),
    ("out_index", lambda c: [-1] * c["logits"].shape[0]),
    ("out_index", lambda c: torch.zeros(c["logits"].shape[0], 1, dtype=torch.int64)),
    ("backend", lambda c: "gpu"),
] + INT64_SCORES


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arg,make", BAD_SCORES, ids=[f"{e[0]}-{i}" for i, e in enumerate(BAD_SCORES)])
def test_sample_scores_reject_bad_arguments(arg, make, backend):
    """A bad argument (targets or out_index outside their range included) is a
    TypeError/ValueError/IndexError naming it; out and the inputs are untouched."""

    @budget(3)
    @given(case=score_cases(small=True, at_least_one=True))
    def check(case):
        batch = case["logits"].shape[0]
        case["mask"], case["ignore_index"] = None, -100
        case["target"] = case["target"].long().clamp(0, case["logits"].shape[-1] - 1)
        case["out"] = torch.full((batch + 2,), 7.0)
        case["out_index"] = torch.randperm(batch + 2)[:batch]
        bad = make(case)
        snap = snapshot(*(case[k] for k in ("logits", "target", "out", "out_index")), bad)
        expect_contract_error(scores_call(case, backend, **{arg: bad}), [arg], snap)

    check()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", ["out_without_index_wrong_length", "index_without_out", "bool_out_for_logprob",
                                 "all_needs_correct"])
def test_sample_scores_reject_bad_combinations(bad, backend):
    """Arguments valid alone but not together: the message names one of them."""
    logits, target = grid((3, 2, 4), torch.float32, 5), torch.zeros(3, 2, dtype=torch.int64)
    out = torch.full((5,), 7.0)
    calls = {
        "out_without_index_wrong_length": (dict(out=out), ["out"]),
        "index_without_out": (dict(out_index=[0, 1, 2]), ["out_index", "out"]),
        "bool_out_for_logprob": (dict(kind="logprob", out=torch.zeros(3, dtype=torch.bool)), ["out"]),
        "all_needs_correct": (dict(kind="logprob", reduce="all"), ["reduce", "kind"]),
    }
    kwargs, names = calls[bad]
    snap = snapshot(logits, target, *kwargs.values())
    expect_contract_error(lambda: mk.sample_scores(logits, target, backend=backend, **kwargs), names, snap)


@pytest.mark.parametrize("backend", BACKENDS)
def test_aliasing_sample_scores(backend):
    # aliasing contract (issue 13)
    """out may not overlap logits, target, mask or out_index: a ValueError naming out,
    with nothing written; without an overlap the call matches the reference."""

    @budget(100, backend)
    @given(data=st.data())
    def check(data):
        draw = data.draw
        batch, tokens, vocab = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 5))
        dtype = draw(st.sampled_from(LOGITS_DTYPES))
        out_dtype = draw(st.sampled_from((torch.float32, torch.float64, torch.float16)))
        with_mask, with_index = draw(st.booleans()), draw(st.booleans())
        length = batch + (draw(st.integers(0, 2)) if with_index else 0)
        shapes = dict(logits=((batch, tokens, vocab), dtype), target=((batch, tokens), torch.int64))
        if with_mask:
            shapes["mask"] = ((batch, tokens), torch.bool)
        if with_index:
            shapes["out_index"] = ((batch,), torch.int64)
        reads = [(name, _nbytes(*shape)) for name, shape in shapes.items()]
        size, offsets = draw(arena_layout(reads, [("out", _nbytes((length,), out_dtype))]))
        raw = torch.zeros(size, dtype=torch.uint8)
        t = {name: _carve(raw, offsets[name], *shape) for name, shape in shapes.items()}
        t["logits"].copy_(grid((batch, tokens, vocab), torch.float32, draw(SEEDS), -16, 16, 4))
        t["target"].copy_(torch.randint(0, vocab, (batch, tokens)))
        if with_mask:
            t["mask"].copy_(torch.rand(batch, tokens) < 0.7)
        if with_index:
            t["out_index"].copy_(torch.randperm(length)[:batch])
        out = _carve(raw, offsets["out"], (length,), out_dtype)
        kind = draw(st.sampled_from(("correct", "logprob")))
        o0, o1 = offsets["out"], offsets["out"] + _nbytes((length,), out_dtype)
        clash = [name for name, nb in reads if _meets(o0, o1, offsets[name], offsets[name] + nb)]
        want = reference.sample_scores(t["logits"].clone(), t["target"].clone(), kind=kind,
                                       mask=t["mask"].clone() if with_mask else None)

        def call():
            return mk.sample_scores(t["logits"], t["target"], kind=kind, mask=t.get("mask"), out=out,
                                    out_index=t.get("out_index"), backend=backend)

        if clash:
            e = expect_contract_error(call, ["out"], snapshot(raw))
            assert isinstance(e, ValueError), f"out over {clash}: {type(e).__name__}: {e}"
            return
        before = out.clone()
        got = call()
        index = t["out_index"] if with_index else torch.arange(batch)
        before[index] = want.to(out_dtype)
        rtol, atol = SCORE_TOL[kind] if out_dtype != torch.float16 else (1e-2, 1e-3)
        close(got, before, rtol, atol)

    check()


@pytest.mark.parametrize("backend", BACKENDS)
def test_aliasing_sample_scores_out_with_repeated_memory(backend):
    # aliasing contract (issue 13)
    """An out whose distinct elements share memory (an expanded vector) cannot be
    written element by element: a ValueError naming out, nothing written (torch's
    own ops refuse such outputs too)."""
    logits, target = grid((2, 3), torch.float32, 6), torch.tensor([0, 1])
    base = torch.full((1,), 7.0)
    out = base.expand(5)
    expect_contract_error(lambda: mk.sample_scores(logits, target, out=out, out_index=[0, 3], backend=backend),
                          ["out"], snapshot(base, logits, target))


# ---------------------------------------------------------------------------
# Every op: nothing to compute is no excuse.
# ---------------------------------------------------------------------------

EMPTY_CALLS = {
    "split_interpolate": lambda **kw: mk.split_interpolate(torch.empty(0), torch.empty(0), 0, kw.pop("w", 0.5), **kw),
    "split_interpolate_list": lambda **kw: mk.split_interpolate([torch.empty(0)], [torch.empty(0)], 0,
                                                                kw.pop("w", 0.5), **kw),
    "crossover_batch_k0": lambda **kw: mk.crossover_batch(torch.ones(2, 3), [], [], [], [], **kw),
    "crossover_batch_n0": lambda **kw: mk.crossover_batch(torch.ones(2, 0), [0], [1], [0], [kw.pop("w", 0.5)], **kw),
    "fitness_n0": lambda **kw: mk.fitness(torch.ones(0, 3), **kw),
    "fitness_d0": lambda **kw: mk.fitness(torch.ones(2, 0), **kw),
    "sample_scores_b0": lambda **kw: mk.sample_scores(torch.ones(0, 3), torch.zeros(0, dtype=torch.long), **kw),
}
EMPTY_BAD = {  # op -> the bad keyword arguments it takes
    "split_interpolate": [("backend", "gpu"), ("w", math.nan), ("method", "cubic"), ("seed", -1)],
    "split_interpolate_list": [("backend", "gpu"), ("noise_std", -1.0)],
    "crossover_batch_k0": [("backend", "gpu"), ("method", "cubic"), ("seed", -1)],
    "crossover_batch_n0": [("backend", "gpu"), ("w", math.nan)],
    "fitness_n0": [("backend", "gpu"), ("alpha", math.nan)],
    "fitness_d0": [("backend", "gpu"), ("eps", -1.0)],
    "sample_scores_b0": [("backend", "gpu"), ("kind", "top5"), ("ignore_index", 1.5)],
}


@pytest.mark.parametrize("op,arg,value", [(op, arg, value) for op, bad in EMPTY_BAD.items() for arg, value in bad],
                         ids=lambda x: str(x))
def test_bad_arguments_refused_without_elements(op, arg, value):
    """A call with nothing to compute (no elements, no children, no samples) still
    checks every argument: a bad one is refused, as it would be with data."""
    expect_contract_error(lambda: EMPTY_CALLS[op](**{arg: value}), [arg], [])
