// extreme_select (csrc/cpu/extreme_select.h) against sorting: the key of every rank
// within its limits of either end, over 32- and 64-bit keys in ways that stress the
// buffers: spread thinly, few values (ties at the bounds), all equal, ascending and
// descending (every piece beyond the bound at one end: a prune per piece), ties at
// the bottom with spread keys above; n from 1 to 200,000, 1 to 3 threads, chunks
// handed on in pieces of odd sizes. Also that extreme_selectable refuses ranks past
// its limits and buffers past the memory budget, and keys_beyond (the compare under
// every piece once the bound has settled: its portable loop, and the AVX-512 one where
// the CPU has it) against a scalar oracle. Exits 1 on the first difference.
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <random>
#include <vector>

#include "cpu/extreme_select.h"

using namespace m2n2::cpu;

namespace {

template <class Key>
bool check(const char* what, const std::vector<std::vector<Key>>& sources, int64_t n,
           const std::vector<RadixTarget>& want_targets) {
  std::vector<RadixTarget> targets = want_targets;
  if (!extreme_selectable(targets, n, sizeof(Key), kNoMemoryBudget)) {
    std::printf("%s: n %lld: targets within the limits refused\n", what, (long long)n);
    return false;
  }
  constexpr int64_t kChunks = 5;
  extreme_select<Key>(kChunks, n, targets, [&](int64_t i, const std::vector<int>& which, auto&& sink) {
    for (size_t a = 0; a < which.size(); ++a) {
      const std::vector<Key>& s = sources[size_t(which[a])];
      // In pieces of 97 keys (odd, below the prune slack), as a kernel's tiles hand them on.
      const int64_t p0 = n * i / kChunks, p1 = n * (i + 1) / kChunks;
      for (int64_t q = p0; q < p1; q += 97) sink(int(a), s.data() + q, std::min<int64_t>(97, p1 - q));
    }
  });
  for (const RadixTarget& t : targets) {
    std::vector<Key> sorted = sources[size_t(t.source)];
    std::sort(sorted.begin(), sorted.end());
    if (Key(t.key) != sorted[size_t(t.rank)]) {
      std::printf("%s: n %lld source %d rank %lld: got %llx, want %llx\n", what, (long long)n, t.source,
                  (long long)t.rank, (unsigned long long)t.key, (unsigned long long)sorted[size_t(t.rank)]);
      return false;
    }
  }
  return true;
}

template <class Key>
bool run(const char* what, std::mt19937_64& rng, int64_t n) {
  std::vector<std::vector<Key>> sources(6, std::vector<Key>(size_t(n)));
  for (size_t j = 0; j < size_t(n); ++j) {
    sources[0][j] = Key(rng());                                   // spread thinly
    sources[1][j] = Key(0x3A5C0000u + (rng() % 5));               // few values
    sources[2][j] = Key(0x1234u) << (8 * sizeof(Key) - 16);        // all equal
    sources[3][j] = Key(j);                                       // ascending
    sources[4][j] = Key(n - j);                                   // descending
    sources[5][j] = j % 3 == 0 ? Key(7) : Key(rng() >> 1);        // ties at the bottom, spread above
  }
  const int64_t deepest = std::min(kExtremeMaxDepth, std::max<int64_t>(1, n / kExtremeMaxFraction));
  std::vector<RadixTarget> targets;
  for (int s = 0; s < 6; ++s) {
    // From each end: the extreme key, the 2nd, a depth past the prune slack, the deepest.
    for (int64_t k : {int64_t(1), int64_t(2), int64_t(300), deepest}) {
      if (k > deepest) continue;
      RadixTarget low, high;
      low.source = high.source = s;
      low.rank = k - 1;
      high.rank = n - k;
      targets.push_back(low);
      targets.push_back(high);
    }
  }
  if (!check<Key>(what, sources, n, targets)) return false;
  // Each source alone, and one rank past the limits refused.
  for (int s = 0; s < 6; ++s) {
    std::vector<RadixTarget> own;
    for (const RadixTarget& t : targets) {
      if (t.source == s) own.push_back(t);
    }
    if (!check<Key>(what, sources, n, own)) return false;
  }
  RadixTarget past;
  past.rank = deepest;  // depth deepest + 1 from the bottom
  if (2 * (deepest + 1) <= n && extreme_selectable({past}, n, sizeof(Key), kNoMemoryBudget)) {
    std::printf("%s: n %lld: rank %lld past the limits accepted\n", what, (long long)n, (long long)past.rank);
    return false;
  }
  // A budget below the buffers' fullest refuses; one at it accepts.
  const uint64_t fullest = uint64_t(omp_get_max_threads()) * extreme_fullest(1) * sizeof(Key);
  RadixTarget bottom;  // rank 0: k = 1
  if (extreme_selectable({bottom}, n, sizeof(Key), fullest - 1) || !extreme_selectable({bottom}, n, sizeof(Key), fullest)) {
    std::printf("%s: n %lld: the memory budget not applied\n", what, (long long)n);
    return false;
  }
  return true;
}

// keys_beyond's portable loop and its dispatch (the AVX-512 loop for 32-bit keys where
// the CPU has it) against a scalar oracle: every length 0 to 300, from an unaligned
// start, keys tied to the bound, at the extremes, both ends.
template <class Key>
bool check_keys_beyond(std::mt19937_64& rng) {
  std::vector<Key> keys(301 + 1), want(301), got(301);
  for (int64_t len = 0; len <= 300; ++len) {
    for (int trial = 0; trial < 8; ++trial) {
      const Key bound = trial == 0 ? Key(0) : trial == 1 ? ~Key(0) : Key(rng() >> (trial % 3 == 0 ? 1 : 0));
      for (Key& k : keys) {
        const uint64_t r = rng() % 8;
        k = r == 0 ? bound : r == 1 ? Key(0) : r == 2 ? ~Key(0) : r == 3 ? Key(bound + 1) : r == 4 ? Key(bound - 1) : Key(rng());
      }
      const Key* in = keys.data() + 1;  // unaligned
      for (bool top : {false, true}) {
        int64_t w = 0;
        for (int64_t j = 0; j < len; ++j) {
          if (top ? in[j] > bound : in[j] < bound) want[size_t(w++)] = in[j];
        }
        for (int path = 0; path < 2; ++path) {
          const int64_t c = path == 0 ? keys_beyond_portable<Key>(in, len, bound, top, got.data())
                                      : keys_beyond<Key>(in, len, bound, top, got.data());
          if (c != w || !std::equal(want.begin(), want.begin() + w, got.begin())) {
            std::printf("keys_beyond (%s, %d-bit keys): len %lld, %s: %lld keys, want %lld\n",
                        path == 0 ? "portable" : "dispatched", int(8 * sizeof(Key)), (long long)len,
                        top ? "above" : "below", (long long)c, (long long)w);
            return false;
          }
        }
      }
    }
  }
  return true;
}

}  // namespace

int main() {
  std::mt19937_64 rng(2024);
  if (!check_keys_beyond<uint32_t>(rng) || !check_keys_beyond<uint64_t>(rng)) return 1;
  for (int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    for (int64_t n : {int64_t(1), int64_t(2), int64_t(7), int64_t(1000), int64_t(200000)}) {
      if (!run<uint32_t>("32-bit keys", rng, n) || !run<uint64_t>("64-bit keys", rng, n)) return 1;
    }
  }
  std::printf("extreme_select: every rank near either end equal to sorting (32- and 64-bit keys, 1 to 3 threads); "
              "keys_beyond equal to its oracle (%s)\n",
#if M2N2_AVX512_LOOPS
              cpu_has_avx512_loops() ? "the AVX-512 loop and the portable one" : "the portable loop"
#else
              "the portable loop"
#endif
  );
  return 0;
}
