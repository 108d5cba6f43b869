"""The sharded archive (m2n2.distributed) against the single-process engine, in R = 2
and 3 gloo processes on the CPU.

The workers below run in processes started by m2n2.distributed.spawn (they must be
importable: module-level functions); rank 0 saves what it saw into a file that the
test compares with a single-process run made here.
"""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import m2n2
import m2n2_kernels as mk
from m2n2.distributed import Comm, ShardLayout, ShardedEvolution, data_slice, init_from_env, spawn
from m2n2.distributed.evaluators import DataParallelMean, GatherEvaluator, gather_rows
from m2n2.distributed.tasks import sharded_parts
from m2n2.tasks import get_task

pytest.importorskip("sklearn")
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

# ---- the layout, without processes ------------------------------------------------

AWKWARD = [("a", (5, 3)), ("b", (7,)), ("c", (1,)), ("d", ()), ("e", (2, 2, 3)), ("f", (0, 4)), ("g", (4,))]


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_layout_pieces_cover_the_vector_once_in_fsdp2_chunks(world):
    n = sum(torch.Size(s).numel() for _, s in AWKWARD)
    owner = torch.full((n,), -1)
    for r in range(world):
        lay = ShardLayout(AWKWARD, world, r)
        assert lay.n == n and lay.n_local == sum(p.numel for p in lay.pieces)
        for p in lay.pieces:
            assert (owner[p.global_offset : p.global_offset + p.numel] == -1).all()
            owner[p.global_offset : p.global_offset + p.numel] = r
    assert (owner >= 0).all()
    # torch.chunk's rows: rank r holds chunk r of every parameter
    offset = 0
    for name, shape in AWKWARD:
        t = torch.arange(offset, offset + torch.Size(shape).numel()).reshape(shape if shape else (1,))
        chunks = torch.chunk(t, world) if t.shape[0] else ()
        for r, c in enumerate(chunks):
            assert (owner[c.reshape(-1)] == r).all()
        offset += t.numel()


@pytest.mark.parametrize("world", [2, 3])
def test_layout_shard_unshard_and_reshard_runs(world):
    n = ShardLayout(AWKWARD, 1, 0).n
    full = torch.randn(4, n)
    lays = [ShardLayout(AWKWARD, world, r) for r in range(world)]
    shards = [lay.shard(full) for lay in lays]
    assert torch.equal(lays[0].unshard(shards), full)
    for lay, s in zip(lays, shards):
        assert torch.equal(torch.cat(lay.views(s[0])) if lay.pieces else s[0], s[0])
    # a checkpoint of `world` ranks read by 2 others: every element comes from its old rank
    for new_world in (1, 2, 4):
        for r in range(new_world):
            new = ShardLayout(AWKWARD, new_world, r)
            got = torch.full((4, new.n_local), float("nan"))
            for q, old in enumerate(lays):
                for mine, theirs, count in new.overlaps(old):
                    got[:, mine : mine + count] = shards[q][:, theirs : theirs + count]
            assert torch.equal(got, new.shard(full))


