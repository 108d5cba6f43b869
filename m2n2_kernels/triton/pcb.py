"""PCB merging in Triton (the GPU path where the CUDA C++ kernel was not compiled; CPU
tensors under TRITON_INTERPRET=1).

Semantics: docs/semantics.md ("PCB merging"), reference.pcb_merge; the per-element
maths is csrc/include/m2n2/pcb.h, ported operation for operation in the unit's
compute type (its own exp and tanh from IEEE operations, so that the scores equal the
C++ kernel's bit for bit: tl.exp would differ, and the interpreter has no libdevice). Per unit (a tensor,
or the whole list for scope "global"), in streaming passes that never store an
n-element buffer (the deltas, their sum S and the scores are formed again in each
pass):
1. the clamp bounds lo_k, hi_k: radix selection of ranks int(n c) and
   int(n (1 - c) - 1) of |d_k| (keys: the bits of |d| in the unit's compute type),
   both targets of every model in the same passes, DIGIT_BITS per pass;
2. the drop threshold theta_k and the maximum G_k: ranks int(n (1 - ratio)) and
   n - 1 of the scores g_k, on score_key (pcb.h: -0 just below +0), 32 or 64 bits;
3. one fused pass: scores, scales, the mix, written once.
As in triton/task_merge.py: per program and target an int32 histogram
(tl.histogram), its non-empty bins added with int64 atomics (exact, order-free);
torch picks each target's digit on the device; models reach the kernels as a table
of pointers; every kernel takes `block_offset`; launched with enable_fp_fusion=False
(no FMA contraction: each step rounds as the C++ code's) and fp32 division by div_rn.
"""

import torch
import triton
import triton.language as tl

from ._utils import compute_dtype, double_bits, f64_from_bits, i64, launch_opts, on_device, to_storage
from .task_merge import _delta, _divide

BLOCK = 1024  # elements per program in every pass (tests change it: results must not)
WARPS = 4
DIGIT_BITS = 11
BINS = 1 << DIGIT_BITS
_SIGN64 = -(2**63)  # adding it (mod 2**64) flips the top bit of a 64-bit key


# ---------------------------------------------------------------------------
# pcb.h's exp and tanh, in the compute type of their argument (fp32 or fp64). Every
# constant is made a tensor of that type with tl.full (the double written here, rounded
# once, as C++ rounds pcb.h's), and the operations are pcb.h's, in its order, each
# rounded (no FMA; fp32 division by div_rn).
# ---------------------------------------------------------------------------


@triton.jit
def _c(x):
    return tl.full([], x, tl.float64)


@triton.jit
def _k(like, x):
    """The constant x in like's dtype."""
    return tl.full([], x, like.dtype)


@triton.jit
def _expm1_reduced(r):
    """e^r - 1 for |r| <= ln2 / 2 (pcb_expm1_reduced: to r^13 in fp64, r^7 in fp32)."""
    if r.dtype == tl.float64:
        p = _c(1.0 / 6227020800.0)
        p = p * r + _c(1.0 / 479001600.0)
        p = p * r + _c(1.0 / 39916800.0)
        p = p * r + _c(1.0 / 3628800.0)
        p = p * r + _c(1.0 / 362880.0)
        p = p * r + _c(1.0 / 40320.0)
        p = p * r + _c(1.0 / 5040.0)
    else:
        p = _k(r, 1.0 / 5040.0)
    p = p * r + _k(r, 1.0 / 720.0)
    p = p * r + _k(r, 1.0 / 120.0)
    p = p * r + _k(r, 1.0 / 24.0)
    p = p * r + _k(r, 1.0 / 6.0)
    p = p * r + _k(r, 0.5)
    p = p * r + _k(r, 1.0)
    return p * r


