"""Task-vector merges: task arithmetic, TIES, DARE, Model Breadcrumbs (docs/semantics.md).

One op, `task_merge`, computes mergekit's generalized task arithmetic in a few
streaming passes (thresholds or sums, then one fused pass that masks, elects signs,
mixes and writes); `task_arithmetic`, `ties_merge`, `dare_merge` and
`breadcrumbs_merge` (mergekit's magnitude_outliers) name its settings. Inputs are
`base` and K `models`, each a tensor or a list of tensors (a whole model in one call;
dtypes may differ between list positions).
"""
import os

import torch

from . import _backend, _checks, reference

# The op's choices; None in the Python API means "none".
SPARSIFY = ("none", "magnitude", "random", "magnitude_outliers")
CONSENSUS = ("none", "sum", "count")
RESCALE = ("none", "l1", "density")
SCOPES = ("tensor", "global")
MAX_MODELS = 64  # csrc/include/m2n2/task_merge.h, kMaxModels
MAX_OUTLIER_MODELS = MAX_MODELS // 2  # csrc/task_merge_args.h: two virtual models per model


def _check_model_count(K, sparsify):
    if sparsify == "magnitude_outliers" and K > MAX_OUTLIER_MODELS:
        raise ValueError(f"models must hold at most {MAX_OUTLIER_MODELS} models with "
                         f"sparsify='magnitude_outliers', got {K}")


def _model_lists(base, models):
    """(base_list, [model_list per model], is_list, n): every model shaped as base."""
    if isinstance(base, torch.Tensor):
        base_list, is_list = [base], False
    elif isinstance(base, (list, tuple)):
        base_list, is_list = list(base), True
        if not base_list:
            raise ValueError("base must hold at least one tensor")
    else:
        raise TypeError(f"base must be a tensor or a list of tensors, got {type(base).__name__}")
    if not isinstance(models, (list, tuple)):
        raise TypeError(f"models must be a list of K models (tensors, or lists like base), got {type(models).__name__}")
    if len(models) == 0:
        raise ValueError("models must hold at least one model (K >= 1), got an empty list")
    if len(models) > MAX_MODELS:
        raise ValueError(f"models must hold at most {MAX_MODELS} models, got {len(models)}")
    lists = []
    for k, m in enumerate(models):
        if is_list:
            if not isinstance(m, (list, tuple)):
                raise TypeError(f"models[{k}] must be a list of tensors like base, got {type(m).__name__}")
            if len(m) != len(base_list):
                raise ValueError(f"models[{k}] must hold as many tensors as base ({len(base_list)}), got {len(m)}")
            lists.append(list(m))
        else:
            if not isinstance(m, torch.Tensor):
                raise TypeError(f"models[{k}] must be a tensor like base, got {type(m).__name__}")
            lists.append([m])
    device = None
    n = 0
    for i, b in enumerate(base_list):
        at = _checks.where(i, is_list)
        _checks.check_float_tensor(b, "base" + at)
        device = device or b.device
        if b.device != device:
            raise ValueError(f"base{at} must be on {device} (the device of base{_checks.where(0, is_list)}), "
                             f"got {b.device}")
        for k, m in enumerate(lists):
            _checks.check_like(m[i], f"models[{k}]{at}", dtype=b.dtype, shape=b.shape, device=device,
                               of=f" (as base{at})")
        n += b.numel()
    return base_list, lists, is_list, n


def _out_list(out, base_list, lists, is_list):
    """The output tensors: new ones for out=None; else `out` checked: base itself (in
    place, position by position) or fresh tensors of base's dtype, shape and device,
    contiguous and sharing no memory with the inputs (or each other)."""
    if out is None:
        return [torch.empty_like(b, memory_format=torch.contiguous_format) for b in base_list]
    if is_list:
        if not isinstance(out, (list, tuple)):
            raise TypeError(f"out must be a list of tensors like base, got {type(out).__name__}")
        out_list = list(out)
        if len(out_list) != len(base_list):
            raise ValueError(f"out must hold as many tensors as base ({len(base_list)}), got {len(out_list)}")
    else:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"out must be a tensor like base, got {type(out).__name__}")
        out_list = [out]
    for i, (o, b) in enumerate(zip(out_list, base_list)):
        at = _checks.where(i, is_list)
        _checks.check_like(o, f"out{at}", dtype=b.dtype, shape=b.shape, device=b.device, contiguous=True,
                           of=f" (as base{at})")
    written = [(o, f"out{_checks.where(i, is_list)}") for i, o in enumerate(out_list)]
    read = [(b, f"base{_checks.where(i, is_list)}") for i, b in enumerate(base_list)
            if not _checks.same_tensor(out_list[i], b)]
    read += [(m[i], f"models[{k}]{_checks.where(i, is_list)}") for k, m in enumerate(lists)
             for i in range(len(base_list))]
    _checks.check_disjoint(written, read)
    return out_list


