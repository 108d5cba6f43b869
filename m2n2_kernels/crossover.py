"""Split-point crossover: the Python API, and every check of the op family.

Two layers of checks, each written once:
- `check_op_*` check the ops' canonical arguments (what torch.ops.m2n2.* take: lists
  of contiguous tensors, checked scalars); they guard the Triton kernels for direct
  torch.ops callers (ops.py) and run on every call of the API. The C++ kernels
  check the same in csrc/crossover_args.h, in the same words.
- the public functions turn what a user passes (a tensor or a list, any layout,
  Python numbers) into that canonical form, with errors that name the argument.
Everything is checked before any output is touched.
"""
import torch

from . import _backend, _checks, reference

METHODS = ("lerp", "slerp")
OMEGAS = ("global", "segment")


# ---------------------------------------------------------------------------
# The ops' canonical arguments.
# ---------------------------------------------------------------------------


def check_op_lists(a, b, out=None, *, is_list=True, contiguous=True):
    """a, b (and out) hold as many tensors; at each position a[i], b[i] (and out[i])
    share dtype (floating), shape and device, one device for all. Returns the total
    element count."""
    if len(a) == 0:
        raise ValueError("a must hold at least one tensor")
    if len(a) != len(b):
        raise ValueError(f"a and b must hold as many tensors, got {len(a)} and {len(b)}")
    if out is not None and len(out) != len(a):
        raise ValueError(f"out must hold as many tensors as a, got {len(out)} and {len(a)}")
    _checks.check_float_tensor(a[0], "a" + _checks.where(0, is_list))
    device = a[0].device
    total = 0
    Tensor, floats = torch.Tensor, _checks.FLOAT_DTYPES
    for i, x in enumerate(a):
        # A fast test per position; the messages are built only when it fails.
        y = b[i]
        o = y if out is None else out[i]
        ok = (
            isinstance(x, Tensor) and isinstance(y, Tensor) and isinstance(o, Tensor) and x.dtype in floats
            and y.dtype == x.dtype and o.dtype == x.dtype and x.device == device and y.device == device
            and o.device == device and y.shape == x.shape and o.shape == x.shape
            and (not contiguous or (x.is_contiguous() and y.is_contiguous() and o.is_contiguous()))
        )
        if not ok:
            _explain_bad_entry(a, b, out, i, device, is_list, contiguous)
        total += x.numel()
    return total


def _explain_bad_entry(a, b, out, i, device, is_list, contiguous):
    """The checks of list position i, in order, each with its message."""
    x, at = a[i], _checks.where(i, is_list)
    _checks.check_float_tensor(x, "a" + at)
    _checks.check_float_tensor(b[i], "b" + at)
    if x.device != device:
        raise ValueError(f"a{at} must be on {device} (the device of a{_checks.where(0, is_list)}), got {x.device}")
    _checks.check_like(b[i], "b" + at, dtype=x.dtype, shape=x.shape, device=device, of=f" (as a{at})")
    if out is not None:
        _checks.check_like(out[i], "out" + at, dtype=x.dtype, shape=x.shape, device=device, of=f" (as a{at})")
    if contiguous:
        for t, name in ((x, "a"), (b[i], "b")) + (((out[i], "out"),) if out is not None else ()):
            if not t.is_contiguous():
                raise ValueError(f"{name}{at} must be contiguous")
    raise AssertionError(f"check_op_lists: list position {i} failed a check that no message explains")


def check_op_aliasing(a, b, out, role, *, is_list=True):
    """The written tensors share memory with no other tensor of the call, except that
    out[i] may be exactly a[i] or b[i] (the kernels read both before writing element
    by element). role: which list out is ('a' or 'b' in place, else 'none'), so that
    a message names what the caller passed."""
    if torch.compiler.is_compiling():
        return  # fake tensors have no storage to compare

    def reads(ts, name):
        return [(t, name + _checks.where(i, is_list)) for i, (t, o) in enumerate(zip(ts, out))
                if not _checks.same_tensor(t, o)]

    written = [(o, ("out" if role == "none" else role) + _checks.where(i, is_list)) for i, o in enumerate(out)]
    read = (reads(a, "a") if role != "a" else []) + (reads(b, "b") if role != "b" else [])
    _checks.check_disjoint(written, read)


