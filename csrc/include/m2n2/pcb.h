// PCB merging (parameter competition balancing): the per-element maths, torch-free and
// shared by the CPU kernel (and a CUDA kernel to come). docs/semantics.md, "PCB
// merging", is the definition; m2n2_kernels/reference.py (pcb_merge) the reference.
// C is the unit's compute type (float, or double where the unit holds fp64 tensors);
// the balancing factors are computed in fp64 and the score rounded to C.
#pragma once

#include <cmath>

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

// min(max(x, lo), hi), applied in that order (torch.clamp's rule: all hi where lo > hi).
template <class C>
M2N2_HD C pcb_clamp(C x, C lo, C hi) {
  const C y = x < lo ? lo : x;
  return y > hi ? hi : y;
}

// The clamped delta: sign(d) times the clamped magnitude m (0 where d is 0).
template <class C>
M2N2_HD C pcb_signed(C d, C m) {
  return d > C(0) ? m : (d < C(0) ? -m : C(0));
}

// Intra-balancing, exp(K s) with s = ((m - lo) / (hi - lo))^2 in fp64; s = 0 where the
// clamped magnitudes have no spread (hi <= lo).
template <class C>
M2N2_HD double pcb_intra(C m, C lo, C hi, double K) {
  if (!(hi > lo)) return 1.0;
  const double u = (double(m) - double(lo)) / (double(hi) - double(lo));
  return exp(K * (u * u));
}

// Inter-balancing, tanh(d S) in fp64 (S: the sum of the K deltas in C).
template <class C>
M2N2_HD double pcb_inter(C d, C S) {
  return tanh(double(d) * double(S));
}

// The score g of one delta d (magnitude clamped to m), rounded to C.
template <class C>
M2N2_HD C pcb_score(C d, C S, C lo, C hi, double K) {
  const C m = pcb_clamp(C(fabs(d)), lo, hi);
  return C(pcb_intra(m, lo, hi, K) * pcb_inter(d, S));
}

// The drop-and-rescale factor of a score: (clamp(g, theta, G) - theta) / (G - theta)
// in fp64, rounded to C; 0 where G == theta.
template <class C>
M2N2_HD C pcb_scale(C g, C theta, C G) {
  if (G == theta) return C(0);
  const C x = pcb_clamp(g, theta, G);
  return C((double(x) - double(theta)) / (double(G) - double(theta)));
}

}  // namespace m2n2
