// Whether the hand-written AVX-512 loops (window_tiles.h, extreme_select.h) are compiled
// in, and whether this CPU runs them: AVX-512 F, BW and VL, which every AVX-512 CPU
// since Skylake-SP has (x86-64-v4). GCC only: the loops use its target attributes.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define M2N2_AVX512_LOOPS 1
#define M2N2_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl")))
#endif

#include <cstdint>
#include <type_traits>

#include "m2n2/dtypes.h"

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

// The lanes of `keys` set in `hit` written to dst[count], dst[count + 1], ... in lane
// order; returns count + how many. The register form of vpcompressd and a masked
// store: the store form is microcoded on AMD Zen 4.
M2N2_AVX512_TARGET inline int64_t append_lanes(__m512i keys, __mmask16 hit, uint32_t* dst, int64_t count) {
  if (hit == 0) return count;
  const int c = __builtin_popcount(unsigned(hit));
  _mm512_mask_storeu_epi32(dst + count, __mmask16((1u << c) - 1u), _mm512_maskz_compress_epi32(hit, keys));
  return count + c;
}

// GCC 12's AVX-512 widening and shift intrinsics start from an undefined register,
// which its -W(maybe-)uninitialized reports (a false positive, as in dare_draws.h).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
// The keys |m - b| of 16 elements (the valid lanes; the others 0): the delta in fp32,
// the same subtraction as the portable loops, its bits less the sign (magnitude_key).
// fp32 or bf16 (widened by a shift) storage, b in fp32.
template <class T>
M2N2_AVX512_TARGET inline __m512i delta_keys_lanes(const T* m, const float* b, __mmask16 valid) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16_t>, "fp32 or bf16 storage");
  __m512 x;
  if constexpr (std::is_same_v<T, float>) {
    x = _mm512_maskz_loadu_ps(valid, m);
  } else {
    const __m256i h = _mm256_maskz_loadu_epi16(valid, m);
    x = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  const __m512 d = _mm512_sub_ps(x, _mm512_maskz_loadu_ps(valid, b));
  return _mm512_and_si512(_mm512_castps_si512(d), _mm512_set1_epi32(0x7FFFFFFF));
}
#pragma GCC diagnostic pop
#endif

}  // namespace m2n2::cpu
