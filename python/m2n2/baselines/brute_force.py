"""The brute-force sweep of plain slerp between the two pre-trained specialists:
10,000 evenly spaced w in [0, 1] (one global angle, no split point, no mutation),
each child scored on the training images; reported: the test accuracy of the best
on train (the first one on ties). One forward pass per w; the children are made in
batches with one `crossover_batch` call each.
"""
import torch

import m2n2_kernels as mk

from ._common import Curve, Loop, accuracy

BATCH = 250


def run_brute_force(task, config, *, progress=None, **_):
    if not getattr(task, "pretrained", False):
        raise ValueError("brute-force sweeps between two pre-trained models: use --pretrained")
    total = config.forward_passes
    models = task.init(None)
    if models.shape[0] != 2:
        raise ValueError(f"brute-force needs exactly two starting models, got {models.shape[0]}")
    n = models.shape[1]
    ws = torch.linspace(0, 1, total, dtype=torch.float64, device=task.device)
    out = torch.empty(min(BATCH, max(1, total)), n, dtype=models.dtype, device=task.device)
    zero = torch.zeros(out.shape[0], dtype=torch.int64, device=task.device)
    curve = Curve(task, config.log_every)  # no point at 0: nothing is scored before the first batch
    with Loop() as loop:
        for lo in range(0, total, BATCH):
            loop.check(curve.passes)
            k = min(BATCH, total - lo)
            children = out[:k]
            mk.crossover_batch(models, zero[:k], zero[:k] + 1, torch.full_like(zero[:k], n), ws[lo : lo + k],
                               method="slerp", omega="global", out=children)
            acc = accuracy(task.evaluate(children))
            for i in range(k):  # in w order, so that the first best is kept, and the curve is per pass
                curve.offer(children[i], acc[i])
                curve.advance(1, total, progress)
        return curve.result(loop.seconds)
