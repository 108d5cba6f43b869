// PCB's score loops skip the deltas whose score provably lies below a floor (torch-free,
// CPU, fp32 units).
//
// A score g = exp(K u^2) tanh(d S) (m2n2/pcb.h) costs an exp polynomial, a tanh series
// and a division per element and model, which bounds bf16 PCB by its arithmetic. Yet
// most scores are never needed exactly: the fused pass adds 0 for every g at or below
// the drop threshold theta (80% of them at ratio 0.2), and the window pass only counts
// the scores below its window. A cheap upper bound decides for most of them:
//
//   b = E[i] y,  y = d S,  i = min(31, trunc(fl(w w))),  w = (|d| - lo) c,
//
// c >= sqrt(31) / (hi - lo) rounded up (0 where the magnitudes have no spread), E[i]
// >= exp(K (i + 1) / 31) with room for every rounding. Where b < floor (floor > 0)
// the computed score g lies below floor, so the element is skipped; the others (a
// fifth, at ratio 0.2) get their exact score from the same loops as before, on
// compacted copies. Skipping changes no bit: a skipped element's scale is exactly 0 in
// the fused pass (its terms would add +-0 to sums that start from +0), and its key
// lies below the window.
//
// Why g < b wherever b < floor, for y > 0 (y <= 0 gives g <= 0 < floor: tanh keeps
// the sign of y; a NaN y is never skipped, since NaN < floor is false):
// - the score's u = fl(fl(m - lo) / (hi - lo)) with m = |d| clamped to [lo, hi], so u
//   <= 1, and 31 u^2 <= w^2 (1 + 2^-21) wherever lo <= |d| <= hi (c carries 2^-20 to
//   spare). Outside, |d| < lo gives u = 0 (any i will do) and |d| > hi gives u = 1,
//   where w >= sqrt(31) and the index is 31 (so is a w^2 too large for an int: the
//   unsigned minimum takes the conversion's 0x80000000 to 31);
// - so the exponent x = fl(K fl(u u)) <= K (i + 1) / 31 (1 + 2^-20);
// - pcb_exp is within 1.2 ulp of exp (tests/native/pcb_math_check.cpp) and the
//   computed tanh(y) <= y (the series subtracts from y; past it t / (t + 2) <= 1 and
//   tanh y < 0.995 y);
// - E[i] = exp(K (i + 1) / 31 (1 + 2^-19)) (1 + 2^-10), rounded up to float, covers
//   those errors and the final products' by a wide margin;
// - floor >= 2^-100 keeps every quantity that matters in the normal range (a
//   subnormal g lies below floor anyway).
// tests/native/pcb_skip_check.cpp checks the AVX-512 filter against pcb_skippable()
// and every skip against the exact score, near the table's steps, with inf, NaN,
// zeros and magnitudes outside [lo, hi].
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "avx512.h"
#include "m2n2/common.h"

namespace m2n2::cpu {

struct PcbSkip {
  static constexpr int kSteps = 31;  // E has kSteps + 1 = 32 entries: two AVX-512 registers
  bool on = false;                   // false: every score is computed
  float lo = 0.0f;                   // the lower clamp bound of |d|
  float c = 0.0f;      // >= sqrt(kSteps) / (hi - lo), 0 where hi <= lo (then u = 0)
  float floor = 0.0f;  // skip where the bound lies below it
  alignas(64) float E[kSteps + 1] = {};
};

// The filter of one model: clamp bounds lo <= hi, K models, floor (the drop threshold, or
// the window's lower end, as a score). Off (every element kept) unless lo, hi and floor
// are finite and floor >= 2^-100.
inline PcbSkip pcb_skip_plan(float lo, float hi, int K, float floor) {
  PcbSkip p;
  if (!std::isfinite(lo) || !std::isfinite(hi) || !(lo <= hi) || !std::isfinite(floor) ||
      !(floor >= std::ldexp(1.0f, -100)) || K < 1) {
    return p;
  }
  const auto up = [](double v) {  // v rounded up to float (inf past the largest)
    const float f = float(v);
    return double(f) >= v ? f : std::nextafter(f, std::numeric_limits<float>::infinity());
  };
  p.on = true;
  p.lo = lo;
  p.floor = floor;
  const float range = hi - lo;
  p.c = range > 0.0f ? up(std::sqrt(double(PcbSkip::kSteps)) / double(range) * (1.0 + std::ldexp(1.0, -20))) : 0.0f;
  if (!std::isfinite(p.c)) return PcbSkip{};  // a subnormal spread
  for (int i = 0; i <= PcbSkip::kSteps; ++i) {
    const double x = double(K) * double(i + 1) / PcbSkip::kSteps * (1.0 + std::ldexp(1.0, -19));
    p.E[i] = up(std::exp(x) * (1.0 + std::ldexp(1.0, -10)));
  }
  return p;
}

// The bound's decision for one element (the AVX-512 filter's, lane for lane).
inline bool pcb_skippable(float d, float S, const PcbSkip& p) {
  if (!p.on) return false;
  const float y = d * S;
  const float w = (bits_float(float_bits(d) & 0x7FFFFFFFu) - p.lo) * p.c;
  const float q = w * w;
  // as cvttps2dq and an unsigned minimum: past int's range (and NaN) -> 31
  const uint32_t t = q >= 0.0f && q < 2147483648.0f ? uint32_t(int32_t(q)) : 0x80000000u;
  return p.E[t < uint32_t(PcbSkip::kSteps) ? t : uint32_t(PcbSkip::kSteps)] * y < p.floor;
}

#if M2N2_AVX512_LOOPS
// GCC 12's AVX-512 intrinsics start from an undefined register (avx512.h).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
// The elements of d[0 .. len) (and S) that the bound does not skip, compressed in index
// order: d and S to dc and Sc, each written 16 lanes at a time (unmasked stores, which
// measured faster than masked ones at these unaligned ends), so each must hold len +
// 16; with WithMasks, each 16-lane step's survivors as a bit mask to masks[step].
// Returns how many.
template <bool WithMasks>
M2N2_AVX512_TARGET inline int64_t pcb_survivors_avx512(const float* d, const float* S, int64_t len,
                                                       const PcbSkip& p, uint16_t* masks, float* dc, float* Sc) {
  const __m512 e_lo = _mm512_load_ps(p.E), e_hi = _mm512_load_ps(p.E + 16);
  const __m512i steps = _mm512_set1_epi32(PcbSkip::kSteps);
  const __m512 lo = _mm512_set1_ps(p.lo), c = _mm512_set1_ps(p.c), floor = _mm512_set1_ps(p.floor);
  int64_t count = 0;
  for (int64_t j = 0; j < len; j += 16) {
    const __mmask16 valid = lanes_of(len - j);
    const __m512 dv = _mm512_maskz_loadu_ps(valid, d + j);
    const __m512 sv = _mm512_maskz_loadu_ps(valid, S + j);
    const __m512 y = _mm512_mul_ps(dv, sv);
    const __m512 a = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(dv), _mm512_set1_epi32(0x7FFFFFFF)));
    const __m512 w = _mm512_mul_ps(_mm512_sub_ps(a, lo), c);
    const __m512i i = _mm512_min_epu32(_mm512_cvttps_epi32(_mm512_mul_ps(w, w)), steps);
    const __m512 b = _mm512_mul_ps(_mm512_permutex2var_ps(e_lo, i, e_hi), y);
    const __mmask16 keep = valid & ~_mm512_cmp_ps_mask(b, floor, _CMP_LT_OQ);
    if constexpr (WithMasks) masks[j / 16] = uint16_t(keep);
    if (keep == 0) continue;
    _mm512_storeu_ps(dc + count, _mm512_maskz_compress_ps(keep, dv));
    _mm512_storeu_ps(Sc + count, _mm512_maskz_compress_ps(keep, sv));
    count += __builtin_popcount(unsigned(keep));
  }
  return count;
}

