"""m2n2: the M2N2 algorithm (Model Merging of Natural Niches) for any torch model,
built on the m2n2_kernels ops. The `m2n2` command runs it (`m2n2 evolve`) and merges
checkpoints (`m2n2 merge`)."""
from .archive import Archive
from .evolve import EvolveConfig, Evolution, Interrupted, step_seed
from .merge import canonical_order, merge_state_dicts
from .models import ModuleEvaluator, flatten, load_flat
from .select import select_parents, select_parents_batch
from .stream_merge import merge_checkpoints

__all__ = [
    "Archive",
    "EvolveConfig",
    "Evolution",
    "Interrupted",
    "ModuleEvaluator",
    "canonical_order",
    "flatten",
    "load_flat",
    "merge_checkpoints",
    "merge_state_dicts",
    "select_parents",
    "select_parents_batch",
    "step_seed",
]