def check_op_split(n, split, index_offset, *, piece=False):
    """split and index_offset for n elements: (split, index_offset). The split may lie
    past the end when they are one piece of a longer vector: index_offset > 0, or
    `piece` (interp_sums, or split_interpolate given the whole vector's sums)."""
    index_offset = _checks.as_int(index_offset, "index_offset")
    if index_offset < 0:
        raise ValueError(f"index_offset must be >= 0, got {index_offset}")
    if index_offset > 2**63 - n:  # the noise is keyed by global indices, int64 everywhere
        raise ValueError(f"index_offset must be <= 2**63 - {n} (global indices must fit in int64), got {index_offset}")
    split = _checks.as_int(split, "split")
    if split < 0 or (index_offset == 0 and not piece and split > n):
        raise ValueError(f"split must lie in [0, {n}] (the number of elements), got {split}")
    split = _checks.as_int64(split, "split")  # past the end of a piece of a longer vector
    return split, index_offset


def check_op_offsets(numels, index_offset, index_offsets):
    """index_offsets (when given): the global index of element 0 of each list entry,
    entries of numels[i] elements, for pieces of a longer vector that need not be
    adjacent (a rank's FSDP chunks of many parameters). One int >= 0 per entry, each
    entry's global range inside int64, the ranges of non-empty entries disjoint (any
    order). Returns them as a list of ints, or None."""
    if index_offsets is None:
        return None
    if _checks.as_int(index_offset, "index_offset") != 0:
        raise ValueError(f"index_offset must be 0 when index_offsets is given, got {index_offset}")
    offsets = list(index_offsets)
    if len(offsets) != len(numels):
        raise ValueError(f"index_offsets must hold one offset per tensor of a ({len(numels)}), got {len(offsets)}")
    for i, (o, m) in enumerate(zip(offsets, numels)):
        o = offsets[i] = _checks.as_int(o, f"index_offsets[{i}]")
        if o < 0:
            raise ValueError(f"index_offsets[{i}] must be >= 0, got {_checks.int_str(o)}")
        # The noise is keyed by global indices, int64 everywhere; an empty entry's
        # offset is an int64 too (the op takes it).
        if o > 2**63 - max(m, 1):
            raise ValueError(f"index_offsets[{i}] must be <= 2**63 - {max(m, 1)} (global indices must fit in int64), "
                             f"got {_checks.int_str(o)}")
    # Sorted by offset (ties by position), each non-empty range must end before the next begins.
    ranges = sorted((o, i) for i, (o, m) in enumerate(zip(offsets, numels)) if m > 0)
    for (o0, i0), (o1, i1) in zip(ranges, ranges[1:]):
        if o0 + numels[i0] > o1:
            raise ValueError(f"index_offsets must give disjoint global ranges: a[{i0}] covers [{o0}, "
                             f"{o0 + numels[i0]}) and a[{i1}] covers [{o1}, {o1 + numels[i1]})")
    return offsets


def check_op_sums(sums, device):
    """sums (when given): the slerp angle's totals, float64 [2, 3] on `device`."""
    if sums is not None:
        _checks.check_like(sums, "sums", dtype=torch.float64, shape=(2, 3), device=device, contiguous=True,
                           of=" (as interp_sums returns)")


def check_op_scalars(n, split, w, method, omega, noise_std, seed, index_offset, *, piece=False, numels=None,
                     index_offsets=None):
    """The scalars of split_interpolate, as the op takes them (seed as int64 bits).
    index_offsets (one per entry of numels elements) is checked by check_op_offsets;
    with it, the entries are pieces of a longer vector (any split in int64)."""
    offsets = check_op_offsets(numels, index_offset, index_offsets)
    split, index_offset = check_op_split(n, split, index_offset, piece=piece or offsets is not None)
    return (
        split,
        _checks.as_finite_float(w, "w"),
        _checks.choice(method, "method", METHODS),
        _checks.choice(omega, "omega", OMEGAS),
        _checks.as_finite_float(noise_std, "noise_std", min_value=0.0),
        _checks.as_seed(seed),
        index_offset,
    )