def test_data_slices_and_layout_errors():
    for d in (0, 1, 7, 1437):
        for world in (1, 2, 3):
            parts = [data_slice(d, world, r) for r in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == d
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    with pytest.raises(ValueError, match="rank must lie in"):
        ShardLayout(AWKWARD, 2, 2)
    with pytest.raises(ValueError, match="distinct names"):
        ShardLayout([("a", (2,)), ("a", (3,))], 1, 0)
    with pytest.raises(ValueError, match="shard must be a vector of"):
        ShardLayout(AWKWARD, 2, 0).views(torch.zeros(3))


# ---- workers (run in spawned processes) -------------------------------------------


def _digits_config(method, **kw):
    base = dict(forward_passes=240, archive_size=6, method=method, mutation_std=0.01, seed=5, log_every=40,
                children_per_step=2)
    base.update(kw)
    return m2n2.EvolveConfig(**base)


def _digits_worker(path, method, mode, passes, ckpt, resume, timeout=60):
    init_from_env("cpu", timeout_s=timeout)
    comm = Comm()
    task = get_task("digits")
    parts = sharded_parts(task, comm, mode)
    evo = ShardedEvolution(parts.evaluate, parts.init, _digits_config(method, forward_passes=passes),
                           layout=parts.layout, comm=comm, test=parts.test, check_every=7)
    if resume:
        evo.load(ckpt)
    evo.run(checkpoint=ckpt, checkpoint_every=80 if ckpt else 0)
    whole = evo.evaluate_fn.gather_params(evo.archive.params) if mode == "gather" else None
    if comm.rank == 0:
        torch.save({"lineage": evo.lineage, "result": evo.result(), "params": whole, "bytes": dict(comm.bytes)}, path)


def _single_digits(method, passes=240):
    task = get_task("digits")
    evo = m2n2.Evolution(task.evaluate, task.init, _digits_config(method, forward_passes=passes), test=task.test)
    evo.run()
    return evo


@pytest.fixture(scope="module")
def single_lerp():
    return _single_digits("lerp")


def test_slerp_run_agrees_with_the_single_process_run(tmp_path):
    single = _single_digits("slerp")
    path = str(tmp_path / "out.pt")
    spawn(_digits_worker, 3, path, "slerp", "gather", 240, None, False)
    got = torch.load(path, weights_only=False)
    # The children differ at most by the fp64 sums' order of addition: the same parents are drawn over the
    # first steps, and the archives agree within fp32 rounding while the lineages do.
    first = [r[:6] for r in single.lineage[:20]]
    assert [r[:6] for r in got["lineage"][:20]] == first
    if got["lineage"] == single.lineage:
        torch.testing.assert_close(got["params"], single.archive.params, rtol=1e-6, atol=1e-6)
    assert abs(got["result"]["test_accuracy"] - single.result()["test_accuracy"]) < 0.05
    assert got["bytes"]["sums"] == 240 // 2 * 2 * 6 * 8  # K x 6 fp64 per step


def test_checkpoint_then_resume_on_another_number_of_ranks_is_the_single_process_run(tmp_path, single_lerp):
    # 2 ranks (children gathered for evaluation) write a checkpoint at 120 passes; 3 ranks (FSDP2 evaluation)
    # resume it, resharded, and finish: the lineage, the curve and the archive are the single-process run's.
    ckpt, path = str(tmp_path / "ckpt"), str(tmp_path / "out.pt")
    spawn(_digits_worker, 2, path, "lerp", "gather", 120, ckpt, False)
    assert sorted(os.listdir(os.path.join(ckpt, "passes-000000000120"))) == [
        "shard-00000-of-00002.safetensors", "shard-00001-of-00002.safetensors", "state.safetensors"]
    spawn(_digits_worker, 3, path, "lerp", "fsdp", 240, ckpt, True)
    got = torch.load(path, weights_only=False)
    assert got["lineage"] == single_lerp.lineage
    assert got["result"]["curve"] == single_lerp.result()["curve"]
    # no parameters through the engine's collectives with FSDP2 evaluation, and no sums for lerp
    assert set(got["bytes"]) == {"scores", "control"}


def _mismatch_worker(path):
    init_from_env("cpu", timeout_s=30)
    comm = Comm()
    parts = sharded_parts(get_task("digits"), comm, "gather")
    errors = []
    for what in ("seed", "dtype"):
        cfg = _digits_config("lerp", seed=5 + comm.rank) if what == "seed" else _digits_config("lerp")
        dtype = torch.float64 if what == "dtype" and comm.rank == 1 else None
        try:
            ShardedEvolution(parts.evaluate, parts.init, cfg, layout=parts.layout, comm=comm, dtype=dtype)
        except ValueError as e:
            errors.append(str(e))
    torch.save(errors, f"{path}.{comm.rank}")


def test_mismatched_ranks_are_named_at_start(tmp_path):
    path = str(tmp_path / "err")
    spawn(_mismatch_worker, 2, path)
    for r in range(2):
        seed, dtype = torch.load(f"{path}.{r}")
        assert "config differs between ranks" in seed and "'seed': 6" in seed and "rank 1 has" in seed
        assert "dtype differs between ranks" in dtype and "rank 1 has 'torch.float64'" in dtype


def _refuse_worker(a, b, path):
    init_from_env("cpu", timeout_s=30)
    comm = Comm()
    parts = sharded_parts(get_task("digits"), comm, "gather")

    def evolution():
        return ShardedEvolution(parts.evaluate, parts.init, _digits_config("lerp", forward_passes=40),
                                layout=parts.layout, comm=comm)

    for ckpt in (a, b):  # two runs: two run ids
        evolution().run(checkpoint=ckpt)
    gen, shard = "passes-000000000040", "shard-00001-of-00002.safetensors"
    errors = []
    for change in ("swap", "remove"):
        if comm.rank == 0:
            if change == "swap":  # b's shard 1 into a
                os.replace(os.path.join(b, gen, shard), os.path.join(a, gen, shard))
            else:
                os.remove(os.path.join(a, gen, shard))
        comm.barrier()
        try:
            evolution().load(a)
        except ValueError as e:
            errors.append(str(e))
        comm.barrier()
    torch.save(errors, f"{path}.{comm.rank}")


def test_resume_refuses_missing_shards_and_shards_of_another_run(tmp_path):
    a, b, path = str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "err")
    spawn(_refuse_worker, 2, a, b, path)
    for r in range(2):
        swapped, removed = torch.load(f"{path}.{r}")
        assert "shard-00001-of-00002.safetensors is from another run" in swapped
        assert "shard 1 of 2" in removed and "is missing" in removed


