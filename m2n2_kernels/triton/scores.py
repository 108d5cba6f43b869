"""Per-sample score gathering in Triton (the CUDA fallback, and testable on CPU
tensors under TRITON_INTERPRET=1).

Two launches: one program per token row reads the row once, tile by tile (online max
and sum of exponentials for "logprob"/"prob", the torch.argmax rule of
m2n2/scores.h for "correct"), and writes one fp32 token score; one program per sample
then reduces its valid tokens in fp64 and stores the score at out[out_index[b]] in
out's dtype. Extra memory: B * T floats.
"""
import torch
import triton
import triton.language as tl

from .._values import check_targets_and_index
from ._utils import interpreting, on_device

KIND_CODES = {"correct": 0, "logprob": 1, "prob": 2}
REDUCE_CODES = {"mean": 0, "sum": 1, "all": 2}


@triton.jit
def _token_scores_kernel(
    logits_ptr, target_ptr, mask_ptr, token_ptr, T, V, stride_b, stride_t, ignore_index,
    KIND: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    tgt = tl.load(target_ptr + row)
    valid = (tgt != ignore_index) & (tgt >= 0) & (tgt < V)
    if HAS_MASK:
        valid = valid & (tl.load(mask_ptr + row) != 0)
    base = logits_ptr + (row // T) * stride_b + (row % T) * stride_t
    safe_tgt = tl.where(valid, tgt, 0)
    xt = tl.load(base + safe_tgt).to(tl.float32)
    n = tl.where(valid, V, 0)  # rows that do not count are not read
    cols = tl.arange(0, BLOCK_V)
    if KIND == 0:
        # Some logit beats the target when argmax would pick it instead: an earlier
        # one >= xt, a later one > xt, or a NaN (before the target, or xt is a number).
        beaten = tl.zeros([BLOCK_V], dtype=tl.int32)
        for v0 in range(0, n, BLOCK_V):
            idx = v0 + cols
            x = tl.load(base + idx, mask=idx < n, other=float("-inf")).to(tl.float32)
            x_nan = x != x
            before = (x >= xt) | x_nan
            after = (x > xt) | tl.where(xt == xt, x_nan, False)
            hit = tl.where(idx < safe_tgt, before, tl.where(idx > safe_tgt, after, False)) & (idx < n)
            beaten = beaten | hit.to(tl.int32)
        score = tl.where(tl.max(beaten, axis=0) == 0, 1.0, 0.0)
    else:
        # s = sum exp(x - ref), ref = the running max (0 while it is -inf, so that a
        # tile of -inf adds 0, not NaN); the max skips NaNs, the sum does not.
        m = tl.max(tl.full([BLOCK_V], float("-inf"), tl.float32), axis=0)
        s = tl.sum(tl.zeros([BLOCK_V], dtype=tl.float32), axis=0)
        for v0 in range(0, n, BLOCK_V):
            idx = v0 + cols
            x = tl.load(base + idx, mask=idx < n, other=float("-inf")).to(tl.float32)
            tile_max = tl.max(tl.where(x == x, x, float("-inf")), axis=0)
            m_new = tl.maximum(m, tile_max)
            ref = tl.where(m_new == float("-inf"), 0.0, m_new)
            s = tl.where(m == m_new, s, s * tl.exp(m - ref)) + tl.sum(tl.exp(x - ref), axis=0)
            m = m_new
        s = tl.where(valid, s, 1.0)  # rows that were not read: avoid log(0)
        logprob = (xt - tl.where(m == float("-inf"), 0.0, m)) - tl.log(s)
        score = logprob if KIND == 1 else tl.exp(logprob)
    tl.store(token_ptr + row, tl.where(valid, score, 0.0))


@triton.jit
def _sample_reduce_kernel(
    token_ptr, target_ptr, mask_ptr, out_ptr, out_index_ptr, T, V, out_stride, ignore_index,
    REDUCE: tl.constexpr, HAS_MASK: tl.constexpr, HAS_INDEX: tl.constexpr, OUT_F64: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    total = tl.zeros([BLOCK_T], dtype=tl.float64)
    count = tl.zeros([BLOCK_T], dtype=tl.int32)
    cols = tl.arange(0, BLOCK_T)
    for t0 in range(0, T, BLOCK_T):
        t = t0 + cols
        inside = t < T
        tgt = tl.load(target_ptr + b * T + t, mask=inside, other=ignore_index)
        valid = inside & (tgt != ignore_index) & (tgt >= 0) & (tgt < V)
        if HAS_MASK:
            valid = valid & (tl.load(mask_ptr + b * T + t, mask=inside, other=0) != 0)
        score = tl.load(token_ptr + b * T + t, mask=inside, other=0.0)
        total += tl.where(valid, score.to(tl.float64), 0.0)
        count += valid.to(tl.int32)
    total_sum = tl.sum(total, axis=0)
    n = tl.sum(count, axis=0)
    if REDUCE == 0:
        value = total_sum / tl.maximum(n, 1).to(tl.float64)
    elif REDUCE == 1:
        value = total_sum
    else:
        value = tl.where((total_sum == n.to(tl.float64)) & (n > 0), 1.0, 0.0).to(tl.float64)
    value = tl.where(n > 0, value, 0.0)
    if HAS_INDEX:
        pos = tl.load(out_index_ptr + b)
    else:
        pos = b
    if OUT_F64:
        tl.store(out_ptr + pos * out_stride, value)
    else:  # through fp32, as the C++ kernels do
        tl.store(out_ptr + pos * out_stride, value.to(tl.float32).to(out_ptr.dtype.element_ty))


def _block(n, cap):
    return max(16, min(cap, triton.next_power_of_2(max(int(n), 1))))


def sample_scores_out(logits, target, mask, ignore_index, kind, reduce, out, out_index):
    """torch.ops.m2n2.sample_scores_out in Triton. Arguments in the op's canonical
    form, already checked (m2n2_kernels/scores.py); targets and out_index are
    checked here, in one pass, before out is written."""
    batch, tokens, vocab = logits.shape
    check_targets_and_index(target, mask, vocab, ignore_index, out_index, out.shape[0])
    if batch == 0:
        return
    with on_device(logits.device):
        _sample_scores(logits, target, mask, ignore_index, kind, reduce, out, out_index, batch, tokens, vocab)


def _sample_scores(logits, target, mask, ignore_index, kind, reduce, out, out_index, batch, tokens, vocab):
    interp = interpreting(logits.device)
    # bool out: store 0/1 bytes through a uint8 view (Triton's i1 pointers are bytes too).
    out_view = out.view(torch.uint8) if out.dtype == torch.bool else out
    token = torch.empty(batch * tokens, dtype=torch.float32, device=logits.device)
    dummy = target  # stands in for absent optional pointers (never read)
    if tokens > 0:
        _token_scores_kernel[(batch * tokens,)](
            logits, target, mask if mask is not None else dummy, token, tokens, vocab,
            logits.stride(0), logits.stride(1), ignore_index,
            KIND=KIND_CODES[kind], HAS_MASK=mask is not None,
            BLOCK_V=_block(vocab, 16384 if interp else 2048),
            num_warps=1 if interp else (4 if vocab <= 4096 else 8),
        )
    _sample_reduce_kernel[(batch,)](
        token, target, mask if mask is not None else dummy, out_view,
        out_index if out_index is not None else dummy, tokens, vocab, out.stride(0), ignore_index,
        REDUCE=REDUCE_CODES[reduce], HAS_MASK=mask is not None, HAS_INDEX=out_index is not None,
        OUT_F64=out.dtype == torch.float64,
        BLOCK_T=_block(tokens, 256), num_warps=1 if interp else 4,
    )

