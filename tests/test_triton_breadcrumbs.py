"""Model Breadcrumbs (sparsify="magnitude_outliers", docs/semantics.md) in the Triton
kernels (on a CUDA GPU where there is one, else in the interpreter on CPU tensors)
against the torch reference (reference.task_merge, the ground truth), bit for bit
where tests/test_task_merge.py holds "magnitude" to it: one tolerance, for the l1
rescale of fp64 tensors (its fp64 sums are added in another order: see
assert_same). The kernels select each model's band of ranks [start, end) as its
`end` largest minus its `start` largest (2K virtual models), so the cases put the
two thresholds on ties, on one key, at the ends of the ranking (gamma 0: start 0;
gamma 1: the t smallest, end = n) and across blocks. The interpreter is slow: sizes
are small, and the products of settings are pruned (rotations pair each density
with each gamma in a few calls).
"""
import pytest
import torch

from m2n2_kernels import reference
from m2n2_kernels.task_vectors import task_merge

from test_task_merge import (DTYPES, TRITON_DEVICE, assert_same, coarse_models, gen, mixed_list, moved,
                             needs_triton, randn)

GAMMAS = [0.0, 0.01, 0.3, 1.0, 0.05]
# (consensus, rescale), one per rotation.
SETTINGS = [(None, None), ("sum", "l1"), (None, "density"), ("sum", None), (None, "l1"), ("sum", "density")]


def both_routes(base, models, weights, **kw):
    """task_merge(sparsify="magnitude_outliers") by triton (on TRITON_DEVICE, back on
    the CPU) and by torch (the reference), each a list."""
    kw = dict(kw, sparsify="magnitude_outliers")
    got = task_merge(moved(base, TRITON_DEVICE), moved(models, TRITON_DEVICE), weights, backend="triton", **kw)
    return moved(got, "cpu"), task_merge(base, models, weights, backend="torch", **kw)


def launch(base, models, weights, density, gamma, *, consensus="none", rescale="none", normalize=False, lam=1.0,
           scope="tensor", block):
    """The Triton launcher itself (canonical arguments) with `block` elements per program."""
    from m2n2_kernels.triton import task_merge as ttm

    out = [torch.empty_like(b, device=TRITON_DEVICE) for b in base]
    ttm.task_merge_out(moved(base, TRITON_DEVICE), [t.to(TRITON_DEVICE) for m in models for t in m], out, weights,
                       density, gamma, "magnitude_outliers", consensus, rescale, normalize, lam, scope, 0, block=block)
    return moved(out, "cpu")


def reference_of(base, models, weights, density, gamma, *, consensus="none", rescale="none", normalize=False,
                 lam=1.0, scope="tensor"):
    return reference.task_merge(base, models, weights, sparsify="magnitude_outliers", density=density, gamma=gamma,
                                consensus=None if consensus == "none" else consensus,
                                rescale=None if rescale == "none" else rescale, normalize=normalize, lam=lam,
                                scope=scope)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [1, 37, 2053])  # one element, odd, more than one program of BLOCK (2048)
def test_five_models_every_density_and_gamma(dtype, n):
    # K = 5 at densities 0, 1/n, 0.1, 0.5 and 1; the gammas rotate over the models,
    # so that five calls pair every density with every gamma (0, 0.01, 0.3, 1 and
    # 0.05; two calls at n = 2053); consensus and rescale change with the rotation.
    base = [randn(n, dtype, 1)]
    models = coarse_models(base, 5, 2)
    weights = [0.5, -0.25, 1.0, 0.75, 0.3]
    for r in range(5 if n < 100 else 2):
        consensus, rescale = SETTINGS[r]
        got, want = both_routes(base, models, weights, density=[0.0, 1 / n, 0.1, 0.5, 1.0],
                                gamma=GAMMAS[r:] + GAMMAS[:r], consensus=consensus, rescale=rescale,
                                normalize=consensus is not None, lam=0.7)
        assert_same(got, want, rescale)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_one_model(dtype):
    # K = 1, n = 7 (odd) and 40: every density with every gamma (0.01 of n < 100 is
    # gamma 0: left out), each setting.
    base = [randn(7, dtype, 3), randn((5, 8), dtype, 4)]
    models = coarse_models(base, 1, 5)
    for i, density in enumerate([0.0, 1 / 7, 0.1, 0.5, 1.0]):
        for j, gamma in enumerate([0.0, 0.3, 1.0]):
            consensus, rescale = SETTINGS[(i + j) % len(SETTINGS)]
            got, want = both_routes(base, models, [0.8], density=density, gamma=gamma, consensus=consensus,
                                    rescale=rescale)
            assert_same(got, want, rescale)


@needs_triton
@pytest.mark.parametrize("scope", ["tensor", "global"])
@pytest.mark.parametrize("consensus", [None, "sum"])
@pytest.mark.parametrize("rescale", [None, "l1", "density"])
def test_two_models_mixed_list(scope, consensus, rescale):
    # bf16, fp32, fp64, empty, 0-d and fp16 positions: a global unit of 31 elements
    # holding fp64 selects on 64-bit keys; without the fp64 positions, on 32-bit keys.
    base, models = mixed_list(0), [mixed_list(10), mixed_list(20)]
    kw = dict(density=[0.3, 0.6], gamma=[0.1, 0.3], consensus=consensus, rescale=rescale, normalize=True, lam=0.9,
              scope=scope)
    got, want = both_routes(base, models, [0.6, -0.2], **kw)
    assert_same(got, want, rescale)
    if scope == "tensor":
        return
    narrow = [0, 1, 3, 5]
    got, want = both_routes([base[i] for i in narrow], [[m[i] for i in narrow] for m in models], [0.6, -0.2], **kw)
    assert_same(got, want, rescale)


