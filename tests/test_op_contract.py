"""One contract per op, in one vocabulary.

Every torch.ops.m2n2 op is checked twice by design: by the C++ kernels (csrc/*_args.h,
for direct callers of the CPU and CUDA kernels) and by the Python layer
(m2n2_kernels/<family>.py, check_op_*, which guards the Triton kernels and runs on
every API call). Here the same bad canonical arguments go to both, and the two
must raise the same exception type with the same message.
"""
import pytest
import torch

import m2n2_kernels  # noqa: F401  (registers the ops)
from m2n2_kernels import _checks, crossover, niches, pcb, scores, task_vectors

OP = torch.ops.m2n2


def _crossover_cases():
    a, b, out = torch.randn(6), torch.randn(6), torch.empty(6)
    bf = torch.randn(4, dtype=torch.bfloat16)
    buf, x, y = torch.randn(12), torch.randn(6), torch.randn(6)
    args = dict(split=2, w=0.3, method="slerp", omega="global", noise_std=0.0, seed=0, stream=0, index_offset=0)

    def call(a_, b_, out_, **kw):
        return ("split_interpolate_out", ([*a_], [*b_], [*out_], *{**args, **kw}.values()))

    return [
        call([a], [b, b], [out]),
        call([a], [b], [out, out]),
        call([a.long()], [b], [out]),
        call([a], [b.double()], [out]),
        call([a], [b[:5]], [out]),
        call([a, bf], [b, bf.float()], [out, torch.empty_like(bf)]),
        call([a, bf], [b, bf], [out, torch.empty(4)]),
        call([a], [b], [torch.empty(12)[::2]]),
        call([torch.randn(12)[::2]], [b], [out]),
        call([a], [b], [out], method="cubic"),
        call([a], [b], [out], omega="local"),
        call([a], [b], [out], split=7),
        call([a], [b], [out], split=-1),
        call([a], [b], [out], index_offset=-1),
        call([a], [b], [out], index_offset=2**63 - 5),
        # aliasing: a written tensor meets another tensor of the call
        call([a], [b], [a[1:]]),
        call([a, buf[:4]], [b, bf.float()], [buf[2:8], torch.empty(4)]),
        call([a, bf.float()], [b, buf[:4]], [torch.empty(6), buf[2:6]]),
        call([a, b], [b, a], [out, out]),
        ("split_interpolate_", ([x, y], [y, x], *args.values(), True)),
        ("split_interpolate_", ([buf[:6], buf[3:9]], [x, y], *args.values(), False)),
        call([buf[:6], buf[3:9]], [x, y], [torch.empty(6), torch.empty(6)], split=13),  # reads may overlap each other
        # index_offsets (after sums): one global offset per entry, ranges disjoint
        with_offsets(call([a, x], [b, y], [out, torch.empty(6)]), [0]),
        with_offsets(call([a, x], [b, y], [out, torch.empty(6)], index_offset=3), [0, 6]),
        with_offsets(call([a, x], [b, y], [out, torch.empty(6)]), [0, -6]),
        with_offsets(call([a, x], [b, y], [out, torch.empty(6)]), [2**63 - 6, 2**63 - 7]),
        with_offsets(call([a, x], [b, y], [out, torch.empty(6)]), [10, 5]),
        with_offsets(call([a, x], [b, y], [out, torch.empty(6)], split=-1), [10, 0]),
        ("split_interpolate_", ([x, y], [a, b], *args.values(), True, None, [0, 3])),
    ]


def with_offsets(case, offsets):
    """An op call of the split_interpolate family with sums=None, index_offsets given."""
    name, args = case
    return name, (*args, None, offsets)


def _batch_cases():
    archive, out = torch.randn(3, 5), torch.empty(2, 5)
    i64 = dict(dtype=torch.int64)
    big = torch.randn(5, 5)
    ia, ib, split, w = torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([1, 4]), torch.tensor([0.2, 0.7], dtype=torch.float64)

    def call(**kw):
        v = dict(archive=archive, ia=ia, ib=ib, split=split, w=w, out=out, method="lerp", omega="global",
                 noise_std=0.0, seed=0) | kw
        return ("crossover_batch_out", tuple(v.values()))

    return [
        call(archive=archive.long()),
        call(archive=archive[0]),
        call(out=out.double()),
        call(out=torch.empty(2, 4)),
        call(ia=ia.int()),
        call(ib=torch.tensor([1, 2, 0])),
        call(split=split.double()),
        call(w=w.float()),
        call(out=torch.empty(5, 2).t()),
        call(archive=torch.randn(5, 3).t()),
        call(method="cubic"),
        call(ia=out.view(-1)[:4].view(torch.int64)),
        call(w=out.view(-1)[4:8].view(torch.float64)),
        call(archive=big[:3], out=big[2:4]),
        call(ia=torch.arange(2, **i64) + 2),  # values: refused by the C++ kernels; see below
    ]


