"""Split-point crossover: the Python API (checks, backend choice, dispatch)."""
import torch

from . import _backend, _checks, reference

METHODS = ("lerp", "slerp")
OMEGAS = ("global", "segment")


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


def _check_parents(a_list, b_list, a_name="a", b_name="b"):
    if len(a_list) != len(b_list):
        raise ValueError(f"{a_name} and {b_name} must hold as many tensors, got {len(a_list)} and {len(b_list)}")
    first = a_list[0]
    _checks.check_float_tensor(first, a_name)
    for i, (x, y) in enumerate(zip(a_list, b_list)):
        where = f" (list position {i})" if len(a_list) > 1 else ""
        _checks.check_float_tensor(y, b_name)
        if x.dtype != first.dtype or y.dtype != first.dtype:
            raise TypeError(f"{a_name} and {b_name} must share one dtype, got {x.dtype} and {y.dtype}{where}")
        if x.device != first.device or y.device != first.device:
            raise ValueError(f"{a_name} and {b_name} must be on one device, got {x.device} and {y.device}{where}")
        if x.shape != y.shape:
            raise ValueError(
                f"{a_name} and {b_name} must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}{where}"
            )
    return sum(t.numel() for t in a_list)


def _check_scalars(n, split, w, method, omega, noise_std, seed, index_offset):
    index_offset = _checks.as_int(index_offset, "index_offset")
    if index_offset < 0:
        raise ValueError(f"index_offset must be >= 0, got {index_offset}")
    split = _checks.as_int(split, "split")
    if split < 0 or (index_offset == 0 and split > n):
        raise ValueError(f"split must lie in [0, {n}] (the number of elements), got {split}")
    return (
        split,
        _checks.as_finite_float(w, "w"),
        _checks.choice(method, "method", METHODS),
        _checks.choice(omega, "omega", OMEGAS),
        _checks.as_finite_float(noise_std, "noise_std", min_value=0.0),
        _checks.as_seed(seed),
        index_offset,
    )


def _check_out(out_list, a_list, b_list):
    """`out` must match a, be contiguous, and either be exactly a (or b) or not
    overlap them at all."""
    if len(out_list) != len(a_list):
        raise ValueError(f"out must hold as many tensors as a, got {len(out_list)} and {len(a_list)}")
    role = None
    for i, (o, x, y) in enumerate(zip(out_list, a_list, b_list)):
        _checks.check_float_tensor(o, "out")
        if o.dtype != x.dtype:
            raise TypeError(f"out must have dtype {x.dtype}, got {o.dtype}")
        if o.device != x.device:
            raise ValueError(f"out must be on {x.device}, got {o.device}")
        if o.shape != x.shape:
            raise ValueError(f"out must have shape {tuple(x.shape)}, got {tuple(o.shape)}")
        if not o.is_contiguous():
            raise ValueError("out must be contiguous")
        if torch.compiler.is_compiling():
            continue  # fake tensors have no storage to compare
        here = []
        for other, name in ((x, "a"), (y, "b")):
            ov = _checks.overlap(o, other)
            if ov == "partial":
                raise ValueError(f"out partly overlaps {name}: it must be exactly {name} or not overlap it")
            if ov == "full":
                here.append(name)
        # any other out tensor overlapping this input partly is caught by its own check
        tag = "a" if "a" in here else ("b" if here else "none")
        if role is None:
            role = tag
        elif role != tag and o.numel() > 0:
            raise ValueError("out must be all of a, all of b, or fresh tensors, not a mix")
    return role or "none"


def _contiguous(ts):
    return [t if t.is_contiguous() else t.contiguous() for t in ts]


def _run(a_list, b_list, out_list, role, split, w, method, omega, noise_std, seed, stream, index_offset, backend):
    device = a_list[0].device
    name = _backend.choose(device, backend)
    if name == "torch":
        child = reference.split_interpolate(
            a_list, b_list, split, w, method=method, omega=omega, noise_std=noise_std, seed=seed,
            stream=stream, index_offset=index_offset,
        )
        with torch.no_grad():
            for o, c in zip(out_list, child):
                o.copy_(c)
        return
    if name == "triton":
        from .triton import crossover as triton_crossover

        triton_crossover.split_interpolate_out(
            a_list, b_list, out_list, split, w, method, omega, noise_std, seed, stream, index_offset
        )
        return
    args = (split, w, method, omega, noise_std, seed, stream, index_offset)
    if role == "a":
        torch.ops.m2n2.split_interpolate_(out_list, b_list, *args, True)
    elif role == "b":
        torch.ops.m2n2.split_interpolate_(out_list, a_list, *args, False)
    else:
        torch.ops.m2n2.split_interpolate_out(a_list, b_list, out_list, *args)


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
):
    """Child of parents `a` and `b` by split-point interpolation (docs/semantics.md).

    t_i = w for i < split, else 1 - w; `method` "lerp" or "slerp" (angle over the
    whole vectors for omega="global", per side of the split for "segment");
    optional fused mutation `noise_std` * N(0, 1) keyed by (seed, element index).
    `a` and `b` may be lists of tensors, taken in order as one long vector (one
    split over the whole model); the result is then a list. `out` may be a new
    tensor (list), or exactly `a` or `b` for an in-place update.
    `index_offset` is the global index of element 0, for a buffer that is one
    piece of a longer vector streamed in pieces: it moves the split and the noise,
    while the slerp angle is still taken over the tensors given.
    """
    a_list, is_list = _as_list(a, "a")
    b_list, _ = _as_list(b, "b")
    n = _check_parents(a_list, b_list)
    split, w, method, omega, noise_std, seed, index_offset = _check_scalars(
        n, split, w, method, omega, noise_std, seed, index_offset
    )
    if out is None:
        out_list = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in a_list]
        role = "none"
    else:
        out_list, out_is_list = _as_list(out, "out")
        if out_is_list != is_list:
            raise TypeError("out must be a list exactly when a is a list")
        role = _check_out(out_list, a_list, b_list)
    if n > 0:
        _run(
            _contiguous(a_list), _contiguous(b_list), out_list, role, split, w, method, omega,
            noise_std, seed, 0, index_offset, backend,
        )
    return out_list if is_list else out_list[0]


