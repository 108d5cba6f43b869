"""Per-sample score gathering: every backend against reference.py (the semantics)."""
import pytest
import torch
from conftest import device_backend_params

import m2n2_kernels as mk
from m2n2_kernels import reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
KINDS = ["correct", "logprob", "prob"]
# (B, T, V); T None means [B, V] logits. B * T shrinks as V grows.
SHAPES = [
    (5, None, 1),
    (6, None, 2),
    (7, 3, 10),
    (4, 5, 1000),
    (3, 2, 32000),
    (3, None, 50257),
    (1, 2, 131072),
]
# The fp32 online sum of exponentials differs from torch's log_softmax in rounding
# only (and the GPU's exp in its last bits): a few ulp of the row's log-sum-exp.
TOL = {"correct": dict(rtol=0, atol=0), "logprob": dict(rtol=2e-5, atol=2e-5), "prob": dict(rtol=2e-5, atol=1e-7)}


def make_case(batch, tokens, vocab, dtype, device, seed=0):
    """Logits with half of the targets at the argmax (so that "correct" is not
    trivially 0), some targets ignored (-100) and a random mask."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, vocab) if tokens is None else (batch, tokens, vocab)
    logits = (torch.randn(shape, generator=g) * 3).to(dtype)
    target = torch.randint(0, vocab, shape[:-1], generator=g)
    target = torch.where(torch.rand(shape[:-1], generator=g) < 0.5, logits.float().argmax(-1), target)
    target[torch.rand(shape[:-1], generator=g) < 0.15] = -100
    mask = torch.rand(shape[:-1], generator=g) < 0.8
    return logits.to(device), target.to(device), mask.to(device)


def reduces(kind):
    return ["mean", "sum", "all"] if kind == "correct" else ["mean", "sum"]


def check(got, want, kind):
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got.cpu(), want.cpu(), equal_nan=True, **TOL[kind])


@pytest.mark.parametrize("device,backend", device_backend_params(with_torch=False))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch,tokens,vocab", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_matches_reference(device, backend, dtype, batch, tokens, vocab, kind):
    logits, target, mask = make_case(batch, tokens, vocab, dtype, device, seed=vocab)
    combos = [(m, reduce) for m in (None, mask) for reduce in reduces(kind)]
    if device == "cpu" and backend == "triton" and vocab > 1000:
        combos = combos[-1:]  # the interpreter is slow: the reductions are covered on small V
    for m, reduce in combos:
        got = mk.sample_scores(logits, target, kind=kind, mask=m, reduce=reduce, backend=backend)
        want = reference.sample_scores(logits, target, kind=kind, mask=m, reduce=reduce)
        check(got, want, kind)


def special_rows(device, dtype, vocab=40000):
    """Rows with -inf, a whole row of -inf, NaN before/after the target, +inf, and
    ties of the maximum on both sides of the target and across the CPU's pieces of
    16384 logits; targets placed to hit each rule."""
    inf, nan = float("inf"), float("nan")
    x = torch.randn(12, vocab).to(dtype)
    t = torch.zeros(12, dtype=torch.int64)
    x[0, :] = -inf  # no distribution: logprob NaN, argmax 0
    t[0] = 0
    x[1, :] = -inf
    t[1] = 7  # argmax is 0 -> wrong
    x[2, 100] = -inf  # -inf at the target: logprob -inf
    t[2] = 100
    x[3, :] = -inf
    x[3, 30000] = 5.0  # a single finite logit far into the row
    t[3] = 30000
    x[4, 5] = nan  # NaN before the target: argmax is 5
    t[4] = 9
    x[5, 20000] = nan  # the first NaN is the target
    x[5, 30000] = nan
    t[5] = 20000
    x[6, 20000] = nan
    x[6, 30000] = nan
    t[6] = 30000  # a later NaN: wrong
    x[7, 123] = inf  # +inf: argmax, logprob NaN
    t[7] = 123
    x[8, 16383] = 9.0  # tie across the first piece boundary: the lower index wins
    x[8, 16384] = 9.0
    t[8] = 16383
    x[9, 16383] = 9.0
    x[9, 16384] = 9.0
    t[9] = 16384
    x[10, 39999] = 9.0  # max at the last logit
    t[10] = 39999
    x[11, 0] = 9.0  # max at the first logit, a tie at the end
    x[11, 39999] = 9.0
    t[11] = 0
    return x.to(device), t.to(device)


# The Triton interpreter runs the kernels in numpy, which warns about the log(0) and
# inf - inf of the rows that have no distribution (their score is NaN by design).
@pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("device,backend", device_backend_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_special_values_and_ties(device, backend, dtype, kind):
    logits, target = special_rows(device, dtype)
    got = mk.sample_scores(logits, target, kind=kind, backend=backend)
    want = reference.sample_scores(logits, target, kind=kind)
    check(got, want, kind)
    if kind == "correct":
        assert got.tolist() == [1, 0, 0, 1, 0, 1, 0, 1, 1, 0, 1, 1]
    else:
        assert torch.isnan(got[[0, 1, 7]]).all() and not torch.isnan(got[[2, 3, 8, 9, 10, 11]]).any()
        assert got[2] == (-float("inf") if kind == "logprob" else 0.0)


@pytest.mark.parametrize("device,backend", device_backend_params())
def test_short_ties(device, backend):
    # Equal logits everywhere: torch.argmax picks index 0.
    logits = torch.zeros(4, 3, 10, device=device)
    target = torch.tensor([[0, 0, 0], [1, 1, 1], [0, 1, 0], [9, 0, -100]], device=device)
    got = mk.sample_scores(logits, target, kind="correct", reduce="mean", backend=backend)
    assert got.tolist() == pytest.approx([1.0, 0.0, 2 / 3, 0.5])
    got = mk.sample_scores(logits, target, kind="correct", reduce="all", backend=backend)
    assert got.tolist() == [1.0, 0.0, 0.0, 0.0]
    lp = mk.sample_scores(logits, target, kind="logprob", reduce="sum", backend=backend)
    torch.testing.assert_close(lp.cpu(), torch.log(torch.tensor(0.1)) * torch.tensor([3.0, 3.0, 3.0, 2.0]))


@pytest.mark.parametrize("device,backend", device_backend_params())
@pytest.mark.parametrize("kind", KINDS)
def test_samples_without_valid_tokens_score_zero(device, backend, kind):
    logits, target, _ = make_case(4, 6, 50, torch.float32, device, seed=1)
    logits[1] = float("nan")  # never read: all its tokens are masked out
    mask = torch.ones(4, 6, dtype=torch.bool, device=device)
    mask[1] = False
    target[2] = -100
    target[3, :] = logits[3].argmax(-1)
    for reduce in reduces(kind):
        got = mk.sample_scores(logits, target, kind=kind, mask=mask, reduce=reduce, backend=backend)
        assert got[1] == 0 and got[2] == 0, (reduce, got)
        check(got, reference.sample_scores(logits, target, kind=kind, mask=mask, reduce=reduce), kind)
    empty_t = mk.sample_scores(logits[:, :0], target[:, :0], kind=kind, backend=backend)
    assert empty_t.tolist() == [0.0] * 4
    assert mk.sample_scores(logits[:0], target[:0], kind=kind, backend=backend).shape == (0,)


@pytest.mark.parametrize("device,backend", device_backend_params())
def test_integer_mask_and_ignore_index(device, backend):
    logits, target, mask = make_case(3, 8, 30, torch.float32, device, seed=2)
    target[target == -100] = 5
    int_mask = mask.to(torch.int64)  # e.g. an attention mask
    got = mk.sample_scores(logits, target, kind="logprob", mask=int_mask, ignore_index=5, backend=backend)
    want = reference.sample_scores(logits, target, kind="logprob", mask=mask, ignore_index=5)
    check(got, want, "logprob")


@pytest.mark.parametrize("device,backend", device_backend_params())
def test_strided_logits(device, backend):
    # The language-model shift: logits[:, :-1] scores targets[:, 1:], without a copy.
    logits, target, mask = make_case(3, 9, 300, torch.bfloat16, device, seed=3)
    shifted, t = logits[:, :-1], target[:, 1:]
    assert not shifted.is_contiguous()
    for kind in KINDS:
        got = mk.sample_scores(shifted, t, kind=kind, backend=backend)
        check(got, reference.sample_scores(shifted.contiguous(), t, kind=kind), kind)
    # A last dimension that is not contiguous is copied first.
    wide = logits.transpose(1, 2).contiguous().transpose(1, 2)
    got = mk.sample_scores(wide, target, kind="logprob", backend=backend)
    check(got, reference.sample_scores(logits, target, kind="logprob"), "logprob")


@pytest.mark.parametrize("device,backend", device_backend_params())
@pytest.mark.parametrize(
    "out_dtype,kind,reduce,two_d",
    [
        (torch.bool, "correct", "mean", True),
        (torch.uint8, "correct", "all", False),
        (torch.float32, "logprob", "mean", False),
        (torch.float64, "prob", "sum", False),
        (torch.float16, "correct", "mean", False),
        (torch.bfloat16, "prob", "mean", True),
    ],
    ids=str,
)
def test_out_index_writes_into_score_matrix(device, backend, out_dtype, kind, reduce, two_d):
    batch, datapoints = 6, 40
    logits, target, mask = make_case(batch, None if two_d else 5, 64, torch.float32, device, seed=4)
    S = torch.zeros(3, datapoints, dtype=out_dtype, device=device)
    before = S.clone()
    index = torch.randperm(datapoints, generator=torch.Generator().manual_seed(0))[:batch].to(device)
    ret = mk.sample_scores(logits, target, kind=kind, mask=mask, reduce=reduce, out=S[1], out_index=index, backend=backend)
    want = reference.sample_scores(logits, target, kind=kind, mask=mask, reduce=reduce)
    assert ret.data_ptr() == S[1].data_ptr() and ret.dtype == out_dtype
    untouched = torch.ones(datapoints, dtype=torch.bool, device=device)
    untouched[index] = False
    assert torch.equal(S[0], before[0]) and torch.equal(S[2], before[2])
    assert torch.equal(S[1][untouched], before[1][untouched])
    got = S[1][index]
    if out_dtype in (torch.bool, torch.uint8):
        assert torch.equal(got.cpu(), want.to(out_dtype))
    else:
        tol = dict(rtol=1e-2, atol=1e-3) if out_dtype in (torch.float16, torch.bfloat16) else TOL[kind]
        torch.testing.assert_close(got.cpu().float(), want, equal_nan=True, **tol)
    # A strided out (a column of a matrix), and a sequence of indices.
    col = torch.full((datapoints, 2), -1.0, device=device)
    mk.sample_scores(logits, target, kind="logprob", out=col[:, 1], out_index=index.tolist(), backend=backend)
    check(col[index, 1], reference.sample_scores(logits, target, kind="logprob"), "logprob")
    assert (col[:, 0] == -1).all() and (col[untouched, 1] == -1).all()


def test_same_result_with_any_thread_count():
    logits, target, mask = make_case(5, 3, 40000, torch.float32, "cpu", seed=5)
    saved = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(mk.sample_scores(logits, target, kind="logprob", mask=mask, backend="cpp"))
    finally:
        torch.set_num_threads(saved)
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


# ---- bad input ----


@pytest.mark.parametrize("device,backend", device_backend_params())
def test_bad_values_raise_before_out_is_touched(device, backend):
    logits, target, mask = make_case(4, 3, 20, torch.float32, device, seed=6)
    out = torch.full((10,), 7.0, device=device)
    index = torch.tensor([0, 2, 4, 6], device=device)
    for bad in (20, -1, 1000):
        t = target.clone()
        t[2, 1] = bad
        with pytest.raises(IndexError, match=r"target\[2, 1\].*outside \[0, 20\)"):
            mk.sample_scores(logits, t, kind="logprob", out=out, out_index=index, backend=backend)
        assert (out == 7.0).all()
        # The same target on a masked-out token is never read, so not an error.
        m = mask.clone()
        m[2, 1] = False
        mk.sample_scores(logits, t, kind="logprob", mask=m, backend=backend)
    for bad_index in ([0, 2, 4, 10], [0, -1, 4, 6]):
        with pytest.raises(IndexError, match=r"out_index\[\d\].*outside \[0, 10\)"):
            mk.sample_scores(logits, target, out=out, out_index=torch.tensor(bad_index, device=device), backend=backend)
        assert (out == 7.0).all()


def test_bad_arguments():
    logits, target, mask = make_case(4, 3, 20, torch.float32, "cpu", seed=7)
    f = mk.sample_scores
    with pytest.raises(TypeError, match="logits must be float32"):
        f(logits.to(torch.int32), target)
    with pytest.raises(TypeError, match="float64"):
        f(logits.double(), target)
    with pytest.raises(ValueError, match="logits must be"):
        f(logits[0, 0], target[0, 0])
    with pytest.raises(ValueError, match="V, the number of classes"):
        f(logits[..., :0], target)
    with pytest.raises(TypeError, match="target must be an integer"):
        f(logits, target.float())
    with pytest.raises(TypeError, match="target must be an integer"):
        f(logits, target > 0)
    with pytest.raises(ValueError, match="target must have shape"):
        f(logits, target[:, :2])
    with pytest.raises(ValueError, match="mask must have the shape"):
        f(logits, target, mask=mask[:, :2])
    with pytest.raises(TypeError, match="mask must be bool or integer"):
        f(logits, target, mask=mask.float())
    with pytest.raises(ValueError, match="kind must be"):
        f(logits, target, kind="accuracy")
    with pytest.raises(ValueError, match="reduce must be"):
        f(logits, target, reduce="max")
    with pytest.raises(ValueError, match="needs kind='correct'"):
        f(logits, target, kind="logprob", reduce="all")
    with pytest.raises(TypeError, match="ignore_index"):
        f(logits, target, ignore_index=1.5)
    with pytest.raises(ValueError, match="out_index needs out"):
        f(logits, target, out_index=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="out must have 4 elements"):
        f(logits, target, out=torch.empty(5))
    with pytest.raises(ValueError, match="out must be 1-D"):
        f(logits, target, out=torch.empty(4, 1))
    with pytest.raises(TypeError, match="only for 0/1 scores"):
        f(logits, target, kind="correct", reduce="mean", out=torch.empty(4, dtype=torch.bool))
    with pytest.raises(TypeError, match="out must be one of"):
        f(logits, target, kind="logprob", out=torch.empty(4, dtype=torch.int32))
    with pytest.raises(ValueError, match="out_index must have shape"):
        f(logits, target, out=torch.empty(10), out_index=[0, 1, 2])
    with pytest.raises(TypeError, match="out_index must hold integers"):
        f(logits, target, out=torch.empty(10), out_index=[0.0, 1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="out must be on cpu"):
        f(logits, target, out=torch.empty(4, device="meta"))
    with pytest.raises(ValueError, match="target must be on cpu"):
        f(logits, target.to("meta"))
    with pytest.raises(ValueError, match="out must not overlap logits"):
        f(logits, target, out=logits.view(-1)[:4])
    with pytest.raises(ValueError, match="backend must be one of"):
        f(logits, target, backend="numpy")


def test_direct_op_checks():
    # torch.ops callers skip the Python API: the C++ checks still name the argument.
    logits, target, _ = make_case(2, 3, 5, torch.float32, "cpu", seed=8)
    op = torch.ops.m2n2.sample_scores_out
    out = torch.empty(2)
    with pytest.raises(ValueError, match="logits must be 3-D"):
        op(logits[0], target, None, -100, "correct", "mean", out, None)
    with pytest.raises(TypeError, match="target must be torch.int64, got torch.int32"):
        op(logits, target.int(), None, -100, "correct", "mean", out, None)
    with pytest.raises(ValueError, match="kind must be"):
        op(logits, target, None, -100, "nope", "mean", out, None)
    with pytest.raises(ValueError, match="needs kind='correct'"):
        op(logits, target, None, -100, "prob", "all", out, None)
    with pytest.raises(TypeError, match="only for 0/1 scores"):
        op(logits, target, None, -100, "correct", "mean", out.bool(), None)
    with pytest.raises(ValueError, match="out must have 2 elements"):
        op(logits, target, None, -100, "correct", "mean", torch.empty(3), None)


# ---- torch.library and torch.compile ----


def test_opcheck():
    logits, target, mask = make_case(3, 4, 50, torch.bfloat16, "cpu", seed=9)
    out = torch.empty(10)
    index = torch.tensor([1, 5, 7])
    for args in (
        (logits, target, mask, -100, "logprob", "mean", out, index),
        (logits, target, None, -100, "correct", "all", torch.empty(3, dtype=torch.bool), None),
    ):
        torch.library.opcheck(torch.ops.m2n2.sample_scores_out, args)


def test_torch_compile_fullgraph():
    logits, target, mask = make_case(3, 4, 50, torch.float32, "cpu", seed=10)

    def score(x, t, m, S, idx):
        mk.sample_scores(x, t, kind="correct", mask=m, reduce="all", out=S[0], out_index=idx)
        return mk.sample_scores(x, t, kind="logprob", mask=m)

    S = torch.zeros(2, 8, dtype=torch.bool)
    S_eager = S.clone()
    idx = torch.tensor([6, 0, 3])
    compiled = torch.compile(score, fullgraph=True)
    got = compiled(logits, target, mask, S, idx)
    want = score(logits, target, mask, S_eager, idx)
    assert torch.equal(got, want)
    assert torch.equal(S, S_eager)
