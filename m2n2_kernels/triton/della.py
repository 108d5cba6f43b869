"""DELLA in Triton (della_merge on CUDA tensors; CPU tensors under TRITON_INTERPRET=1).

Semantics: docs/semantics.md ("della"), reference.della_merge. One program per fiber
(a row along dim 1: B elements C apart), which it holds whole, so the ranks need no
n-element buffer: per model, the keys packed with their index (key << 32 | j, keys
of |d| in fp32, 31 bits) are sorted (tl.sort), which puts rank r at place r; the
draw of the element at place r is compared with the threshold of rank r; a second
sort, of (j << 1 | kept), puts the decisions back in element order. Two passes per
unit, as on the CPU: the l1 statistics (per fiber and model, fp64 sums, added on
the device in fiber order) where an l1 rescale needs them, then the fused pass,
whose per-element maths is _fused_kernel's of task_merge.py (combine_factors of
task_merge.h). Launched without FMA contraction (launch_opts).

Limits (the Python API sends these to the reference instead): fibers of at most
MAX_FIBER elements (a program's sort), units without fp64 tensors (64-bit keys do
not pack with an index).
"""
import torch
import triton
import triton.language as tl

from .. import reference
from ._utils import compute_dtype, double_bits, i64, launch_opts, on_device, to_storage
from .task_merge import (_CONSENSUS, _DARE_STREAM_HI, _MASK32, _add_factor, _draws24_at, _l1_scale, _merged,
                         _plain_divisor)

# The largest fibre a program sorts: the in-register sorts unroll, and compiling for
# sm_90 took 5 s at 2048, 59 s at 8192 and minutes at 16384 (on 2 CPU cores).
MAX_FIBER = 1 << 12
WARPS = 8
_LOW32 = tl.constexpr(0xFFFFFFFF)  # the index half of a packed (key << 32 | j)


def supports(base):
    """Whether the Triton kernels take these tensors (else the reference runs)."""
    return all(supports_tensor(b) for b in base)


def supports_tensor(b):
    return b.dtype != torch.float64 and reference.della_fibers(b.shape)[1] <= MAX_FIBER


