"""The M2N2 engine (python/m2n2): replacement, determinism, resume, batching, the two
step paths, checkpoints and bad input. A small linear classifier keeps most runs
fast; the digits task has its own tests (test_digits.py)."""
import dataclasses
import os
import signal

import pytest
import torch

import m2n2
from m2n2 import EvolveConfig, Evolution
from m2n2.checkpoint import read_metadata


class LinearTask:
    """A 4-class linear classifier on fixed random data: n = 8 * 4 + 4 = 36."""

    def __init__(self, d=96, seed=0, dtype=torch.float32):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(d, 8, generator=g)
        true_w = torch.randn(8, 4, generator=g)
        self.y = (self.x @ true_w).argmax(1)
        self.n, self.d = 36, d
        self.calls = 0

    def logits(self, params):
        w = params[:, :32].float().view(-1, 8, 4)
        b = params[:, 32:].float().view(-1, 1, 4)
        return torch.matmul(self.x, w) + b

    def evaluate(self, params):
        self.calls += 1
        return self.logits(params).argmax(-1) == self.y

    def test(self, params):
        return self.evaluate(params).double().mean(1)

    def init(self, generator):
        return torch.randn(2, self.n, generator=generator) * 0.1


def run(config, task=None, **kwargs):
    task = task or LinearTask()
    evo = Evolution(task.evaluate, task.init, config, test=task.test, **kwargs)
    evo.run()
    return evo


def rows(lineage):
    """Lineage rows with NaN (no ratio without crossover) comparable."""
    return [tuple("nan" if v != v else v for v in r) for r in lineage]


def same_run(a, b):
    assert rows(a.lineage) == rows(b.lineage)
    assert torch.equal(a.archive.params, b.archive.params)
    assert torch.equal(a.archive.S, b.archive.S)
    assert a.curve == b.curve


CFG = EvolveConfig(archive_size=6, forward_passes=120, mutation_std=0.05, seed=3, log_every=10)


# ---- replacement ---------------------------------------------------------------


class Scripted:
    """evaluate() returning prepared score rows, one call after another."""

    def __init__(self, rows):
        self.rows = [torch.tensor(r, dtype=torch.bool) for r in rows]

    def __call__(self, params):
        out = torch.stack(self.rows[: params.shape[0]])
        del self.rows[: params.shape[0]]
        return out


def exact_worst(S, child, alpha=1.0):
    """The formula: fitness over the N + 1 rows (child last), first minimum, -1 for
    the child."""
    ext = torch.cat([S, child[None]]).double()
    z = ext.sum(0)
    fit = (ext / torch.where(z != 0, z, torch.ones_like(z)) ** alpha).sum(1)
    worst = int(torch.nonzero(fit == fit.min())[0])
    return -1 if worst == S.shape[0] else worst


@pytest.mark.parametrize("sync_free", [False, True])
@pytest.mark.parametrize(
    "start,child,expect",
    [
        # ties: rows 1 and 2 are equal and lowest; the lower index goes
        ([[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0]], [1, 1, 1, 1], 1),
        # the child is strictly the worst: nothing changes
        ([[1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0]], [0, 0, 0, 0], -1),
        # the child ties the worst row: the row goes (ties to the lowest index)
        ([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1]], [1, 0, 0, 0], 0),
        # the child counts in z: without it, row 1 would be the worst
        ([[0, 1, 1, 1, 1], [1, 0, 1, 0, 1]], [0, 1, 0, 1, 1], -1),
    ],
)
def test_replacement_follows_the_formula(sync_free, start, child, expect):
    S0 = torch.tensor(start, dtype=torch.bool)
    assert exact_worst(S0, torch.tensor(child, dtype=torch.bool)) == expect
    cfg = EvolveConfig(archive_size=len(start), forward_passes=1, seed=0)
    init = torch.randn(len(start), 5)
    evo = Evolution(Scripted(start + [child]), init, cfg, sync_free=sync_free)
    assert torch.equal(evo.archive.S, S0), "the starting rows fill the empty archive in order"
    before = evo.archive.params.clone()
    evo.step()
    assert evo.lineage[-1][-1] == expect
    if expect == -1:
        assert torch.equal(evo.archive.params, before) and torch.equal(evo.archive.S, S0)
    else:
        assert torch.equal(evo.archive.S[expect], torch.tensor(child, dtype=torch.bool))
        assert torch.equal(evo.archive.params[expect], evo.archive.children[0])
        assert int(evo.archive.version[expect]) == 2


