"""Running the (variant, seed) runs of one `m2n2 evolve` command: one after another
in this process, or `jobs` at a time in worker processes.

Every run is independent and a function of its seed, and the kernels give the same
bits with any thread count, so the results do not depend on `jobs`. On a machine
with few cores, parallel runs with one thread each use the cores better than one
run with all of them: much of a small model's step is single-threaded glue.
"""
import dataclasses
import multiprocessing
import os
import queue as queue_module
import signal
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

import torch

from .evolve import EvolveConfig, Evolution, Interrupted, _deferred_sigint


@dataclasses.dataclass
class RunSpec:
    variant: str
    seed: int
    config: dict  # EvolveConfig fields
    checkpoint: str
    checkpoint_every: int
    task: str
    pretrained: bool
    device: str
    algorithm: str = "m2n2"  # or a baseline: cma-es (cma-es-diagonal is its variant), map-elites, brute-force
    eval_mode: str = ""  # sharded over the ranks of torch.distributed: "gather" or "fsdp"; "": one process
    check_every: int = 0  # sharded: compare the replicated state between ranks every so many steps


_TASKS = {}


def cache_task(name, device, pretrained, task):
    """Let runs of this process use a task instance built already."""
    _TASKS[(name, str(device), bool(pretrained))] = task


def _task(spec):
    from .tasks import get_task

    key = (spec.task, spec.device, spec.pretrained)
    if key not in _TASKS:
        _TASKS[key] = get_task(spec.task, device=torch.device(spec.device), pretrained=spec.pretrained)
    return _TASKS[key]


def execute(spec, *, progress=None, callback=None, comm=None):
    """One run, resumed from its checkpoint when there is one. Returns {"status":
    "done" | "interrupted", "variant", "seed", "passes", and when done "run" (the
    results.json record) and "lineage" (rows)}. A checkpoint that does not match
    raises ValueError. With spec.eval_mode, the run is sharded over `comm`'s ranks
    (every rank calls execute with the same spec; the checkpoint is a folder)."""
    task = _task(spec)
    cfg = EvolveConfig.from_dict(spec.config)
    out = {"variant": spec.variant, "seed": spec.seed}
    if spec.algorithm != "m2n2":
        return _execute_baseline(spec, task, cfg, progress, out)
    tag = {"task": task.describe(), "variant": spec.variant}
    if spec.eval_mode:
        from .distributed.checkpoint import LATEST
        from .distributed.evolution import ShardedEvolution
        from .distributed.tasks import sharded_parts

        parts = sharded_parts(task, comm, spec.eval_mode)
        evo = ShardedEvolution(parts.evaluate, parts.init, cfg, layout=parts.layout, comm=comm, test=parts.test,
                               device=torch.device(spec.device), check_every=spec.check_every, describe=tag)
        resume = os.path.exists(os.path.join(spec.checkpoint, LATEST))
    else:
        evo = Evolution(task.evaluate, task.init, cfg, test=task.test, device=torch.device(spec.device))
        resume = os.path.exists(spec.checkpoint)
    evo.checkpoint_extra = tag
    if resume:
        evo.load(spec.checkpoint, expect_extra=tag)
    if progress is not None:
        progress.reset(total=cfg.forward_passes)
        progress.update(evo.passes)
    try:
        result = evo.run(
            progress=progress, checkpoint=spec.checkpoint, checkpoint_every=spec.checkpoint_every, callback=callback
        )
    except Interrupted:
        return {**out, "status": "interrupted", "passes": evo.passes}
    record = {"variant": spec.variant, "seed": spec.seed}
    record.update({k: result[k] for k in ("forward_passes", "test_accuracy", "train_accuracy", "seconds", "curve")})
    return {**out, "status": "done", "passes": evo.passes, "run": record, "lineage": evo.lineage}


def _execute_baseline(spec, task, cfg, progress, out):
    """A baseline run: no checkpoint (an interrupted one starts again on resume)."""
    from .baselines import BASELINES

    if progress is not None:
        progress.reset(total=cfg.forward_passes)
    try:
        result = BASELINES[spec.algorithm](
            task, cfg, progress=progress, cma_diagonal=spec.variant == "cma-es-diagonal"
        )
    except Interrupted:
        return {**out, "status": "interrupted", "passes": 0}
    record = {"variant": spec.variant, "seed": spec.seed}
    record.update({k: result[k] for k in ("forward_passes", "test_accuracy", "train_accuracy", "seconds", "curve")})
    return {**out, "status": "done", "passes": result["forward_passes"], "run": record, "lineage": []}


# ---- worker processes -----------------------------------------------------------------

_QUEUE = None


def _init_worker(queue, threads):
    global _QUEUE
    _QUEUE = queue
    torch.set_num_threads(threads)
    # Ctrl-C reaches every process of the terminal's group: a worker between runs
    # ignores it (the parent stops handing out runs); Evolution.run turns it into a
    # checkpoint and a clean return.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _worker(spec):
    class Ticks:
        """The run's progress, reported to the parent at every log point."""

        passes = 0

        def reset(self, total):
            self.passes = 0

        def update(self, n):
            self.passes += n

        def set_postfix(self, train="", test="", **_):
            _QUEUE.put((spec.variant, spec.seed, self.passes, train, test))

    return execute(spec, progress=Ticks())


def run_parallel(specs, jobs, on_result, bar=None):
    """Run the specs `jobs` at a time; on_result(outcome) is called in this process
    as each finishes (in completion order). Ctrl-C stops handing out runs, lets the
    running ones checkpoint, and returns False; True when every run finished."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    threads = max(1, torch.get_num_threads() // jobs)
    done_passes = {}
    complete = True
    with _deferred_sigint() as sigint, ProcessPoolExecutor(
        jobs, mp_context=ctx, initializer=_init_worker, initargs=(queue, threads)
    ) as pool:
        pending = {pool.submit(_worker, s): s for s in specs}
        while pending:
            finished, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            while True:
                try:
                    variant, seed, passes, train, test = queue.get_nowait()
                except queue_module.Empty:
                    break
                if bar is not None:
                    bar.update(passes - done_passes.get((variant, seed), 0))
                    bar.set_postfix(run=f"{variant}/{seed}", train=train, test=test, refresh=False)
                done_passes[(variant, seed)] = passes
            if sigint["hit"] and complete:
                complete = False
                for f in pending:
                    f.cancel()  # runs not started stay unstarted; running ones checkpoint
            for f in finished:
                spec = pending.pop(f)
                if f.cancelled():
                    continue
                outcome = f.result()
                if bar is not None:
                    bar.update(outcome["passes"] - done_passes.get((spec.variant, spec.seed), 0))
                done_passes[(spec.variant, spec.seed)] = outcome["passes"]
                if outcome["status"] != "done":
                    complete = False
                on_result(outcome)
            time.sleep(0)
    return complete and not sigint["hit"]