def split_interpolate_(a, b, split, w, **kwargs):
    """In-place `split_interpolate` into `a` (a tensor, or a list of tensors); returns `a`."""
    if "out" in kwargs:
        raise TypeError("split_interpolate_ writes into a; use split_interpolate(out=...) instead")
    a_list, _ = _as_list(a, "a")
    for i, t in enumerate(a_list):
        if not t.is_contiguous():
            raise ValueError(f"a must be contiguous to be updated in place (list position {i})")
    split_interpolate(a, b, split, w, out=a, **kwargs)
    return a


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
        raise ValueError(f"archive must be 2-D (P models x n parameters), got shape {tuple(archive.shape)}")
    p, n = archive.shape
    device = archive.device
    idx = {}
    for name, v in (("ia", ia), ("ib", ib), ("split", split)):
        t = torch.as_tensor(v, device=device)
        if t.dim() != 1 or t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"{name} must be a 1-D integer tensor or sequence, got {t.dtype} of shape {tuple(t.shape)}")
        idx[name] = t.to(torch.int64)
    wt = torch.as_tensor(w, device=device)
    if wt.dim() != 1 or not (wt.dtype.is_floating_point or wt.dtype in (torch.int64, torch.int32)):
        raise TypeError(f"w must be a 1-D float tensor or sequence, got {wt.dtype} of shape {tuple(wt.shape)}")
    wt = wt.to(torch.float64)
    k = idx["ia"].numel()
    for name, t in (("ib", idx["ib"]), ("split", idx["split"]), ("w", wt)):
        if t.numel() != k:
            raise ValueError(f"{name} must have length {k} (the length of ia), got {t.numel()}")
    method = _checks.choice(method, "method", METHODS)
    omega = _checks.choice(omega, "omega", OMEGAS)
    noise_std = _checks.as_finite_float(noise_std, "noise_std", min_value=0.0)
    seed = _checks.as_seed(seed)
    if k > 0 and not torch.compiler.is_compiling():
        for name in ("ia", "ib"):
            t = idx[name]
            if int(t.min()) < 0 or int(t.max()) >= p:
                raise ValueError(f"{name} must lie in [0, {p}) (rows of archive), got values in [{int(t.min())}, {int(t.max())}]")
        s = idx["split"]
        if int(s.min()) < 0 or int(s.max()) > n:
            raise ValueError(f"split must lie in [0, {n}], got values in [{int(s.min())}, {int(s.max())}]")
        if not bool(torch.isfinite(wt).all()):
            raise ValueError("w must be finite")
    if out is None:
        out = torch.empty((k, n), dtype=archive.dtype, device=device)
    else:
        _checks.check_float_tensor(out, "out")
        if out.shape != (k, n) or out.dtype != archive.dtype or out.device != device:
            raise ValueError(
                f"out must be a {archive.dtype} tensor of shape {(k, n)} on {device}, got "
                f"{out.dtype} {tuple(out.shape)} on {out.device}"
            )
        if not out.is_contiguous():
            raise ValueError("out must be contiguous")
        if not torch.compiler.is_compiling() and _checks.overlap(out, archive) != "none":
            raise ValueError("out must not overlap archive")
    if k == 0 or n == 0:
        return out
    archive = archive if archive.is_contiguous() else archive.contiguous()
    name = _backend.choose(device, backend)
    if name == "torch":
        with torch.no_grad():
            out.copy_(
                reference.crossover_batch(
                    archive, idx["ia"], idx["ib"], idx["split"], wt, method=method, omega=omega,
                    noise_std=noise_std, seed=seed,
                )
            )
    elif name == "triton":
        from .triton import crossover as triton_crossover

        triton_crossover.crossover_batch_out(
            archive, idx["ia"], idx["ib"], idx["split"], wt, out, method, omega, noise_std, seed
        )
    else:
        torch.ops.m2n2.crossover_batch_out(
            archive, idx["ia"], idx["ib"], idx["split"], wt, out, method, omega, noise_std, seed
        )
    return out