def test_starting_models_go_in_by_the_replacement_rule():
    task = LinearTask()
    evo = Evolution(task.evaluate, task.init, dataclasses.replace(CFG, forward_passes=0))
    assert evo.archive.filled.tolist() == [True, True, False, False, False, False]
    assert evo.passes == 0 and evo.lineage == []
    assert evo.curve["forward_passes"] == [0]


def test_starting_models_are_scored_k_at_a_time_into_k_child_slots():
    # Five starting models with K = 1, 2 or 5 children per step: the archive gets K child
    # slots (not five), and the same rows whatever K.
    task = LinearTask()
    start = torch.randn(5, task.n, generator=torch.Generator().manual_seed(1)) * 0.1
    archives = []
    for k in (1, 2, 5):
        evo = Evolution(task.evaluate, start, dataclasses.replace(CFG, forward_passes=0, children_per_step=k))
        assert evo.archive.params_buf.shape[0] == CFG.archive_size + k
        archives.append({name: t.clone() for name, t in evo.archive.tensors().items()})
    for other in archives[1:]:
        for name, t in other.items():
            assert torch.equal(t, archives[0][name]), name


# ---- determinism, paths, batching, resume --------------------------------------------


def test_same_seed_same_run_other_seed_other_run():
    a, b = run(CFG), run(CFG)
    same_run(a, b)
    c = run(dataclasses.replace(CFG, seed=4))
    assert a.lineage != c.lineage


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize(
    "options",
    [{}, {"attraction": False}, {"crossover": False}, {"split_point": False, "method": "lerp"}, {"alpha": 0.0}],
    ids=["m2n2", "no-attraction", "no-crossover", "no-splitpoint-lerp", "alpha0"],
)
def test_sync_free_path_equals_host_path(k, options):
    # The CUDA step (no host sync: matrix attraction, masked insertion) run on the CPU
    # gives exactly the CPU step's run.
    cfg = dataclasses.replace(CFG, children_per_step=k, **options)
    same_run(run(cfg, sync_free=False), run(cfg, sync_free=True))


def test_batched_step_starts_like_single_steps():
    # With K = 2 the first child of the first step is the K = 1 run's first child:
    # same draws (the uniforms come in the same order), same noise stream.
    one = Evolution(LinearTask().evaluate, LinearTask().init, CFG)
    two = Evolution(LinearTask().evaluate, LinearTask().init, dataclasses.replace(CFG, children_per_step=2))
    one.step()
    two.step()
    assert one.lineage[0] == two.lineage[0]


def test_every_pass_is_logged_once_with_k_children_per_step():
    cfg = dataclasses.replace(CFG, children_per_step=7, forward_passes=45)
    evo = run(cfg)
    assert evo.passes == 45 and evo.step_count == 7  # 6 full steps + one of 3
    assert [r[0] for r in evo.lineage] == list(range(1, 46))
    assert evo.curve["forward_passes"][-1] == 45


def test_resume_equals_an_uninterrupted_run(tmp_path):
    task = LinearTask()
    whole = run(CFG, task)
    half = Evolution(task.evaluate, task.init, dataclasses.replace(CFG, forward_passes=50), test=task.test)
    half.run()
    half.save(tmp_path / "ckpt.safetensors")
    resumed = Evolution(task.evaluate, task.init, CFG, test=task.test)
    resumed.load(tmp_path / "ckpt.safetensors")
    assert resumed.passes == 50
    resumed.run()
    same_run(whole, resumed)


def test_ctrl_c_stops_between_steps_and_the_checkpoint_resumes_exactly(tmp_path):
    task = LinearTask()
    whole = run(CFG, task)
    ckpt = tmp_path / "run.safetensors"
    evo = Evolution(task.evaluate, task.init, CFG, test=task.test)
    sent = []

    def interrupt(e):
        if not sent and e.passes >= 40:
            sent.append(e.passes)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(m2n2.Interrupted):
        evo.run(checkpoint=ckpt, callback=interrupt)
    assert evo.passes == sent[0], "the loop stops before the next step"
    assert read_metadata(ckpt)["passes"] == evo.passes
    again = Evolution(task.evaluate, task.init, CFG, test=task.test)
    again.load(ckpt)
    again.run()
    same_run(whole, again)