@triton.jit
def _exp_split(x):
    """x = k ln2 + r: (e^r - 1, 2^k) (pcb_exp_split)."""
    if x.dtype == tl.float64:
        shift = _c(6755399441055744.0)  # 1.5 * 2^52: adding it rounds to an integer
        shifted = x * _c(1.44269504088896338700e+00) + shift
        k = shifted - shift
        k_bits = shifted.to(tl.int64, bitcast=True) - shift.to(tl.int64, bitcast=True)
        two_k = ((k_bits + 1023) << 52).to(tl.float64, bitcast=True)
        r = (x - k * _c(6.93147180369123816490e-01)) - k * _c(1.90821492927058770002e-10)
    else:
        shift = _k(x, 12582912.0)  # 1.5 * 2^23
        shifted = x * _k(x, 1.44269504088896338700e+00) + shift
        k = shifted - shift
        k_bits = shifted.to(tl.int32, bitcast=True) - shift.to(tl.int32, bitcast=True)
        two_k = ((k_bits + 127) << 23).to(tl.float32, bitcast=True)
        r = (x - k * _k(x, 0.693359375)) - k * _k(x, -2.12194440054690582e-4)
    return _expm1_reduced(r), two_k


@triton.jit
def _pcb_exp(x):
    p, two_k = _exp_split(x)
    return (_k(x, 1.0) + p) * two_k


@triton.jit
def _pcb_expm1(x):
    p, two_k = _exp_split(x)
    return two_k * p + (two_k - _k(x, 1.0))


@triton.jit
def _pcb_tanh(y):
    """pcb_tanh: the odd series below 1/8, t / (t + 2) with t = e^{2|y|} - 1 up to
    22 (fp64) or 10 (fp32), then +-1; tanh(-0) = -0."""
    a = tl.where(y < _k(y, 0.0), -y, y)
    y2 = y * y
    if y.dtype == tl.float64:
        q = _c(6404582.0 / 10854718875.0)
        q = q * y2 - _c(929569.0 / 638512875.0)
        q = q * y2 + _c(21844.0 / 6081075.0)
        q = q * y2 - _c(1382.0 / 155925.0)
        q = q * y2 + _c(62.0 / 2835.0)
        q = q * y2 - _c(17.0 / 315.0)
        one_from = _c(22.0)
    else:
        q = _k(y, -17.0 / 315.0)
        one_from = _k(y, 10.0)
    q = q * y2 + _k(y, 2.0 / 15.0)
    q = q * y2 - _k(y, 1.0 / 3.0)
    series = y + y * (y2 * q)
    t = _pcb_expm1(_k(y, 2.0) * tl.where(a > one_from, one_from, a))
    ratio = _divide(t, t + _k(y, 2.0))
    big = tl.where(a >= one_from, _k(y, 1.0), ratio)
    small = tl.where(y == _k(y, 0.0), y, series)
    return tl.where(a < _k(y, 0.125), small, tl.where(y < _k(y, 0.0), -big, big))


# ---------------------------------------------------------------------------
# Per-element maths (pcb.h), in the unit's compute type U.
# ---------------------------------------------------------------------------


@triton.jit
def _clamp(x, lo, hi):
    """min(max(x, lo), hi) in that order (for magnitudes, as pcb_clamp_magnitude)."""
    y = tl.where(x < lo, lo, x)
    return tl.where(y > hi, hi, y)


@triton.jit
def _range(lo, hi):
    """pcb_range: (lo, hi - lo or 1, 1 or 0) in lo's type."""
    rng = hi - lo
    zero = _k(lo, 0.0)
    one = _k(lo, 1.0)
    return lo, tl.where(rng > zero, rng, one), tl.where(rng > zero, one, zero)


@triton.jit
def _normalise(x, lo, rng, on):
    """((x - lo) / rng) on (pcb_intra's u, pcb_scale)."""
    return _divide(x - lo, rng) * on


@triton.jit
def _score(d, S, lo, hi, kf):
    """pcb_score: exp(K s) tanh(d S) in U (d's type; kf: K in U)."""
    m = _clamp(tl.abs(d), lo, hi)
    r_lo, r_range, r_on = _range(lo, hi)
    u = _normalise(m, r_lo, r_range, r_on)
    return _pcb_exp(kf * (u * u)) * _pcb_tanh(d * S)