def _niches_cases():
    S = torch.rand(3, 5)
    z, fit, row = torch.empty(5), torch.empty(3), torch.empty(3)
    cap = torch.ones(5, dtype=torch.float64)

    def call(**kw):
        v = dict(S=S, child=None, capacity=None, alpha=1.0, eps=0.0, parent=0, mode="row", z=z, fitness=fit,
                 attraction=row) | kw
        return ("niche_stats_out", tuple(v.values()))

    none = dict(mode="none", fitness=torch.empty(4), attraction=torch.empty(0))
    return [
        call(S=S[0]),
        call(S=S.int()),
        call(S=S.t().contiguous().t()),
        call(S=torch.rand(1, 5).expand(3, 5)),
        call(alpha=float("nan")),
        call(eps=float("inf")),
        call(eps=-1.0),
        call(mode="column"),
        call(parent=3),
        call(parent=-1),
        call(child=S[0]),
        call(child=S[0].double(), **none),
        call(child=S[0, :4], **none),
        call(capacity=torch.ones(5)),
        call(capacity=torch.ones(4, dtype=torch.float64)),
        call(z=z.double()),
        call(fitness=torch.empty(4)),
        call(mode="matrix"),
        call(mode="matrix", attraction=torch.empty(3, 3).t()),
        call(z=S[1]),
        call(attraction=fit),
        call(capacity=cap, z=cap.view(torch.float32)[:5]),
    ]


def _scores_cases():
    logits, target, out = torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.int64), torch.empty(2)

    def call(**kw):
        v = dict(logits=logits, target=target, mask=None, ignore_index=-100, kind="correct", reduce="mean",
                 out=out, out_index=None) | kw
        return ("sample_scores_out", tuple(v.values()))

    return [
        call(kind="top5"),
        call(reduce="max"),
        call(kind="prob", reduce="all"),
        call(logits=logits.double()),
        call(logits=logits[0]),
        call(logits=torch.randn(2, 3, 0)),
        call(logits=torch.randn(2, 3, 4).transpose(1, 2)),
        call(target=target.int()),
        call(target=target[:, :2]),
        call(mask=torch.ones(2, 3, dtype=torch.uint8)),
        call(mask=torch.ones(2, 2, dtype=torch.bool)),
        call(out=out.long()),
        call(out=torch.empty(2, dtype=torch.bool)),
        call(out=torch.empty(2, 1)),
        call(out=torch.empty(3)),
        call(out=torch.empty(5), out_index=torch.tensor([0, 1], dtype=torch.int32)),
        call(out=torch.empty(5), out_index=torch.tensor([0, 1, 2])),
        call(out=logits.view(-1)[3:5]),
        call(out=target.view(-1)[:1].view(torch.float32)),
    ]


def _python_out_checks(a, b, out, split, w, method, omega, noise_std, index_offset, sums, index_offsets):
    n = crossover.check_op_lists(a, b, out)
    crossover.check_op_aliasing(a, b, out, "none")
    crossover.check_op_scalars(n, split, w, method, omega, noise_std, 0, index_offset, piece=sums is not None,
                               numels=[t.numel() for t in a], index_offsets=index_offsets)


def _python_inplace_checks(self, other, self_is_a, split, w, method, omega, noise_std, index_offset, sums,
                           index_offsets):
    a, b = (self, other) if self_is_a else (other, self)
    n = crossover.check_op_lists(a, b, self)
    crossover.check_op_aliasing(a, b, self, "a" if self_is_a else "b")
    crossover.check_op_scalars(n, split, w, method, omega, noise_std, 0, index_offset, piece=sums is not None,
                               numels=[t.numel() for t in a], index_offsets=index_offsets)


def _python_sums_checks(a, b, split, index_offset, index_offsets=None):
    n = crossover.check_op_lists(a, b)
    crossover.check_op_offsets([t.numel() for t in a], index_offset, index_offsets)
    crossover.check_op_split(n, split, index_offset, piece=True)


