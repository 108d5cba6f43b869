"""The M2N2 loop for any model whose parameters are one flat vector.

One step (docs/semantics.md, "The engine"): draw K parent pairs (competition,
then attraction), make K children with one `crossover_batch` call (split-point
slerp or lerp, fused mutation), score them with one batched evaluation, then insert
them one after another by the replacement rule (each insertion updates S before the
next). K = 1 is the reference algorithm.

Everything random comes from one seeded torch.Generator on the archive's device
(initial models, parents, splits, ratios); the mutation noise is keyed by
(hash(seed, step), child, element), so a run is a function of its seed and options,
bit for bit on a given backend, and a resumed run continues exactly.
"""
import dataclasses
import math
import signal
import time
from contextlib import contextmanager
from typing import Callable, Optional

import torch

import m2n2_kernels as mk
from m2n2_kernels import _backend

from .archive import Archive
from ._niche_ops import NicheOps
from .select import draw_parents_tensor, fitness_weights, inverse_cdf

METHODS = ("lerp", "slerp")
OMEGAS = ("global", "segment")
LINEAGE_FIELDS = ("pass", "step", "child", "first", "second", "split", "w", "child_train", "replaced")
PHASES = ("sampling", "crossover", "evaluation", "replacement", "bookkeeping")


@dataclasses.dataclass
class EvolveConfig:
    """Options of one run. `forward_passes` counts evaluated children (the initial
    models are scored too but not counted, as in the reference code)."""

    archive_size: int = 20
    forward_passes: int = 50_000
    children_per_step: int = 1
    method: str = "slerp"
    omega: str = "global"
    split_point: bool = True
    crossover: bool = True
    attraction: bool = True
    alpha: float = 1.0
    mutation_std: float = 0.0
    seed: int = 0
    log_every: int = 100

    def validate(self):
        def integer(name, low):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an integer, got {type(v).__name__}")
            if v < low:
                raise ValueError(f"{name} must be >= {low}, got {v}")

        integer("archive_size", 2)
        integer("forward_passes", 0)
        integer("children_per_step", 1)
        integer("log_every", 1)
        integer("seed", 0)
        if self.seed >= 2**63:
            raise ValueError(f"seed must be < 2**63, got {self.seed}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.omega not in OMEGAS:
            raise ValueError(f"omega must be one of {OMEGAS}, got {self.omega!r}")
        for name in ("split_point", "crossover", "attraction"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name, low in (("alpha", None), ("mutation_std", 0.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
            if low is not None and v < low:
                raise ValueError(f"{name} must be >= {low}, got {v}")
        return self

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown configuration keys {sorted(unknown)}")
        return cls(**d).validate()


def step_seed(seed: int, step: int) -> int:
    """The Philox key of step `step`'s mutation noise: splitmix64 of (seed, step), so
    steps (and seeds) get unrelated noise streams without drawing from the generator."""
    x = (seed * 0x9E3779B97F4A7C15 + step + 1) & (2**64 - 1)
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return x ^ (x >> 31)


class Interrupted(Exception):
    """Raised by Evolution.run when Ctrl-C stopped it between two steps; the state is
    consistent (and checkpointed when the run has a checkpoint path)."""


@contextmanager
def _deferred_sigint():
    """Ctrl-C sets a flag that the loop reads between steps (a step is never cut in
    half); a second Ctrl-C interrupts at once."""
    flag = {"hit": False}
    try:
        previous = signal.getsignal(signal.SIGINT)
    except ValueError:  # not the main thread: leave signals alone
        yield flag
        return

    def handler(signum, frame):
        if flag["hit"]:
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        flag["hit"] = True

    try:
        signal.signal(signal.SIGINT, handler)
    except ValueError:
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


class Evolution:
    """An M2N2 run: an archive, a generator, and the loop that evolves them.

    evaluate(params [K, n]) -> scores [K, D]: bool right/wrong scores, or floats in
        [0, 1] (one row per child, a column per datapoint). `params` is a view of the
        archive's child slots; do not keep it.
    init: the starting models, a tensor [M, n] (1 <= M <= archive size), or a
        callable init(generator) -> [M, n] drawing them from the run's generator.
        They are scored and inserted by the replacement rule, as children are.
    test(params [K, n]) -> [K] (optional): the held-out score reported for the
        archive member with the best train score (recomputed only when that member
        changes, at log points).
    backend: passed to the m2n2_kernels ops ("cpp", "triton", "torch"; None = auto).
    sync_free: make a step without any device-to-host read (default: on CUDA).
    check_scores: check float scores for NaN and range each step (one host sync on
        CUDA); bool scores need no check.
    """

    def __init__(
        self,
        evaluate: Callable,
        init,
        config: Optional[EvolveConfig] = None,
        *,
        test: Optional[Callable] = None,
        device=None,
        dtype=None,
        backend=None,
        sync_free=None,
        check_scores=True,
    ):
        self.config = (config or EvolveConfig()).validate()
        if not callable(evaluate):
            raise TypeError(f"evaluate must be callable (params [K, n] -> scores [K, D]), got {type(evaluate).__name__}")
        if test is not None and not callable(test):
            raise TypeError(f"test must be callable or None, got {type(test).__name__}")
        self.evaluate_fn, self.test_fn = evaluate, test
        self.backend, self.check_scores = backend, check_scores
        if device is None:
            device = init.device if isinstance(init, torch.Tensor) else torch.device("cpu")
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.sync_free = self.device.type == "cuda" if sync_free is None else bool(sync_free)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(self.config.seed)

        models = init(self.generator) if callable(init) else init
        if not isinstance(models, torch.Tensor) or models.dim() != 2:
            raise TypeError("init must be a tensor [M, n] of starting models (or a callable returning one)")
        if not 1 <= models.shape[0] <= self.config.archive_size:
            raise ValueError(
                f"init must hold between 1 and archive_size={self.config.archive_size} models, got {models.shape[0]}"
            )
        self._check_init_width(models)
        dtype = models.dtype if dtype is None else dtype
        models = models.to(self.device, dtype)
        # The starting models go in as children do, K at a time (so that the archive
        # needs K child slots, not M: at 7B parameters a slot is 14 GB): scored, then
        # inserted one by one. The first batch's scores give D and the score dtype.
        k = self.config.children_per_step
        scores = self._check_evaluated(self.evaluate_fn(models[:k]), min(k, models.shape[0]), None, None)
        self.archive = Archive(
            self.config.archive_size,
            models.shape[1],
            scores.shape[1],
            child_slots=k,
            dtype=dtype,
            score_dtype=scores.dtype,
            device=self.device,
        )
        self.n, self.d = self._vector_length(), self.archive.d
        self.niche = NicheOps(self.archive.S, alpha=self.config.alpha, backend=backend)
        self._direct_crossover = _backend.choose(self.device, backend) == "cpp"
        self.step_count = 0
        self.passes = 0
        self.curve = {"forward_passes": [], "train_accuracy": [], "test_accuracy": []}
        self.lineage = []  # host rows, LINEAGE_FIELDS
        self._pending = []  # the device path's per-step tensors, moved to lineage at log points
        self._test_cache = (None, None, float("nan"))  # (row, version, value)
        self._s_version, self._cache_version = 0, -1  # the host path's fitness cache
        self._fit_cache, self._row_cache = None, {}
        self.timings = None
        self.seconds = 0.0  # time spent in run(), start-up excluded
        self.checkpoint_extra = {}  # stored in checkpoints (the command line puts the task there)
        for start in range(0, models.shape[0], k):
            batch = models[start : start + k]
            m = batch.shape[0]
            if start:
                scores = self._check_evaluated(self.evaluate_fn(batch), m, self.d, self.archive.S.dtype)
            self.archive.children[:m].copy_(batch)
            self.archive.child_scores[:m].copy_(scores)
            train = self._mean_scores(self.archive.child_scores[:m])
            self._insert(m, train if self.sync_free else train.tolist())
        del models, scores
        self._flush_lineage()
        self._record_point()

    # ---- hooks of a sharded archive (m2n2.distributed) ------------------------------

    def _check_init_width(self, models):
        if models.shape[1] < 1:
            raise ValueError("init models must have at least one parameter (n >= 1)")

    def _vector_length(self):
        """n, the length of a model's whole parameter vector (where the split is drawn);
        the archive's rows may hold only a shard of it."""
        return self.archive.n

    def _stop_requested(self, hit):
        """Whether to stop before the next step, given this process's Ctrl-C flag."""
        return hit

    # ---- evaluation -------------------------------------------------------------

    def _mean_scores(self, rows):
        return rows.sum(1, dtype=torch.float64) / max(1, rows.shape[1])

    def _check_evaluated(self, scores, k, d, dtype):
        if not isinstance(scores, torch.Tensor):
            raise TypeError(f"evaluate must return a torch.Tensor [K, D], got {type(scores).__name__}")
        if scores.dim() != 2 or scores.shape[0] != k or (d is not None and scores.shape[1] != d):
            want = f"({k}, {d})" if d is not None else f"({k}, D)"
            raise ValueError(f"evaluate returned shape {tuple(scores.shape)} for {k} children, expected {want}")
        if scores.device != self.device:
            raise ValueError(f"evaluate returned scores on {scores.device}, expected {self.device} (the archive's)")
        if dtype is not None and scores.dtype != dtype:
            raise TypeError(f"evaluate returned {scores.dtype} scores, expected {dtype} (as its first call)")
        if not (scores.dtype == torch.bool or scores.dtype.is_floating_point):
            raise TypeError(f"evaluate must return bool or float scores, got {scores.dtype}")
        if scores.dtype != torch.bool and self.check_scores and scores.numel() > 0:
            bad = ~((scores >= 0) & (scores <= 1))  # NaN fails both comparisons
            if bool(bad.any()):
                i, j = (int(v) for v in bad.nonzero()[0])
                raise ValueError(
                    f"evaluate returned score {float(scores[i, j])} for child {i} at datapoint {j}: "
                    "scores must be finite and lie in [0, 1] (the competition shares each datapoint "
                    "between the models that score on it)"
                )
        return scores

    def _evaluate(self, k):
        a = self.archive
        scores = self._check_evaluated(self.evaluate_fn(a.children[:k]), k, self.d, a.S.dtype)
        a.child_scores[:k].copy_(scores)
        return self._mean_scores(a.child_scores[:k])

    # ---- one step -----------------------------------------------------------------

    def step(self, k=None):
        """Make, score and insert k children (default: children_per_step)."""
        k = self.config.children_per_step if k is None else k
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.archive.child_slots:
            raise ValueError(f"k must be an integer in [1, {self.archive.child_slots}], got {k!r}")
        if self.sync_free:
            self._step_device(k)
        else:
            self._step_host(k)
        before = self.passes
        self.step_count += 1
        self.passes += k
        every = self.config.log_every
        if self.passes // every != before // every or self.passes >= self.config.forward_passes:
            self._record_point()

    def _draws(self, k):
        """The step's uniform numbers [k, 4]: first parent, second parent, split, w."""
        return torch.rand(k, 4, dtype=torch.float64, generator=self.generator, device=self.device)

    def _step_host(self, k):
        """The step with its small decisions on the host (CPU archives): parent draws
        over Python floats, fitness and attraction rows cached until S changes."""
        cfg, a, n = self.config, self.archive, self.n
        timer = _PhaseTimer(self.timings, self.device)
        with timer("sampling"):
            u = self._draws(k).tolist()
            if self._cache_version != self._s_version:
                self._fit_cache = self.niche.fitness(a.S).tolist()
                self._row_cache = {}
                self._cache_version = self._s_version
            fit = self._fit_cache
            if not any(v > 0 for v in fit):
                fit = [1.0 if f else 0.0 for f in a.filled.tolist()]
            idx, ws = [[], [], []], []
            for uf, us, usplit, uw in u:
                first = inverse_cdf(fit, uf)
                weights = fit
                if cfg.attraction:
                    row = self._row_cache.get(first)
                    if row is None:
                        row = self._row_cache[first] = self.niche.row(a.S, first).tolist()
                    if any(v > 0 for v in row):
                        weights = row
                idx[0].append(first)
                idx[1].append(inverse_cdf(weights, us))
                idx[2].append(min(int(usplit * n), n - 1) if cfg.crossover and cfg.split_point else n)
                ws.append(uw if cfg.crossover else 0.0)
            t = torch.tensor(idx, dtype=torch.int64, device=self.device)
            w = torch.tensor(ws, dtype=torch.float64, device=self.device)
        with timer("crossover"):
            self._crossover(t[0], t[1], t[2], w, k)
        with timer("evaluation"):
            child_train = self._evaluate(k).tolist()
        with timer("replacement"):
            replaced = self._insert(k, child_train)
        with timer("bookkeeping"):
            for j in range(k):
                second, split, wj = (idx[1][j], idx[2][j], ws[j]) if cfg.crossover else (-1, -1, float("nan"))
                self.lineage.append(
                    (self.passes + j + 1, self.step_count, j, idx[0][j], second, split, wj, child_train[j], replaced[j])
                )

    def _step_device(self, k):
        """The step without a device-to-host read (CUDA archives): the parents are
        drawn from the attraction matrix on the device and the insertion is a masked
        write; the lineage stays on the device until the next log point."""
        cfg, a, n = self.config, self.archive, self.n
        timer = _PhaseTimer(self.timings, self.device)
        with timer("sampling"):
            u = self._draws(k)
            if cfg.attraction:
                fit, A = self.niche.matrix(a.S)
            else:
                fit, A = self.niche.fitness(a.S), None
            first, second = draw_parents_tensor(fitness_weights(fit, a.filled), A, u[:, :2])
            if cfg.crossover and cfg.split_point:
                split = (u[:, 2] * n).to(torch.int64).clamp_(max=n - 1)
            else:
                split = torch.full((k,), n, dtype=torch.int64, device=self.device)
            w = u[:, 3] if cfg.crossover else torch.zeros(k, dtype=torch.float64, device=self.device)
            w = w.contiguous()
        with timer("crossover"):
            self._crossover(first, second, split, w, k)
        with timer("evaluation"):
            child_train = self._evaluate(k)
        with timer("replacement"):
            replaced = torch.stack(self._insert(k, child_train))
        with timer("bookkeeping"):
            if not cfg.crossover:
                second = torch.full_like(second, -1)
                split = torch.full_like(split, -1)
                w = torch.full_like(w, float("nan"))
            self._pending.append((self.step_count, self.passes, first, second, split, w, child_train, replaced))

    def _insert(self, k, child_train):
        """Insert children 0..k-1 one after another (each sees the S the previous one
        left): fitness over the N + 1 rows, the lowest replaced (ties to the lowest
        index), nothing when it is the child. Returns the replaced rows (-1: none),
        as ints, or as 0-d device tensors on the sync-free path."""
        a = self.archive
        if self.sync_free:
            return [a.put_masked(self.niche.with_child(a.S, a.child_scores[j]).argmin(), j, child_train[j]) for j in range(k)]
        replaced = []
        for j in range(k):
            row = int(self.niche.with_child(a.S, a.child_scores[j]).argmin())
            if row < a.size:
                a.put(row, j, child_train[j])
                self._s_version += 1
            replaced.append(row if row < a.size else -1)
        return replaced

    def _crossover(self, first, second, split, w, k):
        cfg, a = self.config, self.archive
        method = cfg.method if cfg.crossover else "lerp"  # no crossover: t = 0, child = first parent
        seed = step_seed(cfg.seed, self.step_count)
        out = a.children[:k]
        if self._direct_crossover:
            if seed >= 2**63:
                seed -= 2**64  # the schema's int64, same bits
            # The op behind m2n2_kernels.crossover_batch, called directly: the public
            # function reads the indices back to check them (a host sync), and these
            # are drawn in range by construction.
            torch.ops.m2n2.crossover_batch_out(
                a.params, first, second, split, w, out, method, cfg.omega, float(cfg.mutation_std), seed
            )
        else:
            mk.crossover_batch(
                a.params, first, second, split, w, method=method, omega=cfg.omega, noise_std=cfg.mutation_std,
                seed=seed, out=out, backend=self.backend,
            )

    # ---- bookkeeping ------------------------------------------------------------

    def _flush_lineage(self):
        """Move the device path's per-step lineage tensors to the host rows."""
        for step, passes, first, second, split, w, child_train, replaced in self._pending:
            cols = [t.tolist() for t in (first, second, split, w, child_train, replaced)]
            for j in range(len(cols[0])):
                self.lineage.append((passes + j + 1, step, j) + tuple(c[j] for c in cols))
        self._pending.clear()

    def best(self):
        """(row, train score, test score) of the archive member with the best train
        score; the test score is cached per (row, version of the row)."""
        row = self.archive.best_row()
        version = int(self.archive.version[row])
        if self._test_cache[:2] != (row, version):
            value = float("nan")
            if self.test_fn is not None:
                value = float(self.test_fn(self.archive.params[row : row + 1])[0])
            self._test_cache = (row, version, value)
        return row, float(self.archive.train[row]), self._test_cache[2]

    def _record_point(self):
        self._flush_lineage()
        _, train, test = self.best()
        self.curve["forward_passes"].append(self.passes)
        self.curve["train_accuracy"].append(train)
        self.curve["test_accuracy"].append(test)

    @property
    def done(self):
        return self.passes >= self.config.forward_passes

    def run(self, *, progress=None, checkpoint=None, checkpoint_every=0, callback=None):
        """Step until `forward_passes` children were evaluated; returns result().

        progress: a tqdm-like bar (update(n), set_postfix(**kw)) or None.
        checkpoint: a path written every `checkpoint_every` passes (0: never during
            the run), at the end, and when Ctrl-C stops the run between two steps;
            then Interrupted is raised, and loading the checkpoint continues exactly.
        callback(evolution): called after every log point.
        `seconds` accumulates the time spent in this loop (start-up excluded).
        """
        cfg = self.config
        next_checkpoint = self.passes + checkpoint_every if checkpoint_every else None
        points = len(self.curve["forward_passes"])
        start = time.perf_counter()
        try:
            with _deferred_sigint() as sigint:
                while not self.done:
                    if self._stop_requested(sigint["hit"]):
                        self.seconds += time.perf_counter() - start
                        start = time.perf_counter()
                        if checkpoint is not None:
                            self.save(checkpoint)
                        raise Interrupted(f"interrupted after {self.passes} forward passes")
                    before = self.passes
                    self.step(min(cfg.children_per_step, cfg.forward_passes - self.passes))
                    if progress is not None:
                        progress.update(self.passes - before)
                    if len(self.curve["forward_passes"]) != points:
                        points = len(self.curve["forward_passes"])
                        if progress is not None:
                            progress.set_postfix(
                                train=f"{self.curve['train_accuracy'][-1]:.4f}",
                                test=f"{self.curve['test_accuracy'][-1]:.4f}",
                                refresh=False,
                            )
                        if callback is not None:
                            callback(self)
                    if next_checkpoint is not None and checkpoint is not None and self.passes >= next_checkpoint:
                        self.seconds += time.perf_counter() - start
                        start = time.perf_counter()
                        self.save(checkpoint)
                        next_checkpoint = self.passes + checkpoint_every
        finally:
            self.seconds += time.perf_counter() - start
        if checkpoint is not None:
            self.save(checkpoint)
        return self.result()

    def result(self):
        self._flush_lineage()
        row, train, test = self.best()
        return {
            "forward_passes": self.passes,
            "seconds": self.seconds,
            "best_row": row,
            "train_accuracy": train,
            "test_accuracy": test,
            "curve": {k: list(v) for k, v in self.curve.items()},
        }

    # ---- checkpoints --------------------------------------------------------------

    def save(self, path, *, extra=None):
        """Write a checkpoint (safetensors + JSON metadata; `extra`, default
        `checkpoint_extra`, is stored with it and checked by load's expect_extra)."""
        from .checkpoint import save_evolution

        save_evolution(self, path, extra=self.checkpoint_extra if extra is None else extra)

    def load(self, path, *, expect_extra=None):
        from .checkpoint import load_evolution

        return load_evolution(self, path, expect_extra=expect_extra)


class _PhaseTimer:
    """Wall time per phase of a step, when Evolution.timings is a dict (profiling:
    it synchronises the device at each phase boundary); a no-op otherwise."""

    def __init__(self, timings, device):
        self.timings, self.device = timings, device

    @contextmanager
    def __call__(self, phase):
        if self.timings is None:
            yield
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - t0
