"""M2N2 past one machine: the archive sharded over the ranks of a torch.distributed
group (FSDP2's layout), selection replicated, one all-reduce of six numbers per
child for slerp, data-parallel evaluation (docs/scaling.md)."""
from .comm import Comm
from .evaluators import DataParallelMean, FSDPEvaluator, GatherEvaluator, gather_rows
from .evolution import ShardedEvolution
from .launch import init_from_env, spawn
from .layout import Piece, ShardLayout, data_slice

__all__ = [
    "Comm",
    "DataParallelMean",
    "FSDPEvaluator",
    "GatherEvaluator",
    "Piece",
    "ShardLayout",
    "ShardedEvolution",
    "data_slice",
    "gather_rows",
    "init_from_env",
    "spawn",
]