def _per_model(values, K, name, *, unit_range=False):
    if isinstance(values, (list, tuple)) or (isinstance(values, torch.Tensor) and values.dim() == 1):
        vals = list(values)
        if len(vals) != K:
            raise ValueError(f"{name} must hold one number per model (K = {K}), got {len(vals)}")
    else:
        vals = [values] * K
    out = []
    for k, v in enumerate(vals):
        f = _checks.as_finite_float(v, f"{name}[{k}]")
        if unit_range and not 0.0 <= f <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {f}")
        out.append(f)
    return out


def _weights_and_density(weights, density, K):
    """One weight per model (a single number refused), a density per model in [0, 1]."""
    if isinstance(weights, (int, float)) or (isinstance(weights, torch.Tensor) and weights.dim() == 0):
        raise TypeError(f"weights must hold one number per model (K = {K}), got a single number")
    return _per_model(weights, K, "weights"), _per_model(density, K, "density", unit_range=True)


def check_op_task_merge(base, models, weights, sparsify, density, consensus, rescale, lam, scope, seed, gamma=0.01):
    """Every argument of task_merge, checked before anything is written; returns the
    canonical form (base_list, model_lists, is_list, n, weights, densities, gammas,
    lam, seed as int64, [sparsify, consensus, rescale] as the op's strings)."""
    base_list, lists, is_list, n = _model_lists(base, models)
    K = len(lists)
    w, rho = _weights_and_density(weights, density, K)
    gam = _per_model(gamma, K, "gamma", unit_range=True)
    choices = [_checks.choice("none" if v is None else v, name, allowed) for v, name, allowed in (
        (sparsify, "sparsify", SPARSIFY), (consensus, "consensus", CONSENSUS), (rescale, "rescale", RESCALE))]
    _check_model_count(K, choices[0])
    _checks.choice(scope, "scope", SCOPES)
    lam = _checks.as_finite_float(lam, "lam")
    seed = _checks.as_seed(seed)
    return base_list, lists, is_list, n, w, rho, gam, lam, seed, choices


def check_op_canonical(base, models, out, weights, density, gamma, sparsify, consensus, rescale, normalize, lam, scope,
                       seed):
    """The op's own checks on its canonical arguments (models flat, model-major; the
    choices as strings), in the order and words of csrc/task_merge_args.h: what
    tests/test_op_contract.py holds the C++ kernels to."""
    L, K = _canonical_model_count(base, models)
    _per_model(list(weights), K, "weights")
    _per_model(list(density), K, "density", unit_range=True)
    _per_model(list(gamma), K, "gamma", unit_range=True)
    _checks.choice(sparsify, "sparsify", SPARSIFY)
    _check_model_count(K, sparsify)
    for value, name, allowed in ((consensus, "consensus", CONSENSUS), (rescale, "rescale", RESCALE),
                                 (scope, "scope", SCOPES)):
        _checks.choice(value, name, allowed)
    _checks.as_finite_float(lam, "lam")
    _check_canonical_tensors(base, models, out, L, K)


def _canonical_model_count(base, models):
    """K of the canonical form (models flat, model-major), checked as the op checks it."""
    if len(base) == 0:
        raise ValueError("base must hold at least one tensor")
    if len(models) == 0:
        raise ValueError("models must hold at least one model (K >= 1), got an empty list")
    L = len(base)
    if len(models) % L:
        raise ValueError(f"models must hold K x {L} tensors (K models shaped as base), got {len(models)}")
    K = len(models) // L
    if K > MAX_MODELS:
        raise ValueError(f"models must hold at most {MAX_MODELS} models, got {K}")
    return L, K