@triton.jit
def _order_key(g):
    """score_key's order as a signed int64 (value order, -0 just below +0)."""
    if g.dtype == tl.float64:
        bits = g.to(tl.int64, bitcast=True)
        return tl.where(bits < 0, bits ^ 0x7FFFFFFFFFFFFFFF, bits)
    else:
        bits = g.to(tl.int32, bitcast=True).to(tl.int64)
        return tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


@triton.jit
def _score_key(g, sign64):
    """score_key itself (unsigned, held in an int64): the order key with its top bit
    flipped (32-bit keys: + 2^31; 64-bit: + sign64 = -2^63, wrapping)."""
    if g.dtype == tl.float64:
        return _order_key(g) + sign64
    else:
        return _order_key(g) + 0x80000000


@triton.jit
def _magnitude_key(d):
    if d.dtype == tl.float64:
        return d.to(tl.int64, bitcast=True) & 0x7FFFFFFFFFFFFFFF
    else:
        return (d.to(tl.int32, bitcast=True) & 0x7FFFFFFF).to(tl.int64)


@triton.jit
def _load_block(base_ptr, table_ptr, K, offs, mask, CDT: tl.constexpr, UDT: tl.constexpr, NEED_SUM: tl.constexpr):
    """The base (in its compute type) and, where needed, S = d_0 + ... + d_{K-1} in U
    from +0, rounded after each addition."""
    DT: tl.constexpr = base_ptr.dtype.element_ty
    b = tl.load(base_ptr + offs, mask=mask, other=0.0).to(CDT)
    S = tl.zeros(b.shape, UDT)
    if NEED_SUM:
        for k in range(K):
            S = S + _delta(table_ptr, k, offs, mask, b, DT).to(UDT)
    return b, S


# ---------------------------------------------------------------------------
# Kernels: one list position (a tensor of the unit), grid (blocks,).
# ---------------------------------------------------------------------------


@triton.jit
def _hist_kernel(
    base_ptr, table_ptr, stats_ptr, prefix_ptr, hist_ptr, n, K, shift, width, high_mask, sign64, block_offset,
    BLOCK: tl.constexpr, BINS: tl.constexpr, CDT: tl.constexpr, UDT: tl.constexpr, SCORE: tl.constexpr,
):
    """Adds, for both targets of each model (rows 2k, 2k + 1 of hist), the histogram
    of digit `shift` of the keys whose higher bits (key >> (shift + width), masked
    by high_mask: a 64-bit score key may have its top bit set) equal the target's
    prefix. Keys: |d_k| (SCORE false) or the scores g_k (stats: lo_k, hi_k)."""
    DT: tl.constexpr = base_ptr.dtype.element_ty
    n = i64(n)
    block = i64(block_offset) + tl.program_id(0).to(tl.int64)
    offs = block * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    b, S = _load_block(base_ptr, table_ptr, K, offs, mask, CDT, UDT, SCORE)
    kf = i64(K).to(UDT)
    digit_mask = (i64(1) << width) - 1
    high_mask = i64(high_mask)
    bins = tl.arange(0, BINS)
    for k in range(K):
        d = _delta(table_ptr, k, offs, mask, b, DT).to(UDT)
        if SCORE:
            key = _score_key(_score(d, S, tl.load(stats_ptr + 4 * k), tl.load(stats_ptr + 4 * k + 1), kf),
                             i64(sign64))
        else:
            key = _magnitude_key(d)
        low = key >> shift
        digit = (low & digit_mask).to(tl.int32)
        top = (low >> width) & high_mask
        want0 = tl.load(prefix_ptr + 2 * k)
        want1 = tl.load(prefix_ptr + 2 * k + 1)
        h0 = tl.histogram(digit, BINS, mask=mask & (top == want0))
        tl.atomic_add(hist_ptr + (2 * k) * BINS + bins, h0.to(tl.int64), mask=h0 != 0)
        if want1 == want0:  # both ranks still share their prefix: one histogram
            h1 = h0
        else:
            h1 = tl.histogram(digit, BINS, mask=mask & (top == want1))
        tl.atomic_add(hist_ptr + (2 * k + 1) * BINS + bins, h1.to(tl.int64), mask=h1 != 0)