@triton.jit
def _fiber(B, C, start, FIBER: tl.constexpr):
    """This program's fibre pid = a C + c: its lanes j, which hold an element (j < B),
    their offsets a B C + j C + c in the tensor, and the unit index of element 0."""
    pid = tl.program_id(0).to(tl.int64)
    C = i64(C)
    j = tl.arange(0, FIBER).to(tl.int64)
    at = (pid // C) * (i64(B) * C) + pid % C
    return pid, j, j < i64(B), at + j * C, i64(start) + at


@triton.jit
def _keep(d, j, valid, k, thr_ptr, B, first, C, seed_lo, seed_hi, stream_hi, FIBER: tl.constexpr):
    """Model k's decisions over one fiber, in element order: rank by sorting (key <<
    32 | j), the draw of the element at each place against the threshold of that
    rank, then sorted back by index."""
    key = (d.to(tl.float32).to(tl.int32, bitcast=True) & 0x7FFFFFFF).to(tl.int64)
    key = tl.where(valid, key, 0x7FFFFFFF)  # padding ranks after every element
    order = tl.sort((key << 32) | j)
    idx = order & _LOW32  # the element at each place r = 0, 1, ...
    r = tl.arange(0, FIBER)
    t = tl.load(thr_ptr + i64(k) * i64(B) + r, mask=r < B, other=0).to(tl.int64)
    u = _draws24_at(first + idx * i64(C), k, seed_lo, seed_hi, stream_hi)
    kept = (u < t).to(tl.int64)
    back = tl.sort((idx << 1) | kept)  # element order again
    return (back & 1) != 0


@triton.jit
def _stats_kernel(
    base_ptr, table_ptr, kind_ptr, thr_ptr, abs_ptr, kept_ptr, B, C, nfibers, start, fiber_base, K,
    seed_lo, seed_hi, stream_hi, FIBER: tl.constexpr, CDT: tl.constexpr,
):
    """Per fiber and model keeping some: sum |d| and the kept sum, fp64."""
    DT: tl.constexpr = base_ptr.dtype.element_ty
    pid, j, valid, offs, first = _fiber(B, C, start, FIBER)
    b = tl.load(base_ptr + offs, mask=valid, other=0.0).to(CDT)
    row = i64(fiber_base) + pid
    for k in range(K):
        if tl.load(kind_ptr + k) == 2:
            m_ptr = tl.load(table_ptr + k).to(tl.pointer_type(DT))
            d = tl.load(m_ptr + offs, mask=valid, other=0.0).to(CDT) - b
            keep = _keep(d, j, valid, k, thr_ptr, B, first, C, seed_lo, seed_hi, stream_hi, FIBER)
            a = tl.where(valid, tl.abs(d.to(tl.float64)), 0.0)
            at = i64(k) * i64(nfibers) + row
            tl.store(abs_ptr + at, tl.sum(a, axis=0))
            tl.store(kept_ptr + at, tl.sum(tl.where(keep & valid, a, 0.0), axis=0))


@triton.jit
def _fused_kernel(
    base_ptr, out_ptr, table_ptr, kind_ptr, w_ptr, s_ptr, thr_ptr, B, C, start, K, lam_bits, divisor_bits,
    seed_lo, seed_hi, stream_hi,
    FIBER: tl.constexpr, CDT: tl.constexpr, CONSENSUS: tl.constexpr, NORMALIZE: tl.constexpr,
):
    """task_merge.py's fused pass over one fiber, with della's decisions."""
    DT: tl.constexpr = base_ptr.dtype.element_ty
    pid, j, valid, offs, first = _fiber(B, C, start, FIBER)
    b = tl.load(base_ptr + offs, mask=valid, other=0.0).to(CDT)
    zero = tl.zeros_like(b)
    x, vote, x_neg, d_pos, d_neg = zero, zero, zero, zero, zero
    for k in range(K):
        kind = tl.load(kind_ptr + k)
        m_ptr = tl.load(table_ptr + k).to(tl.pointer_type(DT))
        d = tl.load(m_ptr + offs, mask=valid, other=0.0).to(CDT) - b
        keep = (zero == zero) & (kind == 0)
        if kind == 2:
            keep = _keep(d, j, valid, k, thr_ptr, B, first, C, seed_lo, seed_hi, stream_hi, FIBER)
        x, vote, x_neg, d_pos, d_neg = _add_factor(d, keep, k, w_ptr, s_ptr, x, vote, x_neg, d_pos, d_neg, CDT,
                                                   CONSENSUS)
    merged = _merged(b, x, vote, x_neg, d_pos, d_neg, lam_bits, divisor_bits, CDT, CONSENSUS, NORMALIZE)
    tl.store(out_ptr + offs, to_storage(merged, DT), mask=valid)


def _thresholds(density, epsilon, B, kinds, device):
    """[K, B] int32: the threshold of each rank per model (0 for models not keeping some)."""
    r = torch.arange(B, dtype=torch.int64)
    rows = [reference.dare_threshold(reference.della_probability(rho, eps, B, r)) if kind == 2
            else torch.zeros(B, dtype=torch.int64) for rho, eps, kind in zip(density, epsilon, kinds)]
    return torch.stack(rows).to(torch.int32).to(device)


def della_merge_out(base, models, out, weights, density, epsilon, consensus, rescale, normalize, lam, scope, seed):
    """out[i] = DELLA's merge of position i (della_merge_out's canonical arguments:
    models model-major, K x L, contiguous; out[i] may be base[i]: a fiber is read
    whole before it is written, by one program)."""
    seed = int(seed) & (2**64 - 1)
    L, K = len(base), len(weights)
    units = [[i] for i in range(L)] if scope == "tensor" else [list(range(L))]
    # What each model keeps: every element (0), none (1), some (2), whatever the unit.
    kinds = [0 if rho >= 1.0 else 1 if rho <= 0.0 else 2 for rho in density]
    dev = base[0].device
    with on_device(dev):
        kinds_t = torch.tensor(kinds, dtype=torch.int32, device=dev)
        w_t = torch.tensor(list(weights), dtype=torch.float64, device=dev)
        for positions in units:
            positions = [i for i in positions if base[i].numel() > 0]
            if not positions:
                continue
            geo, tables, starts, fiber_bases = {}, {}, {}, {}
            n = nfibers = 0
            for i in positions:
                A, B, C = reference.della_fibers(base[i].shape)
                geo[i] = (B, C, A * C, triton.next_power_of_2(B), _thresholds(density, epsilon, B, kinds, dev))
                tables[i] = torch.tensor([models[k * L + i].data_ptr() for k in range(K)], dtype=torch.int64,
                                         device=dev)
                starts[i], fiber_bases[i] = n, nfibers
                n += base[i].numel()
                nfibers += A * C
            scale = torch.ones(K, dtype=torch.float64, device=dev)
            if rescale == "l1" and 2 in kinds:
                abs_part = torch.zeros((K, nfibers), dtype=torch.float64, device=dev)
                kept_part = torch.zeros((K, nfibers), dtype=torch.float64, device=dev)
                for i in positions:
                    B, C, fibers, FIBER, thr = geo[i]
                    _stats_kernel[(fibers,)](
                        base[i], tables[i], kinds_t, thr, abs_part, kept_part, B, C, nfibers, starts[i],
                        fiber_bases[i], K, seed & _MASK32, seed >> 32, _DARE_STREAM_HI,
                        FIBER=FIBER, CDT=compute_dtype(base[i].dtype), **launch_opts(WARPS),
                    )
                scale = _l1_scale(abs_part.sum(1), kept_part.sum(1), kinds_t == 2)
            for i in positions:
                B, C, fibers, FIBER, thr = geo[i]
                _fused_kernel[(fibers,)](
                    base[i], out[i], tables[i], kinds_t, w_t, scale, thr, B, C, starts[i], K, double_bits(lam),
                    double_bits(_plain_divisor(list(weights), base[i].dtype)), seed & _MASK32, seed >> 32,
                    _DARE_STREAM_HI, FIBER=FIBER, CDT=compute_dtype(base[i].dtype),
                    CONSENSUS=_CONSENSUS[consensus], NORMALIZE=bool(normalize), **launch_opts(WARPS),
                )