def check_op_batch(archive, ia, ib, split, w, out, method, omega):
    """crossover_batch_out's tensors: shapes, dtypes and devices (values are checked
    by the API, which may read them; a kernel must not wait for the device)."""
    _checks.check_float_tensor(archive, "archive")
    if archive.dim() != 2:
        raise ValueError(f"archive must be 2-D (P models x n parameters), got shape {_checks.shape_str(archive.shape)}")
    _checks.check_tensor(out, "out")
    k = out.shape[0] if out.dim() == 2 else -1
    _checks.check_like(out, "out", dtype=archive.dtype, shape=(k, archive.shape[1]), device=archive.device,
                       contiguous=True)
    for name, t, dtype in (("ia", ia, torch.int64), ("ib", ib, torch.int64), ("split", split, torch.int64),
                           ("w", w, torch.float64)):
        _checks.check_like(t, name, dtype=dtype, shape=(k,), device=archive.device, of=" (one per child)")
    if not archive.is_contiguous():
        raise ValueError("archive must be contiguous")
    _checks.check_disjoint(((out, "out"),), ((archive, "archive"), (ia, "ia"), (ib, "ib"), (split, "split"), (w, "w")))
    _checks.choice(method, "method", METHODS)
    _checks.choice(omega, "omega", OMEGAS)


# ---------------------------------------------------------------------------
# The public API.
# ---------------------------------------------------------------------------


def _as_list(x, name):
    if isinstance(x, torch.Tensor):
        return [x], False
    if isinstance(x, (list, tuple)):
        if not x:
            raise ValueError(f"{name} must not be an empty list")
        for i, t in enumerate(x):
            _checks.check_float_tensor(t, f"{name}[{i}]")
        return list(x), True
    raise TypeError(f"{name} must be a tensor or a list of tensors, got {type(x).__name__}")


def _parent_lists(a, b):
    """a and b as lists of matching tensors (any layout): (a_list, b_list, is_list, n)."""
    a_list, is_list = _as_list(a, "a")
    b_list, b_is_list = _as_list(b, "b")
    if b_is_list != is_list:
        raise TypeError("b must be a list exactly when a is a list")
    return a_list, b_list, is_list, check_op_lists(a_list, b_list, is_list=is_list, contiguous=False)


def _out_role(out_list, a_list, b_list, is_list):
    """'a' or 'b' when out is exactly that input (in place: the in-place op), else
    'none' (the out op, which also takes an out[i] that is exactly a[i] or b[i]; any
    other overlap is refused by check_op_aliasing)."""
    tags = set()
    for i, (o, x, y) in enumerate(zip(out_list, a_list, b_list)):
        if torch.compiler.is_compiling():  # fake tensors have no storage: identity decides
            tags.add("a" if o is x else ("b" if o is y else "none"))
            continue
        if o.numel() > 0:  # an empty out is never written
            tags.add("a" if _checks.same_tensor(o, x) else ("b" if _checks.same_tensor(o, y) else "none"))
    return tags.pop() if len(tags) == 1 else "none"


def _contiguous(ts):
    return [t if t.is_contiguous() else t.contiguous() for t in ts]


