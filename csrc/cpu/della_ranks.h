// DELLA's keep decisions within a fiber (torch-free, CPU), without sorting it
// (docs/semantics.md, "della").
//
// Element j of a fiber is kept iff its draw u24 < T(r_j), r_j its ascending magnitude
// rank in the fiber (ties lowest index first) and T the non-decreasing threshold of
// each rank. One histogram of the keys gives every element bounds on its rank: lo =
// the keys in lower buckets, hi = lo + its bucket's count - 1. The draw decides alone
// wherever it lies below T(lo) or at or above T(hi), which is every element but a few
// in a hundred; only the others need their exact rank: counted over the fiber (one
// vectorised compare per key) while they are few, else read from the fiber sorted
// whole (FiberSorter: where the buckets are large, as with tied keys, which quantised
// deltas such as bf16's make, or zero deltas, which make one bucket of a fiber). So
// a fiber costs a few vectorised passes over its keys, and at worst one sort.
//
// Buckets: 64 per octave of |d| (the exponent and 6 leading mantissa bits of the
// key), the 32 octaves below the fiber's largest key; smaller keys share bucket 0.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

namespace m2n2::cpu {

// The vectorised loops (della_ranks.cpp, compiled per instruction set).
uint32_t della_key_max(const uint32_t* keys, int64_t n);
uint64_t della_key_max(const uint64_t* keys, int64_t n);
// digits[j] = max(0, (keys[j] >> shift) - low): 0 .. 2047 where keys >> shift <= low +
// 2047; returns the smallest.
uint32_t della_digits(const uint32_t* keys, int64_t n, int shift, int64_t low, uint16_t* digits);
uint32_t della_digits(const uint64_t* keys, int64_t n, int shift, int64_t low, uint16_t* digits);
// keep[j] = 0 where high[j] | 0xFF < tlo[d], 1 where high[j] >= thi[d] (d = digits[j]);
// open[j] = 1 where neither (keep[j] then 1 until decided).
// Returns the open count.
int64_t della_bounds(const uint16_t* digits, int64_t n, const uint32_t* high, const uint32_t* tlo, const uint32_t* thi,
                     uint32_t* keep, uint8_t* open);
// The keys below key, plus those equal to it before index j: j's ascending rank.
int64_t della_rank_by_count(const uint32_t* keys, int64_t n, uint32_t key, int64_t j);
int64_t della_rank_by_count(const uint64_t* keys, int64_t n, uint64_t key, int64_t j);

class FiberSorter {
 public:
  // order[r] = the index of the key of ascending rank r among keys[0 .. n).
  void sort(const uint32_t* keys, int64_t n, uint32_t* order) {
    if (int64_t(a_.size()) < n) {
      a_.resize(size_t(n));
      b_.resize(size_t(n));
    }
    uint64_t* src = a_.data();
    for (int64_t j = 0; j < n; ++j) src[j] = (uint64_t(keys[j]) << 32) | uint64_t(uint32_t(j));
    if (n < kRadixMin) {
      std::sort(src, src + n);
    } else {
      src = radix_sort(src, b_.data(), keys, n);
    }
    for (int64_t r = 0; r < n; ++r) order[r] = uint32_t(src[r]);
  }

  void sort(const uint64_t* keys, int64_t n, uint32_t* order) {
    if (int64_t(wide_.size()) < n) wide_.resize(size_t(n));
    for (int64_t j = 0; j < n; ++j) wide_[size_t(j)] = {keys[j], uint32_t(j)};
    std::sort(wide_.begin(), wide_.begin() + n);
    for (int64_t r = 0; r < n; ++r) order[r] = wide_[size_t(r)].second;
  }

 private:
  static constexpr int64_t kRadixMin = 384;  // fewer keys: std::sort
  static constexpr int kDigitBits = 11;
  static constexpr uint32_t kBuckets = 1u << kDigitBits;

  // Sorts src[0 .. n) (key << 32 | index, indices ascending) by key, stably; returns
  // whichever of src and tmp holds the result.
  static uint64_t* radix_sort(uint64_t* src, uint64_t* tmp, const uint32_t* keys, int64_t n) {
    std::vector<uint32_t> hist(3 * size_t(kBuckets), 0u);
    uint32_t* h0 = hist.data();
    uint32_t* h1 = h0 + kBuckets;
    uint32_t* h2 = h1 + kBuckets;
    for (int64_t j = 0; j < n; ++j) {
      const uint32_t k = keys[j];
      ++h0[k & (kBuckets - 1)];
      ++h1[(k >> kDigitBits) & (kBuckets - 1)];
      ++h2[(k >> (2 * kDigitBits)) & (kBuckets - 1)];
    }
    uint32_t* hs[3] = {h0, h1, h2};
    for (int d = 0; d < 3; ++d) {
      uint32_t* h = hs[d];
      const int shift = 32 + d * kDigitBits;
      if (h[(uint32_t(src[0] >> shift)) & (kBuckets - 1)] == uint32_t(n)) continue;  // one digit for all
      uint32_t sum = 0;
      for (uint32_t x = 0; x < kBuckets; ++x) {
        const uint32_t c = h[x];
        h[x] = sum;
        sum += c;
      }
      for (int64_t j = 0; j < n; ++j) tmp[h[uint32_t(src[j] >> shift) & (kBuckets - 1)]++] = src[j];
      std::swap(src, tmp);
    }
    return src;
  }

