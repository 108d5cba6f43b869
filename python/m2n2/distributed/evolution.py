"""M2N2 with the archive sharded over the ranks of a torch.distributed group.

Rank r holds its shard of every model (archive rows [N + K, n_r], the FSDP2 layout
of `ShardLayout`); the score matrix S, the train scores, the generator and the
lineage are replicated. A step (docs/scaling.md):
- selection: every rank draws the same parents, split and w from the same seeded
  generator and the same S (no communication);
- crossover: for slerp, each rank sums the angle's six fp64 numbers over its pieces
  (`interp_sums(..., index_offsets=)`), one all-reduce of K x 6 numbers, then each
  rank writes its shard of every child (`split_interpolate(..., sums=, stream=k)`);
  the split and the mutation noise use global element indices, so a lerp child is
  the single-process child bit for bit, and a slerp child differs only by the fp64
  sums' order of addition;
- evaluation: the evaluator (collective) scores the K child shards on every rank's
  slice of the data and returns the whole score rows [K, D] (`evaluators.py`);
- replacement and bookkeeping: the single-process engine's, identical on every rank.
Selection is therefore deterministic across ranks; `check_every` compares a digest
of the replicated state between ranks every so many steps (a debug mode).
"""
import uuid

import torch

import m2n2_kernels as mk

from ..evolve import Evolution, EvolveConfig, step_seed
from .comm import Comm
from .layout import ShardLayout


class ShardedEvolution(Evolution):
    """An M2N2 run whose archive is sharded over the ranks of `comm`.

    evaluate(shards [K, n_local]) -> scores [K, D]: collective (every rank calls it
        with its shards of the same children and gets the same whole scores).
    init: the starting models as whole vectors [M, n], or a callable
        init(generator) -> [M, n] (every rank draws them and keeps its shard), or
        None with `init_shards` [M, n_local] (this rank's shards of them).
    test(shards [1, n_local]) -> [1] (collective, optional).
    check_every: compare the replicated state's digest between ranks every so many
        steps (0: never).
    The other arguments are Evolution's. Every rank must call every method in the
    same order (they are collective).
    """

    def __init__(self, evaluate, init, config=None, *, layout: ShardLayout, comm: Comm, init_shards=None,
                 test=None, device=None, dtype=None, backend=None, check_scores=True, check_every=0, describe=None):
        if not isinstance(layout, ShardLayout):
            raise TypeError(f"layout must be a ShardLayout, got {type(layout).__name__}")
        if layout.world != comm.world or layout.rank != comm.rank:
            raise ValueError(f"layout is for rank {layout.rank} of {layout.world}, this process is rank "
                             f"{comm.rank} of {comm.world}")
        if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 0:
            raise ValueError(f"check_every must be an integer >= 0, got {check_every!r}")
        config = (config or EvolveConfig()).validate()
        self.layout, self.comm, self.check_every = layout, comm, check_every
        # Before the first collective that could disagree in shape: the configuration
        # and the model must be the same everywhere.
        given = init_shards if init is None else init
        if dtype is None and isinstance(given, torch.Tensor):
            dtype = given.dtype  # what the archive will hold: compared too
        comm.check_same(
            {"config": config.to_dict(), "model": layout.signature(), "dtype": str(dtype),
             "task": describe or {}, "evaluate": type(evaluate).__name__,
             "datapoints": getattr(evaluate, "d", None), "init": "shards" if init is None else "whole"},
            "the ranks were started with different settings",
        )
        if init is None:
            if not isinstance(init_shards, torch.Tensor):
                raise TypeError("give init (whole models) or init_shards (this rank's shards of them)")
            start = init_shards
        elif init_shards is not None:
            raise ValueError("give init or init_shards, not both")
        elif callable(init):
            start = lambda generator: layout.shard(init(generator))  # noqa: E731 (drawn whole, kept sharded)
        else:
            start = layout.shard(init)
        super().__init__(evaluate, start, config, test=test, device=device, dtype=dtype, backend=backend,
                         sync_free=False, check_scores=check_scores)
        self.run_id = comm.broadcast_object(uuid.uuid4().hex)
        self._check_replicated("after the starting models")

    # ---- the hooks of Evolution ---------------------------------------------------

    def _check_init_width(self, models):
        if models.shape[1] != self.layout.n_local:
            raise ValueError(f"the starting models' shards must have {self.layout.n_local} elements (this rank's "
                             f"part of n={self.layout.n}), got {models.shape[1]}")

    def _vector_length(self):
        return self.layout.n

    def _stop_requested(self, hit):
        return self.comm.any(hit)  # every rank stops before the same step

    def step(self, k=None):
        super().step(k)
        if self.check_every and self.step_count % self.check_every == 0:
            self._check_replicated(f"at step {self.step_count}")

    def _crossover(self, first, second, split, w, k):
        cfg, a, layout = self.config, self.archive, self.layout
        method = cfg.method if cfg.crossover else "lerp"  # no crossover: t = 0, child = first parent
        seed = step_seed(cfg.seed, self.step_count)
        first, second, split, w = (t.tolist() for t in (first, second, split, w))
        offsets = layout.global_offsets
        parents = [(layout.views(a.params[first[j]]), layout.views(a.params[second[j]])) for j in range(k)]
        sums = None
        if method == "slerp":
            if layout.pieces:
                sums = torch.stack([
                    mk.interp_sums(x, y, split[j], index_offsets=offsets, backend=self.backend)
                    for j, (x, y) in enumerate(parents)
                ])
            else:  # this rank holds none of the vector: it adds nothing
                sums = torch.zeros(k, 2, 3, dtype=torch.float64, device=self.device)
            self.comm.all_reduce_sum(sums, "sums")
        if not layout.pieces:
            return
        for j, (x, y) in enumerate(parents):
            mk.split_interpolate(
                x, y, split[j], w[j],
                method=method, omega=cfg.omega, noise_std=cfg.mutation_std, seed=seed, stream=j,
                index_offsets=offsets, sums=None if sums is None else sums[j], out=layout.views(a.children[j]),
                backend=self.backend,
            )

    # ---- checks and checkpoints ---------------------------------------------------

    def _check_replicated(self, when):
        a = self.archive
        self._flush_lineage()
        self.comm.check_digest(
            [a.S, a.train, a.filled, a.version, self.generator.get_state(), self.step_count, self.passes,
             self.lineage[-self.config.children_per_step:]],
            f"replicated state {when}",
        )

    def save(self, path, *, extra=None):
        """Write a sharded checkpoint into the folder `path` (collective)."""
        from .checkpoint import save_sharded

        save_sharded(self, path, extra=self.checkpoint_extra if extra is None else extra)

    def load(self, path, *, expect_extra=None):
        """Resume from the sharded checkpoint folder `path` (collective); a checkpoint
        written by another number of ranks is resharded on load."""
        from .checkpoint import load_sharded

        return load_sharded(self, path, expect_extra=expect_extra)