def _run(a_list, b_list, out_list, role, split, w, method, omega, noise_std, seed, stream, index_offset, sums, route,
         index_offsets):
    args = (split, w, method, omega, noise_std, seed, stream, index_offset)
    if route == "torch":
        child = reference.split_interpolate(
            a_list, b_list, split, w, method=method, omega=omega, noise_std=noise_std, seed=seed,
            stream=stream, index_offset=index_offset, sums=sums, index_offsets=index_offsets,
        )
        with torch.no_grad():
            for o, c in zip(out_list, child):
                o.copy_(c)
    elif route == "triton":
        from .triton import crossover as triton_crossover

        triton_crossover.split_interpolate_out(a_list, b_list, out_list, *args, sums, index_offsets)
    elif role == "a":
        torch.ops.m2n2.split_interpolate_(out_list, b_list, *args, True, sums, index_offsets)
    elif role == "b":
        torch.ops.m2n2.split_interpolate_(out_list, a_list, *args, False, sums, index_offsets)
    else:
        torch.ops.m2n2.split_interpolate_out(a_list, b_list, out_list, *args, sums, index_offsets)


def _as_stream(stream):
    """The Philox stream as the signed int64 the schemas take (same bits), checked as seed is."""
    stream = _checks.as_int(stream, "stream")
    if not 0 <= stream < 2**64:
        raise ValueError(f"stream must lie in [0, 2**64), got {_checks.int_str(stream)}")
    return stream - 2**64 if stream >= 2**63 else stream


def _canonical_offsets(index_offsets):
    """index_offsets as the API takes it (a sequence of ints or a 1-D integer CPU
    tensor) as a list of Python ints; their values are checked by check_op_offsets."""
    if index_offsets is None:
        return None
    if isinstance(index_offsets, torch.Tensor):
        t = index_offsets
        if t.dim() != 1 or t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise TypeError(f"index_offsets must be a 1-D integer tensor or a sequence of ints, got {t.dtype} of "
                            f"shape {_checks.shape_str(t.shape)}")
        if t.device.type != "cpu":  # reading it on a GPU would wait for the device
            raise ValueError(f"index_offsets must be on the CPU, got {t.device}")
        return t.tolist()
    if isinstance(index_offsets, (str, bytes)) or not hasattr(index_offsets, "__len__"):
        raise TypeError(f"index_offsets must be a sequence of ints (one per tensor of a), got "
                        f"{type(index_offsets).__name__}")
    return [_checks.as_int(o, f"index_offsets[{i}]") for i, o in enumerate(index_offsets)]


def split_interpolate(
    a,
    b,
    split,
    w,
    *,
    method="slerp",
    omega="global",
    noise_std=0.0,
    seed=0,
    out=None,
    backend=None,
    index_offset=0,
    index_offsets=None,
    stream=0,
    sums=None,
):
    """Child of parents `a` and `b` by split-point interpolation (docs/semantics.md).

    t_i = w for i < split, else 1 - w; `method` "lerp" or "slerp" (angle over the
    whole vectors for omega="global", per side of the split for "segment");
    optional fused mutation `noise_std` * N(0, 1) keyed by (seed, element index).
    `a` and `b` may be lists of tensors, taken in order as one long vector (one
    split over the whole model); the result is then a list. a[i] and b[i] share a
    dtype, which may change along the list (bf16 weights beside fp32 norms): each
    piece is computed in its own compute type and keeps its dtype. `out` may be a
    new tensor (list), or exactly `a` or `b` for an in-place update.
    `index_offset` is the global index of element 0, for a buffer that is one
    piece of a longer vector streamed in pieces: it moves the split and the noise,
    while the slerp angle is taken over the tensors given, unless `sums` gives the
    whole vector's (float64 [2, 3], the sum of interp_sums over its pieces): then
    each piece is written in one pass, and the pieces of a streamed or sharded merge
    are bit for bit the whole vector's child.
    `index_offsets` (one int per entry of `a`, instead of `index_offset`) gives each
    entry its own global offset: entries that are pieces of the global vector in any
    order, not adjacent (a rank's shard of many parameters). `stream` (in [0, 2**64))
    keys the noise with seed: crossover_batch's child k is stream k.
    """
    a_list, b_list, is_list, n = _parent_lists(a, b)
    index_offsets = _canonical_offsets(index_offsets)
    # Given the sums, the tensors are one piece of a longer vector (its split may lie
    # past their end even at index_offset 0).
    split, w, method, omega, noise_std, seed, index_offset = check_op_scalars(
        n, split, w, method, omega, noise_std, seed, index_offset, piece=sums is not None,
        numels=[t.numel() for t in a_list], index_offsets=index_offsets,
    )
    stream = _as_stream(stream)
    sums = _canonical_sums(sums, a_list[0].device)
    route = _backend.route(a_list[0].device, backend)
    if out is None:
        out_list = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in a_list]
        role = "none"
    else:
        out_list, out_is_list = _as_list(out, "out")
        if out_is_list != is_list:
            raise TypeError("out must be a list exactly when a is a list")
        check_op_lists(a_list, b_list, out_list, is_list=is_list, contiguous=False)
        for i, o in enumerate(out_list):
            if not o.is_contiguous():
                raise ValueError(f"out{_checks.where(i, is_list)} must be contiguous")
        role = _out_role(out_list, a_list, b_list, is_list)
        # On the C++ route the op checks a list in the same words, faster; but it sees
        # the copies of non-contiguous inputs, not the memory they alias.
        if not (is_list and route == "op" and all(t.is_contiguous() for t in (*a_list, *b_list))):
            check_op_aliasing(a_list, b_list, out_list, role, is_list=is_list)
    if n > 0:
        _run(
            _contiguous(a_list), _contiguous(b_list), out_list, role, split, w, method, omega,
            noise_std, seed, stream, index_offset, sums, route, index_offsets,
        )
    return out_list if is_list else out_list[0]