# ---- awkward layouts: split and noise land on the right global indices ------------


class _SumScores:
    """A data-parallel evaluation on a synthetic model: datapoint j scores 1 when the
    whole vector's element j % n is positive."""

    def __init__(self, layout, comm, d):
        self.gather = GatherEvaluator(self._local, layout, comm, d)
        self.lo, self.hi = data_slice(d, comm.world, comm.rank)
        self.d = d

    def _local(self, whole):
        idx = torch.arange(self.lo, self.hi) % whole.shape[1]
        return whole[:, idx] > 0

    def __call__(self, shards):
        return self.gather(shards)


AWKWARD_RUNS = (("lerp", "global"), ("slerp", "segment"))


def _awkward_config(method, omega):
    return m2n2.EvolveConfig(forward_passes=30, archive_size=4, method=method, omega=omega, mutation_std=0.3,
                             seed=11, children_per_step=3)


def _awkward_worker(path):
    init_from_env("cpu", timeout_s=60)
    comm = Comm()
    layout = ShardLayout(AWKWARD, comm.world, comm.rank)
    init = lambda g: torch.randn(3, layout.n, generator=g)  # noqa: E731
    out = []
    for method, omega in AWKWARD_RUNS:
        evo = ShardedEvolution(_SumScores(layout, comm, 17), init, _awkward_config(method, omega), layout=layout,
                               comm=comm, check_every=1)
        evo.run()
        out.append({"lineage": evo.lineage, "params": evo.evaluate_fn.gather.gather_params(evo.archive.params)})
    if comm.rank == 0:
        torch.save(out, path)


def test_awkward_layout_children_are_the_single_process_children(tmp_path):
    # 3 ranks, parameters with fewer rows than ranks, 0-d and empty ones: the split and the mutation noise
    # land on the single-process child's global indices.
    path = str(tmp_path / "out.pt")
    spawn(_awkward_worker, 3, path)
    n = ShardLayout(AWKWARD, 1, 0).n

    def evaluate(params):
        return params[:, torch.arange(17) % n] > 0

    for got, (method, omega) in zip(torch.load(path, weights_only=False), AWKWARD_RUNS):
        evo = m2n2.Evolution(evaluate, lambda g: torch.randn(3, n, generator=g), _awkward_config(method, omega))
        evo.run()
        if method == "lerp":
            assert got["lineage"] == evo.lineage
            assert torch.equal(got["params"], evo.archive.params)
        else:  # six sums added in another order: fp32 rounding apart, the same parents while that holds
            assert [r[:6] for r in got["lineage"][:6]] == [r[:6] for r in evo.lineage[:6]]


