"""The engine's tasks, sharded: the layout, the data-parallel evaluators and the
starting models of a task on one rank.

A task runs sharded when it has `sharded_parts(comm, eval_mode)`; the digits task's
are here (its flat vector is four parameters, W1 [64, 256], b1, W2 [256, 10], b2,
as docs/semantics.md lays it out).
"""
import torch

from ..tasks import digits as digits_task
from .evaluators import DataParallelMean, FSDPEvaluator, GatherEvaluator
from .layout import ShardLayout, data_slice

EVAL_MODES = ("gather", "fsdp")

DIGITS_PARAMS = (
    ("w1", (digits_task.N_IN, digits_task.N_HIDDEN)),
    ("b1", (digits_task.N_HIDDEN,)),
    ("w2", (digits_task.N_HIDDEN, digits_task.N_OUT)),
    ("b2", (digits_task.N_OUT,)),
)


class DigitsMLP(torch.nn.Module):
    """The digits MLP as a module with the flat vector's parameters, for FSDP2. Its
    forward pass makes the same products as `MLPScorer` (the bias row appended to
    W1, the inputs carrying a 1), so both evaluation modes give the same bits."""

    def __init__(self):
        super().__init__()
        for name, shape in DIGITS_PARAMS:
            self.register_parameter(name, torch.nn.Parameter(torch.zeros(shape), requires_grad=False))

    def forward(self, x1):
        w1b1 = torch.cat([self.w1, self.b1.unsqueeze(0)])
        return torch.addmm(self.b2, torch.mm(x1, w1b1).relu_(), self.w2)


class ShardedParts:
    """What ShardedEvolution needs for one task on one rank."""

    def __init__(self, layout, evaluate, test, init):
        self.layout, self.evaluate, self.test, self.init = layout, evaluate, test, init


def digits_parts(task, comm, eval_mode="gather"):
    """The digits task on this rank: train and test data split over the ranks."""
    if eval_mode not in EVAL_MODES:
        raise ValueError(f"eval_mode must be one of {EVAL_MODES}, got {eval_mode!r}")
    layout = ShardLayout(DIGITS_PARAMS, comm.world, comm.rank)
    assert layout.n == digits_task.N_PARAMS
    x_train, y_train, x_test, y_test = digits_task.load_data(task.device)
    parts = []
    for x, y in ((x_train, y_train), (x_test, y_test)):
        lo, hi = data_slice(x.shape[0], comm.world, comm.rank)
        parts.append((x[lo:hi], y[lo:hi], x.shape[0]))
    (xt, yt, d), (xs, ys, d_test) = parts
    if eval_mode == "gather":
        evaluate = GatherEvaluator(digits_task.MLPScorer(xt, yt), layout, comm, d)
        scorer = digits_task.MLPScorer(xs, ys)
        test = DataParallelMean(lambda shards: scorer(evaluate.gather_params(shards)).sum(1, dtype=torch.float64),
                                comm, d_test)
    else:
        ones = lambda x: torch.cat([x.float(), torch.ones(x.shape[0], 1, device=x.device)], 1)  # noqa: E731
        evaluate = FSDPEvaluator(DigitsMLP().to(task.device), ones(xt), yt, layout, comm, d)
        test_eval = FSDPEvaluator(DigitsMLP().to(task.device), ones(xs), ys, layout, comm, d_test)
        test = DataParallelMean(lambda shards: test_eval.local_scores(shards).sum(1, dtype=torch.float64),
                                comm, d_test)
    return ShardedParts(layout, evaluate, test, task.init)


SHARDED_TASKS = {"digits": digits_parts}


def sharded_parts(task, comm, eval_mode="gather"):
    if task.name not in SHARDED_TASKS:
        raise ValueError(f"task {task.name!r} cannot run sharded yet; sharded tasks: {', '.join(SHARDED_TASKS)}")
    return SHARDED_TASKS[task.name](task, comm, eval_mode)