// num[j] += and den[j] += the survivors' terms tn and td, spread back to their places
// (the inverse of pcb_survivors' compression: masks from it, terms in its order, each
// holding its count + 16); the other elements get +0, which changes no sum that
// started from +0.
M2N2_AVX512_TARGET inline void pcb_expand_add_avx512(const uint16_t* masks, int64_t len, const float* tn,
                                                     const float* td, float* num, float* den) {
  int64_t at = 0;
  for (int64_t j = 0; j < len; j += 16) {
    const __mmask16 keep = masks[j / 16];
    if (keep == 0) continue;
    const __mmask16 valid = lanes_of(len - j);
    const __m512 n = _mm512_maskz_expand_ps(keep, _mm512_loadu_ps(tn + at));
    const __m512 d = _mm512_maskz_expand_ps(keep, _mm512_loadu_ps(td + at));
    _mm512_mask_storeu_ps(num + j, valid, _mm512_add_ps(_mm512_maskz_loadu_ps(valid, num + j), n));
    _mm512_mask_storeu_ps(den + j, valid, _mm512_add_ps(_mm512_maskz_loadu_ps(valid, den + j), d));
    at += __builtin_popcount(unsigned(keep));
  }
}
#pragma GCC diagnostic pop
#endif

// The survivors' count rounded up to whole 16-lane steps: pcb_survivors pads dc and Sc
// with zeros to it, so that the exact loops run no scalar remainder (a scalar step costs
// as much as a vector one there, and the compacted runs are short).
inline int64_t pcb_padded(int64_t n) { return (n + 15) & ~int64_t(15); }

// pcb_survivors_avx512 where it runs (an AVX-512 CPU) and the filter is on, dc and Sc
// padded with zeros to pcb_padded(count); -1 elsewhere, for the caller to score every
// element instead. dc and Sc hold len + 16; masks (may be null: not wanted), one per
// 16-lane step, for pcb_expand_add.
inline int64_t pcb_survivors(const float* d, const float* S, int64_t len, const PcbSkip& p, uint16_t* masks,
                             float* dc, float* Sc) {
#if M2N2_AVX512_LOOPS
  if (p.on && cpu_has_avx512_loops()) {
    const int64_t n = masks ? pcb_survivors_avx512<true>(d, S, len, p, masks, dc, Sc)
                            : pcb_survivors_avx512<false>(d, S, len, p, nullptr, dc, Sc);
    for (int64_t i = n; i < pcb_padded(n); ++i) dc[i] = Sc[i] = 0.0f;
    return n;
  }
#endif
  (void)d, (void)S, (void)len, (void)p, (void)masks, (void)dc, (void)Sc;
  return -1;
}

// pcb_expand_add_avx512, after a pcb_survivors that returned a count (so on AVX-512).
inline void pcb_expand_add(const uint16_t* masks, int64_t len, const float* tn, const float* td, float* num,
                           float* den) {
#if M2N2_AVX512_LOOPS
  pcb_expand_add_avx512(masks, len, tn, td, num, den);
#else
  (void)masks, (void)len, (void)tn, (void)td, (void)num, (void)den;
#endif
}

}  // namespace m2n2::cpu
