"""mergekit's task-vector merges on the fused `task_merge` op: a drop-in.

    import m2n2_kernels.mergekit
    m2n2_kernels.mergekit.install()     # task_arithmetic, ties, dare_ties, dare_linear,
                                        # breadcrumbs, breadcrumbs_ties, della,
                                        # della_linear run fused

    python -m m2n2_kernels.mergekit CONFIG.yml OUT [mergekit-yaml's options]

mergekit (LGPL-3.0, an optional extra: `pip install m2n2-kernels[mergekit]`) is
imported, never copied. Its registry has no plugin entry point, so `install()`
replaces the eight methods' objects in it with subclasses of its own
`GeneralizedTaskArithmeticMerge` whose `merge_group` calls `task_merge` (della:
`della_merge`) with mergekit's parameters (weight, density, gamma, epsilon, lambda,
normalize, rescale; int8_mask only saves mergekit memory and changes nothing here)
and mergekit's semantics, e.g. its `k = max(1, int(density * n))`. A group the op
cannot serve (a parameter that is not a number, a dtype it does not compute, a della
group that mergekit itself refuses) goes to mergekit's own code, with one log line
per method and reason. The fused methods are also registered as `m2n2_<name>`
so that a YAML config can ask for them explicitly. DARE draws its seed from torch's
global generator, as mergekit's `bernoulli` does, so `torch.manual_seed` still
decides the masks (which differ from mergekit's: another generator, the same
distribution); so does della.
"""
import dataclasses
import logging
import sys

import torch

from .task_vectors import MAX_OUTLIER_MODELS
from .task_vectors import della_merge as _fused_della_merge
from .task_vectors import task_merge as _fused_task_merge

log = logging.getLogger(__name__)

METHODS = ("task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties", "della",
           "della_linear")
PREFIX = "m2n2_"
_ORIGINAL = {}
_NOTED = set()
_FUSED_CLASS = None


def _require_mergekit():
    try:
        import mergekit.merge_methods.registry as registry
    except ImportError as e:
        raise ImportError("m2n2_kernels.mergekit needs mergekit: pip install 'm2n2-kernels[mergekit]'") from e
    return registry


def _fused_class():
    global _FUSED_CLASS
    if _FUSED_CLASS is None:
        from mergekit.merge_methods.generalized_task_arithmetic import GeneralizedTaskArithmeticMerge

        @dataclasses.dataclass(frozen=True)
        class FusedTaskArithmeticMerge(GeneralizedTaskArithmeticMerge):
            """mergekit's generalized task arithmetic on m2n2_kernels.task_merge."""

            def merge_group(self, group, /, **parameters):
                args = fused_arguments(self, group, parameters)
                if isinstance(args, str):
                    _note_fallback(self.method_name, args)
                    return super().merge_group(group, **parameters)
                if args.get("sparsify") == "della":
                    del args["sparsify"]
                    return _fused_della_merge(**args)
                return _fused_task_merge(**args)

        _FUSED_CLASS = FusedTaskArithmeticMerge
    return _FUSED_CLASS


def _number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _della_refusal(base, density, epsilon):
    """Why mergekit's della_magprune raises on this tensor (None where it does not);
    such groups go to mergekit's code, so that the error is mergekit's. A model of
    density 1 or 0 returns before any of these."""
    sparse = [(d, e) for d, e in zip(density, epsilon) if 0.0 < d < 1.0]
    if not sparse:
        return None
    if not all(_number(e) for _, e in sparse):
        return "an epsilon that is not a number"
    if any(d + e >= 1.0 or d - e <= 0.0 for d, e in sparse):
        return "a density +- epsilon outside (0, 1)"
    if any(e < 0.0 for _, e in sparse):
        return "a negative epsilon"
    if base.dim() == 0 or base.numel() == 0:
        return "a tensor with no rows to rank"
    if (base.shape[1] if base.dim() >= 2 else base.numel()) == 1:
        return "rows of one element"
    return None