def _check_canonical_tensors(base, models, out, L, K):
    """The tensors of the canonical form, in csrc/task_merge_args.h's order and words
    (check_task_tensors)."""
    if len(out) != L:
        raise ValueError(f"out must hold as many tensors as base, got {len(out)} and {L}")
    device = base[0].device
    for i, b in enumerate(base):
        at = f"[{i}]"
        _checks.check_float_tensor(b, "base" + at)
        if b.device != device:
            raise ValueError(f"base{at} must be on {device} (the device of base[0]), got {b.device}")
        if not b.is_contiguous():
            raise ValueError(f"base{at} must be contiguous")
        for k in range(K):
            _checks.check_like(models[k * L + i], f"models[{k}]{at}", dtype=b.dtype, shape=b.shape, device=device,
                               contiguous=True, of=f" (as base{at})")
        _checks.check_like(out[i], f"out{at}", dtype=b.dtype, shape=b.shape, device=device, contiguous=True,
                           of=f" (as base{at})")
    written = [(o, f"out[{i}]") for i, o in enumerate(out)]
    read = [(b, f"base[{i}]") for i, b in enumerate(base) if not _checks.same_tensor(out[i], b)]
    read += [(m, f"models[{j}]") for j, m in enumerate(models)]
    _checks.check_disjoint(written, read)


def task_merge(base, models, weights, *, sparsify=None, density=1.0, consensus=None, rescale=None, normalize=False,
               lam=1.0, scope="tensor", seed=0, gamma=0.01, out=None, backend=None):
    """base + lam * merged task vectors (docs/semantics.md, "Task-vector merges").

    `sparsify`: None, "magnitude" (keep each model's max(1, int(density * n)) largest
    |d_k| per unit: TIES) or "random" (keep each element with probability density,
    keyed by (seed, model, element): DARE) or "magnitude_outliers" (of each model's
    magnitudes per unit, drop the int(gamma * n) largest and keep the int(density *
    n) next: Model Breadcrumbs, as mergekit); `density`, `gamma`: one number or one
    per model;
    `consensus`: None, "sum" or "count" (TIES' sign election); `rescale`: None, "l1"
    or "density"; `scope`: "tensor" (each list position is a unit) or "global" (the
    whole list); `out`: None (a new tensor or list), or base itself (in place).
    """
    base_list, lists, is_list, n, w, rho, gam, lam, seed, (sp, cons, resc) = check_op_task_merge(
        base, models, weights, sparsify, density, consensus, rescale, lam, scope, seed, gamma)
    out_list = _out_list(out, base_list, lists, is_list)

    def torch_route():
        return reference.task_merge(base_list, lists, w, sparsify=None if sp == "none" else sp, density=rho,
                                    consensus=None if cons == "none" else cons,
                                    rescale=None if resc == "none" else resc, normalize=bool(normalize), lam=lam,
                                    scope=scope, seed=seed % 2**64, gamma=gam)

    def triton_route():
        from .triton import task_merge as triton_task_merge

        return triton_task_merge.task_merge_out

    result = run_routed(backend, base_list, lists, out_list, out is not None, torch_route,
                        lambda: torch.ops.m2n2.task_merge_out, triton_route,
                        (w, rho, gam, sp, cons, resc, bool(normalize), lam, scope, seed))
    return result if is_list else result[0]


def run_routed(backend, base_list, lists, out_list, into_out, torch_route, op, triton_route, scalars):
    """Run a task-vector op (task_merge, pcb_merge) on the route the backend picks:
    "torch" computes the reference and copies it into out_list when the caller gave
    `out`; "op" (torch.ops.m2n2 on any device: C++ on CPU; on CUDA the CUDA C++
    kernel, or the Triton one that ops.py registers where no CUDA C++ was compiled)
    and "triton" (the Triton launcher itself: CPU tensors under the interpreter) take
    (base, models flat and model-major, out, *scalars) and write out_list. The routes
    are callables, so that only the chosen one is imported."""
    route = _backend.route(base_list[0].device, backend)
    if route == "torch":
        result = torch_route()
        if into_out:
            for o, r in zip(out_list, result):
                o.copy_(r)
            result = out_list
        return result
    launch = op() if route == "op" else triton_route()
    launch([b.contiguous() for b in base_list], [t.contiguous() for m in lists for t in m], out_list, *scalars)
    return out_list


