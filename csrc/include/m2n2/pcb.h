// PCB merging (parameter competition balancing): the per-element maths, torch-free and
// shared by the CPU and CUDA kernels (the Triton kernels and the torch reference spell
// out the same operations). docs/semantics.md, "PCB merging", is the definition;
// m2n2_kernels/reference.py (pcb_merge) the reference. C is the unit's compute type
// (float, or double where the unit holds fp64 tensors); every step is computed in C.
#pragma once

#include "m2n2/common.h"

namespace m2n2 {

constexpr double kPcbScaleSumMin = 1e-12;  // the divisor's floor: sum of scales below it divides by it

// Ordering key of a score (any sign): all bits flipped for negatives, the sign bit set
// for the rest, so that unsigned order is value order, with -0 just below +0 (the
// reference sorts on the same key).
M2N2_HD uint32_t score_key(float g) {
  const uint32_t u = float_bits(g);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
M2N2_HD uint64_t score_key(double g) {
  const uint64_t u = double_bits(g);
  return (u >> 63) ? ~u : (u | 0x8000000000000000ull);
}
M2N2_HD float score_from_key(uint32_t k) { return bits_float((k & 0x80000000u) ? (k & 0x7FFFFFFFu) : ~k); }
M2N2_HD double score_from_key(uint64_t k) {
  return bits_double((k >> 63) ? (k & 0x7FFFFFFFFFFFFFFFull) : ~k);
}

// ---- exp and tanh ------------------------------------------------------------------------
//
// The package's own, rather than the math library's, so that every backend (CPU clones,
// CUDA, Triton, and the torch reference, which spells the same operations out) computes
// the same bits from IEEE operations alone, and so that the loops vectorise: Cody-Waite
// reduction and Taylor polynomials. One version per compute type C, as the authors
// compute in the storage type (fp32): fp32 units in fp32 (fewer terms, 16 AVX-512
// lanes; measured within 1.2 ulp for exp and 2.4 for tanh), fp64 units in fp64 (1.2 and
// 2.8; tests/native/pcb_math_check.cpp). Valid for |x| <= 87 (fp32) and 700 (fp64);
// PCB needs |x| <= 64.
// Each constant is the double written here rounded once to C, as Python's float does
// for the reference and the Triton port.

// ln 2 split in two: its leading bits (k ln2_hi is exact for the |k| that occur) and
// the rest.
constexpr double kPcbLn2Hi = 6.93147180369123816490e-01;  // 32 leading bits
constexpr double kPcbLn2Lo = 1.90821492927058770002e-10;
constexpr float kPcbLn2HiF = 0.693359375f;                 // 9 leading bits (355 / 512)
constexpr float kPcbLn2LoF = float(-2.12194440054690582e-4);
constexpr double kPcbInvLn2 = 1.44269504088896338700e+00;
constexpr double kPcbRoundShift = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to an integer
constexpr float kPcbRoundShiftF = 12582912.0f;         // 1.5 * 2^23

// e^r - 1 for |r| <= ln2 / 2: the Taylor series to r^13 (fp64: the rest below 1e-17
// relative) or r^7 (fp32: below 4e-9).
M2N2_HD double pcb_expm1_reduced(double r) {
  double p = 1.0 / 6227020800.0;
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  return p * r;
}
M2N2_HD float pcb_expm1_reduced(float r) {
  float p = float(1.0 / 5040.0);
  p = p * r + float(1.0 / 720.0);
  p = p * r + float(1.0 / 120.0);
  p = p * r + float(1.0 / 24.0);
  p = p * r + float(1.0 / 6.0);
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  return p * r;
}

// x = k ln2 + r with k the nearest integer to x / ln2; returns e^r - 1 and sets 2^k.
M2N2_HD double pcb_exp_split(double x, double& two_k) {
  const double shifted = x * kPcbInvLn2 + kPcbRoundShift;
  const double k = shifted - kPcbRoundShift;
  const uint64_t k_bits = double_bits(shifted) - double_bits(kPcbRoundShift);  // k, two's complement
  two_k = bits_double((k_bits + 1023u) << 52);
  return pcb_expm1_reduced((x - k * kPcbLn2Hi) - k * kPcbLn2Lo);
}
M2N2_HD float pcb_exp_split(float x, float& two_k) {
  const float shifted = x * float(kPcbInvLn2) + kPcbRoundShiftF;
  const float k = shifted - kPcbRoundShiftF;
  const uint32_t k_bits = float_bits(shifted) - float_bits(kPcbRoundShiftF);  // k, two's complement
  two_k = bits_float((k_bits + 127u) << 23);
  return pcb_expm1_reduced((x - k * kPcbLn2HiF) - k * kPcbLn2LoF);
}

template <class C>
M2N2_HD C pcb_exp(C x) {
  C two_k;
  const C p = pcb_exp_split(x, two_k);
  return (C(1) + p) * two_k;
}

// e^x - 1 = 2^k p + (2^k - 1): no cancellation for small x (k = 0).
template <class C>
M2N2_HD C pcb_expm1(C x) {
  C two_k;
  const C p = pcb_exp_split(x, two_k);
  return two_k * p + (two_k - C(1));
}

// tanh below 1/8 (|y| < kPcbTanhSeriesMax): the odd Taylor series (terms past y^17, fp64,
// or y^7, fp32, below 1e-19 or 2e-9 relative); tanh(+-0) = +-0.
constexpr double kPcbTanhSeriesMax = 0.125;

M2N2_HD double pcb_tanh_series(double y) {
  const double y2 = y * y;
  double q = 6404582.0 / 10854718875.0;
  q = q * y2 - 929569.0 / 638512875.0;
  q = q * y2 + 21844.0 / 6081075.0;
  q = q * y2 - 1382.0 / 155925.0;
  q = q * y2 + 62.0 / 2835.0;
  q = q * y2 - 17.0 / 315.0;
  q = q * y2 + 2.0 / 15.0;
  q = q * y2 - 1.0 / 3.0;
  return y == 0.0 ? y : y + y * (y2 * q);
}
M2N2_HD float pcb_tanh_series(float y) {
  const float y2 = y * y;
  float q = float(-17.0 / 315.0);
  q = q * y2 + float(2.0 / 15.0);
  q = q * y2 - float(1.0 / 3.0);
  return y == 0.0f ? y : y + y * (y2 * q);
}

// Where tanh is taken as +-1: 1 - tanh(a) < 2 e^{-2a} lies below half an ulp of 1
// beyond a = 19.1 (fp64) and 9.1 (fp32), so tanh rounds to 1 there.
M2N2_HD constexpr double pcb_tanh_one(double) { return 22.0; }
M2N2_HD constexpr float pcb_tanh_one(float) { return 10.0f; }

// tanh: the series below 1/8, t / (t + 2) with t = e^{2|y|} - 1 up to pcb_tanh_one,
// then +-1.
template <class C>
M2N2_HD C pcb_tanh(C y) {
  const C one_from = pcb_tanh_one(C(0));
  const C a = y < C(0) ? -y : y;
  const C series = pcb_tanh_series(y);
  const C t = pcb_expm1(C(2) * (a > one_from ? one_from : a));  // a NaN stays NaN
  const C ratio = t / (t + C(2));
  const C big = a >= one_from ? C(1) : ratio;
  return a < C(kPcbTanhSeriesMax) ? series : (y < C(0) ? -big : big);
}

// |x| by clearing the sign bit (no comparison: a loop over it vectorises).
M2N2_HD float pcb_abs(float x) { return bits_float(float_bits(x) & 0x7FFFFFFFu); }
M2N2_HD double pcb_abs(double x) { return bits_double(double_bits(x) & 0x7FFFFFFFFFFFFFFFull); }

// min(max(x, lo), hi) on ordering keys: integer selects, which GCC if-converts where a
// select between floats feeding a division stops the vectoriser (-ftrapping-math).
// Magnitudes (a, lo, hi >= 0) order as their bits; scores as score_key, where -0 lies
// below +0 (a clamped zero may change sign: a zero scale's sign never shows).
template <class K>
M2N2_HD K pcb_clamp_key(K k, K lo, K hi) {
  const K y = k < lo ? lo : k;
  return y > hi ? hi : y;
}
M2N2_HD float pcb_clamp_magnitude(float a, float lo, float hi) {
  return bits_float(pcb_clamp_key(float_bits(a), float_bits(lo), float_bits(hi)));
}
M2N2_HD double pcb_clamp_magnitude(double a, double lo, double hi) {
  return bits_double(pcb_clamp_key(double_bits(a), double_bits(lo), double_bits(hi)));
}
template <class C>
M2N2_HD C pcb_clamp_score(C g, C lo, C hi) {
  return score_from_key(pcb_clamp_key(score_key(g), score_key(lo), score_key(hi)));
}

// The clamped delta: sign(d) times the clamped magnitude m (0 where d is 0).
template <class C>
M2N2_HD C pcb_signed(C d, C m) {
  return d > C(0) ? m : (d < C(0) ? -m : C(0));
}

// A normalisation (x - lo) / (hi - lo) prepared once per model, as a multiply by `on`
// (1, or 0 where hi <= lo: no spread) rather than a select, so that loops over
// elements vectorise (GCC will not if-convert a select between a possibly trapping
// division and a constant): with on = 1 the value is the plain quotient. In C: hi - lo
// of two values of C is > 0 exactly where hi > lo (gradual underflow).
template <class C>
struct PcbRange {
  C lo, range, on;
};

template <class C>
M2N2_HD PcbRange<C> pcb_range(C lo, C hi) {
  const C range = hi - lo;
  return {lo, range > C(0) ? range : C(1), range > C(0) ? C(1) : C(0)};
}

// Intra-balancing, exp(K s) with s = ((m - lo) / (hi - lo))^2, each step in C (K, the
// model count, is exact in C); s = 0 where the clamped magnitudes have no spread
// (exp(0) = 1).
template <class C>
M2N2_HD C pcb_intra(C m, const PcbRange<C>& r, C K) {
  const C u = ((m - r.lo) / r.range) * r.on;
  return pcb_exp(K * (u * u));
}

// Inter-balancing, tanh(d S) in C (S: the sum of the K deltas). Series: the caller
// knows |d S| < kPcbTanhSeriesMax (pcb_inter_in_series), where pcb_tanh takes the
// series anyway: the same bits without the other branch, which a vectorised loop
// would compute and discard.
template <class C, bool Series = false>
M2N2_HD C pcb_inter(C d, C S) {
  const C y = d * S;
  if constexpr (Series) {
    return pcb_tanh_series(y);
  } else {
    return pcb_tanh(y);
  }
}

// Whether |d S| lies in the series' range (false for a NaN).
template <class C>
M2N2_HD bool pcb_inter_in_series(C d, C S) {
  const C y = d * S;
  return (y < C(0) ? -y : y) < C(kPcbTanhSeriesMax);
}

// The score g of one delta d, its magnitude clamped to [lo, hi] (r = pcb_range(lo,
// hi)), in C. Series as pcb_inter.
template <class C, bool Series = false>
M2N2_HD C pcb_score(C d, C S, C lo, C hi, const PcbRange<C>& r, C K) {
  const C m = pcb_clamp_magnitude(pcb_abs(d), lo, hi);
  return pcb_intra(m, r, K) * pcb_inter<C, Series>(d, S);
}

// The drop-and-rescale factor of a score: (clamp(g, theta, G) - theta) / (G - theta)
// in C; 0 where G == theta (r = pcb_range(theta, G); the sign of a zero scale never
// shows: the sums start from +0).
template <class C>
M2N2_HD C pcb_scale(C g, C theta, C G, const PcbRange<C>& r) {
  const C x = pcb_clamp_score(g, theta, G);
  return ((x - r.lo) / r.range) * r.on;
}
}  // namespace m2n2