_PYTHON_CHECKS = {
    "interp_sums": _python_sums_checks,
    "split_interpolate_out": lambda a, b, out, split, w, method, omega, noise_std, seed, stream, index_offset,
    sums=None, index_offsets=None: (
        _python_out_checks(a, b, out, split, w, method, omega, noise_std, index_offset, sums, index_offsets)
    ),
    "split_interpolate_": lambda self, other, split, w, method, omega, noise_std, seed, stream, index_offset, self_is_a,
    sums=None, index_offsets=None: (
        _python_inplace_checks(self, other, self_is_a, split, w, method, omega, noise_std, index_offset, sums,
                               index_offsets)
    ),
    "crossover_batch_out": lambda archive, ia, ib, split, w, out, method, omega, noise_std, seed: (
        crossover.check_op_batch(archive, ia, ib, split, w, out, method, omega)
    ),
    "niche_stats_out": niches.check_op_args,
    "task_merge_out": task_vectors.check_op_canonical,
    "pcb_merge_out": pcb.check_op_canonical,
    "della_merge_out": task_vectors.check_op_della_canonical,
    "sample_scores_out": scores.check_op_args,
}

def _sums_cases():
    a, b = torch.randn(6), torch.randn(6)
    return [
        ("interp_sums", ([a], [b, b], 2, 0)),
        ("interp_sums", ([a], [b.double()], 2, 0)),
        ("interp_sums", ([a], [b[:5]], 2, 0)),
        ("interp_sums", ([a.long()], [b], 2, 0)),
        ("interp_sums", ([a], [b], -1, 0)),
        ("interp_sums", ([a], [b], 2, -3)),
        ("interp_sums", ([a], [b], 2, 2**63 - 2)),
        ("interp_sums", ([a, b], [b, a], 2, 0, [0])),
        ("interp_sums", ([a, b], [b, a], 2, 1, [0, 6])),
        ("interp_sums", ([a, b], [b, a], 2, 0, [3, 0])),
        ("interp_sums", ([a, b[:0]], [b, a[:0]], 2, 0, [0, -1])),
    ]


def _task_merge_cases():
    base, m0, m1, out = torch.randn(6), torch.randn(6), torch.randn(6), torch.empty(6)
    args = dict(weights=[0.5, 0.5], density=[0.5, 0.5], gamma=[0.01, 0.01], sparsify="magnitude", consensus="sum",
                rescale="none", normalize=True, lam=1.0, scope="tensor", seed=0)

    def call(b, ms, o, **kw):
        return ("task_merge_out", (b, ms, o, *{**args, **kw}.values()))

    buf = torch.randn(12)
    return [
        call([], [m0, m1], []),
        call([base], [], [out]),
        call([base, base[:3]], [m0, m1, m0], [out, out[:3]]),
        call([base], [m0] * 65, [out], weights=[1.0] * 65, density=[1.0] * 65, gamma=[0.0] * 65),
        call([base], [m0, m1], [out], weights=[1.0]),
        call([base], [m0, m1], [out], weights=[1.0, float("nan")]),
        call([base], [m0, m1], [out], density=[0.5, 1.5]),
        call([base], [m0, m1], [out], density=[-0.1, 0.5]),
        call([base], [m0, m1], [out], gamma=[0.5]),
        call([base], [m0, m1], [out], gamma=[0.5, 1.01]),
        call([base], [m0, m1], [out], gamma=[float("nan"), 0.5]),
        call([base], [m0] * 33, [out], weights=[1.0] * 33, density=[1.0] * 33, gamma=[0.0] * 33,
             sparsify="magnitude_outliers"),
        call([base], [m0, m1], [out], sparsify="top"),
        call([base], [m0, m1], [out], consensus="vote"),
        call([base], [m0, m1], [out], rescale="l2"),
        call([base], [m0, m1], [out], scope="layer"),
        call([base], [m0, m1], [out], lam=float("inf")),
        call([base], [m0, m1], [out, out]),
        call([base.long()], [m0, m1], [out]),
        call([base], [m0, m1.double()], [out]),
        call([base], [m0[:5], m1], [out]),
        call([base], [m0, torch.randn(12)[::2]], [out]),
        call([base], [m0, m1], [torch.empty(6, dtype=torch.float64)]),
        call([base], [m0, m1], [m0]),  # out meets a model
        call([buf[:6], buf[3:9]], [m0, m1, m0, m1], [buf[:6], buf[3:9]]),  # in place, positions overlapping
    ]