# ---- the command line, and faults -------------------------------------------------

EVOLVE = ["evolve", "--task", "digits", "--method", "lerp", "--no-plot", "--quiet"]


def _rank_processes(args, world):
    """`m2n2 ... --distributed` in `world` processes, as torchrun starts them."""
    from m2n2.distributed.launch import free_port

    port = str(free_port())
    procs = []
    for r in range(world):
        env = {**ENV, "RANK": str(r), "WORLD_SIZE": str(world), "LOCAL_RANK": str(r), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": port, "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-m", "m2n2", *args, "--distributed"], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _wait_for(path, procs, limit=120):
    start = time.monotonic()
    while not os.path.exists(path):
        assert time.monotonic() - start < limit, f"{path} never appeared"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.2)


@pytest.mark.parametrize("fault", ["killed", "hung"])
def test_a_dead_or_hung_rank_ends_the_run_after_a_complete_checkpoint(tmp_path, fault):
    out = str(tmp_path / "run")
    args = EVOLVE + ["--forward-passes", "1000", "--checkpoint-every", "100", "--timeout", "8", "--out", out]
    procs = _rank_processes(args, 2)
    latest = os.path.join(out, "checkpoints", "m2n2-seed0.sharded", "LATEST")
    try:
        _wait_for(latest, procs)
        os.kill(procs[1].pid, signal.SIGKILL if fault == "killed" else signal.SIGSTOP)
        start = time.monotonic()
        _, err = procs[0].communicate(timeout=60)  # rank 0 must not wait for it forever
        assert time.monotonic() - start < 30
        assert procs[0].returncode == 1 and "m2n2: error: rank 0:" in err, err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    with open(latest) as f:
        gen = os.path.join(os.path.dirname(latest), f.read().strip())
    assert sorted(os.listdir(gen)) == [
        "shard-00000-of-00002.safetensors", "shard-00001-of-00002.safetensors", "state.safetensors"]
    if fault == "hung":
        return
    # the last complete checkpoint resumes (on another number of ranks) to the single-process result
    proc = subprocess.run([sys.executable, "-m", "m2n2", "evolve", "--resume", out, "--nproc", "3", "--quiet",
                           "--no-plot"], env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    single = str(tmp_path / "single")
    proc = subprocess.run([sys.executable, "-m", "m2n2", *EVOLVE, "--forward-passes", "1000", "--out", single],
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    import json

    runs = [json.load(open(os.path.join(d, "results.json")))["runs"][0] for d in (out, single)]
    assert runs[0]["curve"] == runs[1]["curve"]


def test_evolve_under_torchrun_gives_the_single_process_results(tmp_path):
    args = ["-m", "m2n2", "evolve", "--task", "digits", "--forward-passes", "200", "--method", "lerp", "--no-plot",
            "--quiet"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    for out, command in ((one, [sys.executable, *args]), (two, [*torchrun, *args, "--distributed"])):
        proc = subprocess.run([*command, "--out", out], env=ENV, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    import json

    runs = [json.load(open(os.path.join(d, "results.json")))["runs"][0] for d in (one, two)]
    for key in ("test_accuracy", "train_accuracy", "curve"):
        assert runs[0][key] == runs[1][key]
    assert open(os.path.join(one, "lineage.csv")).read() == open(os.path.join(two, "lineage.csv")).read()
    assert os.path.exists(os.path.join(two, "checkpoints", "m2n2-seed0.sharded", "LATEST"))


def test_evolve_distributed_needs_torchrun_and_refuses_baselines(tmp_path):
    env = {k: v for k, v in ENV.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run([sys.executable, "-m", "m2n2", "evolve", "--distributed", "--out", str(tmp_path / "x")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "torchrun" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "m2n2", "evolve", "--nproc", "2", "--method", "cma-es", "--quiet",
                           "--out", str(tmp_path / "y")], env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "cannot run sharded" in proc.stderr
    assert proc.stderr.count("cannot run sharded") == 1  # said once, by rank 0
