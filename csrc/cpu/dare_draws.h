// DARE's 24-bit draws over a tile of elements (torch-free, CPU): the portable loop
// and an AVX-512 one with the same bits. task_merge_kernels.cpp compiles the portable
// loop per ISA and picks the AVX-512 one where the CPU has it;
// tests/native/dare_draws_check.cpp holds the two equal, counters past 2^32 included.
#pragma once

#include <cstdint>
#include <cstring>

#include "m2n2/task_merge.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define M2N2_AVX512_DRAWS 1
#endif

namespace m2n2::cpu {

constexpr int64_t kDrawTile = 256;  // the most elements one call draws

// The draws of elements i0 .. i0 + len - 1 (len <= kDrawTile) of one model's stream:
// draws[j] = word (i0 + j) % 4 of Philox counter ((i0 + j) / 4, stream), top 24 bits.
inline void draws_tile_portable(uint64_t seed, uint64_t stream, uint64_t i0, int64_t len, uint32_t* draws) {
  constexpr int64_t kGroups = kDrawTile / 4 + 2;
  alignas(64) uint32_t lanes[4][kGroups];
  alignas(64) uint32_t z[4 * kGroups];
  const uint64_t g0 = i0 >> 2;
  const int64_t groups = int64_t(((i0 + uint64_t(len) + 3) >> 2) - g0);
#pragma omp simd
  for (int64_t g = 0; g < groups; ++g) {
    dare_draws4(seed, stream, g0 + uint64_t(g), lanes[0][g], lanes[1][g], lanes[2][g], lanes[3][g]);
  }
  for (int64_t g = 0; g < groups; ++g) {
    z[4 * g] = lanes[0][g];
    z[4 * g + 1] = lanes[1][g];
    z[4 * g + 2] = lanes[2][g];
    z[4 * g + 3] = lanes[3][g];
  }
  const uint32_t* zt = z + (i0 - 4 * g0);
  for (int64_t j = 0; j < len; ++j) draws[j] = zt[j];
}

#if M2N2_AVX512_DRAWS
// GCC 12's AVX-512 shift intrinsics start from _mm512_undefined_epi32(), which its
// -Wmaybe-uninitialized reports as the use of an uninitialised value (a false positive).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// Philox-4x32-10 on 16 counter groups at once. The compiler vectorises the generic
// loop with 64 x 64-bit multiplies (vpmullq, three uops each) and scalar shuffles; the
// rounds only need 32 x 32 -> 64-bit products, two vpmuludq per 16 lanes (even and
// odd lanes), and the words are interleaved into element order by a 4 x 4 transpose.
// The same bits as draws_tile_portable (philox4x32_10, task_merge.h's dare_draws4).
__attribute__((target("avx512f"))) inline __m512i mul_hi_lo(__m512i a, __m512i m, __m512i& lo) {
  const __m512i even = _mm512_mul_epu32(a, m);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  return _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}

__attribute__((target("avx512f"))) inline void draws_tile_avx512(uint64_t seed, uint64_t stream, uint64_t i0, int64_t len,
                                                          uint32_t* draws) {
  constexpr int64_t kGroups = (kDrawTile / 4 + 2 + 15) / 16 * 16;
  alignas(64) uint32_t z[4 * kGroups];
  const uint64_t g0 = i0 >> 2;
  const int64_t groups = int64_t(((i0 + uint64_t(len) + 3) >> 2) - g0);
  const __m512i m0 = _mm512_set1_epi32(int(kPhiloxM0));
  const __m512i m1 = _mm512_set1_epi32(int(kPhiloxM1));
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int64_t g = 0; g < groups; g += 16) {
    // Counter (group, stream): the group's low word may wrap within the 16 lanes.
    const uint64_t first = g0 + uint64_t(g);
    const __m512i lo_first = _mm512_set1_epi32(int(uint32_t(first)));
    __m512i c0 = _mm512_add_epi32(lo_first, lane);
    const __m512i hi_first = _mm512_set1_epi32(int(uint32_t(first >> 32)));
    __m512i c1 = _mm512_mask_add_epi32(hi_first, _mm512_cmplt_epu32_mask(c0, lo_first), hi_first,
                                       _mm512_set1_epi32(1));
    __m512i c2 = _mm512_set1_epi32(int(uint32_t(stream)));
    __m512i c3 = _mm512_set1_epi32(int(uint32_t(stream >> 32)));
    uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
    for (int round = 0; round < 10; ++round) {
      __m512i lo0, lo1;
      const __m512i hi0 = mul_hi_lo(c0, m0, lo0);
      const __m512i hi1 = mul_hi_lo(c2, m1, lo1);
      c0 = _mm512_xor_si512(_mm512_xor_si512(hi1, c1), _mm512_set1_epi32(int(k0)));
      c2 = _mm512_xor_si512(_mm512_xor_si512(hi0, c3), _mm512_set1_epi32(int(k1)));
      c1 = lo1;
      c3 = lo0;
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    c0 = _mm512_srli_epi32(c0, 8);
    c1 = _mm512_srli_epi32(c1, 8);
    c2 = _mm512_srli_epi32(c2, 8);
    c3 = _mm512_srli_epi32(c3, 8);
    // Transpose: u_q holds group 4 L + q in 128-bit lane L; then lanes into group order.
    const __m512i t0 = _mm512_unpacklo_epi32(c0, c1), t1 = _mm512_unpackhi_epi32(c0, c1);
    const __m512i t2 = _mm512_unpacklo_epi32(c2, c3), t3 = _mm512_unpackhi_epi32(c2, c3);
    const __m512i u0 = _mm512_unpacklo_epi64(t0, t2), u1 = _mm512_unpackhi_epi64(t0, t2);
    const __m512i u2 = _mm512_unpacklo_epi64(t1, t3), u3 = _mm512_unpackhi_epi64(t1, t3);
    const __m512i v0 = _mm512_shuffle_i32x4(u0, u1, 0x44), v1 = _mm512_shuffle_i32x4(u2, u3, 0x44);
    const __m512i v2 = _mm512_shuffle_i32x4(u0, u1, 0xEE), v3 = _mm512_shuffle_i32x4(u2, u3, 0xEE);
    uint32_t* out = z + 4 * g;
    _mm512_store_si512(out, _mm512_shuffle_i32x4(v0, v1, 0x88));
    _mm512_store_si512(out + 16, _mm512_shuffle_i32x4(v0, v1, 0xDD));
    _mm512_store_si512(out + 32, _mm512_shuffle_i32x4(v2, v3, 0x88));
    _mm512_store_si512(out + 48, _mm512_shuffle_i32x4(v2, v3, 0xDD));
  }
  std::memcpy(draws, z + (i0 - 4 * g0), size_t(len) * sizeof(uint32_t));
}
#pragma GCC diagnostic pop
#endif

}  // namespace m2n2::cpu
