"""What the baselines share: the curve of the best solution so far, and Ctrl-C."""
import math
import time

import torch

from ..evolve import Interrupted, _deferred_sigint


class Curve:
    """The best solution so far (by train accuracy, the first on ties) and the curve
    of its train and test accuracy at every `log_every` forward passes."""

    def __init__(self, task, log_every):
        self.task, self.log_every = task, log_every
        self.passes = 0
        self.best_train = -math.inf
        self.best_params = None
        self.best_test = float("nan")
        self.curve = {"forward_passes": [], "train_accuracy": [], "test_accuracy": []}

    def offer(self, params, train):
        """A solution [n] and its train accuracy; kept when strictly better."""
        if train > self.best_train:
            self.best_train = float(train)
            self.best_params = params.detach().clone()
            self.best_test = float(self.task.test(self.best_params[None])[0])

    def advance(self, passes, total, progress=None):
        """Count `passes` more forward passes; log a point when a multiple of
        log_every (or the end) is crossed."""
        before = self.passes
        self.passes += passes
        if progress is not None:
            progress.update(passes)
        if self.passes // self.log_every != before // self.log_every or self.passes >= total:
            self.point(progress)

    def point(self, progress=None):
        self.curve["forward_passes"].append(self.passes)
        self.curve["train_accuracy"].append(self.best_train)
        self.curve["test_accuracy"].append(self.best_test)
        if progress is not None:
            progress.set_postfix(train=f"{self.best_train:.4f}", test=f"{self.best_test:.4f}", refresh=False)

    def result(self, seconds):
        return {
            "forward_passes": self.passes,
            "seconds": seconds,
            "train_accuracy": self.best_train,
            "test_accuracy": self.best_test,
            "curve": self.curve,
        }


def accuracy(scores):
    """Mean score of each row of [K, D] scores, float64 on the host (a list)."""
    return (scores.sum(1, dtype=torch.float64) / scores.shape[1]).tolist()


class Loop:
    """Times the loop and turns Ctrl-C into Interrupted between two iterations (a
    baseline run has no checkpoint: an interrupted one starts again on resume)."""

    def __enter__(self):
        self._sigint = _deferred_sigint()
        self.flag = self._sigint.__enter__()
        self.start = time.perf_counter()
        return self

    def check(self, passes):
        if self.flag["hit"]:
            raise Interrupted(f"interrupted after {passes} forward passes")

    @property
    def seconds(self):
        return time.perf_counter() - self.start

    def __exit__(self, *exc):
        return self._sigint.__exit__(*exc)