def _canonical_sums(sums, device):
    if sums is None:
        return None
    _checks.check_tensor(sums, "sums", (torch.float64,))
    if sums.numel() != 6:
        raise ValueError(f"sums must hold 6 numbers, shape (2, 3) (as interp_sums returns), got shape "
                         f"{_checks.shape_str(sums.shape)}")
    _checks.check_like(sums, "sums", device=device, of=" (the device of a)")
    return sums.reshape(2, 3).contiguous()


def interp_sums(a, b, split, *, index_offset=0, index_offsets=None, backend=None):
    """The six sums of the slerp angle over `a`, `b` (tensors, or lists forming one
    vector whose element 0 has global index `index_offset`): float64 [2, 3], row s =
    (dot, |a|^2, |b|^2) over the elements on side s of the global `split` (side 0:
    global index < split). Sums of pieces add up to the whole vector's (up to fp64
    rounding): phase 1 of a slerp streamed or sharded in pieces; phase 2 passes the
    totals to split_interpolate(..., sums=) (with torch.distributed: one all_reduce
    of these six numbers in between). `index_offsets` (one int per entry, instead of
    `index_offset`): each entry's own global offset (pieces in any order, not
    adjacent). Accumulated in fp64, on a's device."""
    a_list, b_list, is_list, n = _parent_lists(a, b)
    index_offsets = check_op_offsets([t.numel() for t in a_list], index_offset, _canonical_offsets(index_offsets))
    split, index_offset = check_op_split(n, split, index_offset, piece=True)
    route = _backend.route(a_list[0].device, backend)
    a_list, b_list = _contiguous(a_list), _contiguous(b_list)
    if route == "torch":
        return reference.interp_sums(a_list, b_list, split, index_offset=index_offset, index_offsets=index_offsets)
    if route == "triton":
        from .triton import crossover as triton_crossover

        return triton_crossover.interp_sums(a_list, b_list, split, index_offset, index_offsets)
    return torch.ops.m2n2.interp_sums(a_list, b_list, split, index_offset, index_offsets)


def split_interpolate_(a, b, split, w, **kwargs):
    """In-place `split_interpolate` into `a` (a tensor, or a list of tensors); returns `a`."""
    if "out" in kwargs:
        raise TypeError("split_interpolate_ writes into a; use split_interpolate(out=...) instead")
    a_list, is_list = _as_list(a, "a")
    for i, t in enumerate(a_list):
        if not t.is_contiguous():
            raise ValueError(f"a{_checks.where(i, is_list)} must be contiguous to be updated in place")
    split_interpolate(a, b, split, w, out=a, **kwargs)
    return a


