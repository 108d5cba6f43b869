// DELLA's keep decisions within a fiber (torch-free, CPU), without sorting it
// (docs/semantics.md, "della").
//
// Element j of a fiber is kept iff its draw u24 < T(r_j), r_j its ascending magnitude
// rank in the fiber (ties lowest index first) and T the non-decreasing threshold of
// each rank. One histogram of the keys gives every element bounds on its rank: lo =
// the keys in lower buckets, hi = lo + its bucket's count - 1. The draw decides alone
// wherever it lies below T(lo) or at or above T(hi), which is every element but a few
// in a hundred; only the others need their exact rank:
// - while they are few, each is counted over the fiber (one vectorised compare per key);
// - else the fiber's indices are placed bucket by bucket (a stable counting scatter),
//   and only the buckets that hold an open element are ranked within: in index order
//   where all their keys are equal (tied keys: quantised deltas such as bf16's, zero
//   deltas), by sorting their members otherwise;
// - the fiber is sorted whole (FiberSorter, radix) only where such a bucket of
//   distinct keys is large.
// All three give the same ranks. So a fiber costs a few vectorised passes over its
// keys, a histogram and a prefix sum over the buckets, and rarely more.
//
// Buckets: 2^sub_bits per octave of |d| (the key's exponent and leading mantissa
// bits), over the 32 octaves below the fiber's largest key (16 for 16-bit storage);
// smaller keys share bucket 0. About n / 64 buckets per octave: the prefix sum runs
// over every bucket in the span on every fiber, so its cost must stay below the
// fiber's own (with 2048 fixed buckets it took a quarter of the fp32 time and over
// half of bf16's on the 1024-element rows of the scale-4 benchmark).
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
// digits[j] = max(0, (keys[j] >> shift) - low), below 4096 where keys >> shift <= low +
// 4095; returns the smallest.
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

// f(j) for every j < n with open[j] set, in index order; the flags are read 8 at a
// time (a few elements in a hundred are open).
template <class F>
void della_for_each_open(const uint8_t* open, int64_t n, F&& f) {
  for (int64_t j0 = 0; j0 < n; j0 += 8) {
    uint64_t word = 0;
    if (j0 + 8 <= n) {
      std::memcpy(&word, open + j0, 8);
      if (word == 0) continue;
    }
    for (int64_t j = j0; j < std::min(n, j0 + 8); ++j) {
      if (open[j]) f(j);
    }
  }
}

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
  DellaFiber() = default;
  DellaFiber(const DellaFiber&) = delete;  // the bucket arrays point into table_
  DellaFiber& operator=(const DellaFiber&) = delete;
  // Open elements up to this many are each counted over the fiber; more, and the fiber
  // is placed bucket by bucket (a count costs about a sixteenth of the placing).
  static constexpr int64_t kCountMax = 16;
  // A bucket of distinct keys that holds an open element is sorted alone up to this
  // size; past it, the fiber is sorted whole (radix).
  static constexpr int64_t kBucketSortMax = 512;

  // keep[j] = 0 where element j of the fiber of n keys (contiguous) is kept, else 1.
  // high[j]: the high half of its draw, shifted (hi16 << 8, dare_draws.h); low8(j):
  // its low byte, asked for only where the high half ties with the threshold's;
  // thr[r]: the threshold of rank r, non-decreasing in r. octaves: how many octaves
  // below the largest key the buckets span (octaves_for).
  template <class Key, class Low8>
  void decide(const Key* keys, int64_t n, const uint32_t* high, const uint32_t* thr, Low8&& low8, uint32_t* keep,
              int octaves);

  // The octaves the buckets span for deltas of storage `bytes` wide: 16 for 16-bit
  // storage (its rows are mostly tied and placed bucket by bucket anyway, so half the
  // buckets measured faster), 32 otherwise.
  static int octaves_for(int bytes) { return bytes == 2 ? 16 : 32; }

  // The buckets per octave, 2^sub_bits: about n / 64 (8 to 128), so n / 2 buckets in
  // all over 32 octaves. A short fiber gets coarser buckets (a few more open
  // elements) rather than a prefix sum longer than itself.
  static int sub_bits_for(int64_t n) {
    const int lg = 63 - __builtin_clzll(uint64_t(std::max<int64_t>(64, n)));
    return std::clamp(lg - 6, 3, 7);
  }

 private:
  // The exact rank of every member of each bucket that holds an open element, into
  // rank_: the fiber's indices placed bucket by bucket (stable), a bucket of one key
  // ranked in index order, one of distinct keys sorted. False (rank_ incomplete)
  // where such a bucket is larger than kBucketSortMax.
  template <class Key>
  bool rank_open_buckets(const Key* keys, int64_t n, uint32_t first, uint32_t nb);

  // Counts of the fiber's parts, kParts contiguous ranges counted side by side: as
  // many independent chains of increments in flight on a busy bucket (zero deltas).
  static constexpr int kParts = 2;
  // The bucket arrays, nb long (start_: nb + 1, start_[nb] = n), in table_ and flags_
  // (sized for the most buckets a fiber has asked for: the arrays a short fiber reads
  // stay small).
  void size_buckets(uint32_t nb);
  std::vector<uint32_t> table_;
  std::vector<uint8_t> flags_;
  uint32_t* count_[kParts] = {};
  uint32_t* start_ = nullptr;
  uint32_t* tlo_ = nullptr;
  uint32_t* thi_ = nullptr;
  uint32_t* cursor_[kParts] = {};
  uint8_t* marked_ = nullptr;
  FiberSorter sorter_;
  std::vector<uint16_t> digits_;
  std::vector<uint8_t> open_;
  std::vector<uint32_t> order_, rank_;
};

