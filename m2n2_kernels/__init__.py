"""m2n2_kernels: fused kernels for evolutionary model merging (M2N2 and cousins).

Ops run on CPU tensors through C++/OpenMP, on CUDA tensors through CUDA C++ when it
was compiled (else Triton); `backend=` or the M2N2_BACKEND environment variable
choose "cpp", "triton" or "torch" (the pure-torch reference in `reference.py`).
"""
import json
import os

import torch

from . import _C  # noqa: F401  (registers torch.ops.m2n2.*)
from . import ops as _ops_module  # noqa: F401  (fake kernels, Triton fallbacks)
from .crossover import crossover_batch, interp_sums, split_interpolate, split_interpolate_
from .niches import NicheStats, attraction, fitness, niche_stats, replace_index
from .pcb import pcb_merge
from .scores import sample_scores
from .task_vectors import breadcrumbs_merge, dare_merge, della_merge, task_arithmetic, task_merge, ties_merge

__version__ = "0.1.0"

__all__ = [
    "NicheStats",
    "attraction",
    "breadcrumbs_merge",
    "build_info",
    "crossover_batch",
    "dare_merge",
    "della_merge",
    "fitness",
    "interp_sums",
    "niche_stats",
    "pcb_merge",
    "replace_index",
    "sample_scores",
    "split_interpolate",
    "split_interpolate_",
    "task_arithmetic",
    "task_merge",
    "ties_merge",
]


def build_info() -> dict:
    """What this installation can run.

    Keys: cpu (always True), openmp, omp_max_threads, cpu_isa (the instruction set
    the C++ kernels dispatched to), cuda (CUDA C++ kernels compiled), cuda_archs,
    cuda_version (the toolkit they were compiled with), torch, triton (version or
    None), cuda_available (a GPU is visible now).
    """
    info = {"cpu": True}
    info.update(json.loads(torch.ops.m2n2.build_info()))
    info["torch"] = torch.__version__
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    info["triton_interpret"] = os.environ.get("TRITON_INTERPRET", "0") == "1"
    info["cuda_available"] = torch.cuda.is_available()
    return info
