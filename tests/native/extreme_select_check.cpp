// extreme_select (csrc/cpu/extreme_select.h) against sorting: the key of every rank
// within its limits of either end, over 32- and 64-bit keys in ways that stress the
// buffers: spread thinly, few values (ties at the bounds), all equal, ascending and
// descending (every piece beyond the bound at one end: a prune per piece), ties at
// the bottom with spread keys above; n from 1 to 200,000, 1 to 3 threads, chunks
// handed on in pieces of odd sizes. Also that extreme_selectable refuses ranks past
// its limits and buffers past the memory budget, and keys_beyond (the compare under
// every piece once the bound has settled: its portable loop, and the AVX-512 one where
// the CPU has it) against a scalar oracle; sources that hand on only the keys beyond
// the sink's cut once the bounds settle, and delta_keys_beyond, the AVX-512 loop that
// forms those keys from deltas (PCB's clamp pass). Exits 1 on the first difference.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <type_traits>
#include <random>
#include <vector>

#include "cpu/extreme_select.h"
#include "m2n2/task_merge.h"

using namespace m2n2;
using namespace m2n2::cpu;

namespace {

// cut: hand on, where the sink's cut is active, only the keys beyond it (as PCB's clamp
// pass does); *cuts counts the pieces so cut.
template <class Key>
bool check(const char* what, const std::vector<std::vector<Key>>& sources, int64_t n,
           const std::vector<RadixTarget>& want_targets, bool cut = false, int64_t* cuts = nullptr) {
  std::vector<RadixTarget> targets = want_targets;
  if (!extreme_selectable(targets, n, sizeof(Key), kNoMemoryBudget)) {
    std::printf("%s: n %lld: targets within the limits refused\n", what, (long long)n);
    return false;
  }
  constexpr int64_t kChunks = 5;
  std::vector<int64_t> cut_pieces(kChunks, 0);
  extreme_select<Key>(kChunks, n, targets, [&](int64_t i, const std::vector<int>& which, auto&& sink) {
    std::vector<Key> beyond;
    for (size_t a = 0; a < which.size(); ++a) {
      const std::vector<Key>& s = sources[size_t(which[a])];
      // In pieces of 97 keys (odd, below the prune slack), as a kernel's tiles hand them on.
      const int64_t p0 = n * i / kChunks, p1 = n * (i + 1) / kChunks;
      for (int64_t q = p0; q < p1; q += 97) {
        const int64_t len = std::min<int64_t>(97, p1 - q);
        const ExtremeCut<Key> c = cut ? sink_cut<Key>(sink, int(a), 0) : ExtremeCut<Key>{};
        if (!c.active) {
          sink(int(a), s.data() + q, len);
          continue;
        }
        ++cut_pieces[size_t(i)];
        beyond.clear();
        for (int64_t j = q; j < q + len; ++j) {
          if (s[size_t(j)] < c.below || s[size_t(j)] > c.above) beyond.push_back(s[size_t(j)]);
        }
        if (!beyond.empty()) sink(int(a), beyond.data(), int64_t(beyond.size()));
      }
    }
  });
  if (cuts != nullptr) {
    for (int64_t c : cut_pieces) *cuts += c;
  }
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
  // The same with the sources handing on only the keys beyond the settled bounds; at
  // 200,000 keys the bounds settle (so that this tests the cut, not the whole pieces).
  int64_t cuts = 0;
  if (!check<Key>(what, sources, n, targets, true, &cuts)) return false;
  if (n >= 200000 && cuts == 0) {
    std::printf("%s: n %lld: no bound settled, the cut untested\n", what, (long long)n);
    return false;
  }
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

// delta_keys_beyond (the keys |m - b| beyond a cut, formed in registers: PCB's clamp
// pass) against the scalar formula, fp32 and bf16 storage: every length 0 to 300 from
// an unaligned start, deltas of +-0, inf, NaN and subnormals, keys tied to the cut's
// ends, cuts open at either end or both.
template <class T>
bool check_delta_keys_beyond(std::mt19937_64& rng, bool* ran) {
  *ran = false;
  std::vector<T> m(302);
  std::vector<float> b(302);
  std::vector<uint32_t> want(300), got(300);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const float special[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 1e-40f, -1e-40f, 3.0e38f};
  for (int64_t len = 0; len <= 300; ++len) {
    for (int trial = 0; trial < 6; ++trial) {
      for (size_t j = 0; j < m.size(); ++j) {
        const uint64_t r = rng() % 10;
        const float x = r == 0 ? special[rng() % 8] : u(rng) * (r == 1 ? 1e-3f : 1.0f);
        if constexpr (std::is_same_v<T, float>) {
          m[j] = x;
        } else {
          m[j] = bf16_t{uint16_t(float_bits(x) >> 16)};
        }
        b[j] = r == 2 ? special[rng() % 8] : u(rng) * 0.5f;
      }
      const T* mi = m.data() + 1;  // unaligned
      const float* bi = b.data() + 1;
      ExtremeCut<uint32_t> cut;
      cut.active = true;
      const uint32_t k0 = magnitude_key(to_compute(mi[0]) - bi[0]);  // a key tied to an end
      cut.below = trial == 0 ? 0u : trial == 1 ? k0 : uint32_t(rng() % 0x3F000000u);
      cut.above = trial == 2 ? ~0u : trial == 3 ? k0 : cut.below + uint32_t(rng() % 0x08000000u);
      if (trial == 4) cut.above = cut.below;  // every key but the bound's
      int64_t w = 0;
      for (int64_t j = 0; j < len; ++j) {
        const uint32_t key = magnitude_key(to_compute(mi[j]) - bi[j]);
        if (key < cut.below || key > cut.above) want[size_t(w++)] = key;
      }
      const int64_t c = delta_keys_beyond<T>(mi, bi, len, cut, got.data());
      if (c < 0) return true;  // no AVX-512 here: the callers form every key
      *ran = true;
      if (c != w || !std::equal(want.begin(), want.begin() + w, got.begin())) {
        std::printf("delta_keys_beyond (%s): len %lld, trial %d: %lld keys, want %lld\n",
                    std::is_same_v<T, float> ? "fp32" : "bf16", (long long)len, trial, (long long)c, (long long)w);
        return false;
      }
    }
  }
  return true;
}

}  // namespace

int main() {
  std::mt19937_64 rng(2024);
  if (!check_keys_beyond<uint32_t>(rng) || !check_keys_beyond<uint64_t>(rng)) return 1;
  bool fused_fp32 = false, fused_bf16 = false;
  if (!check_delta_keys_beyond<float>(rng, &fused_fp32) || !check_delta_keys_beyond<bf16_t>(rng, &fused_bf16)) {
    return 1;
  }
  for (int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    for (int64_t n : {int64_t(1), int64_t(2), int64_t(7), int64_t(1000), int64_t(200000)}) {
      if (!run<uint32_t>("32-bit keys", rng, n) || !run<uint64_t>("64-bit keys", rng, n)) return 1;
    }
  }
  std::printf("extreme_select: every rank near either end equal to sorting (32- and 64-bit keys, 1 to 3 threads, "
              "whole pieces and pieces cut to the keys beyond the settled bounds); keys_beyond equal to its oracle "
              "(%s); delta_keys_beyond %s\n",
#if M2N2_AVX512_LOOPS
              cpu_has_avx512_loops() ? "the AVX-512 loop and the portable one" : "the portable loop",
#else
              "the portable loop",
#endif
              fused_fp32 && fused_bf16 ? "equal to its oracle (fp32, bf16)" : "not run (no AVX-512 here)");
  return 0;
}
