"""Merging two models' state dicts with the split-point crossover (docs/semantics.md).

A model's parameters are one flat vector: its floating-point tensors in the
canonical order (names sorted with their numbers compared as numbers, so that
`layers.2` comes before `layers.10`) or in an order the caller gives. The merge of
two models is `split_interpolate` on that vector, one call on the list of tensors
(each keeps its dtype: bf16 weights beside fp32 norms). Tensors that are not
floating point (step counters, integer buffers) must be equal in both models and are
copied.
"""
import re

import torch

import m2n2_kernels as mk

_NUMBER = re.compile(r"(\d+)")
MERGE_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)  # what the op computes in


def canonical_order(names):
    """Names sorted with runs of digits compared as numbers: `layers.2` < `layers.10`."""
    def key(name):
        return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in _NUMBER.split(name) if part]

    return sorted(names, key=key)


def resolve_split(split, names, numels):
    """The split as an element index of the flat vector of `names` (sizes `numels`):
    an int (an element index), a float in [0, 1] (a fraction of the elements, rounded
    down) or a str (a tensor's name: its first element)."""
    n = sum(numels)
    if isinstance(split, bool):
        raise TypeError("split must be an element index (int), a fraction (float) or a tensor name (str), got bool")
    if isinstance(split, str):
        if split not in names:
            raise ValueError(f"split names no floating-point tensor of the models: {split!r}")
        i = list(names).index(split)
        return sum(numels[:i])
    if isinstance(split, float):
        if not 0.0 <= split <= 1.0:
            raise ValueError(f"split as a fraction must lie in [0, 1], got {split}")
        return int(split * n)
    if isinstance(split, int):
        if not 0 <= split <= n:
            raise ValueError(f"split must lie in [0, {n}] (the number of elements), got {split}")
        return split
    raise TypeError(f"split must be an element index (int), a fraction (float) or a tensor name (str), "
                    f"got {type(split).__name__}")


def as_out_dtype(out_dtype):
    """None, or a torch float dtype the merge can write (given as a dtype or its name)."""
    if out_dtype is None:
        return None
    dt = out_dtype if isinstance(out_dtype, torch.dtype) else getattr(torch, str(out_dtype).replace("torch.", ""), None)
    if dt not in MERGE_DTYPES:
        raise ValueError(f"out_dtype must be one of float64, float32, float16, bfloat16, got {out_dtype!r}")
    return dt


def check_same_models(a, b):
    """a and b (name -> tensor, or anything with .shape and .dtype) hold the same
    names, shapes and dtypes; the error lists every difference."""
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if only_a or only_b:
        raise ValueError(f"the models hold different tensors: only in a: {only_a}, only in b: {only_b}")
    bad = [f"{k}: {tuple(a[k].shape)} {a[k].dtype} vs {tuple(b[k].shape)} {b[k].dtype}"
           for k in canonical_order(a) if a[k].shape != b[k].shape or a[k].dtype != b[k].dtype]
    if bad:
        raise ValueError("tensors differ in shape or dtype between a and b: " + "; ".join(bad))


def flat_names(state_dict, order=None):
    """The names of the floating-point tensors, in the order of the flat vector."""
    floats = [k for k, v in state_dict.items() if v.is_floating_point()]
    if order is None:
        return canonical_order(floats)
    order = list(order)
    unknown = [k for k in order if k not in state_dict]
    if unknown:
        raise ValueError(f"order names tensors the models do not hold: {unknown}")
    not_float = [k for k in order if not state_dict[k].is_floating_point()]
    missing = sorted(set(floats) - set(order))
    if not_float or missing or len(set(order)) != len(order):
        raise ValueError(f"order must name every floating-point tensor once: not floating point {not_float}, "
                         f"missing {missing}")
    return order


def merge_state_dicts(a, b, *, split, w, method="slerp", omega="global", noise_std=0.0, seed=0, out_dtype=None,
                      order=None, backend=None):
    """The child of two state dicts (name -> tensor) by split-point interpolation of
    their flat parameter vectors: one call of the multi-tensor op on all their
    floating-point tensors. `split`: an element index, a fraction of the elements or
    a tensor name (see resolve_split); `order`: the names in the order of the flat
    vector (default: canonical_order). Non-floating tensors must be equal in a and b
    and are copied. `out_dtype` casts the merged tensors (each keeps its dtype by
    default). Returns a new dict in a's key order; a and b are not modified."""
    out_dtype = as_out_dtype(out_dtype)
    check_same_models(a, b)
    names = flat_names(a, order)
    for k in a:
        if not a[k].is_floating_point() and not torch.equal(a[k], b[k]):
            raise ValueError(f"{k} is not floating point and differs between a and b: it cannot be merged")
    numels = [a[k].numel() for k in names]
    at = resolve_split(split, names, numels)
    merged = {}
    if names:
        child = mk.split_interpolate([a[k] for k in names], [b[k] for k in names], at, w, method=method, omega=omega,
                                     noise_std=noise_std, seed=seed, backend=backend)
        merged = dict(zip(names, child))
    out = {}
    for k, v in a.items():
        t = merged.get(k, v.clone())
        out[k] = t.to(out_dtype) if out_dtype is not None and k in merged else t
    return out
