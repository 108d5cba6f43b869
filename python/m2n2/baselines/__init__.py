"""The paper's baselines beside M2N2, under the same task, budget and outputs:
CMA-ES (pycma), MAP-Elites, and the brute-force slerp sweep between two
pre-trained models (docs/semantics.md, "Baselines").

Each baseline is `run(task, config, *, progress=None, cma_diagonal=False)` ->
the same result dict as Evolution.run (forward_passes, seconds, train_accuracy,
test_accuracy, curve), with the same meaning: the test accuracy of the solution
with the best train accuracy so far, at every `log_every` forward passes.
"""
from .brute_force import run_brute_force
from .cma_es import run_cma_es
from .map_elites import run_map_elites

BASELINES = {"cma-es": run_cma_es, "map-elites": run_map_elites, "brute-force": run_brute_force}

__all__ = ["BASELINES", "run_brute_force", "run_cma_es", "run_map_elites"]
