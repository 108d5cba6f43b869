// PCB merging (parameter competition balancing): the per-element maths, torch-free and
// shared by the CPU kernel (and a CUDA kernel to come). docs/semantics.md, "PCB
// merging", is the definition; m2n2_kernels/reference.py (pcb_merge) the reference.
// C is the unit's compute type (float, or double where the unit holds fp64 tensors);
// the balancing factors are computed in fp64 and the score rounded to C.
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

// ---- fp64 exp and tanh -----------------------------------------------------------------
//
// The package's own, rather than the math library's, so that every backend (CPU clones
// and CUDA) computes the same bits from IEEE operations alone, and so that the loops
// vectorise: Cody-Waite reduction and Taylor polynomials, within a few ulp of the exact
// values (the reference's torch.exp and torch.tanh are within one: the scores, rounded
// to fp32, agree). Valid for |x| <= 700; the balancing factors need |x| <= 64.

constexpr double kPcbLn2Hi = 6.93147180369123816490e-01;  // ln 2's leading 32 bits: k ln2_hi exact
constexpr double kPcbLn2Lo = 1.90821492927058770002e-10;  // ln 2 - kPcbLn2Hi
constexpr double kPcbInvLn2 = 1.44269504088896338700e+00;
constexpr double kPcbRoundShift = 6755399441055744.0;      // 1.5 * 2^52: adding it rounds to an integer

// e^r - 1 for |r| <= ln2 / 2: the Taylor series to r^13 (the rest below 1e-17 relative).
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

// x = k ln2 + r with k the nearest integer to x / ln2; returns e^r - 1 and sets 2^k.
M2N2_HD double pcb_exp_split(double x, double& two_k) {
  const double shifted = x * kPcbInvLn2 + kPcbRoundShift;
  const double k = shifted - kPcbRoundShift;
  const uint64_t k_bits = double_bits(shifted) - double_bits(kPcbRoundShift);  // k, two's complement
  two_k = bits_double((k_bits + 1023u) << 52);
  return pcb_expm1_reduced((x - k * kPcbLn2Hi) - k * kPcbLn2Lo);
}

M2N2_HD double pcb_exp(double x) {
  double two_k;
  const double p = pcb_exp_split(x, two_k);
  return (1.0 + p) * two_k;
}

// e^x - 1 = 2^k p + (2^k - 1): no cancellation for small x (k = 0).
M2N2_HD double pcb_expm1(double x) {
  double two_k;
  const double p = pcb_exp_split(x, two_k);
  return two_k * p + (two_k - 1.0);
}

// tanh below 1/8 (|y| < kPcbTanhSeriesMax): the odd Taylor series (terms past y^17
// below 1e-19 relative); tanh(+-0) = +-0.
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

// tanh: the series below 1/8, t / (t + 2) with t = e^{2|y|} - 1 up to 22, where tanh
// rounds to 1, then +-1.
M2N2_HD double pcb_tanh(double y) {
  const double a = y < 0.0 ? -y : y;
  const double series = pcb_tanh_series(y);
  const double t = pcb_expm1(2.0 * (a > 22.0 ? 22.0 : a));  // a NaN stays NaN
  const double ratio = t / (t + 2.0);
  const double big = a >= 22.0 ? 1.0 : ratio;
  return a < kPcbTanhSeriesMax ? series : (y < 0.0 ? -big : big);
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
// division and a constant): with on = 1 the value is the plain quotient.
struct PcbRange {
  double lo, range, on;
};

template <class C>
M2N2_HD PcbRange pcb_range(C lo, C hi) {
  const double range = double(hi) - double(lo);  // > 0 exactly where hi > lo
  return {double(lo), range > 0.0 ? range : 1.0, range > 0.0 ? 1.0 : 0.0};
}

// Intra-balancing, exp(K s) with s = ((m - lo) / (hi - lo))^2 in fp64; s = 0 where the
// clamped magnitudes have no spread (exp(0) = 1).
template <class C>
M2N2_HD double pcb_intra(C m, const PcbRange& r, double K) {
  const double u = ((double(m) - r.lo) / r.range) * r.on;
  return pcb_exp(K * (u * u));
}

// Inter-balancing, tanh(d S) in fp64 (S: the sum of the K deltas in C). Series: the
// caller knows |d S| < kPcbTanhSeriesMax (pcb_inter_in_series), where pcb_tanh takes
// the series anyway: the same bits without the other branch, which a vectorised
// loop would compute and discard.
template <class C, bool Series = false>
M2N2_HD double pcb_inter(C d, C S) {
  const double y = double(d) * double(S);
  if constexpr (Series) {
    return pcb_tanh_series(y);
  } else {
    return pcb_tanh(y);
  }
}

// Whether |d S| lies in the series' range (false for a NaN).
template <class C>
M2N2_HD bool pcb_inter_in_series(C d, C S) {
  const double y = double(d) * double(S);
  return (y < 0.0 ? -y : y) < kPcbTanhSeriesMax;
}

// The score g of one delta d, its magnitude clamped to [lo, hi] (r = pcb_range(lo,
// hi)), rounded to C. Series as pcb_inter.
template <class C, bool Series = false>
M2N2_HD C pcb_score(C d, C S, C lo, C hi, const PcbRange& r, double K) {
  const C m = pcb_clamp_magnitude(pcb_abs(d), lo, hi);
  return C(pcb_intra(m, r, K) * pcb_inter<C, Series>(d, S));
}

// The drop-and-rescale factor of a score: (clamp(g, theta, G) - theta) / (G - theta)
// in fp64, rounded to C; 0 where G == theta (r = pcb_range(theta, G); the sign of a
// zero scale never shows: the sums start from +0).
template <class C>
M2N2_HD C pcb_scale(C g, C theta, C G, const PcbRange& r) {
  const C x = pcb_clamp_score(g, theta, G);
  return C(((double(x) - r.lo) / r.range) * r.on);
}

}  // namespace m2n2
