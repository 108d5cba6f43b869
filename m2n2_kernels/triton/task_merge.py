"""Task-vector merges in Triton: task arithmetic, TIES, DARE, Model Breadcrumbs (the
GPU path when the CUDA C++ kernels were not compiled; CPU tensors under
TRITON_INTERPRET=1).

Semantics: docs/semantics.md ("Task-vector merges"), reference.task_merge; the
per-element maths is combine_factors of csrc/include/m2n2/task_merge.h. Per unit
(a tensor, or the whole list for scope "global"), in streaming passes that never
store an n-element buffer (deltas d_k = m_k - base are formed again in each pass):
1. magnitude and magnitude_outliers only: exact radix selection of each model's
   k-th largest |d| over the bits of |d| (key = bits & 0x7FF..., 32-bit, or 64-bit
   when the unit holds fp64), DIGIT_BITS per pass (3 passes for 32-bit keys, 6 for
   64-bit): per program and model a histogram (tl.histogram) over HIST_TILES
   blocks, its non-empty bins added into one int64 histogram per model with
   integer atomics (exact, so order-free); torch picks each model's digit on the
   device (nothing is read back to the host).
2. statistics, where needed: per block and model, sum |d| and the kept sum in fp64
   (l1 rescale) and the count of ties at the threshold; an exclusive scan of the
   tie counts (torch.cumsum) gives each block the ties before it, so that ties are
   kept lowest unit index first whatever the block size.
3. one fused pass: masks, factors e_k = (d_k s_k) w_k, the sign election and the
   mix, written once. Launched with enable_fp_fusion=False: no FMA contraction, so
   each step rounds as the C++ code does (division by div_rn for fp32).
magnitude_outliers (Model Breadcrumbs) keeps model k's descending magnitude ranks
[start, end): its `end` largest minus its `start` largest, each exactly as magnitude
selects (ties lowest index first). Passes 1 and 2 run on 2K virtual models (virtual
k: model k keeping `end`; K + k: model k keeping `start`; the pointer tables list
each model twice); only the plan, the kept sum of pass 2 and the fused pass know
that they pair up.
DARE's draws are u24 of reference.dare_uniform24, keyed by (seed, DARE_STREAM + k,
unit index), the same in the statistics and the fused pass: a high half and a low
byte drawn for every element, one Philox call per 8 elements (high) and per 16
(low) where a position starts at a multiple of 16 (always for scope "tensor")
(the CPU and CUDA kernels draw the low byte only where the high half ties with the
threshold's; the kept elements are the same).

Models reach the kernels as a table of K data pointers per list position (2K for
magnitude_outliers; any K up to 64 without recompiling). Indices are int64; every
kernel takes `block_offset`, the first block it handles (0 in normal use), so a
test can run only the last blocks of a tensor past 2**31 elements.
"""

import numpy as np
import torch
import triton
import triton.language as tl

from .. import reference
from ._utils import compute_dtype, double_bits, f64_from_bits, i64, launch_opts, on_device, to_storage
from .philox import philox4x32_10

BLOCK = 2048  # elements per program in every pass (tests change it: results must not)
HIST_TILES = 4  # blocks per program of the histogram passes (fewer atomics)
WARPS = 4
DIGIT_BITS = 11
BINS = 1 << DIGIT_BITS  # int32 counts of one block: 8 KiB of shared memory

# What a model's rule keeps of a unit: every element, none, or some (per element).
KEEP_ALL = tl.constexpr(0)
KEEP_NONE = tl.constexpr(1)
KEEP_SOME = tl.constexpr(2)
_SPARSIFY = {"none": 0, "magnitude": 1, "random": 2, "magnitude_outliers": 3}
_CONSENSUS = {"none": 0, "sum": 1, "count": 2}
_MASK32 = 0xFFFFFFFF
_KEY_MAX = 2**63 - 1  # a threshold key above every key (int32 keys compare widened to int64)
_DARE_STREAM_HI = reference.DARE_STREAM >> 32  # its low half is 0: model k's stream is (k, this)


# ---------------------------------------------------------------------------
# Device helpers.
# ---------------------------------------------------------------------------


