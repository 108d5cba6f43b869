"""The niche statistics the engine needs at every step, written into buffers that
are allocated once.

With the compiled backend (C++ on CPU, CUDA C++ on GPU: the default) the
registered op is called directly: the engine checked its score matrix once, when
it was built, and the public functions' per-call argument checks would cost more
than the op itself on a 20 x 1437 archive. Any other backend ("torch", "triton")
goes through the public functions.
"""
import torch

import m2n2_kernels as mk
from m2n2_kernels import _backend


class NicheOps:
    def __init__(self, S, *, alpha, backend=None):
        self.alpha, self.backend = float(alpha), backend
        self.direct = _backend.choose(S.device, backend) == "cpp"
        rows, cols = S.shape
        dtype = torch.float64 if S.dtype == torch.float64 else torch.float32
        new = lambda *shape: torch.empty(shape, dtype=dtype, device=S.device)  # noqa: E731
        self.z, self.fit, self.fit_child = new(cols), new(rows), new(rows + 1)
        self.row_buf, self.matrix_buf, self.none = new(rows), new(rows, rows), new(0)

    def _op(self, S, child, parent, mode, fit, att):
        torch.ops.m2n2.niche_stats_out(S, child, None, self.alpha, 0.0, parent, mode, self.z, fit, att)

    def fitness(self, S):
        """fitness [N] (a reused buffer)."""
        if not self.direct:
            return mk.fitness(S, alpha=self.alpha, backend=self.backend)
        self._op(S, None, -1, "none", self.fit, self.none)
        return self.fit

    def with_child(self, S, child):
        """fitness [N + 1] with `child` counted as row N (a reused buffer)."""
        if not self.direct:
            return mk.fitness(S, child=child, alpha=self.alpha, backend=self.backend)
        self._op(S, child, -1, "none", self.fit_child, self.none)
        return self.fit_child

    def row(self, S, parent):
        """The attraction row A[parent, :] [N] (a reused buffer)."""
        if not self.direct:
            return mk.attraction(S, alpha=self.alpha, parent=parent, backend=self.backend)
        self._op(S, None, parent, "row", self.fit, self.row_buf)
        return self.row_buf

    def matrix(self, S):
        """(fitness [N], attraction matrix [N, N]) (reused buffers)."""
        if not self.direct:
            stats = mk.niche_stats(S, alpha=self.alpha, backend=self.backend)
            return stats.fitness, stats.attraction
        self._op(S, None, -1, "matrix", self.fit, self.matrix_buf)
        return self.fit, self.matrix_buf