def _index_vector(v, name, device, error):
    t = v if isinstance(v, torch.Tensor) else _checks.as_tensor(v, name, error)
    if t.dim() != 1 or t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must be a 1-D integer tensor or sequence, got {t.dtype} of shape {_checks.shape_str(t.shape)}")
    return t.to(device=device, dtype=torch.int64).contiguous()


def crossover_batch(
    archive,
    ia,
    ib,
    split,
    w,
    *,
    method="slerp",
    omega="global",
    noise_std=0.0,
    seed=0,
    out=None,
    backend=None,
):
    """K children in one call: child k from rows ia[k] and ib[k] of the P x n
    `archive`, with its own split[k] and w[k]; its noise is keyed by (seed, k, i).
    Returns (or fills) a K x n tensor."""
    _checks.check_float_tensor(archive, "archive")
    if archive.dim() != 2:
        raise ValueError(f"archive must be 2-D (P models x n parameters), got shape {_checks.shape_str(archive.shape)}")
    p, n = archive.shape
    device = archive.device
    ia, ib, split = (_index_vector(v, name, device, error)
                     for v, name, error in ((ia, "ia", IndexError), (ib, "ib", IndexError), (split, "split", ValueError)))
    wt = w if isinstance(w, torch.Tensor) else _checks.as_tensor(w, "w", ValueError, dtype=torch.float64)
    if wt.dim() != 1 or wt.dtype.is_complex or wt.dtype == torch.bool:
        raise TypeError(f"w must be a 1-D real tensor or sequence, got {wt.dtype} of shape {_checks.shape_str(wt.shape)}")
    wt = wt.to(device=device, dtype=torch.float64).contiguous()
    k = ia.numel()
    for name, t in (("ib", ib), ("split", split), ("w", wt)):
        if t.numel() != k:
            raise ValueError(f"{name} must have length {k} (the length of ia), got {t.numel()}")
    method = _checks.choice(method, "method", METHODS)
    omega = _checks.choice(omega, "omega", OMEGAS)
    noise_std = _checks.as_finite_float(noise_std, "noise_std", min_value=0.0)
    seed = _checks.as_seed(seed)
    if k > 0 and not torch.compiler.is_compiling():  # values: one host sync on a GPU
        for name, t in (("ia", ia), ("ib", ib)):
            lo, hi = int(t.min()), int(t.max())
            if lo < 0 or hi >= p:
                bad = lo if lo < 0 else hi
                raise IndexError(f"{name} must lie in [0, {p}) (rows of archive), got {bad}")
        lo, hi = int(split.min()), int(split.max())
        if lo < 0 or hi > n:
            raise ValueError(f"split must lie in [0, {n}] (the number of elements), got {lo if lo < 0 else hi}")
        if not bool(torch.isfinite(wt).all()):
            raise ValueError("w must be finite")
    if out is None:
        out = torch.empty((k, n), dtype=archive.dtype, device=device)
    else:
        _checks.check_like(out, "out", dtype=archive.dtype, shape=(k, n), device=device, contiguous=True)
        _checks.check_disjoint(((out, "out"),), ((archive, "archive"), (ia, "ia"), (ib, "ib"), (split, "split"),
                                                 (wt, "w")))
    route = _backend.route(device, backend)
    if k == 0 or n == 0:
        return out
    archive = archive if archive.is_contiguous() else archive.contiguous()
    args = (archive, ia, ib, split, wt, out, method, omega, noise_std, seed)
    if route == "torch":
        with torch.no_grad():
            out.copy_(reference.crossover_batch(
                archive, ia, ib, split, wt, method=method, omega=omega, noise_std=noise_std, seed=seed,
            ))
    elif route == "triton":
        from .triton import crossover as triton_crossover

        triton_crossover.crossover_batch_out(*args)
    else:
        torch.ops.m2n2.crossover_batch_out(*args)
    return out
