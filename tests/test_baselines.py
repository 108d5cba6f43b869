"""The paper's baselines (python/m2n2/baselines): CMA-ES wiring against pycma's own
ask/tell, MAP-Elites' cells and replacement rule, the brute-force sweep, and each on a
tiny budget (determinism, outputs, improvement on the start)."""
import numpy as np
import pytest
import torch

import m2n2
from m2n2.baselines import BASELINES, map_elites
from m2n2.tasks import get_task

cma = pytest.importorskip("cma")


class ToyTask:
    """A 3-class linear classifier on fixed data (n = 5 * 3 = 15), with a test split."""

    name = "toy"
    pretrained = False

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(120, 5, generator=g)
        self.y = (self.x @ torch.randn(5, 3, generator=g)).argmax(1)
        self.device = torch.device("cpu")
        self.odd_mask = self.y % 2 == 1

    def evaluate(self, params):
        return (self.x @ params.view(-1, 5, 3)).argmax(-1) == self.y

    def test(self, params):
        return self.evaluate(params).double().mean(1)

    def init(self, generator):
        return torch.randn(2, 15, generator=generator) * 0.01


def test_cma_es_is_pycma_with_the_reference_settings():
    task = ToyTask()
    cfg = m2n2.EvolveConfig(archive_size=20, forward_passes=20 * 15, seed=3, log_every=20)
    ours = BASELINES["cma-es"](task, cfg)
    # The same by hand: x0 the run's first N(0, 0.01^2) model, sigma0 0.01, 20 per
    # generation, fitness = -train accuracy.
    x0 = task.init(torch.Generator().manual_seed(3))[0].double().numpy()
    es = cma.CMAEvolutionStrategy(x0, 0.01, {"popsize": 20, "seed": 4, "verbose": -9})
    best = -1.0
    for _ in range(15):
        xs = es.ask()
        acc = task.evaluate(torch.from_numpy(np.stack(xs)).float()).double().mean(1).tolist()
        es.tell(xs, [-a for a in acc])
        best = max(best, max(acc))
    assert ours["train_accuracy"] == pytest.approx(best)
    assert ours["train_accuracy"] == pytest.approx(-es.result.fbest)
    assert ours["forward_passes"] == 300 and ours["curve"]["forward_passes"][-1] == 300


def test_cma_es_diagonal_is_separable_cma():
    task = ToyTask()
    cfg = m2n2.EvolveConfig(archive_size=20, forward_passes=100, seed=1)
    a = BASELINES["cma-es"](task, cfg, cma_diagonal=True)
    b = BASELINES["cma-es"](task, cfg, cma_diagonal=True)
    assert a["curve"] == b["curve"], "the same seed gives the same run"
    assert a["curve"] != BASELINES["cma-es"](task, cfg)["curve"]


@pytest.mark.parametrize(
    "odd,even,cell",
    [(0.0, 0.0, 0), (0.05, 0.95, 9), (0.1, 0.0, 10), (0.99, 0.5, 95), (1.0, 1.0, 99), (0.3, 0.7, 37)],
)
def test_map_elites_cells(odd, even, cell):
    assert map_elites.cell_of(odd, even) == cell


def test_map_elites_descriptors_and_replacement_rule():
    scores = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]], dtype=torch.bool)
    odd = torch.tensor([True, False, True, False])
    o, e, q = map_elites.descriptors(scores, odd)
    assert o == [0.5, 0.5] and e == [0.5, 1.0] and q == [0.5, 0.75]
    grid = map_elites.Grid(3, torch.float32, "cpu")
    slot = map_elites.GRID * map_elites.GRID
    grid.params[slot] = torch.tensor([1.0, 2.0, 3.0])
    assert grid.offer(55, 0.5, slot), "an empty cell takes any child"
    grid.params[slot] = torch.tensor([4.0, 5.0, 6.0])
    assert not grid.offer(55, 0.5, slot), "a tie keeps the occupant"
    assert grid.params[55].tolist() == [1.0, 2.0, 3.0]
    assert grid.offer(55, 0.6, slot) and grid.params[55].tolist() == [4.0, 5.0, 6.0]
    assert grid.offer(12, 0.6, slot)
    assert grid.best() == 12, "ties: the first cell in row-major order"


def test_map_elites_parents_are_two_cells_by_quality():
    grid = map_elites.Grid(2, torch.float32, "cpu")
    for cell, q in ((3, 0.2), (40, 0.6), (77, 0.2)):
        grid.quality[cell], grid.occupied[cell] = q, True
    g = torch.Generator().manual_seed(0)
    firsts = []
    for _ in range(4000):
        u = torch.rand(2, generator=g, dtype=torch.float64).tolist()
        a, b = grid.draw_parents(*u)
        assert a != b and {a, b} <= {3, 40, 77}
        firsts.append(a)
    share = firsts.count(40) / len(firsts)
    assert abs(share - 0.6) < 0.04


@pytest.mark.parametrize("name", ["map-elites", "cma-es"])
def test_baselines_from_scratch_improve_and_repeat(name):
    task = get_task("digits")
    cfg = m2n2.EvolveConfig(forward_passes=300, mutation_std=0.01, seed=0, log_every=50)
    a = BASELINES[name](task, cfg, cma_diagonal=True)
    b = BASELINES[name](task, cfg, cma_diagonal=True)
    assert a["curve"] == b["curve"] and a["test_accuracy"] == b["test_accuracy"]
    c = a["curve"]
    # points at the first whole step past every 50 passes (CMA-ES steps by generations of 20)
    expect = [0, 50, 100, 150, 200, 250, 300] if name == "map-elites" else [60, 100, 160, 200, 260, 300]
    assert c["forward_passes"] == expect
    assert c["train_accuracy"][-1] > c["train_accuracy"][0] + 0.05
    assert 0 < a["test_accuracy"] <= 1 and a["seconds"] > 0


def test_brute_force_sweeps_slerp_between_the_specialists():
    task = get_task("digits", pretrained=True)
    cfg = m2n2.EvolveConfig(forward_passes=101, seed=0, log_every=50)
    r = BASELINES["brute-force"](task, cfg)
    a, b = task.init(None)
    ws = torch.linspace(0, 1, 101, dtype=torch.float64)
    accs = []
    for w in ws.tolist():
        child = m2n2_kernels_slerp(a, b, w)
        accs.append(float(task.evaluate.accuracy(child[None])[0]))
    best = int(np.argmax(accs))  # the first maximum
    assert r["train_accuracy"] == pytest.approx(accs[best])
    child = m2n2_kernels_slerp(a, b, ws[best].item())
    assert r["test_accuracy"] == pytest.approx(float(task.test(child[None])[0]))
    assert r["train_accuracy"] >= max(accs[0], accs[-1]), "at least as good as either specialist"
    with pytest.raises(ValueError, match="use --pretrained"):
        BASELINES["brute-force"](get_task("digits"), cfg)


def m2n2_kernels_slerp(a, b, w):
    import m2n2_kernels as mk

    return mk.split_interpolate(a, b, a.numel(), w, method="slerp")
