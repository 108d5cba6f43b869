"""Argument checks shared by every op family of the Python API.

One vocabulary for every message (the C++ checks in csrc/args_common.h print the
same words): an error names the argument and says what was expected and what it
got, dtypes as `torch.float32`, shapes as `(3, 5)`, choices as `one of ('a', 'b')`.
Exception types: TypeError for a wrong type or dtype, IndexError for an index
outside its range (rows, datapoints, list entries), ValueError for everything else.
Every check runs before any output is touched.
"""
import math
import operator

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def shape_str(shape) -> str:
    return str(tuple(int(s) for s in shape))


def dtypes_str(dtypes) -> str:
    names = [str(d).removeprefix("torch.") for d in dtypes]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


def where(i, is_list) -> str:
    """The suffix naming an entry of a list argument ('' for a plain tensor)."""
    return f"[{i}]" if is_list else ""


def as_int(value, name):
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got bool")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer, got a {value.dtype} tensor of shape {shape_str(value.shape)}")
        return int(value.item())
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def as_int64(value, name):
    """An integer the ops take as int64 (a larger Python int is refused by name here,
    rather than by the dispatcher without one)."""
    value = as_int(value, name)
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{name} must fit in int64 ([-2**63, 2**63 - 1]), got {value}")
    return value


def int_str(value):
    """A Python int for a message: its digits, or its size when it has too many."""
    digits = str(value)
    return digits if len(digits) <= 24 else f"an integer of {value.bit_length()} bits"


def as_tensor(values, name, error, dtype=None):
    """torch.as_tensor of a Python sequence, with errors that name the argument: an
    int past int64 (past the float range for a float dtype) raises `error` at its
    position; an empty sequence is int64 (torch would infer float32) unless `dtype`
    says otherwise."""
    if not isinstance(values, (list, tuple, range)) and not hasattr(values, "__array__"):
        raise TypeError(f"{name} must be a tensor or a sequence of numbers, got {type(values).__name__}")
    try:
        return torch.as_tensor(values, dtype=dtype or (torch.int64 if len(values) == 0 else None))
    except (RuntimeError, OverflowError, TypeError, ValueError) as e:
        floating = dtype is not None and dtype.is_floating_point
        for i, v in enumerate(values):
            if isinstance(v, int) and not floating and not INT64_MIN <= v <= INT64_MAX:
                raise error(f"{name}[{i}] = {int_str(v)} does not fit in int64") from None
            if isinstance(v, int) and floating and abs(v).bit_length() > 1024:
                raise ValueError(f"{name}[{i}] must be finite, got {int_str(v)}") from None
        raise TypeError(f"{name} must hold numbers: {e}") from None


def as_finite_float(value, name, *, min_value=None):
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not (
        isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype.is_complex
    ):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        value = float(value)
    except OverflowError:  # a Python int past the float range
        raise ValueError(f"{name} must be finite, got {int_str(value)}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if min_value is not None and value < min_value:
        raise ValueError(f"{name} must be >= {min_value}, got {value}")
    return value


def as_seed(seed):
    """A 64-bit seed as the signed int64 the schemas take (same bits)."""
    seed = as_int(seed, "seed")
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must lie in [0, 2**64), got {seed}")
    return seed - 2**64 if seed >= 2**63 else seed


def choice(value, name, allowed):
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
    return value


def check_tensor(t, name, dtypes=None):
    """t is a tensor (of one of `dtypes`, when given)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} must be {dtypes_str(dtypes)}, got {t.dtype}")


def check_float_tensor(t, name):
    check_tensor(t, name, FLOAT_DTYPES)


def check_like(t, name, *, dtype=None, shape=None, device=None, contiguous=False, of=""):
    """t matches what an output (or a companion input) must be; `of` explains where
    the expectation comes from, e.g. ' (the dtype of S)'."""
    check_tensor(t, name)
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name} must be {dtype}{of}, got {t.dtype}")
    if shape is not None and t.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {shape_str(shape)}{of}, got {shape_str(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on {device}{of}, got {t.device}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def check_range(value, name, lo, hi, what="", error=IndexError):
    """lo <= value < hi; returns value."""
    if not lo <= value < hi:
        raise error(f"{name} must lie in [{lo}, {hi}){what}, got {value}")
    return value


def _byte_span(t):
    start = t.data_ptr()
    if t.is_contiguous():
        extent = t.numel()
    else:
        extent = sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride())) + 1
    return start, start + extent * t.element_size()


def _spans_meet(x, y):
    """x and y (non-empty) touch a common byte of one device's memory (by byte span:
    an interleaved view counts as overlapping, as torch's own overlap checks do)."""
    if x.device != y.device or x.device.type == "meta":
        return False
    (x0, x1), (y0, y1) = _byte_span(x), _byte_span(y)
    return x0 < y1 and y0 < x1


def same_tensor(x, y):
    """x and y are the very same elements in the same layout (non-empty)."""
    return x.numel() > 0 and x.data_ptr() == y.data_ptr() and x.device.type != "meta" and (
        x.dtype, x.shape, x.stride(), x.device) == (y.dtype, y.shape, y.stride(), y.device)


def check_disjoint(written, read):
    """No written tensor shares memory with any other tensor of the call.

    written, read: sequences of (tensor or None, name). Raises ValueError
    "<written> must not overlap <other>" for the first written tensor (in order) that
    meets another, naming the first it meets (the reads in order, then the other
    written tensors). The caller leaves out the reads a kernel may alias, such as the
    input that an in-place output is exactly. csrc/args_common.h, check_disjoint,
    does the same in the same words. A sort and a sweep find whether anything
    clashes; the names are looked for only then.
    """
    if torch.compiler.is_compiling():
        return  # fake tensors have no storage to compare
    spans = []
    for is_written, group in ((True, written), (False, read)):
        for t, _ in group:
            if t is not None and t.numel() > 0 and t.device.type != "meta":
                lo, hi = _byte_span(t)
                spans.append((t.device.type, t.device.index or 0, lo, hi, is_written))
    if not any(s[4] for s in spans):
        return
    spans.sort(key=lambda s: s[:3])
    clash, place, end_any, end_written = False, None, 0, 0
    for dev_type, dev_index, lo, hi, is_written in spans:
        if (dev_type, dev_index) != place:
            place, end_any, end_written = (dev_type, dev_index), 0, 0
        if lo < (end_any if is_written else end_written):
            clash = True
            break
        end_any = max(end_any, hi)
        if is_written:
            end_written = max(end_written, hi)
    if not clash:
        return
    others = [(t, name, -1) for t, name in read] + [(t, name, k) for k, (t, name) in enumerate(written)]
    for k, (w, wname) in enumerate(written):
        if w is None or w.numel() == 0:
            continue
        for t, name, j in others:
            if j != k and t is not None and t.numel() > 0 and _spans_meet(w, t):
                raise ValueError(f"{wname} must not overlap {name}")
    raise AssertionError("check_disjoint: a clash that no pair explains")


def check_no_overlap(out, name, inputs):
    """out shares no memory with any of `inputs` ((tensor or None, name) pairs)."""
    check_disjoint(((out, name),), inputs)