def test_checkpoint_refuses_another_configuration_and_bad_files(tmp_path):
    task = LinearTask()
    evo = run(dataclasses.replace(CFG, forward_passes=20), task)
    path = tmp_path / "c.safetensors"
    evo.save(path, extra={"task": "linear"})
    other = Evolution(task.evaluate, task.init, dataclasses.replace(CFG, alpha=0.5))
    with pytest.raises(ValueError, match="another configuration.*alpha"):
        other.load(path)
    same = Evolution(task.evaluate, task.init, CFG)
    with pytest.raises(ValueError, match="task='other'|task"):
        same.load(path, expect_extra={"task": "other"})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        same.load(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt"):
        same.load(bad)


def test_checkpoint_holds_no_pickle(tmp_path):
    evo = run(dataclasses.replace(CFG, forward_passes=10))
    path = tmp_path / "c.safetensors"
    evo.save(path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        names = set(f.keys())
    assert {"archive.params", "archive.S", "generator.state", "lineage.int", "curve"} <= names
    assert evo.archive.S.dtype == torch.bool


# ---- what a step does ------------------------------------------------------------------


def test_lineage_rows_describe_the_children():
    evo = run(dataclasses.replace(CFG, forward_passes=30))
    n = evo.n
    for passes, step, child, first, second, split, w, train, replaced in evo.lineage:
        assert 0 <= first < 6 and 0 <= second < 6 and 0 <= split < n and 0 <= w < 1
        assert 0 <= train <= 1 and -1 <= replaced < 6


def test_no_crossover_child_is_the_first_parent_exactly():
    cfg = dataclasses.replace(CFG, crossover=False, mutation_std=0.0, forward_passes=1)
    task = LinearTask()
    evo = Evolution(task.evaluate, task.init, cfg)
    params = evo.archive.params.clone()
    evo.step()
    first = evo.lineage[0][3]
    assert torch.equal(evo.archive.children[0], params[first])
    assert evo.lineage[0][4:7] == (-1, -1, evo.lineage[0][6])  # no second parent, no split


def test_no_split_point_interpolates_everything_with_w():
    cfg = dataclasses.replace(CFG, split_point=False, method="lerp", mutation_std=0.0, forward_passes=1)
    task = LinearTask()
    evo = Evolution(task.evaluate, task.init, cfg)
    params = evo.archive.params.clone()
    evo.step()
    _, _, _, first, second, split, w, _, _ = evo.lineage[0]
    assert split == evo.n
    expect = (1 - w) * params[first].double() + w * params[second].double()
    torch.testing.assert_close(evo.archive.children[0].double(), expect, rtol=1e-6, atol=1e-7)


def test_mutation_noise_differs_between_steps_and_children():
    cfg = dataclasses.replace(CFG, crossover=False, mutation_std=1.0, forward_passes=2, children_per_step=2)
    task = LinearTask()
    evo = Evolution(task.evaluate, task.init, cfg)
    params = evo.archive.params.clone()
    evo.step()
    noise = [evo.archive.children[j] - params[evo.lineage[j][3]] for j in range(2)]
    assert not torch.allclose(noise[0], noise[1])
    assert 0.5 < float(noise[0].std()) < 1.5
    assert m2n2.step_seed(3, 0) != m2n2.step_seed(3, 1) != m2n2.step_seed(4, 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_archive_dtypes(dtype):
    evo = run(dataclasses.replace(CFG, forward_passes=30), dtype=dtype)
    assert evo.archive.params.dtype == dtype
    assert torch.isfinite(evo.archive.params.float()).all()


def test_float_scores_stay_float():
    task = LinearTask()

    def soft(params):
        return torch.softmax(task.logits(params), -1).gather(-1, task.y.expand(params.shape[0], -1)[..., None])[..., 0]

    evo = Evolution(soft, task.init, dataclasses.replace(CFG, forward_passes=40))
    evo.run()
    assert evo.archive.S.dtype == torch.float32
    assert evo.result()["train_accuracy"] > 0


def test_torch_backend_engine_runs_the_reference_ops():
    evo = run(dataclasses.replace(CFG, forward_passes=20), backend="torch")
    assert evo.passes == 20 and len(evo.lineage) == 20


def test_best_member_test_score_is_cached_per_row_version():
    task = LinearTask()
    calls = []

    def test(params):
        calls.append(params.shape[0])
        return task.test(params)

    evo = Evolution(task.evaluate, task.init, dataclasses.replace(CFG, forward_passes=200, log_every=1), test=test)
    evo.run()
    points = len(evo.curve["forward_passes"])
    assert points == 201 and len(calls) < points / 2, "the test score is recomputed only when the best member changes"
    row, train, test_score = evo.best()
    assert test_score == float(task.test(evo.archive.params[row : row + 1])[0])


# ---- bad input -------------------------------------------------------------------------


def _after_calls(n, first, then):
    """An evaluate that is `first` for its first n calls and `then` after them (the two
    starting models are scored one at a time, as K = 1: n = 2 switches at the first
    step)."""
    calls = [0]

    def evaluate(params):
        calls[0] += 1
        return (first if calls[0] <= n else then)(params)

    return evaluate


def test_bad_evaluate_results_are_named():
    task = LinearTask()
    with pytest.raises(ValueError, match=r"shape \(1, 95\) for 1 children, expected \(1, 96\)"):
        Evolution(_after_calls(2, task.evaluate, lambda p: task.evaluate(p)[:, :95]), task.init, CFG).step()
    cases = [
        (lambda p: task.evaluate(p)[0], ValueError, r"shape \(96,\) for 1 children"),
        (lambda p: task.evaluate(p).float() * 2, ValueError, "child 0 at datapoint"),
        (lambda p: task.evaluate(p).tolist(), TypeError, "must return a torch.Tensor"),
        (lambda p: task.evaluate(p).to(torch.int64), TypeError, "bool or float"),
    ]
    for fn, exc, match in cases:
        with pytest.raises(exc, match=match):
            Evolution(fn, task.init, CFG)
    with pytest.raises(ValueError, match=r"shape \(1, 95\) for 1 children, expected \(1, 96\)"):
        # the second starting model's scores are checked against the first's
        Evolution(_after_calls(1, task.evaluate, lambda p: task.evaluate(p)[:, :95]), task.init, CFG)

    def nan_scores(params):
        s = task.evaluate(params).float()
        s[0, 5] = float("nan")
        return s

    evo = Evolution(_after_calls(2, lambda p: task.evaluate(p).float(), nan_scores), task.init,
                    dataclasses.replace(CFG, forward_passes=1))
    with pytest.raises(ValueError, match="score nan for child 0 at datapoint 5"):
        evo.step()

    evo = Evolution(_after_calls(2, task.evaluate, lambda p: task.evaluate(p).float()), task.init, CFG)
    with pytest.raises(TypeError, match="expected torch.bool"):
        evo.step()


@pytest.mark.parametrize(
    "change,exc,match",
    [
        ({"archive_size": 1}, ValueError, "archive_size must be >= 2"),
        ({"forward_passes": -1}, ValueError, "forward_passes must be >= 0"),
        ({"children_per_step": 0}, ValueError, "children_per_step must be >= 1"),
        ({"method": "cubic"}, ValueError, "method must be one of"),
        ({"omega": "local"}, ValueError, "omega must be one of"),
        ({"alpha": float("nan")}, ValueError, "alpha must be a finite number"),
        ({"mutation_std": -0.1}, ValueError, "mutation_std must be >= 0"),
        ({"attraction": 1}, TypeError, "attraction must be True or False"),
        ({"seed": 2**63}, ValueError, "seed must be < 2"),
    ],
)
def test_bad_configuration(change, exc, match):
    with pytest.raises(exc, match=match):
        dataclasses.replace(CFG, **change).validate()


def test_bad_starting_models():
    task = LinearTask()
    with pytest.raises(ValueError, match="between 1 and archive_size=6"):
        Evolution(task.evaluate, torch.zeros(7, 36), CFG)
    with pytest.raises(TypeError, match="init must be a tensor"):
        Evolution(task.evaluate, [torch.zeros(36)], CFG)
    with pytest.raises(TypeError, match="evaluate must be callable"):
        Evolution(None, task.init, CFG)


# ---- CUDA (skipped without a GPU) --------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_cuda_step_needs_no_host_sync():
    task = LinearTask()
    task.x, task.y = task.x.cuda(), task.y.cuda()

    def init(generator):
        return torch.randn(2, task.n, generator=generator, device=generator.device) * 0.1

    cfg = dataclasses.replace(CFG, log_every=10**6, children_per_step=4)
    evo = Evolution(task.evaluate, init, cfg, test=task.test, device="cuda")
    assert evo.sync_free
    evo.step()  # warm-up: first calls may allocate and load kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            evo.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    evo._flush_lineage()
    assert len(evo.lineage) == 24
