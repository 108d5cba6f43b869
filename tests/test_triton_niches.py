"""The Triton niche kernels' own paths (tests/test_niches.py covers the semantics):
column slices and row slices with partials, the broadcast and tensor-core matrix
paths for 0/1 scores, the exact bf16 split of u, and the direct-call checks."""
import pytest
import torch
from conftest import HAS_GPU
from test_niches import close, make_capacity, make_scores

from m2n2_kernels import _backend, reference

pytestmark = pytest.mark.skipif(
    not _backend.triton_importable() or not (HAS_GPU or _backend.triton_interpreting()),
    reason="Triton needs a GPU or TRITON_INTERPRET=1",
)
DEVICE = "cuda" if HAS_GPU else "cpu"


def tn():
    from m2n2_kernels.triton import niches

    return niches


def run(S, mode, parent=-1, child=None, capacity=None, alpha=1.0, eps=0.0):
    out = torch.float64 if S.dtype == torch.float64 else torch.float32
    n, d = S.shape
    z = torch.empty(d, dtype=out, device=S.device)
    fit = torch.empty(n + (child is not None), dtype=out, device=S.device)
    att = torch.empty({"none": (0,), "row": (n,), "matrix": (n, n)}[mode], dtype=out, device=S.device)
    cap = None if capacity is None else capacity.double()
    tn().niche_stats_out(S, child, cap, alpha, eps, parent, mode, z, fit, att)
    return z, fit, att


@pytest.mark.parametrize("target", [None, 7, 10_000])  # default grid, some slices, one per chunk
@pytest.mark.parametrize(
    "dtype,dot", [(torch.bool, True), (torch.bool, False), (torch.float32, None), (torch.float64, None)], ids=str
)
def test_slices_and_paths(monkeypatch, target, dtype, dot):
    # dot: the tensor-core path for 0/1 scores (False: the broadcast path, interpreter only)
    if dot is False and DEVICE == "cuda":
        pytest.skip("the GPU always takes the tensor-core path for 0/1 scores")
    monkeypatch.setattr(tn(), "_TARGET_PROGRAMS", target)
    monkeypatch.setattr(tn(), "_USE_DOT_IN_INTERPRETER", dot)
    n, d = (37, 700) if DEVICE == "cpu" else (300, 20_000)
    S = make_scores(n, d, dtype, DEVICE, seed=21)
    cap = make_capacity(d, DEVICE)
    z, fit, A = reference.niche_stats(S, alpha=0.7, capacity=cap, eps=0.1)
    got = run(S, "matrix", capacity=cap, alpha=0.7, eps=0.1)
    for g, w in zip(got, (z, fit, A)):
        close(g, w, dtype)
    row = run(S, "row", parent=5, capacity=cap, alpha=0.7, eps=0.1)
    close(row[1], fit, dtype)
    close(row[2], A[5], dtype)
    # A child as row N, with the slices too.
    child = make_scores(1, d, dtype, DEVICE, seed=22)[0]
    want = reference.niche_stats(S, alpha=0.7, mode="none", child=child)
    got = run(S, "none", child=child, alpha=0.7)
    close(got[0], want[0], dtype)
    close(got[1], want[1], dtype)
    # Deterministic: a second run is bitwise the same.
    again = run(S, "matrix", capacity=cap, alpha=0.7, eps=0.1)
    assert all(torch.equal(x, y) for x, y in zip(again, run(S, "matrix", capacity=cap, alpha=0.7, eps=0.1)))


def test_no_rows_counts_the_child():
    S = torch.zeros(0, 5, dtype=torch.bool, device=DEVICE)
    child = torch.tensor([1, 0, 1, 1, 0], dtype=torch.bool, device=DEVICE)
    z, fit, _ = run(S, "none", child=child)
    assert z.tolist() == [1.0, 0.0, 1.0, 1.0, 0.0] and fit.tolist() == [3.0]


