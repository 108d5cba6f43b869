// DARE's draws: the AVX-512 loop of csrc/cpu/dare_draws.h against the portable one,
// bit for bit (into aligned and unaligned buffers), over tiles of every length at
// counters where the group's low 32-bit word wraps (element indices near k 2^34) and
// for seeds and streams with both halves set; also the portable loop against
// dare_draws4 element by element. Exits 1 on the first difference. Built and run by
// tests/test_task_merge.py (it skips where the CPU lacks AVX-512, after the portable
// check).
#include <cstdio>
#include <cstring>

#include "cpu/dare_draws.h"

using namespace m2n2;
using namespace m2n2::cpu;

namespace {

bool portable_matches_scalar(uint64_t seed, uint64_t stream, uint64_t i0, int64_t len) {
  uint32_t got[kDrawTile];
  draws_tile_portable(seed, stream, i0, len, got);
  for (int64_t j = 0; j < len; ++j) {
    const uint64_t i = i0 + uint64_t(j);
    uint32_t d[4];
    dare_draws4(seed, stream, i >> 2, d[0], d[1], d[2], d[3]);
    if (got[j] != d[i & 3]) return false;
  }
  return true;
}

}  // namespace

int main() {
  const uint64_t seeds[] = {0, 7, 0x0123456789ABCDEFull, ~0ull};
  const uint64_t streams[] = {kDareStream, kDareStream + 63, 0xFFFFFFFFull};
  const uint64_t starts[] = {0, 1, 2, 3, 1000, (1ull << 34) - 130, (1ull << 34) - 3, (1ull << 35) + 5,
                             (0xFFFFFFFFull << 2) - 257, ~0ull - 4096};
  const int64_t lengths[] = {1, 2, 3, 4, 5, 15, 16, 17, 63, 64, 65, 255, 256};
  int cases = 0;
  for (uint64_t seed : seeds) {
    for (uint64_t stream : streams) {
      for (uint64_t start : starts) {
        for (int64_t len : lengths) {
          for (uint64_t shift = 0; shift < 8; ++shift) {
            const uint64_t i0 = start + shift;
            if (!portable_matches_scalar(seed, stream, i0, len)) {
              std::printf("portable draws differ from dare_draws4: seed %llx stream %llx i0 %llu len %lld\n",
                          (unsigned long long)seed, (unsigned long long)stream, (unsigned long long)i0,
                          (long long)len);
              return 1;
            }
#if M2N2_AVX512_DRAWS
            if (__builtin_cpu_supports("avx512f")) {
              // Into a 64-byte aligned buffer (whole tiles are written in place) and
              // one that is not (through the staging buffer).
              alignas(64) uint32_t want[kDrawTile], got[kDrawTile], off[kDrawTile + 1];
              draws_tile_portable(seed, stream, i0, len, want);
              draws_tile_avx512(seed, stream, i0, len, got);
              draws_tile_avx512(seed, stream, i0, len, off + 1);
              if (std::memcmp(want, got, sizeof(uint32_t) * size_t(len)) != 0 ||
                  std::memcmp(want, off + 1, sizeof(uint32_t) * size_t(len)) != 0) {
                std::printf("AVX-512 draws differ: seed %llx stream %llx i0 %llu len %lld\n",
                            (unsigned long long)seed, (unsigned long long)stream, (unsigned long long)i0,
                            (long long)len);
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
  std::printf("dare draws: %d cases equal%s\n", cases, avx512 ? " (portable, dare_draws4 and AVX-512)" : " (no AVX-512 here)");
  return avx512 ? 0 : 2;
}
