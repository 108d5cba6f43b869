// DELLA's magnitude ranks within a fiber (torch-free, CPU): the order of a fiber's
// keys, ascending, ties lowest index first, which task_merge_kernels.cpp turns into
// each element's keep threshold (docs/semantics.md, "della").
//
// A fiber is short (a row of a matrix: thousands of elements), so it is sorted whole:
// 32-bit keys packed with their index into 64-bit words, least significant digit
// first in three stable 11-bit passes (one read for the three histograms; a digit
// that every key shares is skipped), std::sort below a few hundred keys where the
// histograms would cost more than the keys. 64-bit keys (units that hold fp64) sort
// (key, index) pairs. Both orders are the same: ascending key, then ascending index.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

namespace m2n2::cpu {

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

}  // namespace m2n2::cpu