def tied_bf16(n, seed):
    """bf16 deltas in {-3, ..., 3}: |d| = 1, 2 and 3 each about 2n / 7 times, 0 n / 7."""
    g = gen(seed)
    base = torch.randint(-4, 5, (n,), generator=g).to(torch.bfloat16)
    return base, [base + torch.randint(-3, 4, (n,), generator=g).to(torch.bfloat16) for _ in range(2)]


@needs_triton
@pytest.mark.parametrize("rescale", ["none", "l1"])
@pytest.mark.parametrize("density,gamma", [
    (0.3, 0.2),  # start and end on ties of two different keys
    (0.1, 0.05),  # start and end on the ties of one key
    (0.3, 0.0),  # start 0: the `end` largest (as magnitude, without its max(1, ...))
    (0.3, 1.0),  # the t smallest: end = n, keys 0 included
])
def test_bf16_ties_at_both_thresholds(rescale, density, gamma):
    # n = 150 in blocks of 16 (ten blocks, three histogram programs) and of 2048:
    # the ties of each threshold kept lowest index first across blocks.
    n = 150
    base, models = tied_bf16(n, 12)
    ranked = torch.sort((models[0] - base).double().abs(), descending=True).values
    start, end = reference.outlier_band(density, gamma, n)
    assert start == 0 or ranked[start - 1] == ranked[start]  # each threshold splits a run of ties
    assert end == n or ranked[end - 1] == ranked[end]
    kw = dict(consensus="sum", rescale=rescale, normalize=True)
    want = reference_of([base], [[m] for m in models], [1.0, 0.5], [density, 0.55], [gamma, 0.3], **kw)
    for block in (16, 2048):
        assert_same(launch([base], [[m] for m in models], [1.0, 0.5], [density, 0.55], [gamma, 0.3], block=block,
                           **kw), want, rescale)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16], ids=str)
def test_block_size_does_not_change_the_result(dtype):
    # A global unit of 101 + 7 + 40 elements in blocks of 16 (the 101 in seven, two
    # histogram programs) and of 2048.
    base = [randn(101, dtype, 1), randn(7, torch.float32, 2), randn((5, 8), torch.bfloat16, 3)]
    models = coarse_models(base, 3, 4)
    args = ([0.5, 0.3, -0.2], [0.3, 0.6, 0.05], [0.02, 0.25, 0.0])
    kw = dict(consensus="sum", rescale="l1", normalize=True, lam=1.1, scope="global")
    outs = [launch(base, models, *args, block=block, **kw) for block in (16, 2048)]
    assert_same(outs[0], outs[1])
    assert_same(outs[0], reference_of(base, models, *args, **kw), "l1")


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_all_zero_deltas(dtype):
    # Every key 0: both thresholds on the one key, the band is ranks [start, end) of
    # its ties, the l1 sums are 0 (s = 1); out = base. Then one non-zero delta per
    # model: the outlier dropped (gamma 0.1 of 40: 4 of them), or kept (gamma 0).
    base = [randn(40, dtype, 3)]
    for kw in (dict(consensus="sum", rescale="l1", normalize=True), dict(rescale="density")):
        got, want = both_routes(base, [[base[0].clone()], [base[0].clone()]], [0.5, 1.0], density=0.3,
                                gamma=[0.1, 0.5], **kw)
        assert torch.equal(got[0], base[0]) and torch.equal(got[0], want[0])
        models = [[base[0].clone()], [base[0].clone()]]
        models[0][0][5] += 1.0
        models[1][0][30] -= 2.0
        for gamma in (0.0, 0.1):
            got, want = both_routes(base, models, [0.5, 1.0], density=0.3, gamma=gamma, **kw)
            assert_same(got, want)
            assert torch.equal(got[0][5] == base[0][5], torch.tensor(gamma > 0))


@needs_triton
def test_in_place():
    # out = base: every pass reads base before the fused pass writes it.
    base = [randn((6, 11), torch.float32, 0), randn(5, torch.bfloat16, 1)]
    models = coarse_models(base, 2, 2)
    kw = dict(sparsify="magnitude_outliers", density=0.4, gamma=0.1, consensus="sum", rescale="l1", scope="global")
    want = task_merge(base, models, [0.6, 0.5], backend="torch", **kw)
    base, models = moved(base, TRITON_DEVICE), moved(models, TRITON_DEVICE)
    got = task_merge(base, models, [0.6, 0.5], out=base, backend="triton", **kw)
    assert all(g is b for g, b in zip(got, base))
    assert_same(moved(base, "cpu"), want)


# Compiled for a GPU (sm_90) in a process without the interpreter: the band's two
# masks and the statistics' upper bound lower, and hold no FMA.
_COMPILE_CHECK = r"""
from m2n2_kernels.triton import task_merge as ttm

fused = ["*bf16", "*bf16", "*i64", "*i32", "*fp64", "*fp64", "*i64", "*i64", "*i64", "*i64"]
ptx = compile_ptx(ttm._fused_kernel, fused, dict(BLOCK=2048, CDT=tl.float32, WIDE=True, SPARSIFY=3, CONSENSUS=1,
                                                 NORMALIZE=True, ALIGNED=True))
compile_ptx(ttm._stats_kernel, ["*fp32", "*i64", "*i32", "*i64", "*i64", "*fp64", "*fp64", "*i64"],
            dict(BLOCK=2048, CDT=tl.float32, WIDE=False, SPARSIFY=3, ALIGNED=True))
assert "fma." not in ptx and "div.full" not in ptx and "div.approx" not in ptx, "contracted or approximate"
print("ok")
"""


@needs_triton
def test_compiles_for_gpu():
    from conftest import run_triton_compile_check

    run_triton_compile_check(_COMPILE_CHECK)
