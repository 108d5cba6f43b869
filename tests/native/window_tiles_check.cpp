// The window pass over a tile (csrc/cpu/window_tiles.h): the portable loops against a
// plain scalar oracle, then the AVX-512 loops (over deltas, TIES'; over keys, PCB's)
// against it, counts and stored keys alike, for fp32 and bf16 storage (and the
// portable loops for fp16 and fp64 with 64-bit keys): every length 1 to 256 at
// unaligned starts, deltas drawn to tie with the window's ends (lo, hi taken from the
// tile's own keys, lo == hi, the extremes 0 and ~0), zeros of both signs, infinities
// and NaNs. Exits 1 on the first difference, 2 where the CPU lacks AVX-512 (after the
// portable checks). Built and run by tests/test_task_merge.py.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "cpu/window_tiles.h"

using namespace m2n2;
using namespace m2n2::cpu;

namespace {

template <class T>
T storage_of(float x);
template <>
float storage_of<float>(float x) { return x; }
template <>
double storage_of<double>(float x) { return double(x) * (1.0 + 1e-12); }  // bits below fp32's
template <>
bf16_t storage_of<bf16_t>(float x) { return bf16_t{uint16_t(float_bits(x) >> 16)}; }
template <>
half_t storage_of<half_t>(float x) { return from_compute<half_t>(x); }

// The oracle: one key at a time.
template <class T, class Key>
int oracle(const T* m, const compute_t<T>* b, int64_t len, Key lo, Key hi, Key* inside, WindowTileCounts* c) {
  *c = WindowTileCounts{};
  for (int64_t j = 0; j < len; ++j) {
    const Key key = key_of<Key>(to_compute(m[j]) - b[j]);
    c->gt_hi += key > hi;
    c->eq_hi += key == hi;
    c->eq_lo += key == lo;
    c->top = std::max<uint64_t>(c->top, key);
    if (key > lo && key < hi) inside[c->mid++] = key;
  }
  return c->mid;
}

template <class Key>
bool same(int n1, const Key* a, const WindowTileCounts& ca, int n2, const Key* b, const WindowTileCounts& cb) {
  if (n1 != n2 || ca.gt_hi != cb.gt_hi || ca.eq_hi != cb.eq_hi || ca.eq_lo != cb.eq_lo || ca.mid != cb.mid ||
      ca.top != cb.top) {
    return false;
  }
  for (int i = 0; i < n1; ++i) {
    if (a[i] != b[i]) return false;
  }
  return true;
}

// Fills a tile's storage and base: deltas from a few magnitudes (so keys tie), some
// spread, and the special values.
template <class T>
void fill(std::mt19937& rng, int64_t len, T* m, compute_t<T>* b) {
  using C = compute_t<T>;
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const float levels[] = {0.25f, 0.5f, 0.125f, 1.0f, 0.0f};
  const float special[] = {0.0f, -0.0f, std::numeric_limits<float>::infinity(),
                           -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()};
  for (int64_t j = 0; j < len; ++j) {
    const unsigned pick = rng() % 16;
    const float base = pick < 4 ? 0.0f : u(rng);
    b[j] = C(to_compute(storage_of<T>(base)));
    float x;
    if (pick < 6) {
      x = (rng() & 1 ? 1.0f : -1.0f) * levels[rng() % 5];  // base 0 where pick < 4: keys of the levels
    } else if (pick == 6) {
      x = special[rng() % 5];
    } else {
      x = u(rng) * 2.0f;
    }
    m[j] = storage_of<T>(pick < 4 ? x : base + x);
  }
}

template <class T, class Key>
bool check_type(std::mt19937& rng, bool avx512, int& cases) {
  using C = compute_t<T>;
  std::vector<T> m(kWindowTile + 8);
  std::vector<C> b(kWindowTile + 8);
  Key want[kWindowTile], got[kWindowTile], fast[kWindowTile];
  for (int64_t len = 1; len <= kWindowTile; ++len) {
    for (int rep = 0; rep < 6; ++rep) {
      const int64_t off = int64_t(rng() % 8);
      T* mp = m.data() + off;
      C* bp = b.data() + off;
      fill<T>(rng, len, mp, bp);
      // The window: ends from the tile's own keys (ties with them), lo == hi, the extremes.
      const Key k1 = key_of<Key>(to_compute(mp[rng() % len]) - bp[rng() % len]);
      const Key k2 = key_of<Key>(to_compute(mp[rng() % len]) - bp[rng() % len]);
      Key lo = k1 < k2 ? k1 : k2, hi = k1 < k2 ? k2 : k1;
      if (rep == 3) hi = lo;
      if (rep == 4) lo = Key(0);
      if (rep == 5) hi = ~Key(0);
      WindowTileCounts cw, cg;
      const int nw = oracle<T, Key>(mp, bp, len, lo, hi, want, &cw);
      const int ng = window_tile_portable<T, Key>(mp, bp, len, lo, hi, got, &cg);
      if (!same(nw, want, cw, ng, got, cg)) {
        std::printf("portable differs from the oracle: %zu-byte storage, len %lld, rep %d\n", sizeof(T),
                    (long long)len, rep);
        return false;
      }
#if M2N2_AVX512_LOOPS
      if constexpr (sizeof(Key) == 4 && (std::is_same_v<T, float> || std::is_same_v<T, bf16_t>)) {
        if (avx512) {
          WindowTileCounts cf;
          const int nf = window_tile_avx512<T>(mp, bp, len, lo, hi, fast, &cf);
          if (!same(nw, want, cw, nf, fast, cf)) {
            std::printf("AVX-512 differs: %zu-byte storage, len %lld, rep %d: mid %d vs %d, gt %d vs %d\n", sizeof(T),
                        (long long)len, rep, nf, nw, cf.gt_hi, cw.gt_hi);
            return false;
          }
          // The keys-only loop (PCB's score keys) on the same keys.
          Key keys[kWindowTile];
          for (int64_t j = 0; j < len; ++j) keys[j] = key_of<Key>(to_compute(mp[j]) - bp[j]);
          const int nk = window_keys_avx512(keys, len, lo, hi, fast, &cf);
          if (!same(nw, want, cw, nk, fast, cf)) {
            std::printf("AVX-512 keys loop differs: len %lld, rep %d\n", (long long)len, rep);
            return false;
          }
        }
      }
#endif
      ++cases;
    }
  }
  (void)fast;
  (void)avx512;
  return true;
}

}  // namespace

int main() {
  std::mt19937 rng(12345);
  bool avx512 = false;
#if M2N2_AVX512_LOOPS
  avx512 = cpu_has_avx512_loops();
#endif
  int cases = 0;
  for (int round = 0; round < 4; ++round) {
    if (!check_type<float, uint32_t>(rng, avx512, cases) || !check_type<bf16_t, uint32_t>(rng, avx512, cases) ||
        !check_type<half_t, uint32_t>(rng, avx512, cases) || !check_type<double, uint64_t>(rng, avx512, cases) ||
        !check_type<float, uint64_t>(rng, avx512, cases)) {
      return 1;
    }
  }
  if (!avx512) {
    std::printf("portable loops checked in %d cases; no AVX-512 here\n", cases);
    return 2;
  }
  std::printf("%d cases: portable == oracle, AVX-512 == portable\n", cases);
  return 0;
}