@triton.jit
def _fused_kernel(
    base_ptr, out_ptr, table_ptr, stats_ptr, n, K, lam_bits, block_offset,
    BLOCK: tl.constexpr, CDT: tl.constexpr, UDT: tl.constexpr,
):
    """mix_tile and store_tile of pcb_kernels.cpp over a block: merged = sum_k t_k
    scale_k / max(sum_k scale_k, 1e-12), sums from +0 in model order; out =
    T(C(U(b) + merged lam)). stats: lo, hi, theta, G per model, in U."""
    DT: tl.constexpr = base_ptr.dtype.element_ty
    n = i64(n)
    block = i64(block_offset) + tl.program_id(0).to(tl.int64)
    offs = block * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    b, S = _load_block(base_ptr, table_ptr, K, offs, mask, CDT, UDT, True)
    kf = i64(K).to(UDT)
    num = tl.zeros(b.shape, UDT)
    den = tl.zeros(b.shape, UDT)
    for k in range(K):
        d = _delta(table_ptr, k, offs, mask, b, DT).to(UDT)
        lo = tl.load(stats_ptr + 4 * k)
        hi = tl.load(stats_ptr + 4 * k + 1)
        theta = tl.load(stats_ptr + 4 * k + 2)
        top = tl.load(stats_ptr + 4 * k + 3)
        g = _score(d, S, lo, hi, kf)
        # clamp(g, theta, G) on the order keys (pcb_clamp_score; theta <= G there)
        gk = _order_key(g)
        x = tl.where(gk < _order_key(theta), theta, tl.where(gk > _order_key(top), top, g))
        d_lo, d_range, d_on = _range(theta, top)
        scale = _normalise(x, d_lo, d_range, d_on)
        m = _clamp(tl.abs(d), lo, hi)
        zero = tl.zeros_like(m)
        clamped = tl.where(d > zero, m, tl.where(d < zero, -m, zero))
        num = num + clamped * scale
        den = den + scale
    floor = _c(1e-12).to(UDT)  # reference.PCB_SCALE_SUM_MIN, rounded to U
    merged = _divide(num, tl.where(den < floor, floor, den))
    y = b.to(UDT) + merged * f64_from_bits(lam_bits).to(UDT)
    tl.store(out_ptr + offs, to_storage(y.to(CDT), DT), mask=mask)


# ---------------------------------------------------------------------------
# Host side (arguments already checked by m2n2_kernels/pcb.py, check_op_canonical).
# ---------------------------------------------------------------------------


class _Unit:
    """The non-empty positions of one unit, each with its table of K model pointers."""

    def __init__(self, positions, base, models):
        L = len(base)
        K = len(models) // L
        self.K = K
        self.positions = [i for i in positions if base[i].numel() > 0]
        self.base = base
        self.tables = {i: torch.tensor([models[k * L + i].data_ptr() for k in range(K)], dtype=torch.int64,
                                       device=base[i].device) for i in self.positions}
        self.n = sum(base[i].numel() for i in self.positions)
        self.wide = any(base[i].dtype == torch.float64 for i in positions)
        self.udt = torch.float64 if self.wide else torch.float32
        self.device = base[positions[0]].device