def task_arithmetic(base, models, weights, *, lam=1.0, normalize=False, out=None, backend=None):
    """base + lam * sum_k w_k (m_k - base) (divided by sum_k w_k with normalize)."""
    return task_merge(base, models, weights, lam=lam, normalize=normalize, out=out, backend=backend)


def ties_merge(base, models, weights, density, *, scope="tensor", consensus="sum", normalize=True, rescale=None,
               lam=1.0, out=None, backend=None):
    """TIES: each model's largest-magnitude deltas (max(1, int(density * n)) per
    unit, ties kept lowest index first), signs elected per element, the agreeing
    weighted deltas averaged (normalize) and scaled by lam."""
    return task_merge(base, models, weights, sparsify="magnitude", density=density, consensus=consensus,
                      rescale=rescale, normalize=normalize, lam=lam, scope=scope, out=out, backend=backend)


def dare_merge(base, models, weights, density, *, seed, consensus=None, rescale="l1", normalize=False, lam=1.0,
               scope="tensor", out=None, backend=None):
    """DARE: each delta element kept with probability density (keyed by seed, model
    and element), rescaled ("l1": the kept delta's L1 norm matched to the full one,
    as mergekit; "density": divided by density, as the paper); consensus="sum" is
    DARE-TIES."""
    return task_merge(base, models, weights, sparsify="random", density=density, consensus=consensus,
                      rescale=rescale, normalize=normalize, lam=lam, scope=scope, seed=seed, out=out,
                      backend=backend)


def breadcrumbs_merge(base, models, weights, density, *, gamma=0.01, consensus=None, rescale=None, normalize=False,
                      lam=1.0, scope="tensor", out=None, backend=None):
    """Model Breadcrumbs (mergekit's breadcrumbs; breadcrumbs_ties with
    consensus="sum"): per unit, each model drops its int(gamma * n) largest |d_k|
    (the outliers) and keeps the int(density * n) next (the smallest of all where
    fewer are left), ties lowest index first; then as TIES."""
    return task_merge(base, models, weights, sparsify="magnitude_outliers", density=density, gamma=gamma,
                      consensus=consensus, rescale=rescale, normalize=normalize, lam=lam, scope=scope, out=out,
                      backend=backend)


DELLA_RESCALE = ("none", "l1")


def check_op_della(base, models, weights, density, epsilon, consensus, rescale, lam, scope, seed):
    """della_merge's arguments, checked before anything is written; returns (base_list,
    model_lists, is_list, weights, densities, epsilons, lam, seed, consensus, rescale)."""
    base_list, lists, is_list, n = _model_lists(base, models)
    K = len(lists)
    w, rho = _weights_and_density(weights, density, K)
    eps = _per_model(epsilon, K, "epsilon", unit_range=True)
    cons = _checks.choice("none" if consensus is None else consensus, "consensus", CONSENSUS)
    resc = _checks.choice("none" if rescale is None else rescale, "rescale", DELLA_RESCALE)
    _checks.choice(scope, "scope", SCOPES)
    lam = _checks.as_finite_float(lam, "lam")
    seed = _checks.as_seed(seed)
    return base_list, lists, is_list, w, rho, eps, lam, seed, cons, resc


def check_op_della_canonical(base, models, out, weights, density, epsilon, consensus, rescale, normalize, lam, scope,
                             seed):
    """The della op's own checks on its canonical arguments, in the order and words of
    csrc/cpu/task_merge.cpp (della_merge_out_cpu): what tests/test_op_contract.py holds
    the C++ kernel to."""
    L, K = _canonical_model_count(base, models)
    _per_model(list(weights), K, "weights")
    _per_model(list(density), K, "density", unit_range=True)
    _per_model(list(epsilon), K, "epsilon", unit_range=True)
    _checks.choice(consensus, "consensus", CONSENSUS)
    _checks.choice(rescale, "rescale", DELLA_RESCALE)
    _checks.choice(scope, "scope", SCOPES)
    _checks.as_finite_float(lam, "lam")
    _check_canonical_tensors(base, models, out, L, K)