@triton.jit
def _block_offsets(block_offset, n, BLOCK: tl.constexpr):
    block = i64(block_offset) + tl.program_id(0).to(tl.int64)
    offs = block * BLOCK + tl.arange(0, BLOCK)
    return block, offs, offs < i64(n)


@triton.jit
def _delta(table_ptr, k, offs, mask, b, DT: tl.constexpr):
    """d_k = c(m_k) - c(base) over a block; model k's pointer comes from the table."""
    m_ptr = tl.load(table_ptr + k).to(tl.pointer_type(DT))
    return tl.load(m_ptr + offs, mask=mask, other=0.0).to(b.dtype) - b


@triton.jit
def _key(d, WIDE: tl.constexpr):
    """The ordering key of |d|: for non-negative floats the bits order as the value.
    A unit holding fp64 uses the keys of d widened to fp64 (exact)."""
    if WIDE:
        return d.to(tl.float64).to(tl.int64, bitcast=True) & 0x7FFFFFFFFFFFFFFF
    else:
        return d.to(tl.float32).to(tl.int32, bitcast=True) & 0x7FFFFFFF


@triton.jit
def _philox_at(g, k, stream_hi, seed_lo, seed_hi):
    """The four Philox4x32-10 words of counters (g, stream (k, stream_hi)), key
    (seed_lo, seed_hi), for an int64 tensor of counter indices g."""
    g_lo = g.to(tl.uint32)  # truncation: the low 32 bits
    g_hi = (g >> 32).to(tl.uint32)
    zero = tl.zeros_like(g_lo)
    return philox4x32_10(g_lo, g_hi, zero + tl.cast(k, tl.uint32), zero + tl.cast(stream_hi, tl.uint32),
                         tl.cast(seed_lo, tl.uint32), tl.cast(seed_hi, tl.uint32))


@triton.jit
def _in_order(x0, x1, x2, x3):
    # interleave(interleave(x0, x2), interleave(x1, x3)) = x0[0], x1[0], x2[0], x3[0], x0[1], ...
    return tl.interleave(tl.interleave(x0, x2), tl.interleave(x1, x3))


