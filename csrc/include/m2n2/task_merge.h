// Task-vector merges (task arithmetic, TIES, DARE): the per-element maths, torch-free
// and shared by the CPU and CUDA kernels. docs/semantics.md, "Task-vector merges", is
// the definition; m2n2_kernels/reference.py (task_merge) the reference.
#pragma once

#include "m2n2/common.h"
#include "m2n2/philox.h"

namespace m2n2 {

// kOutliers: mergekit's magnitude_outliers (Model Breadcrumbs): a band of magnitude
// ranks, the largest ones (the outliers) dropped as well as the smallest. kDella:
// mergekit's della_magprune (DELLA): DARE's draws against a probability that grows
// with the element's magnitude rank in its fiber (della_probability).
enum class Sparsify : int { kNone, kMagnitude, kRandom, kOutliers, kDella };
enum class Consensus : int { kNone, kSum, kCount };
enum class Rescale : int { kNone, kL1, kDensity };

// Philox stream of model k's DARE draws: kDareStream + k (apart from the mutation
// noise's streams, which count children from 0).
constexpr uint64_t kDareStream = 0xDA4E000000000000ull;
constexpr double kRescaleMin = 1e-7;  // l1 rescale: 1 where either sum is below
constexpr double kDivisorMin = 1e-8;  // no consensus: |sum of weights| below divides by 1
constexpr int kMaxModels = 64;        // models per call (per-element state lives in registers)

// magnitude_outliers keeps, of a unit of n elements in descending order of |d| (ties
// lowest index first), the ranks [start, end): t = int(rho n) of them after dropping
// the int(gamma n) largest, or the t smallest where fewer than t are left (mergekit's
// int(density n), int(gamma n) and max(0, n - t - n_top) smallest dropped; rho >= 1
// keeps every element, rho <= 0 none). Kernels select it as two virtual models per
// model: its `end` largest minus its `start` largest.
M2N2_HD void outlier_band(double rho, double gamma, int64_t n, int64_t& start, int64_t& end) {
  if (rho >= 1.0 || n == 0) {
    start = 0;
    end = n;
    return;
  }
  const int64_t t = rho <= 0.0 ? 0 : int64_t(rho * double(n));
  const int64_t top = gamma <= 0.0 ? 0 : int64_t(gamma * double(n));
  start = top < n - t ? top : n - t;
  end = start + t;
}

// Ordering key of |d|: for non-negative floats the bit pattern orders as the value.
M2N2_HD uint32_t magnitude_key(float d) { return float_bits(d) & 0x7FFFFFFFu; }
M2N2_HD uint64_t magnitude_key(double d) { return double_bits(d) & 0x7FFFFFFFFFFFFFFFull; }

// The magnitude key of a delta in a key width: 64-bit keys (of the delta widened to
// fp64, exactly) for units that hold fp64 tensors, else 32-bit.
template <class Key, class C>
M2N2_HD Key key_of(C d) {
  if constexpr (sizeof(Key) == 8) {
    return magnitude_key(double(d));
  } else {
    return magnitude_key(float(d));
  }
}

// DARE keeps element i of model k iff u < rho, u = u24 2^-24 with the 24-bit draw
// u24 = hi16 2^8 + lo8 (docs/semantics.md, "random"):
//   hi16(i): half i % 2 (low half first) of Philox word (i >> 1) % 4 of counter
//            (i >> 3, stream), stream = kDareStream + k: one call serves 8 elements;
//   lo8(i):  byte i % 4 (low byte first) of Philox word (i >> 2) % 4 of counter
//            (i >> 4, stream ^ kDareLowFlip).
// With the integer threshold T = ceil(rho 2^24), keep iff u24 < T, exactly. The high
// half alone decides unless hi16 == T >> 8 (one element in 65,536), so the kernels
// draw lo8 only there: their "draw" is dare_draw(hi16, lo8 or 0, T), which compares
// with T as u24 does, at half the Philox calls of one 24-bit word per element.
constexpr uint64_t kDareLowFlip = 1ull << 48;  // kDareStream ^ this: 0xDA4F000000000000 + k

M2N2_HD uint32_t dare_threshold(double rho) {
  if (rho >= 1.0) return 1u << 24;
  if (rho <= 0.0) return 0u;
  const double t = rho * 16777216.0;  // exact: a power of two
  const uint32_t f = uint32_t(t);
  return double(f) == t ? f : f + 1u;
}

// DELLA's keep probability of the element of 0-based ascending magnitude rank r in a
// fiber of `fiber` elements: (rho - eps) + (r / (fiber - 1)) (2 eps), each operation
// rounded in fp64 (r / (fiber - 1) read as 0 for a fiber of one element). The kernels
// compare the draw with dare_threshold of it, as DARE compares with rho's: below 0
// keeps none, 1 and above all.
M2N2_HD double della_probability(double rho, double eps, int64_t fiber, int64_t r) {
  const double spread = fiber > 1 ? double(r) / double(fiber - 1) : 0.0;
  return (rho - eps) + spread * (2.0 * eps);
}

// The four Philox words of counter (group, stream): draws of elements 8g .. 8g + 7
// (high halves) or 16g .. 16g + 15 (low bytes, on the low stream). Outputs are scalars
// rather than an array so that loops over groups vectorise.
M2N2_HD void dare_words(uint64_t seed, uint64_t stream, uint64_t group, uint32_t& w0, uint32_t& w1, uint32_t& w2,
                        uint32_t& w3) {
  uint32_t c[4] = {uint32_t(group), uint32_t(group >> 32), uint32_t(stream), uint32_t(stream >> 32)};
  philox4x32_10(c, uint32_t(seed), uint32_t(seed >> 32));
  w0 = c[0];
  w1 = c[1];
  w2 = c[2];
  w3 = c[3];
}

M2N2_HD uint32_t pick_word(int q, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3) {
  return q == 0 ? a0 : q == 1 ? a1 : q == 2 ? a2 : a3;
}

// hi16 of element i, from the words of its group (i >> 3).
M2N2_HD uint32_t dare_high16(uint64_t i, uint32_t w0, uint32_t w1, uint32_t w2, uint32_t w3) {
  return (pick_word(int((i >> 1) & 3u), w0, w1, w2, w3) >> (16u * uint32_t(i & 1u))) & 0xFFFFu;
}

// lo8 of element i (one Philox call: the kernels need it for about one element in 65,536).
M2N2_HD uint32_t dare_low8(uint64_t seed, uint64_t stream, uint64_t i) {
  uint32_t w0, w1, w2, w3;
  dare_words(seed, stream ^ kDareLowFlip, i >> 4, w0, w1, w2, w3);
  return (pick_word(int((i >> 2) & 3u), w0, w1, w2, w3) >> (8u * uint32_t(i & 3u))) & 0xFFu;
}

// The kernels' draw of element i given its hi16: u24 where the high half ties with the
// threshold's, else hi16 2^8 (which compares with T as u24 does).
M2N2_HD uint32_t dare_draw(uint64_t seed, uint64_t stream, uint64_t i, uint32_t hi16, uint32_t thr) {
  return hi16 == (thr >> 8) ? (hi16 << 8) | dare_low8(seed, stream, i) : hi16 << 8;
}

// The same for one element alone (tests; kernels that handle a single element).
M2N2_HD uint32_t dare_draw_at(uint64_t seed, uint64_t stream, uint64_t i, uint32_t thr) {
  uint32_t w0, w1, w2, w3;
  dare_words(seed, stream, i >> 3, w0, w1, w2, w3);
  return dare_draw(seed, stream, i, dare_high16(i, w0, w1, w2, w3), thr);
}

// The merged value of one element from the K factors e_k = e[k * stride] (0 where
// not kept), in the order of the reference: the vote, the agreeing sum and its
// weights, each summed k = 0, 1, ... from +0 and rounded after every addition (zeros
// added too, so that the signs of zero match); then / divisor, * lam, + base.
template <class C>
M2N2_HD C combine_factors(const C* e, int64_t stride, const C* w, int K, Consensus consensus, bool normalize, C lam,
                          C base, C plain_divisor) {
  C x = C(0);
  C divisor = plain_divisor;
  if (consensus == Consensus::kNone) {
    for (int k = 0; k < K; ++k) x = x + e[k * stride];
  } else {
    C vote = C(0);
    for (int k = 0; k < K; ++k) {
      const C ek = e[k * stride];
      const C s = ek > C(0) ? C(1) : (ek < C(0) ? C(-1) : C(0));
      vote = vote + (consensus == Consensus::kSum ? ek : s);
    }
    const C sigma = vote >= C(0) ? C(1) : C(-1);
    C dsum = C(0);
    for (int k = 0; k < K; ++k) {
      const C ek = e[k * stride];
      const C s = ek > C(0) ? C(1) : (ek < C(0) ? C(-1) : C(0));
      const bool agree = s == sigma;
      x = x + (agree ? ek : C(0));
      dsum = dsum + (agree ? w[k] : C(0));
    }
    divisor = dsum == C(0) ? C(1) : dsum;
  }
  if (normalize) x = x / divisor;
  x = x * lam;
  return base + x;
}

}  // namespace m2n2
