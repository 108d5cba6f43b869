"""Which part of a model's flat parameter vector each rank holds.

The layout is FSDP2's (`torch.distributed.fsdp.fully_shard`): every parameter is
cut along dim 0 into chunks of ceil(rows / R) rows, and rank r holds chunk r (empty
when r * chunk >= rows). A chunk of rows is a contiguous range of the parameter's
row-major elements, so it is a contiguous range of the flat vector too, at a known
global offset. A rank's shard of a model is its chunks of every parameter, one after
another in parameter order: a vector of n_r elements made of pieces that are not
adjacent in the global vector (the other ranks' chunks lie between them). That is
what `m2n2_kernels.split_interpolate(..., index_offsets=)` takes: one global offset
per piece, so the split and the mutation noise land where the single-process child
has them.

Because the chunks are FSDP2's, a child's shard is copied straight into a
fully_shard'ed module's local parameters (`FSDPEvaluator`) without a gather.
"""
import bisect
import dataclasses
import math
from typing import List, Sequence, Tuple

import torch


@dataclasses.dataclass(frozen=True)
class Piece:
    """One parameter's chunk on one rank: `numel` elements at `global_offset` in the
    flat vector and at `local_offset` in the rank's shard; `shape` is the chunk's
    shape (rows x the parameter's other dims)."""

    name: str
    global_offset: int
    local_offset: int
    numel: int
    shape: Tuple[int, ...]


class ShardLayout:
    """The FSDP2 dim-0 layout of parameters `params` [(name, shape)] (in the flat
    vector's order) over `world` ranks, seen from `rank`.

    n: elements of the whole vector; n_local: of this rank's shard; pieces: this
    rank's chunks (the empty ones left out) in parameter order.
    """

    def __init__(self, params: Sequence[Tuple[str, Sequence[int]]], world: int, rank: int):
        if isinstance(world, bool) or not isinstance(world, int) or world < 1:
            raise ValueError(f"world must be a positive integer, got {world!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world:
            raise ValueError(f"rank must lie in [0, {world}), got {rank!r}")
        self.params = [(str(name), tuple(int(s) for s in shape)) for name, shape in params]
        if not self.params:
            raise ValueError("params must name at least one parameter")
        names = [name for name, _ in self.params]
        if len(set(names)) != len(names):
            raise ValueError("params must have distinct names")
        for name, shape in self.params:
            if any(s < 0 for s in shape):
                raise ValueError(f"parameter {name!r} has a negative size in shape {shape}")
        self.world, self.rank = world, rank
        self.pieces: List[Piece] = []
        offset = local = 0
        for name, shape in self.params:
            rows, row = _rows(shape)
            first, last = _chunk_rows(rows, world, rank)
            numel = (last - first) * row
            if numel > 0:
                chunk_shape = (last - first,) + tuple(shape[1:]) if shape else ()
                self.pieces.append(Piece(name, offset + first * row, local, numel, chunk_shape))
                local += numel
            offset += rows * row
        self.n, self.n_local = offset, local
        self.global_offsets = [p.global_offset for p in self.pieces]

    @classmethod
    def from_module(cls, module: torch.nn.Module, world: int, rank: int):
        """The layout of a module's parameters in `named_parameters()` order (the flat
        vector of `m2n2.flatten`)."""
        return cls([(name, p.shape) for name, p in module.named_parameters()], world, rank)

    def for_rank(self, rank: int) -> "ShardLayout":
        return ShardLayout(self.params, self.world, rank)

    def signature(self):
        """What must be equal on every rank (checked at start and in checkpoints)."""
        return {"world": self.world, "n": self.n, "params": [[name, list(shape)] for name, shape in self.params]}

    # ---- moving data between the whole vector and a shard -------------------------

    def views(self, shard: torch.Tensor) -> List[torch.Tensor]:
        """The pieces of one shard row [n_local] as 1-D views, in piece order (what the
        crossover ops take with `index_offsets=global_offsets`)."""
        if shard.dim() != 1 or shard.shape[0] != self.n_local:
            raise ValueError(f"shard must be a vector of {self.n_local} elements (this rank's), got shape "
                             f"{tuple(shard.shape)}")
        return [shard[p.local_offset : p.local_offset + p.numel] for p in self.pieces]

    def shard(self, full: torch.Tensor) -> torch.Tensor:
        """This rank's columns of full vectors [..., n]: a new tensor [..., n_local]."""
        if full.dim() < 1 or full.shape[-1] != self.n:
            raise ValueError(f"full must have {self.n} elements in its last dim (the whole vector), got shape "
                             f"{tuple(full.shape)}")
        if not self.pieces:
            return full.new_empty(full.shape[:-1] + (0,))
        return torch.cat([full[..., p.global_offset : p.global_offset + p.numel] for p in self.pieces], -1)

    def unshard(self, shards: Sequence[torch.Tensor]) -> torch.Tensor:
        """Whole vectors [..., n] from every rank's shard [..., n_r] (rank order)."""
        if len(shards) != self.world:
            raise ValueError(f"shards must hold one tensor per rank ({self.world}), got {len(shards)}")
        lead = shards[0].shape[:-1]
        full = shards[0].new_empty(lead + (self.n,))
        for r, s in enumerate(shards):
            layout = self if r == self.rank else self.for_rank(r)
            if s.shape != lead + (layout.n_local,):
                raise ValueError(f"shards[{r}] must have shape {tuple(lead + (layout.n_local,))}, got {tuple(s.shape)}")
            for p in layout.pieces:
                full[..., p.global_offset : p.global_offset + p.numel] = s[..., p.local_offset : p.local_offset + p.numel]
        return full

    def overlaps(self, other: "ShardLayout"):
        """(local offset here, local offset in `other`, count) for every run of global
        elements that this rank's shard and `other`'s share: how to reshard a
        checkpoint written by another number of ranks (read from every old rank's
        file the runs that this rank now holds)."""
        out = []
        theirs = sorted(other.pieces, key=lambda p: p.global_offset)
        starts = [p.global_offset for p in theirs]
        for p in self.pieces:
            lo, hi = p.global_offset, p.global_offset + p.numel
            i = max(0, bisect.bisect_right(starts, lo) - 1)
            while i < len(theirs) and theirs[i].global_offset < hi:
                q = theirs[i]
                a, b = max(lo, q.global_offset), min(hi, q.global_offset + q.numel)
                if a < b:
                    out.append((p.local_offset + a - lo, q.local_offset + a - q.global_offset, b - a))
                i += 1
        return out


def _rows(shape):
    """(rows, elements per row) of a parameter; a 0-d parameter is one row of one."""
    if len(shape) == 0:
        return 1, 1
    return shape[0], math.prod(shape[1:])


def _chunk_rows(rows, world, rank):
    """[first, last) rows of chunk `rank`: torch.chunk's (and FSDP2's) ceil split."""
    size = -(-rows // world) if rows else 0
    first = min(rows, rank * size)
    return first, min(rows, first + size)


def data_slice(d: int, world: int, rank: int) -> Tuple[int, int]:
    """[start, stop) of this rank's datapoints: D split into contiguous, nearly equal
    parts in rank order, so that the gathered score row is the single-process one."""
    base, extra = divmod(d, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)