def _select(unit, ranks, stats, score, block):
    """The keys (unsigned, in int64) at ranks[2k], ranks[2k + 1] of model k's keys:
    one histogram pass per digit, most significant first, the digit picked on the
    device."""
    K, dev = unit.K, unit.device
    hist = torch.zeros((2 * K, BINS), dtype=torch.int64, device=dev)
    prefix = torch.zeros(2 * K, dtype=torch.int64, device=dev)
    remaining = torch.tensor(ranks, dtype=torch.int64, device=dev)
    bits = 64 if unit.wide else 32
    high = bits if score else bits - 1  # magnitudes: the sign bit is 0
    while high > 0:
        width = min(DIGIT_BITS, high)
        shift = high - width
        high_mask = 0 if high >= 64 else (1 << (64 - high)) - 1
        hist.zero_()
        for i in unit.positions:
            b = unit.base[i]
            _hist_kernel[(triton.cdiv(b.numel(), block),)](
                b, unit.tables[i], stats, prefix, hist, b.numel(), K, shift, width, high_mask, _SIGN64, 0,
                BLOCK=block, BINS=BINS, CDT=compute_dtype(b.dtype), UDT=compute_dtype(unit.udt), SCORE=score,
                **launch_opts(WARPS),
            )
        cum = hist.cumsum(1)
        digit = (cum <= remaining[:, None]).sum(1).clamp_(max=BINS - 1)  # the bin holding the rank
        below = cum.gather(1, digit[:, None]).squeeze(1) - hist.gather(1, digit[:, None]).squeeze(1)
        remaining = remaining - below
        # the last shift of a 64-bit key wraps into the sign bit (two's complement)
        prefix = (prefix << width) | digit
        high = shift
    return prefix


def _magnitude_values(keys, udt):
    if udt == torch.float64:
        return keys.view(torch.float64)
    return keys.to(torch.int32).view(torch.float32)  # keys < 2^31


def _score_values(keys, udt):
    """score_from_key of pcb.h."""
    if udt == torch.float64:
        return torch.where(keys < 0, keys & 0x7FFFFFFFFFFFFFFF, ~keys).view(torch.float64)
    bits = torch.where(keys >= 2**31, keys - 2**31, (~keys) & 0xFFFFFFFF)
    return torch.where(bits >= 2**31, bits - 2**32, bits).to(torch.int32).view(torch.float32)


def _merge_unit(unit, out, ratio, lam, clamp, block):
    K, n, udt = unit.K, unit.n, unit.udt
    nd = float(n)
    stats = torch.zeros((K, 4), dtype=udt, device=unit.device)  # lo, hi, theta, G
    lo_hi = _select(unit, [int(nd * clamp), int(nd * (1.0 - clamp) - 1.0)] * K, stats, False, block)
    stats[:, :2] = _magnitude_values(lo_hi, udt).view(K, 2)
    drops = _select(unit, [int(nd * (1.0 - ratio)), n - 1] * K, stats, True, block)
    stats[:, 2:] = _score_values(drops, udt).view(K, 2)
    for i in unit.positions:
        b = unit.base[i]
        _fused_kernel[(triton.cdiv(b.numel(), block),)](
            b, out[i], unit.tables[i], stats, b.numel(), K, double_bits(lam), 0,
            BLOCK=block, CDT=compute_dtype(b.dtype), UDT=compute_dtype(udt), **launch_opts(WARPS),
        )


def pcb_merge_out(base, models, out, ratio, lam, scope, clamp, block=BLOCK):
    """out[i] = the PCB merge of position i (m2n2::pcb_merge_out's canonical arguments:
    models model-major, K x L; contiguous tensors; out[i] may be base[i]: each
    element is read before it is written, by one program, in the last pass).
    `block`: elements per program (a power of two, at least 16; the results do not
    depend on it)."""
    base, models, out = list(base), list(models), list(out)
    if not base:
        return
    units = [[i] for i in range(len(base))] if scope == "tensor" else [list(range(len(base)))]
    with on_device(base[0].device):
        for positions in units:
            unit = _Unit(positions, base, models)
            if unit.n:
                _merge_unit(unit, out, float(ratio), float(lam), float(clamp), block)
