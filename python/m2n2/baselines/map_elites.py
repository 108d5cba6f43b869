"""MAP-Elites on the digits task, as the reference experiment runs it.

A 10 x 10 grid of cells indexed by two behaviour descriptors of a model, its
accuracy on the training images of odd digits and on those of even digits (cell
(floor(10 a_odd), floor(10 a_even)), an accuracy of 1 in the last cell); the
quality of a model is its overall train accuracy. Each step draws two parents
from the occupied cells with probability proportional to their quality (two
different cells when at least two have a positive quality), makes a child by the
same split-point slerp and mutation as M2N2 (one `crossover_batch` call), scores
it, and keeps it when its cell is empty or it beats the occupant. Reported: the
test accuracy of the best cell (the first in row-major order on ties).
"""
import math

import torch

import m2n2_kernels as mk

from ..evolve import step_seed
from ..select import inverse_cdf
from ._common import Curve, Loop

GRID = 10


def cell_of(odd_accuracy, even_accuracy):
    """The cell index (row-major in the 10 x 10 grid) of a model's descriptors."""
    i = min(int(math.floor(odd_accuracy * GRID)), GRID - 1)
    j = min(int(math.floor(even_accuracy * GRID)), GRID - 1)
    return i * GRID + j


class Descriptors:
    """(odd-digit accuracy, even-digit accuracy, overall accuracy) of each row of bool
    scores [K, D], for the mask of images with an odd label. The [D, 3] 0/1 matrix
    (odd images, even images, all images) and the three image counts are made once:
    each call is one product, scores @ it, that counts each model's right answers
    (counts below 2**24 are exact in fp32), divided in fp64 on the host."""

    def __init__(self, odd):
        w = odd.to(torch.float32)
        self.weights = torch.stack([w, 1 - w, torch.ones_like(w)], dim=1)
        n_odd = int(odd.sum())
        self.sizes = [max(1, n_odd), max(1, odd.numel() - n_odd), odd.numel()]

    def __call__(self, scores):
        counts = (scores.to(self.weights.dtype) @ self.weights).tolist()
        return tuple([row[k] / self.sizes[k] for row in counts] for k in range(3))


def descriptors(scores, odd):
    """Descriptors(odd)(scores), for a single use."""
    return Descriptors(odd)(scores)


class Grid:
    """The MAP-Elites archive: one model per cell."""

    def __init__(self, n, dtype, device):
        self.params = torch.zeros(GRID * GRID + 1, n, dtype=dtype, device=device)  # + one child slot
        self.quality = [0.0] * (GRID * GRID)
        self.occupied = [False] * (GRID * GRID)
        self.version = [0] * (GRID * GRID)

    def offer(self, cell, quality, slot_row):
        """Keep the model in `slot_row` of params when its cell is empty or it is
        strictly better than the occupant. Returns whether it was kept."""
        if self.occupied[cell] and not quality > self.quality[cell]:
            return False
        self.params[cell].copy_(self.params[slot_row])
        self.quality[cell], self.occupied[cell] = quality, True
        self.version[cell] += 1
        return True

    def draw_parents(self, u1, u2):
        """Two occupied cells drawn with probability proportional to quality: the
        second among the others when at least two cells have a positive quality."""
        cells = [c for c in range(GRID * GRID) if self.occupied[c]]
        weights = [self.quality[c] for c in cells]
        if sum(weights) <= 0:
            weights = [1.0] * len(cells)
        first = inverse_cdf(weights, u1)
        if sum(1 for w in weights if w > 0) >= 2:
            weights = list(weights)
            weights[first] = 0.0
        return cells[first], cells[inverse_cdf(weights, u2)]

    def best(self):
        """The first cell (row-major) of the highest quality."""
        top = max(q for q, o in zip(self.quality, self.occupied) if o)
        return next(c for c in range(GRID * GRID) if self.occupied[c] and self.quality[c] == top)


def run_map_elites(task, config, *, progress=None, **_):
    if not hasattr(task, "odd_mask"):
        raise ValueError(f"map-elites needs a task with odd/even descriptors (digits), not {task.name!r}")
    total = config.forward_passes
    generator = torch.Generator(device=task.device).manual_seed(config.seed)
    start = task.init(generator)
    grid = Grid(start.shape[1], start.dtype, task.device)
    slot = GRID * GRID
    describe = Descriptors(task.odd_mask)
    curve = Curve(task, config.log_every)
    tested = {}

    def log_point():
        if not any(grid.occupied):
            return
        c = grid.best()
        if tested.get("key") != (c, grid.version[c]):
            tested["key"] = (c, grid.version[c])
            tested["value"] = float(task.test(grid.params[c : c + 1])[0])
        curve.best_train, curve.best_test = grid.quality[c], tested["value"]

    for model in start:  # the starting models go in as children do
        grid.params[slot].copy_(model)
        o, e, q = describe(task.evaluate(grid.params[slot : slot + 1]))
        grid.offer(cell_of(o[0], e[0]), q[0], slot)
    log_point()
    curve.point()
    n = start.shape[1]
    # The op's arguments as tensors, filled in place each step (no list conversions).
    ia, ib, cut = (torch.zeros(1, dtype=torch.int64, device=task.device) for _ in range(3))
    w = torch.zeros(1, dtype=torch.float64, device=task.device)
    with Loop() as loop:
        step = 0
        while curve.passes < total:
            loop.check(curve.passes)
            u = torch.rand(4, dtype=torch.float64, generator=generator, device=task.device).tolist()
            a, b = grid.draw_parents(u[0], u[1])
            split = min(int(u[2] * n), n - 1)
            ia[0], ib[0], cut[0], w[0] = a, b, split, u[3]
            mk.crossover_batch(
                grid.params[:slot], ia, ib, cut, w, noise_std=config.mutation_std,
                seed=step_seed(config.seed, step), out=grid.params[slot:],
            )
            o, e, q = describe(task.evaluate(grid.params[slot:]))
            grid.offer(cell_of(o[0], e[0]), q[0], slot)
            step += 1
            before = curve.passes
            curve.passes += 1
            if progress is not None:
                progress.update(1)
            if curve.passes // config.log_every != before // config.log_every or curve.passes >= total:
                log_point()
                curve.point(progress)
        return curve.result(loop.seconds)