def fused_arguments(method, group, parameters):
    """The fused op's arguments for one of mergekit's tensor groups (with "sparsify",
    which is "della" for della_merge), or the reason it cannot serve it (a str)."""
    base = group.base.tensor if group.base is not None else None
    entries = group.non_base
    if base is None or not entries:
        return "a group without a base or without models"
    if base.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        return f"{base.dtype} tensors"
    if any(e.tensor.dtype != base.dtype for e in entries):
        return "models of another dtype than the base"
    weights = [parameters["weight"][e.id] for e in entries]
    density = [parameters["density"][e.id] for e in entries]
    if not all(_number(v) for v in weights + density):
        return "a weight or density that is not a number"
    sparsify = {None: None, "magnitude": "magnitude", "random": "random",
                "magnitude_outliers": "magnitude_outliers", "della_magprune": "della"}.get(
        None if method.sparsification_method is None else str(method.sparsification_method.value), "other")
    if sparsify == "other":
        return f"sparsification {method.sparsification_method.value}"
    if sparsify and not all(0.0 <= d <= 1.0 for d in density):
        return "a density outside [0, 1]"
    gamma = 0.0
    if sparsify == "magnitude_outliers":
        gamma = [parameters["gamma"][e.id] for e in entries]
        if not all(_number(g) and 0.0 <= g <= 1.0 for g in gamma):
            return "a gamma that is not a number in [0, 1]"
        if len(entries) > MAX_OUTLIER_MODELS:
            return f"more than {MAX_OUTLIER_MODELS} models"
        gamma = [float(g) for g in gamma]
    lam = parameters.get("lambda", 1.0)
    if not _number(lam):
        return "a lambda that is not a number"
    args = dict(
        base=base,
        models=[e.tensor for e in entries],
        weights=[float(v) for v in weights],
        sparsify=sparsify,
        density=[float(d) for d in density] if sparsify else 1.0,
        consensus=None if method.consensus_method is None else str(method.consensus_method.value),
        rescale="l1" if sparsify and parameters.get("rescale") else None,
        normalize=bool(parameters.get("normalize")),
        lam=float(lam),
        seed=int(torch.randint(0, 2**62, (), dtype=torch.int64)) if sparsify in ("random", "della") else 0,
    )
    if sparsify != "della":
        return dict(args, gamma=gamma)
    epsilon = [parameters["epsilon"][e.id] for e in entries]
    refusal = _della_refusal(base, density, epsilon)
    if refusal:
        return refusal
    # mergekit reads epsilon only where 0 < density < 1; elsewhere any number in range
    return dict(args, epsilon=[float(e) if 0.0 < d < 1.0 else 0.0 for d, e in zip(density, epsilon)])


def _note_fallback(name, reason):
    if (name, reason) not in _NOTED:
        _NOTED.add((name, reason))
        log.warning("m2n2_kernels.mergekit: %s on %s runs mergekit's own code", name, reason)


def install():
    """Make mergekit's task_arithmetic, ties, dare_ties, dare_linear, breadcrumbs,
    breadcrumbs_ties, della and della_linear run on the fused ops, and register them
    as m2n2_<name> too. Idempotent; returns the names."""
    registry = _require_mergekit()
    fused_class = _fused_class()
    names = []
    for name in METHODS:
        current = registry._METHODS.get(name)
        if current is None:
            continue
        if name not in _ORIGINAL:
            _ORIGINAL[name] = current
        original = _ORIGINAL[name]
        fields = {f.name: getattr(original, f.name) for f in dataclasses.fields(original)}
        registry._METHODS[name] = fused_class(**fields)
        registry._METHODS[PREFIX + name] = fused_class(**{**fields, "method_name": PREFIX + name})
        names.append(name)
    return names


def uninstall():
    """Put mergekit's own methods back (the m2n2_<name> ones stay registered)."""
    registry = _require_mergekit()
    for name, original in _ORIGINAL.items():
        registry._METHODS[name] = original


def installed():
    registry = _require_mergekit()
    return [name for name in METHODS if isinstance(registry._METHODS.get(name), _fused_class())]


def main(argv=None):
    """mergekit-yaml with the fused methods installed."""
    _require_mergekit()
    from mergekit.scripts.run_yaml import main as run_yaml

    install()
    return run_yaml(args=argv if argv is not None else sys.argv[1:], prog_name="python -m m2n2_kernels.mergekit")


if __name__ == "__main__":
    sys.exit(main())