def _della_cases():
    base, m0, m1, out = torch.randn(6), torch.randn(6), torch.randn(6), torch.empty(6)
    args = dict(weights=[0.5, 0.5], density=[0.5, 0.5], epsilon=[0.1, 0.1], consensus="sum", rescale="l1",
                normalize=True, lam=1.0, scope="tensor", seed=0)

    def call(b, ms, o, **kw):
        return ("della_merge_out", (b, ms, o, *{**args, **kw}.values()))

    return [
        call([], [m0, m1], []),
        call([base], [], [out]),
        call([base, base[:3]], [m0, m1, m0], [out, out[:3]]),
        call([base], [m0] * 65, [out], weights=[1.0] * 65, density=[1.0] * 65, epsilon=[0.0] * 65),
        call([base], [m0, m1], [out], weights=[1.0]),
        call([base], [m0, m1], [out], density=[0.5, 1.5]),
        call([base], [m0, m1], [out], epsilon=[0.1]),
        call([base], [m0, m1], [out], epsilon=[0.1, -0.1]),
        call([base], [m0, m1], [out], epsilon=[float("nan"), 0.1]),
        call([base], [m0, m1], [out], consensus="vote"),
        call([base], [m0, m1], [out], rescale="density"),
        call([base], [m0, m1], [out], scope="layer"),
        call([base], [m0, m1], [out], lam=float("nan")),
        call([base], [m0, m1.double()], [out]),
        call([base], [m0, m1], [m0]),
        call([base.long()], [m0, m1], [out]),
    ]


def _pcb_cases():
    base, m0, m1, out = torch.randn(6), torch.randn(6), torch.randn(6), torch.empty(6)
    args = dict(ratio=0.5, lam=1.0, scope="tensor", clamp=1e-4)

    def call(b, ms, o, **kw):
        return ("pcb_merge_out", (b, ms, o, *{**args, **kw}.values()))

    return [
        call([], [m0, m1], []),
        call([base], [], [out]),
        call([base], [m0] * 65, [out]),
        call([base, base[:3]], [m0, m1, m0], [out, out[:3]]),
        call([base], [m0, m1.double()], [out]),
        call([base], [m0[:5], m1], [out]),
        call([base], [m0, m1], [m0]),
        call([base], [m0, m1], [out], ratio=0.0),
        call([base], [m0, m1], [out], ratio=1.5),
        call([base], [m0, m1], [out], ratio=float("nan")),
        call([base], [m0, m1], [out], lam=float("inf")),
        call([base], [m0, m1], [out], scope="layer"),
        call([base], [m0, m1], [out], clamp=0.5),
        call([base], [m0, m1], [out], clamp=-1e-3),
        call([base], [m0, m1], [out], clamp=float("nan")),
    ]


CASES = (_crossover_cases() + _batch_cases()[:-1] + _niches_cases() + _scores_cases() + _sums_cases()
         + _task_merge_cases() + _della_cases() + _pcb_cases())


def _error(fn):
    try:
        fn()
    except (TypeError, ValueError, IndexError) as e:
        return type(e), str(e).splitlines()[0]
    return None, None


@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{op}-{i}" for i, (op, _) in enumerate(CASES)])
def test_cpp_and_python_checks_say_the_same(case):
    op, args = CASES[case]
    cpp = _error(lambda: getattr(OP, op)(*args))
    py = _error(lambda: _PYTHON_CHECKS[op](*args))
    assert cpp[0] is not None, f"the C++ kernels accepted a bad call of {op}"
    assert py == cpp


def test_batch_index_values_are_index_errors():
    # The C++ CPU kernels read ia/ib (on the host); the API reads them on any device.
    archive = torch.randn(3, 5)
    args = (archive, torch.tensor([0, 3]), torch.tensor([1, 1]), torch.tensor([1, 1]),
            torch.tensor([0.5, 0.5], dtype=torch.float64), torch.empty(2, 5), "lerp", "global", 0.0, 0)
    with pytest.raises(IndexError, match=r"ia must lie in \[0, 3\) \(rows of archive\), got 3"):
        OP.crossover_batch_out(*args)
    with pytest.raises(IndexError, match=r"ia must lie in \[0, 3\) \(rows of archive\), got 3"):
        m2n2_kernels.crossover_batch(archive, [0, 3], [1, 1], [1, 1], [0.5, 0.5])


def test_vocabulary():
    assert _checks.shape_str((5,)) == "(5,)" and _checks.shape_str(()) == "()"
    assert _checks.dtypes_str((torch.float32, torch.bfloat16)) == "float32 or bfloat16"
    with pytest.raises(ValueError, match=r"method must be one of \('lerp', 'slerp'\), got 'x'"):
        _checks.choice("x", "method", ("lerp", "slerp"))
