// radix_select (csrc/cpu/radix_select.h) against sorting: for each target the key of
// its rank and the keys below and equal to it, over sources of 32- and 64-bit keys
// that take each way of finishing: keys spread thinly (the second pass collects the
// few keys under each prefix), heavily tied keys (one bin holds more keys than the
// histograms: the second pass histograms), two ranks of one source under one prefix
// and under two, and ranks 0 and n - 1; and, given the sources' key counts, sources
// small enough to be collected without a histogram; each without a memory budget
// (16-bit digits) and under budgets that narrow the digits (11 + 11 + 10 bits and
// the like, down to 8-bit digits with nothing collected under a zero budget). Exits
// 1 on the first difference.
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <random>
#include <vector>

#include "cpu/radix_select.h"

using namespace m2n2::cpu;

namespace {

template <class Key>
bool check(const char* what, const std::vector<std::vector<Key>>& sources, const std::vector<RadixTarget>& want_targets,
           bool with_counts, uint64_t budget) {
  std::vector<RadixTarget> targets = want_targets;
  std::vector<int64_t> counts;  // with_counts: each source's keys (few enough are collected at once)
  for (const auto& v : sources) counts.push_back(int64_t(v.size()));
  constexpr int64_t kChunks = 7;
  radix_select<Key, uint32_t>(kChunks, targets, [&](int64_t i, const std::vector<int>& which, auto&& sink) {
    for (size_t a = 0; a < which.size(); ++a) {
      const std::vector<Key>& s = sources[size_t(which[a])];
      const int64_t n = int64_t(s.size());
      const int64_t p0 = n * i / kChunks, p1 = n * (i + 1) / kChunks;
      // In two pieces, as a kernel's tiles hand them on.
      const int64_t mid = (p0 + p1) / 2;
      if (mid > p0) sink(int(a), s.data() + p0, mid - p0);
      if (p1 > mid) sink(int(a), s.data() + mid, p1 - mid);
    }
  }, with_counts ? &counts : nullptr, budget);
  std::vector<std::vector<Key>> sorted_sources = sources;
  for (auto& v : sorted_sources) std::sort(v.begin(), v.end());
  for (const RadixTarget& t : targets) {
    const std::vector<Key>& sorted = sorted_sources[size_t(t.source)];
    const Key key = sorted[size_t(t.rank)];
    const int64_t below = std::lower_bound(sorted.begin(), sorted.end(), key) - sorted.begin();
    const int64_t equal = std::upper_bound(sorted.begin(), sorted.end(), key) - sorted.begin() - below;
    if (Key(t.key) != key || t.below != below || t.equal != equal) {
      std::printf("%s (budget %llu): source %d rank %lld: got key %llx below %lld equal %lld, want %llx %lld %lld\n",
                  what, (unsigned long long)budget, t.source, (long long)t.rank, (unsigned long long)t.key, (long long)t.below, (long long)t.equal,
                  (unsigned long long)key, (long long)below, (long long)equal);
      return false;
    }
  }
  return true;
}

template <class Key>
bool run(const char* what, std::mt19937_64& rng, int64_t n, bool with_counts, uint64_t budget) {
  // n = 300,000: more tied keys than the histograms hold; 5,000: fewer (with_counts:
  // collected without a histogram).
  std::vector<std::vector<Key>> sources(4, std::vector<Key>(size_t(n)));
  for (auto& k : sources[0]) k = Key(rng());                        // spread thinly
  for (auto& k : sources[1]) k = Key(0x3A5C0000u + (rng() % 50));  // few values, one prefix
  for (auto& k : sources[2]) k = Key(0x1234u) << (8 * sizeof(Key) - 16);  // all equal
  for (size_t j = 0; j < sources[3].size(); ++j) {
    sources[3][j] = j % 3 == 0 ? Key(7) : Key(rng() >> 1);           // ties at the bottom, spread above
  }
  std::vector<RadixTarget> targets;
  for (int s = 0; s < 4; ++s) {
    // Out of order and one rank twice: a slot's targets are selected in ascending rank,
    // each partitioning only the keys above the one before.
    for (int64_t r : {n / 2, int64_t(0), n / 5 + 1, n / 5, n - 1, n - 2, n / 5}) {
      RadixTarget t;
      t.source = s;
      t.rank = r;
      targets.push_back(t);
    }
  }
  // All targets at once (many slots: the second pass collects), then each source
  // alone (one or a few slots: the tied sources' second pass histograms).
  if (!check<Key>(what, sources, targets, with_counts, budget)) return false;
  for (int s = 0; s < 4; ++s) {
    std::vector<RadixTarget> own;
    for (const RadixTarget& t : targets) {
      if (t.source == s) own.push_back(t);
    }
    if (!check<Key>(what, sources, own, with_counts, budget)) return false;
  }
  return true;
}

// detail::kth_key against sorting: every rank of a few sizes around kKthFew and of
// larger sets, over keys spread (float bits of a narrow normal, so they share their
// high bits), heavily tied, all equal, and spread but for one large run; the keys'
// multiset unchanged, and scratch never past an eighth of them (and one) beyond
// kKthFew.
template <class Key>
bool check_kth(std::mt19937_64& rng) {
  std::normal_distribution<double> normal(1.0, 1e-3);
  std::vector<Key> scratch;
  for (int64_t m : {int64_t(1), int64_t(7), detail::kKthFew, detail::kKthFew + 1, int64_t(5000), int64_t(70001)}) {
    for (int shape = 0; shape < 4; ++shape) {
      std::vector<Key> keys(static_cast<size_t>(m));
      for (int64_t j = 0; j < m; ++j) {
        const double x = normal(rng);
        Key k = Key(x * double(Key(1) << (8 * sizeof(Key) - 2)));
        if (shape == 1) k = Key(rng() % 5) << (8 * sizeof(Key) - 4);  // five values
        if (shape == 2) k = Key(12345);
        if (shape == 3 && j % 3 == 0) k = Key(777);  // a third tied far below the rest
        keys[size_t(j)] = k;
      }
      std::vector<Key> sorted = keys;
      std::sort(sorted.begin(), sorted.end());
      const int64_t step = std::max<int64_t>(1, m / 97);
      for (int64_t r = 0; r < m; r += (r + step < m || r == m - 1) ? step : m - 1 - r) {
        std::vector<Key> work = keys;
        scratch.clear();
        scratch.shrink_to_fit();
        const Key got = detail::kth_key(work.data(), m, r, scratch);
        std::vector<Key> again = work;
        std::sort(again.begin(), again.end());
        const bool roomy = m <= detail::kKthFew || int64_t(scratch.size()) <= m / 8 + 1;
        if (got != sorted[size_t(r)] || again != sorted || !roomy) {
          std::printf("kth_key (%d-bit keys, shape %d, m %lld, rank %lld): got %llx want %llx%s%s\n",
                      int(8 * sizeof(Key)), shape, (long long)m, (long long)r, (unsigned long long)got,
                      (unsigned long long)sorted[size_t(r)], again != sorted ? ", keys lost" : "",
                      roomy ? "" : ", scratch too large");
          return false;
        }
        if (r == m - 1) break;
      }
    }
  }
  return true;
}

}  // namespace

int main() {
  std::mt19937_64 rng(12345);
  if (!check_kth<uint32_t>(rng) || !check_kth<uint64_t>(rng)) return 1;
  for (int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    for (int64_t n : {int64_t(300000), int64_t(5000)}) {
      for (bool with_counts : {false, true}) {
        // No budget; 48 KiB (11- to 13-bit digits, some collected); 0 (8-bit digits, none).
        for (uint64_t budget : {kNoMemoryBudget, uint64_t(48) << 10, uint64_t(0)}) {
          if (!run<uint32_t>("32-bit keys", rng, n, with_counts, budget) ||
              !run<uint64_t>("64-bit keys", rng, n, with_counts, budget)) {
            return 1;
          }
        }
      }
    }
  }
  std::printf("radix_select: every rank equal to sorting (32- and 64-bit keys, 1 to 3 threads, with and without "
              "the sources' key counts, 16-bit digits and narrower ones under memory budgets); kth_key too\n");
  return 0;
}
