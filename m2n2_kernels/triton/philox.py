"""Counter-based Gaussian noise in Triton: the z(seed, stream, i) of philox.h.

Same definition as csrc/include/m2n2/philox.h and reference.normal_noise:
Philox4x32-10 on counter (g_lo, g_hi, stream_lo, stream_hi), g = i >> 2, key
(seed_lo, seed_hi); Box-Muller turns words (0, 1) into lanes (0, 1) and words
(2, 3) into lanes (2, 3); element i takes lane i & 3.

The logarithm and the sine/cosine are the polynomial ones of philox.h, written
with the same operations in the same order, with correctly rounded division and
square root (div_rn, sqrt_rn) instead of Triton's fast approximations. Launched
with enable_fp_fusion=False, every step rounds exactly as the C++ code does, so
the noise is bit-identical to the CPU and CUDA C++ kernels (and to the Triton
interpreter, which evaluates the same fp32 operations with numpy); it agrees with
reference.normal_noise (torch.log/cos/sin) to a few ulp.
"""
import numpy as np
import triton
import triton.language as tl


def _f32(x):
    """A Python float holding exactly the fp32 value x (so Triton's fp32 constant
    is that value, with no second rounding)."""
    return float(np.float32(x))


def _f32_div(num, den):
    # The C++ constants are fp32 quotients such as `1.0f / 3`: one fp32 rounding.
    return float(np.float32(num) / np.float32(den))


_PHILOX_M0 = tl.constexpr(0xD2511F53)
_PHILOX_M1 = tl.constexpr(0xCD9E8D57)
_PHILOX_W0 = tl.constexpr(0x9E3779B9)
_PHILOX_W1 = tl.constexpr(0xBB67AE85)

# log_unit: ln(m) = 2 atanh(s), five odd terms.
_LOG_C3 = tl.constexpr(_f32_div(1, 3))
_LOG_C5 = tl.constexpr(_f32_div(1, 5))
_LOG_C7 = tl.constexpr(_f32_div(1, 7))
_LOG_C9 = tl.constexpr(_f32_div(1, 9))
_LN2 = tl.constexpr(_f32(0.693147180559945309))
# sincos_2pi: Taylor polynomials on [-pi/4, pi/4].
_HALF_PI = tl.constexpr(_f32(1.57079632679489662))
_SIN_C3 = tl.constexpr(_f32_div(-1, 6))
_SIN_C5 = tl.constexpr(_f32_div(1, 120))
_SIN_C7 = tl.constexpr(_f32_div(-1, 5040))
_SIN_C9 = tl.constexpr(_f32_div(1, 362880))
_COS_C4 = tl.constexpr(_f32_div(1, 24))
_COS_C6 = tl.constexpr(_f32_div(-1, 720))
_COS_C8 = tl.constexpr(_f32_div(1, 40320))
_COS_C10 = tl.constexpr(_f32_div(-1, 3628800))
_TWO_POW_M24 = tl.constexpr(2.0**-24)


@triton.jit
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32 with 10 rounds on uint32 tensors (the Random123 rounds, as in
    philox.h and tl.philox)."""
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(c0, _PHILOX_M0)
        lo0 = c0 * _PHILOX_M0
        hi1 = tl.umulhi(c2, _PHILOX_M1)
        lo1 = c2 * _PHILOX_M1
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = k0 + _PHILOX_W0
        k1 = k1 + _PHILOX_W1
    return c0, c1, c2, c3


@triton.jit
def _log_unit(x):
    """ln(x) for fp32 x in (0, 1]: philox.h log_unit, operation for operation."""
    ix = x.to(tl.uint32, bitcast=True) + (0x3F800000 - 0x3F3504F3)
    e = (ix >> 23).to(tl.int32) - 0x7F
    ix = (ix & 0x007FFFFF) + 0x3F3504F3
    m = ix.to(tl.float32, bitcast=True)
    s = tl.math.div_rn(m - 1.0, m + 1.0)
    z = s * s
    series = 1.0 + z * (_LOG_C3 + z * (_LOG_C5 + z * (_LOG_C7 + z * _LOG_C9)))
    return e.to(tl.float32) * _LN2 + 2.0 * s * series


@triton.jit
def _sincos_2pi(u):
    """(sin, cos) of 2 pi u for fp32 u in [0, 1): philox.h sincos_2pi."""
    v = u * 4.0
    qi = (v + 0.5).to(tl.int32)  # truncation, v >= 0
    x = (v - qi.to(tl.float32)) * _HALF_PI
    x2 = x * x
    s = x * (1.0 + x2 * (_SIN_C3 + x2 * (_SIN_C5 + x2 * (_SIN_C7 + x2 * _SIN_C9))))
    c = 1.0 + x2 * (-0.5 + x2 * (_COS_C4 + x2 * (_COS_C6 + x2 * (_COS_C8 + x2 * _COS_C10))))
    quadrant = qi & 3
    sq = tl.where(quadrant == 0, s, tl.where(quadrant == 1, c, tl.where(quadrant == 2, -s, -c)))
    cq = tl.where(quadrant == 0, c, tl.where(quadrant == 1, -s, tl.where(quadrant == 2, -c, s)))
    return sq, cq


@triton.jit
def _box_muller(w0, w1):
    """Two uint32 words to two standard normals (r cos, r sin)."""
    u1 = ((w0 >> 8) + 1).to(tl.float32) * _TWO_POW_M24  # (0, 1]: the log stays finite
    u2 = (w1 >> 8).to(tl.float32) * _TWO_POW_M24  # [0, 1)
    r = tl.sqrt_rn(-2.0 * _log_unit(u1))
    s, c = _sincos_2pi(u2)
    return r * c, r * s


@triton.jit
def normals4(group, seed_lo, seed_hi, stream_lo, stream_hi):
    """The four normals (lanes 0..3) of int64 counter groups `group` (any shape);
    seed/stream halves are uint32 scalars."""
    g_lo = group.to(tl.uint32)  # truncation: the low 32 bits
    g_hi = (group >> 32).to(tl.uint32)
    zero = tl.zeros_like(g_lo)
    w0, w1, w2, w3 = philox4x32_10(g_lo, g_hi, zero + stream_lo, zero + stream_hi, seed_lo, seed_hi)
    z0, z1 = _box_muller(w0, w1)
    z2, z3 = _box_muller(w2, w3)
    return z0, z1, z2, z3


@triton.jit
def normals_block(first_group, seed_lo, seed_hi, stream_lo, stream_hi, BLOCK: tl.constexpr):
    """Normals of the BLOCK consecutive elements 4 * first_group .. + BLOCK - 1, in
    element order: one Philox call per group of four, the four lanes interleaved
    (a thread keeps its four values, no data moves between threads)."""
    group = first_group + tl.arange(0, BLOCK // 4)
    z0, z1, z2, z3 = normals4(group, seed_lo, seed_hi, stream_lo, stream_hi)
    # interleave(interleave(z0, z2), interleave(z1, z3)) = z0[0], z1[0], z2[0], z3[0], z0[1], ...
    return tl.interleave(tl.interleave(z0, z2), tl.interleave(z1, z3))
