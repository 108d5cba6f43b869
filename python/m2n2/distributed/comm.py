"""The few collectives the sharded engine uses, over one torch.distributed group,
with the bytes each one moves counted by purpose.

Counted bytes are the size of a collective's result on this rank (the reduced
tensor, or everything gathered): what arrives per rank, the number that scales
with the model or the data. Purposes: "sums" (slerp's six numbers per child),
"scores" (the children's score rows), "params" (whole children gathered for
evaluation, the `gather` evaluation mode), "control" (stop flags, checks).
"""
import collections
import hashlib
import pickle

import torch
import torch.distributed as dist


class Comm:
    """Collectives over `group` (default: the whole world). Tensors are moved to
    `device` for the transport (CUDA for NCCL, CPU for gloo)."""

    def __init__(self, group=None, device=None):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised: call torch.distributed.init_process_group "
                               "first (torchrun, or m2n2.distributed.launch)")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        backend = dist.get_backend(group)
        if device is None:
            device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        self.device = torch.device(device)
        self.bytes = collections.Counter()
        self.calls = collections.Counter()

    def _count(self, purpose, t):
        self.bytes[purpose] += t.numel() * t.element_size()
        self.calls[purpose] += 1

    # ---- tensors ------------------------------------------------------------------

    def all_reduce_sum(self, t, purpose):
        """Sum `t` over the ranks, in place (moved to the transport's device and back)."""
        if self.world == 1:
            return t
        x = t if t.device == self.device else t.to(self.device)
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=self.group)
        if x is not t:
            t.copy_(x)
        self._count(purpose, t)
        return t

    def all_gather_cat(self, t, sizes, dim, purpose):
        """Every rank's `t` concatenated along `dim` in rank order; `sizes[r]` is rank
        r's extent along dim (they may differ: each part is padded to the largest for
        the transport and cut back)."""
        if len(sizes) != self.world or t.shape[dim] != sizes[self.rank]:
            raise ValueError(f"all_gather_cat: this rank's part has {t.shape[dim]} along dim {dim}, "
                             f"sizes say {sizes}")
        if self.world == 1:
            return t
        dim = dim % t.dim()
        width = max(sizes)
        src = t.to(self.device)
        if t.dtype == torch.bool:  # gloo has no bool collectives; the bytes are the same
            src = src.view(torch.uint8)
        if src.shape[dim] < width:
            pad = list(src.shape)
            pad[dim] = width - src.shape[dim]
            src = torch.cat([src, src.new_zeros(pad)], dim)
        src = src.contiguous()
        parts = [torch.empty_like(src) for _ in range(self.world)]
        dist.all_gather(parts, src, group=self.group)
        out = torch.cat([p.narrow(dim, 0, s) for p, s in zip(parts, sizes)], dim)
        if t.dtype == torch.bool:
            out = out.view(torch.bool)
        out = out.to(t.device)
        self._count(purpose, out)
        return out

    def any(self, flag):
        """True on every rank when `flag` is true on any (one small all-reduce)."""
        if self.world == 1:
            return bool(flag)
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        self._count("control", t)
        return bool(t.item())

    def barrier(self):
        if self.world > 1:
            dist.barrier(group=self.group)

    # ---- Python objects -----------------------------------------------------------

    def gather_objects(self, obj):
        """Every rank's `obj` (picklable), in rank order."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj, group=self.group)
        self._count("control", torch.empty(len(pickle.dumps(obj)) * self.world, dtype=torch.uint8))
        return out

    def broadcast_object(self, obj, src=0):
        """Rank `src`'s `obj` on every rank."""
        if self.world == 1:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, group=self.group)
        self._count("control", torch.empty(len(pickle.dumps(box[0])), dtype=torch.uint8))
        return box[0]

    def check_same(self, values, what):
        """Raise ValueError on every rank, naming the key and the ranks, when the dict
        `values` differs between ranks (rank 0's is the reference)."""
        every = self.gather_objects(values)
        for key in values:
            differ = [r for r, v in enumerate(every) if v.get(key) != every[0].get(key)]
            if differ:
                raise ValueError(
                    f"{what}: {key} differs between ranks: rank 0 has {every[0].get(key)!r}, "
                    + ", ".join(f"rank {r} has {every[r].get(key)!r}" for r in differ)
                )
        extra = sorted({k for v in every for k in v} - set(values))
        if extra:
            raise ValueError(f"{what}: ranks disagree on what to compare ({extra})")

    def check_digest(self, parts, what):
        """Raise on every rank when the sha256 of `parts` (tensors and numbers) differs
        between ranks: the replicated state drifted apart."""
        h = hashlib.sha256()
        for p in parts:
            if isinstance(p, torch.Tensor):
                h.update(str((p.dtype, tuple(p.shape))).encode())
                h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            else:
                h.update(repr(p).encode())
        digests = self.gather_objects(h.hexdigest())
        differ = [r for r, d in enumerate(digests) if d != digests[0]]
        if differ:
            raise RuntimeError(f"{what}: the replicated state of rank(s) {differ} differs from rank 0's "
                               "(selection is no longer identical on every rank)")