template <class Key, class Low8>
void DellaFiber::decide(const Key* keys, int64_t n, const uint32_t* high, const uint32_t* thr, Low8&& low8,
                        uint32_t* keep, int octaves) {
  if (int64_t(digits_.size()) < n) {
    digits_.resize(size_t(n));
    open_.resize(size_t(n));
    order_.resize(size_t(n));
    rank_.resize(size_t(n));
  }
  // The key's exponent and sub_bits leading mantissa bits.
  const int sub_bits = sub_bits_for(n);
  const uint32_t nb = uint32_t(octaves) << sub_bits;
  size_buckets(nb);
  const int shift = (sizeof(Key) == 8 ? 52 : 23) - sub_bits;
  const int64_t top = int64_t(della_key_max(keys, n) >> shift);
  const uint16_t* digits = digits_.data();
  const uint32_t first = della_digits(keys, n, shift, top - int64_t(nb - 1), digits_.data());
  for (auto* c : count_) std::fill(c + first, c + nb, 0u);
  const int64_t part = n / kParts;
  for (int64_t j = 0; j < part; ++j) {
    for (int q = 0; q < kParts; ++q) ++count_[q][digits[q * part + j]];
  }
  for (int64_t j = kParts * part; j < n; ++j) ++count_[kParts - 1][digits[j]];
  // Buckets below the smallest key's stay unread. tlo_, thi_: the thresholds at each
  // bucket's lowest and highest rank (any rank in range for an empty bucket).
  uint32_t sum = 0;
  for (uint32_t d = first; d < nb; ++d) {
    uint32_t c = 0;
    for (int q = 0; q < kParts; ++q) c += count_[q][d];
    start_[d] = sum;
    tlo_[d] = thr[std::min(sum, uint32_t(n - 1))];
    thi_[d] = thr[std::max(sum + c, 1u) - 1];
    sum += c;
  }
  start_[nb] = sum;
  const int64_t opened = della_bounds(digits, n, high, tlo_, thi_, keep, open_.data());
  if (opened == 0) return;
  // The open elements' exact ranks: each counted while they are few, else read from
  // rank_ (the buckets that hold them ranked within, or at worst the fiber sorted).
  const bool counted = opened <= kCountMax;
  if (!counted && !rank_open_buckets(keys, n, first, nb)) {
    sorter_.sort(keys, n, order_.data());
    for (int64_t r = 0; r < n; ++r) rank_[order_[size_t(r)]] = uint32_t(r);
  }
  della_for_each_open(open_.data(), n, [&](int64_t j) {
    const uint32_t t = thr[counted ? della_rank_by_count(keys, n, keys[j], j) : int64_t(rank_[size_t(j)])];
    const uint32_t h = high[j];
    const uint32_t u = (h >> 8) == (t >> 8) ? h | low8(j) : h;
    keep[j] = u < t ? 0u : 1u;
  });
}

inline void DellaFiber::size_buckets(uint32_t nb) {
  const size_t per = size_t(nb) + 1;
  const size_t need = (2 * kParts + 3) * per;
  if (table_.size() >= need && flags_.size() >= per) return;
  table_.resize(need);
  flags_.resize(per);
  uint32_t* at = table_.data();
  auto next = [&at, per] {
    uint32_t* array = at;
    at += per;
    return array;
  };
  for (auto*& c : count_) c = next();
  for (auto*& c : cursor_) c = next();
  start_ = next();
  tlo_ = next();
  thi_ = next();
  marked_ = flags_.data();
}

template <class Key>
bool DellaFiber::rank_open_buckets(const Key* keys, int64_t n, uint32_t first, uint32_t nb) {
  const uint16_t* digits = digits_.data();
  const uint8_t* open = open_.data();
  uint32_t* order = order_.data();
  uint32_t* rank = rank_.data();
  // The stable placing: each part's members of bucket d from its own cursor (after
  // the earlier parts' members).
  for (uint32_t d = first; d < nb; ++d) {
    uint32_t at = start_[d];
    for (int q = 0; q < kParts; ++q) {
      cursor_[q][d] = at;
      at += count_[q][d];
    }
  }
  const int64_t part = n / kParts;
  for (int64_t j = 0; j < part; ++j) {
    for (int q = 0; q < kParts; ++q) {
      const int64_t i = q * part + j;
      order[cursor_[q][digits[i]]++] = uint32_t(i);
    }
  }
  for (int64_t i = kParts * part; i < n; ++i) order[cursor_[kParts - 1][digits[i]]++] = uint32_t(i);
  // The buckets holding an open element.
  std::fill(marked_ + first, marked_ + nb, uint8_t(0));
  della_for_each_open(open, n, [&](int64_t j) { marked_[digits[j]] = 1; });
  for (uint32_t d = first; d < nb; ++d) {
    if (!marked_[d]) continue;
    uint32_t* members = order + start_[d];
    const int64_t m = int64_t(start_[d + 1] - start_[d]);
    const Key k0 = keys[members[0]];
    bool tied = true;
    for (int64_t q = 1; q < m; ++q) tied &= keys[members[q]] == k0;
    if (!tied) {
      if (m > kBucketSortMax) return false;
      // Members are in index order: a stable sort by key leaves ties lowest index first.
      std::stable_sort(members, members + m, [keys](uint32_t a, uint32_t b) { return keys[a] < keys[b]; });
    }
    for (int64_t q = 0; q < m; ++q) rank[members[q]] = start_[d] + uint32_t(q);
  }
  return true;
}

}  // namespace m2n2::cpu