  std::vector<uint64_t> a_, b_;
  std::vector<std::pair<uint64_t, uint32_t>> wide_;
};

class DellaFiber {
 public:
  static constexpr uint32_t kBuckets = 2048;
  // More open elements than this: the fiber sorted whole (radix) rather than each
  // open element's rank counted over it (a count costs about a hundredth of a sort).
  static constexpr int64_t kCountMax = 64;

  // keep[j] = 0 where element j of the fiber of n keys (contiguous) is kept, else 1.
  // high[j]: the high half of its draw, shifted (hi16 << 8, dare_draws.h); low8(j):
  // its low byte, asked for only where the high half ties with the threshold's;
  // thr[r]: the threshold of rank r, non-decreasing in r.
  template <class Key, class Low8>
  void decide(const Key* keys, int64_t n, const uint32_t* high, const uint32_t* thr, Low8&& low8, uint32_t* keep);

 private:
  uint32_t count_[kBuckets];
  uint32_t start_[kBuckets];
  uint32_t tlo_[kBuckets];
  uint32_t thi_[kBuckets];
  FiberSorter sorter_;
  std::vector<uint16_t> digits_;
  std::vector<uint8_t> open_;
  std::vector<uint32_t> order_, rank_;
};

template <class Key, class Low8>
void DellaFiber::decide(const Key* keys, int64_t n, const uint32_t* high, const uint32_t* thr, Low8&& low8,
                        uint32_t* keep) {
  if (int64_t(digits_.size()) < n) {
    digits_.resize(size_t(n));
    open_.resize(size_t(n));
    order_.resize(size_t(n));
    rank_.resize(size_t(n));
  }
  // 64 buckets per octave: the key's exponent and 6 leading mantissa bits.
  constexpr int shift = (sizeof(Key) == 8 ? 52 : 23) - 6;
  const int64_t top = int64_t(della_key_max(keys, n) >> shift);
  const uint32_t first = della_digits(keys, n, shift, top - int64_t(kBuckets - 1), digits_.data());
  std::fill(count_ + first, count_ + kBuckets, 0u);
  for (int64_t j = 0; j < n; ++j) ++count_[digits_[size_t(j)]];
  // Buckets below the smallest key's stay unread. tlo_, thi_: the thresholds at each
  // bucket's lowest and highest rank (any rank in range for an empty bucket).
  uint32_t sum = 0;
  for (uint32_t d = first; d < kBuckets; ++d) {
    const uint32_t c = count_[d];
    start_[d] = sum;
    tlo_[d] = thr[std::min(sum, uint32_t(n - 1))];
    thi_[d] = thr[std::max(sum + c, 1u) - 1];
    sum += c;
  }
  const int64_t opened = della_bounds(digits_.data(), n, high, tlo_, thi_, keep, open_.data());
  if (opened == 0) return;
  const bool sorted = opened > kCountMax;
  if (sorted) {
    sorter_.sort(keys, n, order_.data());
    for (int64_t r = 0; r < n; ++r) rank_[order_[size_t(r)]] = uint32_t(r);
  }
  // The few open elements: the flags 8 at a time.
  const uint8_t* open = open_.data();
  for (int64_t j0 = 0; j0 < n; j0 += 8) {
    uint64_t word = 0;
    if (j0 + 8 <= n) {
      std::memcpy(&word, open + j0, 8);
      if (word == 0) continue;
    }
    for (int64_t j = j0; j < std::min(n, j0 + 8); ++j) {
      if (!open[j]) continue;
      const uint32_t t = thr[sorted ? int64_t(rank_[size_t(j)]) : della_rank_by_count(keys, n, keys[j], j)];
      const uint32_t h = high[j];
      const uint32_t u = (h >> 8) == (t >> 8) ? h | low8(j) : h;
      keep[j] = u < t ? 0u : 1u;
    }
  }
}

}  // namespace m2n2::cpu
