"""CMA-ES with pycma, as the reference experiment runs it: from one model of
N(0, 0.01^2) parameters, sigma0 0.01, a population of 20, full covariance, the
train accuracy as fitness (pycma minimises its negative), one batched evaluation
of the whole population per generation; reported: the test accuracy of the best
solution met so far (pycma's xbest).

Full covariance in 19,210 dimensions keeps an n x n matrix and its
eigendecomposition (about 3 GB each in float64, and an O(n^3) decomposition every
few hundred generations): `cma_diagonal=True` runs separable CMA-ES (pycma's
`CMA_diagonal`, O(n) per sample) instead, the fast variant.
"""
import numpy as np
import torch

from ._common import Curve, Loop, accuracy


def _cma():
    try:
        import cma
    except ImportError as e:
        raise ImportError("the cma-es baseline needs pycma: pip install 'm2n2-kernels[baselines]' (or pip install cma)") from e
    return cma


def run_cma_es(task, config, *, progress=None, cma_diagonal=False, **_):
    cma = _cma()
    population = config.archive_size  # the reference uses its population size, 20
    total = config.forward_passes
    generator = torch.Generator(device=task.device).manual_seed(config.seed)
    start = task.init(generator)[0]  # one model of N(0, 0.01^2) parameters
    dtype = start.dtype
    options = {
        "popsize": population,
        "seed": config.seed + 1,  # pycma reads 0 as "seed from the clock"
        "verbose": -9,
        "CMA_diagonal": bool(cma_diagonal),
        # A fixed budget of generations, as the reference runs it: no early stop.
        "tolfun": 0, "tolx": 0, "tolfunhist": 0, "tolflatfitness": 10**9, "tolstagnation": 10**9,
        "tolconditioncov": float("inf"), "maxiter": float("inf"), "maxfevals": float("inf"),
    }
    es = cma.CMAEvolutionStrategy(start.double().cpu().numpy(), 0.01, options)
    curve = Curve(task, config.log_every)  # no point at 0: nothing is scored before the first batch
    with Loop() as loop:
        while curve.passes < total:
            loop.check(curve.passes)
            k = min(population, total - curve.passes)
            solutions = es.ask()
            params = torch.from_numpy(np.stack(solutions[:k])).to(task.device, dtype)
            acc = accuracy(task.evaluate(params))
            if k == population:  # a last, partial generation is scored but not told
                es.tell(solutions, [-a for a in acc])
            best = max(range(k), key=lambda i: acc[i])
            curve.offer(params[best], acc[best])
            curve.advance(k, total, progress)
        return curve.result(loop.seconds)