def test_bf16_pieces_are_exact():
    g = torch.Generator().manual_seed(0)
    u = torch.cat([torch.rand(10_000, generator=g), 1 / torch.arange(1, 5000).float(), torch.tensor([0.0, 2e-33])])
    pieces = tn()._bf16_pieces(u)
    assert pieces.dtype == torch.bfloat16 and pieces.shape == (3, u.numel())
    # Smallest first; summed in fp64 (exact), the pieces give u back bit for bit
    # (for u >= 2**-110: below, the last piece is a bf16 subnormal and may round).
    assert torch.equal(pieces.double().sum(0), u.double())
    assert pieces[0].abs().max() <= pieces[1].abs().max() <= pieces[2].abs().max()
    tiny = torch.tensor([3e-39, 1e-36])
    assert (tn()._bf16_pieces(tiny).double().sum(0) - tiny.double()).abs().max() < 1e-40


def test_direct_call_checks():
    # torch.ops callers that reach the Triton kernels on CUDA (ops.py registers them
    # where CUDA C++ was not compiled) get the checks of niches.check_op_args, in the
    # words of csrc/niches_args.h (tests/test_op_contract.py compares the two).
    from m2n2_kernels import ops

    S = make_scores(3, 5, torch.float32, DEVICE)
    f = ops.triton_niche_stats_out
    e = dict(device=DEVICE)
    z, fit, row = torch.empty(5, **e), torch.empty(3, **e), torch.empty(3, **e)
    names = ("S", "child", "capacity", "alpha", "eps", "parent", "mode", "z", "fitness", "attraction")
    good = dict(zip(names, (S, None, None, 1.0, 0.0, 0, "row", z, fit, row)))
    with_child = dict(mode="none", fitness=torch.empty(4, **e), attraction=torch.empty(0, **e))
    cases = [
        (ValueError, r"S must be 2-D \[N models, D datapoints\], got shape \(5,\)", dict(S=S[0])),
        (TypeError, "S must be bool, uint8, float16, bfloat16, float32 or float64, got torch.int32", dict(S=S.int())),
        (ValueError, r"S's rows must be contiguous", dict(S=S.t().contiguous().t())),
        (ValueError, "alpha must be finite, got nan", dict(alpha=float("nan"))),
        (ValueError, r"eps must be >= 0.0, got -1.0", dict(eps=-1.0)),
        (ValueError, r"attraction_mode must be one of \('none', 'row', 'matrix'\), got 'column'", dict(mode="column")),
        (IndexError, r"parent must lie in \[0, 3\) \(a row of S\), got 3", dict(parent=3)),
        (ValueError, "child is only counted with attraction_mode 'none'", dict(child=S[0])),
        (TypeError, r"child must be torch.float32 \(as a row of S\), got torch.float64", dict(child=S[0].double(), **with_child)),
        (ValueError, r"child must have shape \(5,\) \(as a row of S\), got \(4,\)", dict(child=S[0, :4], **with_child)),
        (TypeError, r"capacity must be torch.float64 \(one per column of S\), got torch.float32", dict(capacity=torch.ones(5, **e))),
        (ValueError, r"capacity must have shape \(5,\)", dict(capacity=torch.ones(4, **e).double())),
        (TypeError, "z must be torch.float32, got torch.float64", dict(z=z.double())),
        (ValueError, r"fitness must have shape \(3,\), got \(4,\)", dict(fitness=torch.empty(4, **e))),
        (ValueError, r"attraction must have shape \(3, 3\), got \(3,\)", dict(mode="matrix")),
        (ValueError, "attraction must be contiguous", dict(mode="matrix", attraction=torch.empty(3, 3, **e).t())),
    ]
    for error, message, changes in cases:
        with pytest.raises(error, match=message):
            f(*{**good, **changes}.values())
    # Nothing was written: the outputs still hold what they held.
    z.fill_(7.0)
    bad = S.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"S\[2, 1\] = nan: scores must be finite"):
        f(bad, None, None, 1.0, 0.0, 0, "row", z, fit.fill_(7.0), row.fill_(7.0))
    assert fit.tolist() == [7.0] * 3 and row.tolist() == [7.0] * 3