def _della_paths(device, backend, base_list, scope):
    """(route, ours, rest): the kernels that merge positions `ours` ("cpp" or "triton";
    "torch" where none does) and the positions the torch reference merges. On CUDA
    the Triton kernels take fibers of at most MAX_FIBER elements and no float64: the
    other positions go to the reference (all of them with scope "global", one unit),
    unless backend="triton" was asked for, which then raises."""
    route = "torch" if backend == "torch" else "cpp" if device.type == "cpu" and backend != "triton" else "triton"
    positions = list(range(len(base_list)))
    rest = []  # positions the reference merges
    if route == "triton":
        if backend == "triton":
            _backend.choose(device, "triton")  # raises without triton, or on CPU without its interpreter
        if _backend.triton_importable():
            from .triton import della as triton_della
            rest = [i for i in positions if not triton_della.supports_tensor(base_list[i])]
        else:
            rest = positions
        if rest and backend == "triton":
            raise NotImplementedError(
                f"della_merge's Triton kernels take fibers of at most {triton_della.MAX_FIBER} elements and no "
                "float64 tensors: use backend='torch'")
        if rest and scope == "global":  # one unit: one path
            rest = positions
    elif route == "torch":
        rest = positions
    ours = [i for i in positions if i not in rest]
    return route, ours, rest


def della_merge(base, models, weights, density, *, epsilon=0.15, seed, consensus="sum", rescale="l1",
                normalize=True, lam=1.0, scope="tensor", out=None, backend=None):
    """DELLA (mergekit's `della`; `della_linear` with consensus=None,
    normalize=False): DARE whose keep probability grows with the magnitude rank
    within each row along dim 1, from density - epsilon (the smallest |d_k|) to
    density + epsilon (the largest); then the kept deltas rescaled ("l1", as mergekit)
    and merged as TIES (consensus="sum") or summed (None). docs/semantics.md, "della".

    On CPU the C++ op; on CUDA the Triton kernels (one program per row, which it
    sorts), and the torch reference for the tensors they do not take (float64, rows
    of more than 4096 elements; with scope="global", the whole list), or without
    triton; no CUDA C++ kernel yet. The CPU kernel holds each row whole while it
    ranks it (tens of bytes per element of the row), except long rows (2^16
    elements and more, one row or a few: a 1-D tensor is one row), which it streams
    in passes over the row, holding a tree of about n / 4096 buckets per level
    instead (README, della_merge). The torch reference sorts every row whatever its
    length.
    """
    base_list, lists, is_list, w, rho, eps, lam, seed, cons, resc = check_op_della(
        base, models, weights, density, epsilon, consensus, rescale, lam, scope, seed)
    out_list = _out_list(out, base_list, lists, is_list)
    device = base_list[0].device
    if backend in (None, "auto"):
        backend = None
        if os.environ.get("M2N2_BACKEND", "auto") not in ("", "auto"):  # as for every op
            _backend.choose(device, None)  # raises on a bad value, naming M2N2_BACKEND
            backend = os.environ["M2N2_BACKEND"]
    elif backend not in _backend.BACKENDS:
        _backend.choose(device, backend)  # raises, naming the choices
    if backend == "cpp" and device.type != "cpu":
        raise NotImplementedError("della_merge has no CUDA C++ kernel yet: use backend='triton', 'torch' or None")
    route, ours, rest = _della_paths(device, backend, base_list, scope)
    if ours:
        args = ([base_list[i].contiguous() for i in ours], [m[i].contiguous() for m in lists for i in ours],
                [out_list[i] for i in ours], w, rho, eps, cons, resc, bool(normalize), lam, scope, seed)
        if route == "cpp":
            torch.ops.m2n2.della_merge_out(*args)
        else:
            from .triton import della as triton_della

            triton_della.della_merge_out(*args)
    result = out_list
    if rest:
        merged = reference.della_merge([base_list[i] for i in rest], [[m[i] for i in rest] for m in lists], w, rho,
                                       epsilon=eps, seed=seed % 2**64, consensus=None if cons == "none" else cons,
                                       rescale=None if resc == "none" else resc, normalize=bool(normalize),
                                       lam=lam, scope=scope)
        if out is None and not ours:
            result = merged
        else:
            for i, r in zip(rest, merged):
                out_list[i].copy_(r)
    return result if is_list else result[0]
