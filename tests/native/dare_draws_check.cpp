// DARE's draws: the AVX-512 loop of csrc/cpu/dare_draws.h against the portable one,
// bit for bit (into aligned and unaligned buffers), over tiles of every length at
// counters where the group's low 32-bit word wraps (element indices near k 2^36) and
// for seeds and streams with both halves set, at fixed thresholds and at ones made to
// tie with a draw's high half (so the low byte is drawn); also the portable loop
// against dare_draw_at element by element, and dare_draw_at against u24 drawn in full. Exits 1 on the
// first difference. Built and run by tests/test_task_merge.py (it skips where the CPU
// lacks AVX-512, after the portable check).
#include <cstdio>
#include <cstring>

#include "cpu/dare_draws.h"

using namespace m2n2;
using namespace m2n2::cpu;

namespace {

// u24 of element i, both parts drawn (the definition, without the shortcut).
uint32_t full_u24(uint64_t seed, uint64_t stream, uint64_t i) {
  uint32_t w[4];
  dare_words(seed, stream, i >> 3, w[0], w[1], w[2], w[3]);
  return (dare_high16(i, w[0], w[1], w[2], w[3]) << 8) | dare_low8(seed, stream, i);
}

bool portable_matches_scalar(uint64_t seed, uint64_t stream, uint64_t i0, int64_t len, uint32_t thr) {
  uint32_t got[kDrawTile];
  draws_tile_portable(seed, stream, i0, len, thr, got);
  for (int64_t j = 0; j < len; ++j) {
    const uint64_t i = i0 + uint64_t(j);
    const uint32_t want = dare_draw_at(seed, stream, i, thr);
    const uint32_t u24 = full_u24(seed, stream, i);
    if (got[j] != want || (want < thr) != (u24 < thr) || u24 >= (1u << 24)) return false;
    if ((u24 >> 8) == (thr >> 8) && want != u24) return false;  // the low byte was drawn where needed
  }
  return true;
}

}  // namespace

int main() {
  const uint64_t seeds[] = {0, 7, 0x0123456789ABCDEFull, ~0ull};
  const uint64_t streams[] = {kDareStream, kDareStream + 63, 0xFFFFFFFFull};
  const uint64_t starts[] = {0, 1, 2, 3, 1000, (1ull << 36) - 130, (1ull << 36) - 3, (1ull << 37) + 5,
                             (0xFFFFFFFFull << 4) - 257, ~0ull - 4096};
  const int64_t lengths[] = {1, 2, 3, 4, 5, 15, 16, 17, 63, 64, 65, 255, 256};
  // 2^24: keeps all (no ties); 0; 0.2's; then the u24 of the tile's middle element
  // and that plus one (a tie at its high half, the low byte deciding either way).
  const uint32_t fixed[] = {1u << 24, 0u, 3355444u, 0xFFFFFFu};
  int cases = 0, ties = 0;
  for (uint64_t seed : seeds) {
    for (uint64_t stream : streams) {
      for (uint64_t start : starts) {
        for (int64_t len : lengths) {
          for (uint64_t shift = 0; shift < 20; shift += 3) {
            const uint64_t i0 = start + shift;
            const uint32_t mid = full_u24(seed, stream, i0 + uint64_t(len / 2));
            const int pick = (cases + int(shift)) % 6;
            const uint32_t thr = pick < 4 ? fixed[pick] : mid + uint32_t(pick - 4);
            ties += pick >= 4 ? 1 : 0;
            if (!portable_matches_scalar(seed, stream, i0, len, thr)) {
              std::printf("portable draws differ from dare_draw_at: seed %llx stream %llx i0 %llu len %lld thr %u\n",
                          (unsigned long long)seed, (unsigned long long)stream, (unsigned long long)i0,
                          (long long)len, thr);
              return 1;
            }
#if M2N2_AVX512_DRAWS
            if (__builtin_cpu_supports("avx512f")) {
              // Into a 64-byte aligned buffer and one that is not.
              alignas(64) uint32_t want[kDrawTile], got[kDrawTile], off[kDrawTile + 1];
              draws_tile_portable(seed, stream, i0, len, thr, want);
              draws_tile_avx512(seed, stream, i0, len, thr, got);
              draws_tile_avx512(seed, stream, i0, len, thr, off + 1);
              if (std::memcmp(want, got, sizeof(uint32_t) * size_t(len)) != 0 ||
                  std::memcmp(want, off + 1, sizeof(uint32_t) * size_t(len)) != 0) {
                std::printf("AVX-512 draws differ: seed %llx stream %llx i0 %llu len %lld thr %u\n",
                            (unsigned long long)seed, (unsigned long long)stream, (unsigned long long)i0,
                            (long long)len, thr);
                return 1;
              }
            }
#endif
            ++cases;
          }
        }
      }
    }
  }
#if M2N2_AVX512_DRAWS
  const bool avx512 = __builtin_cpu_supports("avx512f");
#else
  const bool avx512 = false;
#endif
  if (ties < 100) {
    std::printf("dare draws: only %d cases tie at the threshold\n", ties);
    return 1;
  }
  std::printf("dare draws: %d cases equal (%d with a tie)%s\n", cases, ties,
              avx512 ? " (portable, dare_draw_at and AVX-512)" : " (no AVX-512 here)");
  return avx512 ? 0 : 2;
}
