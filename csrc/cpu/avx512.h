// Whether the hand-written AVX-512 loops (window_tiles.h, extreme_select.h) are compiled
// in, and whether this CPU runs them: AVX-512 F, BW and VL, which every AVX-512 CPU
// since Skylake-SP has (x86-64-v4). GCC only: the loops use its target attributes.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define M2N2_AVX512_LOOPS 1
#define M2N2_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl")))
#endif

namespace m2n2::cpu {

#if M2N2_AVX512_LOOPS
inline bool cpu_has_avx512_loops() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl");
  return ok;
}

// The lanes of a 16-lane step that hold one of the `rest` keys left.
M2N2_AVX512_TARGET inline __mmask16 lanes_of(int64_t rest) {
  return rest >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << rest) - 1u);
}
#endif

}  // namespace m2n2::cpu
