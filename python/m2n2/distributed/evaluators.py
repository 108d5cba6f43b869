"""Data-parallel evaluation of sharded children: every rank scores its slice of the
D datapoints (`data_slice`), and the score rows are all-gathered in rank order, so
every rank gets the whole [K, D] rows of the single-process run.

Two ways to run the model on a rank's slice:
- `GatherEvaluator` gathers each step's K children whole onto every rank (one
  all-gather of K x n elements), then runs a plain scorer: the simple choice for
  models that fit one device;
- `FSDPEvaluator` copies each child's shard into a `fully_shard`ed module's local
  parameters (the layouts are the same: no gather by us) and runs it; FSDP2 gathers
  each layer's parameters as the forward pass reaches it. For models that do not.
"""
import torch

import m2n2_kernels as mk

from ..models import KINDS
from .comm import Comm
from .layout import ShardLayout, data_slice


def gather_rows(comm: Comm, rows, d):
    """Every rank's score columns [K, d_r] (its data slice) -> the whole rows [K, d]."""
    sizes = [b - a for a, b in (data_slice(d, comm.world, r) for r in range(comm.world))]
    return comm.all_gather_cat(rows, sizes, 1, "scores")


class GatherEvaluator:
    """evaluate(shards [K, n_local]) -> [K, D]: gather the children whole, score this
    rank's datapoints with `local` (whole vectors [K, n] -> scores [K, d_r]), gather
    the scores. `d`: the number of datapoints over all ranks."""

    def __init__(self, local, layout: ShardLayout, comm: Comm, d):
        self.local, self.layout, self.comm, self.d = local, layout, comm, int(d)
        self._sizes = [layout.for_rank(r).n_local for r in range(comm.world)]

    def gather_params(self, shards):
        if self.comm.world == 1:
            return shards
        parts = self.comm.all_gather_cat(shards, self._sizes, 1, "params")
        split = torch.split(parts, self._sizes, dim=1)
        return self.layout.unshard(list(split))

    def __call__(self, shards):
        return gather_rows(self.comm, self.local(self.gather_params(shards)), self.d)


class DataParallelMean:
    """test(shards [K, n_local]) -> float64 [K]: the mean score over every rank's
    slice of held-out data. `local_sum(shards)` sums this rank's scores per child
    (float64 [K]); the sums are all-reduced (exact for right/wrong scores) and
    divided by `d`, the datapoints over all ranks."""

    def __init__(self, local_sum, comm: Comm, d):
        self.local_sum, self.comm, self.d = local_sum, comm, int(d)

    def __call__(self, shards):
        total = self.local_sum(shards).to(torch.float64)
        return self.comm.all_reduce_sum(total, "scores") / self.d


class FSDPEvaluator:
    """evaluate(shards [K, n_local]) -> [K, D] with a `fully_shard`ed module.

    module: the architecture, the same (and with the same parameters in the same
        order) on every rank; it is sharded here with FSDP2 over `comm`'s ranks, each
        submodule that owns parameters as one unit, so that the forward pass gathers
        one layer at a time.
    inputs, targets: this rank's slice of the data (`data_slice(d, world, rank)`),
        run through the model `batch_size` at a time (default: all at once). Each
        batch's forward pass gathers every layer again (FSDP2 reshards a layer after
        its forward): batches trade parameter traffic for activation memory.
    d: the number of datapoints over all ranks.
    kind: "correct", "exact" or "prob" (as ModuleEvaluator); forward(module, x) ->
        logits (default: module(x), or its .logits).
    """

    def __init__(self, module, inputs, targets, layout: ShardLayout, comm: Comm, d, *, kind="correct",
                 batch_size=None, forward=None, mesh=None):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        if kind not in KINDS:
            raise ValueError(f"kind must be one of {tuple(KINDS)}, got {kind!r}")
        self.kind, self.layout, self.comm, self.d = kind, layout, comm, int(d)
        self.forward = forward or _default_forward
        mesh = mesh or init_device_mesh(comm.device.type, (comm.world,))
        for sub in list(module.modules())[::-1]:  # innermost first, the root last
            if sub is not module and any(True for _ in sub.parameters(recurse=False)):
                fully_shard(sub, mesh=mesh)
        fully_shard(module, mesh=mesh)
        self.module = module
        self._local_chunks()  # checks that FSDP2's chunks are the layout's pieces
        step = batch_size or max(1, inputs.shape[0])
        self.batches = [(inputs[i : i + step], targets[i : i + step]) for i in range(0, inputs.shape[0], step)]
        tokens = targets.dim()
        self.score_dtype = torch.bool if kind == "exact" or (kind == "correct" and tokens == 1) else torch.float32
        self.d_local = inputs.shape[0]

    def _local_chunks(self):
        """FSDP2's local chunks of the sharded parameters, in named_parameters order;
        they must be the layout's pieces (the same rows of the same parameters)."""
        chunks = []
        for (name, p), piece in zip(_nonempty(self.module), self.layout.pieces):
            local = p.to_local()
            if name != piece.name or tuple(local.shape) != piece.shape:
                raise RuntimeError(f"FSDP2's shard of {name} is {tuple(local.shape)}, the layout expects "
                                   f"{piece.name} {piece.shape}: this torch shards differently")
            chunks.append(local)
        if len(chunks) != len(self.layout.pieces):
            raise RuntimeError("FSDP2's shards and the layout's pieces differ in number")
        return chunks

    def _load(self, shard):
        with torch.no_grad():
            for local, view in zip(self._local_chunks(), self.layout.views(shard)):
                local.copy_(view.view(local.shape))

    def local_scores(self, shards):
        kind, reduce = KINDS[self.kind]
        out = torch.empty(shards.shape[0], self.d_local, dtype=self.score_dtype, device=shards.device)
        with torch.no_grad():
            for i in range(shards.shape[0]):
                self._load(shards[i])
                col = 0
                for x, y in self.batches:
                    logits = self.forward(self.module, x)
                    mk.sample_scores(logits, y, kind=kind, reduce=reduce, out=out[i, col : col + y.shape[0]])
                    col += y.shape[0]
                # Without a backward pass FSDP2 leaves the root's parameters whole
                # after forward: shard them again before the next child is loaded.
                self.module.reshard()
        return out

    def __call__(self, shards):
        return gather_rows(self.comm, self.local_scores(shards), self.d)


def _default_forward(module, x):
    out = module(x)
    return getattr(out, "logits", out)


def _nonempty(module):
    """(name, parameter) of the parameters whose local chunk is not empty, in order."""
    for name, p in module.named_parameters():
        if p.to_local().numel() > 0:
            yield name, p