@triton.jit
def _draws24(first, k, seed_lo, seed_hi, stream_hi, BLOCK: tl.constexpr, ALIGNED: tl.constexpr):
    """Model k's DARE draws u24 = hi16 2^8 + lo8 at unit indices first .. first +
    BLOCK - 1 (reference.dare_uniform24): hi16 half i % 2 (low half first) of Philox
    word (i >> 1) % 4 of counter (i >> 3, stream DARE_STREAM + k), lo8 byte i % 4
    (low byte first) of word (i >> 2) % 4 of counter (i >> 4, that stream ^
    DARE_LOW_FLIP). Both parts for every element: the GPU computes every lane anyway.
    ALIGNED (first % 16 == 0): one Philox call per 8 elements for hi16 and per 16 for
    lo8, spread into element order by interleaving; else one call per element each."""
    lo_stream = stream_hi ^ (1 << 16)  # DARE_LOW_FLIP = 1 << 48: bit 16 of the stream's high word
    if ALIGNED:
        h0, h1, h2, h3 = _philox_at((first >> 3) + tl.arange(0, BLOCK // 8), k, stream_hi, seed_lo, seed_hi)
        hw = _in_order(h0, h1, h2, h3)  # the word of elements 2j, 2j + 1
        hi = tl.interleave(hw & 0xFFFF, hw >> 16)
        l0, l1, l2, l3 = _philox_at((first >> 4) + tl.arange(0, BLOCK // 16), k, lo_stream, seed_lo, seed_hi)
        lw = _in_order(l0, l1, l2, l3)  # the word of elements 4j .. 4j + 3
        lo = _in_order(lw & 0xFF, (lw >> 8) & 0xFF, (lw >> 16) & 0xFF, lw >> 24)
        u = ((hi << 8) | lo).to(tl.int32)
    else:
        u = _draws24_at(first + tl.arange(0, BLOCK), k, seed_lo, seed_hi, stream_hi).to(tl.int32)
    return u


@triton.jit
def _draws24_at(idx, k, seed_lo, seed_hi, stream_hi):
    """The same draws at any unit indices idx (int64, any order; int64 results): one
    Philox call per element for each half."""
    lo_stream = stream_hi ^ (1 << 16)
    h0, h1, h2, h3 = _philox_at(idx >> 3, k, stream_hi, seed_lo, seed_hi)
    q = (idx >> 1) & 3
    hw = tl.where(q == 0, h0, tl.where(q == 1, h1, tl.where(q == 2, h2, h3)))
    hi = (hw >> ((idx & 1) * 16).to(tl.uint32)) & 0xFFFF
    l0, l1, l2, l3 = _philox_at(idx >> 4, k, lo_stream, seed_lo, seed_hi)
    q = (idx >> 2) & 3
    lw = tl.where(q == 0, l0, tl.where(q == 1, l1, tl.where(q == 2, l2, l3)))
    lo = (lw >> ((idx & 3) * 8).to(tl.uint32)) & 0xFF
    return ((hi << 8) | lo).to(tl.int64)


@triton.jit
def _sign(x):
    one = tl.full(x.shape, 1.0, x.dtype)
    zero = tl.zeros_like(x)
    return tl.where(x > 0, one, tl.where(x < 0, -one, zero))


@triton.jit
def _divide(x, y):
    # Triton's fp32 `/` is an approximation on the GPU; fp64 `/` rounds correctly.
    if x.dtype == tl.float32:
        return tl.math.div_rn(x, y)
    else:
        return x / y


@triton.jit
def _add_factor(d, keep, k, w_ptr, s_ptr, x, vote, x_neg, d_pos, d_neg, CDT: tl.constexpr, CONSENSUS: tl.constexpr):
    """Model k's factor e = (d s_k) w_k where kept, added to the running sums of the
    mix: x (without consensus), else the vote and the sums over the models that agree
    with sigma = +1 (x, d_pos) and with sigma = -1 (x_neg, d_neg), each the same
    additions in the same order as the sum over the agreeing ones (combine_factors of
    task_merge.h), so one loop over the models suffices."""
    zero = tl.zeros_like(d)
    w = tl.load(w_ptr + k).to(CDT)
    e = tl.where(keep, (d * tl.load(s_ptr + k).to(CDT)) * w, zero)
    if CONSENSUS == 0:
        x = x + e
    else:
        if CONSENSUS == 1:
            vote = vote + e
        else:
            vote = vote + _sign(e)
        x = x + tl.where(e > 0, e, zero)  # sigma = +1 agrees
        x_neg = x_neg + tl.where(e < 0, e, zero)
        d_pos = d_pos + tl.where(e > 0, w, zero)
        d_neg = d_neg + tl.where(e < 0, w, zero)
    return x, vote, x_neg, d_pos, d_neg


@triton.jit
def _merged(b, x, vote, x_neg, d_pos, d_neg, lam_bits, divisor_bits, CDT: tl.constexpr, CONSENSUS: tl.constexpr,
            NORMALIZE: tl.constexpr):
    """c(base) + lam (x / D if normalize else x), from _add_factor's sums."""
    zero = tl.zeros_like(b)
    if CONSENSUS == 0:
        divisor = f64_from_bits(divisor_bits).to(CDT)
    else:
        plus = vote >= 0
        x = tl.where(plus, x, x_neg)
        dsum = tl.where(plus, d_pos, d_neg)
        divisor = tl.where(dsum == 0, zero + 1.0, dsum)
    if NORMALIZE:
        x = _divide(x, divisor + zero)
    x = x * f64_from_bits(lam_bits).to(CDT)
    return b + x


@triton.jit
def _magnitude_keep(d, k, thr_ptr, need_ptr, tie_row_ptr, nblocks, WIDE: tl.constexpr):
    """Keys above the threshold, and ties while (ties before this block + rank
    within it) < need: ties kept lowest unit index first. tie_row_ptr points at the
    block's entry of model 0's row of the scanned tie counts."""
    key = _key(d, WIDE)
    t = tl.load(thr_ptr + k)
    tie = key == t
    rank = tl.cumsum(tie.to(tl.int64), axis=0) - tie.to(tl.int64)
    before = tl.load(tie_row_ptr + k * nblocks)
    return (key > t) | (tie & (before + rank < tl.load(need_ptr + k)))


# ---------------------------------------------------------------------------
# Kernels: one list position (a tensor of the unit), grid (blocks,).
# ---------------------------------------------------------------------------


@triton.jit
def _hist_kernel(
    base_ptr, table_ptr, kind_ptr, prefix_ptr, hist_ptr, n, K, shift, width, block_offset,
    BLOCK: tl.constexpr, TILES: tl.constexpr, BINS: tl.constexpr, CDT: tl.constexpr, WIDE: tl.constexpr,
):
    """Adds, per model selecting, the histogram of digit `shift` of the keys whose
    higher bits equal the model's prefix, over TILES blocks: one int32 histogram per
    model in the program, then one atomic per bin that is not empty (few are: the
    top digit holds the exponent, and later digits see only the prefix's keys)."""
    DT: tl.constexpr = base_ptr.dtype.element_ty
    n = i64(n)
    first = (i64(block_offset) + tl.program_id(0).to(tl.int64)) * (TILES * BLOCK)
    tiles = tl.minimum((n - first + BLOCK - 1) // BLOCK, TILES)  # the last program's may be fewer
    high = shift + width
    digit_mask = (1 << width) - 1
    for k in range(K):
        if tl.load(kind_ptr + k) == KEEP_SOME:
            want = tl.load(prefix_ptr + k)
            h = tl.zeros([BINS], tl.int32)
            for t in range(tiles):
                offs = first + t * BLOCK + tl.arange(0, BLOCK)
                mask = offs < n
                b = tl.load(base_ptr + offs, mask=mask, other=0.0).to(CDT)
                key = _key(_delta(table_ptr, k, offs, mask, b, DT), WIDE)
                digit = ((key >> shift) & digit_mask).to(tl.int32)
                h += tl.histogram(digit, BINS, mask=mask & ((key >> high) == want))
            tl.atomic_add(hist_ptr + k * BINS + tl.arange(0, BINS), h.to(tl.int64), mask=h != 0)


@triton.jit
def _stats_kernel(
    base_ptr, table_ptr, kind_ptr, thr_ptr, dthr_ptr, abs_ptr, kept_ptr, ties_ptr, n, start, K, nblocks,
    block_base, seed_lo, seed_hi, stream_hi, block_offset,
    BLOCK: tl.constexpr, CDT: tl.constexpr, WIDE: tl.constexpr, SPARSIFY: tl.constexpr, ALIGNED: tl.constexpr,
):
    """Per block and model selecting: sum |d| and the sum over the kept in fp64
    (magnitude: keys above the threshold; the ties are added on the host), and the
    ties at the threshold. magnitude_outliers: dthr_ptr holds each (virtual) model's
    upper bound, the kept are the keys strictly between the two thresholds: the
    band's sum formed directly, never as a difference of two sums (which would
    cancel where the dropped outliers outweigh the band)."""
    DT: tl.constexpr = base_ptr.dtype.element_ty
    block, offs, mask = _block_offsets(block_offset, n, BLOCK)
    b = tl.load(base_ptr + offs, mask=mask, other=0.0).to(CDT)
    row = i64(block_base) + block
    first = i64(start) + block * BLOCK  # unit index of the block's element 0
    nblocks = i64(nblocks)
    for k in range(K):
        if tl.load(kind_ptr + k) == KEEP_SOME:
            d = _delta(table_ptr, k, offs, mask, b, DT)
            a = tl.where(mask, tl.abs(d.to(tl.float64)), 0.0)
            if SPARSIFY == 1 or SPARSIFY == 3:
                key = _key(d, WIDE)
                t = tl.load(thr_ptr + k)
                kept = key > t
                if SPARSIFY == 3:
                    kept = kept & (key < tl.load(dthr_ptr + k))
                ties = tl.sum((mask & (key == t)).to(tl.int64), axis=0)
            else:
                kept = _draws24(first, k, seed_lo, seed_hi, stream_hi, BLOCK, ALIGNED) < tl.load(dthr_ptr + k)
                ties = tl.zeros([], tl.int64)
            at = k * nblocks + row
            tl.store(abs_ptr + at, tl.sum(a, axis=0))
            tl.store(kept_ptr + at, tl.sum(tl.where(kept, a, 0.0), axis=0))
            tl.store(ties_ptr + at, ties)


@triton.jit
def _fused_kernel(
    base_ptr, out_ptr, table_ptr, kind_ptr, w_ptr, s_ptr, thr_ptr, need_ptr, tie_ptr, dthr_ptr, n, start, K,
    nblocks, block_base, lam_bits, divisor_bits, seed_lo, seed_hi, stream_hi, block_offset,
    BLOCK: tl.constexpr, CDT: tl.constexpr, WIDE: tl.constexpr, SPARSIFY: tl.constexpr,
    CONSENSUS: tl.constexpr, NORMALIZE: tl.constexpr, ALIGNED: tl.constexpr,
):
    """combine_factors of task_merge.h over a block (_add_factor, _merged)."""
    DT: tl.constexpr = base_ptr.dtype.element_ty
    block, offs, mask = _block_offsets(block_offset, n, BLOCK)
    b = tl.load(base_ptr + offs, mask=mask, other=0.0).to(CDT)
    first = i64(start) + block * BLOCK  # unit index of the block's element 0
    nblocks = i64(nblocks)
    tie_row_ptr = tie_ptr + i64(block_base) + block
    zero = tl.zeros_like(b)
    x = zero
    vote = zero
    x_neg = zero
    d_pos = zero
    d_neg = zero
    for k in range(K):
        kind = tl.load(kind_ptr + k)
        d = _delta(table_ptr, k, offs, mask, b, DT)
        keep = (zero == zero) & (kind == KEEP_ALL)
        if SPARSIFY != 0:  # only a sparsification keeps some
            if kind == KEEP_SOME:
                if SPARSIFY == 1:
                    keep = _magnitude_keep(d, k, thr_ptr, need_ptr, tie_row_ptr, nblocks, WIDE)
                elif SPARSIFY == 3:  # among the `end` largest (virtual k), not the `start` largest (K + k)
                    keep = (_magnitude_keep(d, k, thr_ptr, need_ptr, tie_row_ptr, nblocks, WIDE)
                            & ~_magnitude_keep(d, k + K, thr_ptr, need_ptr, tie_row_ptr, nblocks, WIDE))
                else:
                    keep = _draws24(first, k, seed_lo, seed_hi, stream_hi, BLOCK, ALIGNED) < tl.load(dthr_ptr + k)
        x, vote, x_neg, d_pos, d_neg = _add_factor(d, keep, k, w_ptr, s_ptr, x, vote, x_neg, d_pos, d_neg, CDT,
                                                   CONSENSUS)
    merged = _merged(b, x, vote, x_neg, d_pos, d_neg, lam_bits, divisor_bits, CDT, CONSENSUS, NORMALIZE)
    tl.store(out_ptr + offs, to_storage(merged, DT), mask=mask)


# ---------------------------------------------------------------------------
# Host side: the plan of one unit (arguments already checked by
# m2n2_kernels/task_vectors.py, check_op_canonical).
# ---------------------------------------------------------------------------


def keep_count(rho: float, n: int) -> int:
    """max(1, int(rho n)) with the product rounded in fp64 (as mergekit's int())."""
    if n == 0 or rho <= 0.0:
        return 0
    if rho >= 1.0:
        return n
    return max(1, int(rho * n))


def dare_threshold(rho: float) -> int:
    """ceil(rho 2^24): draw24 < this iff draw24 * 2^-24 < rho, exactly."""
    if rho >= 1.0:
        return 1 << 24
    if rho <= 0.0:
        return 0
    t = rho * 16777216.0  # exact: a power of two
    f = int(t)
    return f if f == t else f + 1


def _kind(count, n):
    """What keeping `count` of n elements is."""
    return KEEP_ALL.value if count == n else KEEP_NONE.value if count == 0 else KEEP_SOME.value


def _model_rules(sparsify, rescale, density, gamma, n):
    """Per model: KEEP_ALL / KEEP_NONE / KEEP_SOME, magnitude's keep count
    (magnitude_outliers: its band of ranks (start, end)), the DARE threshold and the
    host-known scale (1, or 1 / rho for "density")."""
    kinds, keeps, dthrs, scales = [], [], [], []
    for rho, g in zip(density, gamma):
        keep, dthr, kind = n, 0, KEEP_ALL.value
        if sparsify == "magnitude":
            keep = keep_count(rho, n)
            kind = _kind(keep, n)
        elif sparsify == "magnitude_outliers":
            keep = reference.outlier_band(rho, g, n)  # the same fp64 products as the reference
            kind = _kind(keep[1] - keep[0], n)
        elif sparsify == "random":
            dthr = dare_threshold(rho)
            kind = KEEP_ALL.value if rho >= 1.0 else KEEP_NONE.value if dthr == 0 else KEEP_SOME.value
        kinds.append(kind)
        keeps.append(keep)
        dthrs.append(dthr)
        scales.append(1.0 / rho if rescale == "density" and kind == KEEP_SOME.value else 1.0)
    return kinds, keeps, dthrs, scales


class _Unit:
    """The positions of one unit with their place in it: first unit index and first
    block (the blocks of all positions, in order, index the per-block tables)."""

    def __init__(self, positions, base, models, block):
        L = len(base)
        K = len(models) // L
        self.positions = [i for i in positions if base[i].numel() > 0]
        self.base = base
        self.tables, self.starts, self.block_bases = {}, {}, {}
        n = blocks = 0
        for i in self.positions:
            self.starts[i], self.block_bases[i] = n, blocks
            n += base[i].numel()
            blocks += triton.cdiv(base[i].numel(), block)
            # Model k's tensor at this position, by address: K needs no recompile.
            self.tables[i] = torch.tensor([models[k * L + i].data_ptr() for k in range(K)], dtype=torch.int64,
                                          device=base[i].device)
        self.n, self.nblocks = n, blocks
        self.wide = any(base[i].dtype == torch.float64 for i in self.positions)
        self.device = base[positions[0]].device


def _select_thresholds(unit, kinds_t, keeps, block):
    """Each selecting model's threshold key and how many ties at it to keep: one
    histogram pass per digit, most significant first; the digit is picked on the
    device (nothing read back to the host)."""
    K = kinds_t.numel()
    dev = unit.device
    hist = torch.zeros((K, BINS), dtype=torch.int64, device=dev)
    prefix = torch.zeros(K, dtype=torch.int64, device=dev)
    remaining = torch.tensor(keeps, dtype=torch.int64, device=dev)
    high = 63 if unit.wide else 31  # the sign bit is masked off
    while high > 0:
        width = min(DIGIT_BITS, high)
        shift = high - width
        hist.zero_()
        for i in unit.positions:
            b = unit.base[i]
            _hist_kernel[(triton.cdiv(b.numel(), block * HIST_TILES),)](
                b, unit.tables[i], kinds_t, prefix, hist, b.numel(), K, shift, width, 0,
                BLOCK=block, TILES=HIST_TILES, BINS=BINS, CDT=compute_dtype(b.dtype), WIDE=unit.wide, **launch_opts(WARPS),
            )
        prefix, remaining = _pick_digit(hist, prefix, remaining, width)
        high = shift
    return prefix, remaining


def _pick_digit(hist, prefix, remaining, width):
    """The highest bin whose count from the top reaches `remaining`; the elements in
    the bins above it are kept for sure."""
    from_top = hist.flip(1).cumsum(1).flip(1)  # from_top[b] = sum of bins >= b
    digit = ((from_top >= remaining[:, None]).sum(1) - 1).clamp_(min=0)
    above = from_top.gather(1, digit[:, None]).squeeze(1) - hist.gather(1, digit[:, None]).squeeze(1)
    return (prefix << width) | digit, remaining - above


def _unit_stats(unit, sparsify, kinds_t, thr, dthr_t, seed, block):
    """Per model and block: sum |d|, the kept sum (fp64) and the ties at the threshold."""
    K = kinds_t.numel()
    shape = (K, unit.nblocks)
    abs_part = torch.zeros(shape, dtype=torch.float64, device=unit.device)
    kept_part = torch.zeros(shape, dtype=torch.float64, device=unit.device)
    ties = torch.zeros(shape, dtype=torch.int64, device=unit.device)
    for i in unit.positions:
        b = unit.base[i]
        _stats_kernel[(triton.cdiv(b.numel(), block),)](
            b, unit.tables[i], kinds_t, thr, dthr_t, abs_part, kept_part, ties, b.numel(), unit.starts[i], K,
            unit.nblocks, unit.block_bases[i], seed & _MASK32, seed >> 32, _DARE_STREAM_HI, 0,
            BLOCK=block, CDT=compute_dtype(b.dtype), WIDE=unit.wide, SPARSIFY=_SPARSIFY[sparsify],
            ALIGNED=unit.starts[i] % 16 == 0, **launch_opts(WARPS),
        )
    return abs_part.sum(1), kept_part.sum(1), ties


def _threshold_value(thr, wide):
    """|d| at the threshold key, in fp64."""
    return thr.view(torch.float64) if wide else thr.to(torch.int32).view(torch.float32).double()


def _l1_scale(abs_sum, kept_sum, some):
    ok = (abs_sum >= reference.RESCALE_MIN) & (kept_sum >= reference.RESCALE_MIN) & some
    return torch.where(ok, abs_sum / torch.where(ok, kept_sum, 1.0), 1.0)


def _plain_divisor(weights, dtype):
    """Without consensus: the sum of the weights in c, k = 0, 1, ...; 1 where its
    magnitude is below 1e-8 (rounded to c), as combine_factors' caller."""
    c = np.float64 if dtype == torch.float64 else np.float32
    total = c(0)
    for w in weights:
        total = c(total + c(w))
    return 1.0 if abs(total) < c(reference.DIVISOR_MIN) else float(total)


class _Plan:
    """What each model keeps of a unit and its scale, as device tensors indexed by
    model: kind, DARE threshold, magnitude threshold key and ties to keep, the scanned
    tie counts per block ([K, blocks]) and s_k (fp64). magnitude_outliers: the
    thresholds, ties to keep and tie scans are those of the 2K virtual models."""

    def __init__(self, unit, density, gamma, sparsify, rescale, seed, block):
        dev, K = unit.device, len(density)
        kinds, keeps, dthrs, scales = _model_rules(sparsify, rescale, density, gamma, unit.n)
        self.kinds = torch.tensor(kinds, dtype=torch.int32, device=dev)
        self.dthr = torch.tensor(dthrs, dtype=torch.int64, device=dev)
        self.scale = torch.tensor(scales, dtype=torch.float64, device=dev)
        self.thr = self.need = self.tie_start = torch.zeros(K, dtype=torch.int64, device=dev)
        if KEEP_SOME.value not in kinds:
            return
        stat_kinds, bound = self.kinds, self.dthr
        if sparsify == "magnitude":
            self.thr, self.need = _select_thresholds(unit, self.kinds, keeps, block)
        elif sparsify == "magnitude_outliers":
            stat_kinds, bound = self._select_band(unit, kinds, keeps, block)
        if sparsify in ("magnitude", "magnitude_outliers") or rescale == "l1":  # tie scans; l1 sums
            self._add_stats(unit, sparsify, rescale, stat_kinds, bound, seed, block)

    def _select_band(self, unit, kinds, bands, block):
        """magnitude_outliers: the thresholds of virtual models k (model k's `end`
        largest) and K + k (its `start` largest), as magnitude selects them; where a
        virtual model keeps every key, a threshold key below all keys, where none
        (or its model is not partial), one above all, so that the statistics and the
        fused pass need no kinds of their own for them. Returns the statistics'
        kinds and upper bounds: rows k of the partial models (sum |d| and the band's
        kept sum, keys between the two thresholds, and the ties at `end`'s), rows
        K + k of the start virtual models selecting (the ties at `start`'s)."""
        K, n = len(kinds), unit.n
        some = [kind == KEEP_SOME.value for kind in kinds]
        counts = [end if p else 0 for (_, end), p in zip(bands, some)] + [
            start if p else 0 for (start, _), p in zip(bands, some)]
        vkinds = torch.tensor([_kind(c, n) for c in counts], dtype=torch.int32, device=unit.device)
        thr, need = _select_thresholds(unit, vkinds, counts, block)
        selecting = vkinds == KEEP_SOME.value
        self.thr = torch.where(selecting, thr, torch.where(vkinds == KEEP_ALL.value, -1, _KEY_MAX))
        self.need = torch.where(selecting, need, 0)
        return torch.cat([self.kinds, vkinds[K:]]), torch.cat([self.thr[K:], torch.full_like(self.thr[K:], _KEY_MAX)])

    def _add_stats(self, unit, sparsify, rescale, stat_kinds, bound, seed, block):
        abs_sum, kept_sum, ties = _unit_stats(unit, sparsify, stat_kinds, self.thr, bound, seed, block)
        self.tie_start = ties.cumsum(1) - ties  # ties in the blocks before each block
        if sparsify == "magnitude":  # the kept ties all have |d| = the threshold's value
            kept_sum = kept_sum + self.need.double() * _threshold_value(self.thr, unit.wide)
        elif sparsify == "magnitude_outliers":
            abs_sum, kept_sum = abs_sum[:self.kinds.numel()], self._band_ties_sum(kept_sum, ties.sum(1), unit.wide)
        if rescale == "l1":
            self.scale = _l1_scale(abs_sum, kept_sum, self.kinds == KEEP_SOME.value)

    def _band_ties_sum(self, kept_sum, ties, wide):
        """The band's kept sum: the keys strictly between the thresholds (the
        statistics), plus its ties at each threshold times the threshold's value:
        at `end`'s, the first need_end; at `start`'s, all but the first need_start
        (both at once where the thresholds are one key: ranks need_start ..
        need_end - 1 of its ties). Counts of 0 add nothing: a sentinel threshold's
        value is not a number."""
        K = self.kinds.numel()
        value = _threshold_value(self.thr, wide)
        same = self.thr[:K] == self.thr[K:]
        at_end = torch.where(same, self.need[:K] - self.need[K:], self.need[:K])
        at_start = torch.where(same, 0, ties[K:] - self.need[K:])
        kept = kept_sum[:K] + torch.where(at_end > 0, at_end.double() * value[:K], 0.0)
        return kept + torch.where(at_start > 0, at_start.double() * value[K:], 0.0)


def _fused_pass(unit, out, plan, weights, sparsify, consensus, normalize, lam, seed, block):
    w_t = torch.tensor(weights, dtype=torch.float64, device=unit.device)
    for i in unit.positions:
        b = unit.base[i]
        _fused_kernel[(triton.cdiv(b.numel(), block),)](
            b, out[i], unit.tables[i], plan.kinds, w_t, plan.scale, plan.thr, plan.need, plan.tie_start, plan.dthr,
            b.numel(), unit.starts[i], len(weights), unit.nblocks, unit.block_bases[i], double_bits(lam),
            double_bits(_plain_divisor(weights, b.dtype)), seed & _MASK32, seed >> 32, _DARE_STREAM_HI, 0,
            BLOCK=block, CDT=compute_dtype(b.dtype), WIDE=unit.wide, SPARSIFY=_SPARSIFY[sparsify],
            CONSENSUS=_CONSENSUS[consensus], NORMALIZE=bool(normalize), ALIGNED=unit.starts[i] % 16 == 0,
            **launch_opts(WARPS),
        )


def task_merge_out(base, models, out, weights, density, gamma, sparsify, consensus, rescale, normalize, lam, scope,
                   seed, block=BLOCK):
    """out[i] = the merge of position i (m2n2::task_merge_out's canonical arguments:
    models model-major, K x L; contiguous tensors; out[i] may be base[i]: each
    element is read before it is written, by one program, in the last pass).
    `block`: elements per program (a power of two, at least 16; the results do not
    depend on it)."""
    seed = int(seed) & (2**64 - 1)
    units = [[i] for i in range(len(base))] if scope == "tensor" else [list(range(len(base)))]
    if sparsify == "magnitude_outliers":  # the tables list the 2K virtual models: each model twice
        models = list(models) * 2
    with on_device(base[0].device):
        for positions in units:
            unit = _Unit(positions, base, models, block)
            if unit.n:
                plan = _Plan(unit, list(density), list(gamma), sparsify, rescale, seed, block)
                _fused_pass(unit, out, plan, list(weights), sparsify, consensus, normalize, lam, seed, block)
