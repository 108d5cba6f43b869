// DARE's draws over a tile of elements (torch-free, CPU): the portable loop and an
// AVX-512 one with the same bits. task_merge_kernels.cpp compiles the portable loop per
// ISA and picks the AVX-512 one where the CPU has it; tests/native/dare_draws_check.cpp
// holds the two equal to dare_draw_at (task_merge.h), counters past 2^32 included.
#pragma once

#include <cstdint>

#include "m2n2/task_merge.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define M2N2_AVX512_DRAWS 1
#endif

namespace m2n2::cpu {

constexpr int64_t kDrawTile = 256;  // the most elements one call draws

// The rare elements whose high half ties with the threshold's get their low byte
// (draws[j] holds hi16 << 8 until then; `tie` = (thr >> 8) << 8, never matched where
// thr = 2^24).
inline void add_low_bits(uint64_t seed, uint64_t stream, uint64_t i0, int64_t len, uint32_t thr, uint32_t* draws) {
  const uint32_t tie = (thr >> 8) << 8;
  for (int64_t j = 0; j < len; ++j) {
    if (draws[j] == tie) draws[j] |= dare_low8(seed, stream, i0 + uint64_t(j));
  }
}

// The draws of elements i0 .. i0 + len - 1 (len <= kDrawTile) of one model's stream
// against threshold thr: draws[j] = dare_draw_at(seed, stream, i0 + j, thr).
inline void draws_tile_portable(uint64_t seed, uint64_t stream, uint64_t i0, int64_t len, uint32_t thr,
                                uint32_t* draws) {
  constexpr int64_t kGroups = kDrawTile / 8 + 2;
  alignas(64) uint32_t lanes[4][kGroups];
  alignas(64) uint32_t z[4 * kGroups];
  const uint64_t g0 = i0 >> 3;
  const int64_t groups = int64_t(((i0 + uint64_t(len) + 7) >> 3) - g0);
#pragma omp simd
  for (int64_t g = 0; g < groups; ++g) {
    dare_words(seed, stream, g0 + uint64_t(g), lanes[0][g], lanes[1][g], lanes[2][g], lanes[3][g]);
  }
  for (int64_t g = 0; g < groups; ++g) {
    for (int q = 0; q < 4; ++q) z[4 * g + q] = lanes[q][g];
  }
  // z's words in element order: element 8 g0 + e is half e % 2 of word e / 2.
  const int64_t off = int64_t(i0 - 8 * g0);
  bool any_tie = false;
  const uint32_t tie = (thr >> 8) << 8;
#pragma omp simd reduction(|| : any_tie)
  for (int64_t j = 0; j < len; ++j) {
    const int64_t e = off + j;
    draws[j] = ((z[e >> 1] >> (16 * (e & 1))) & 0xFFFFu) << 8;
    any_tie = any_tie || draws[j] == tie;
  }
  if (any_tie) add_low_bits(seed, stream, i0, len, thr, draws);
}

#if M2N2_AVX512_DRAWS
// GCC 12's AVX-512 shift intrinsics start from _mm512_undefined_epi32(), which its
// -Wmaybe-uninitialized reports as the use of an uninitialised value (a false positive).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// Philox-4x32-10 on 8 counter groups per register, each 32-bit word of the state in
// the low half of a 64-bit lane. The rounds need 32 x 32 -> 64-bit products, which
// vpmuludq forms from the low halves alone: the product's low word is already where
// the next round reads it, its high word is one shift away, and the upper halves may
// hold anything (no multiply reads them, no xor carries them down), so a round is two
// multiplies, two shifts and two three-way xors per 8 groups. (The compiler's own
// vectorisation of the generic loop uses 64 x 64-bit multiplies, three uops each, and
// a 32-bit-lane layout needs blends to split even and odd lanes: about 1.5x the uops.)
// Two registers (16 groups, 128 draws) per step for independent work in flight; the
// words are then packed two to a lane and interleaved into element order, and their
// halves widened to the draws. The same bits as draws_tile_portable.
struct PhiloxLanes {
  __m512i c0, c1, c2, c3;
};

__attribute__((target("avx512f"))) inline void philox_round(PhiloxLanes& s, __m512i m0, __m512i m1, __m512i k0,
                                                            __m512i k1) {
  const __m512i p0 = _mm512_mul_epu32(s.c0, m0);
  const __m512i p1 = _mm512_mul_epu32(s.c2, m1);
  s.c0 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p1, 32), s.c1, k0, 0x96);  // hi1 ^ c1 ^ k0
  s.c2 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p0, 32), s.c3, k1, 0x96);  // hi0 ^ c3 ^ k1
  s.c1 = p1;
  s.c3 = p0;
}

// The 32 words of 8 groups, in element order (group-major), to out[0 .. 31].
__attribute__((target("avx512f"))) inline void store_lanes(const PhiloxLanes& s, uint32_t* out) {
  const __m512i low = _mm512_set1_epi64(0xFFFFFFFFll);  // (low & a) | b: imm 0xEA
  // Lane g: words (0, 1) and (2, 3) of group g, low word first.
  const __m512i w01 = _mm512_ternarylogic_epi64(low, s.c0, _mm512_slli_epi64(s.c1, 32), 0xEA);
  const __m512i w23 = _mm512_ternarylogic_epi64(low, s.c2, _mm512_slli_epi64(s.c3, 32), 0xEA);
  // 128-bit lane L: group 2L (lo) and group 2L + 1 (hi), each as 4 words.
  const __m512i lo = _mm512_unpacklo_epi64(w01, w23);
  const __m512i hi = _mm512_unpackhi_epi64(w01, w23);
  const __m512i first = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);   // groups 0, 1, 2, 3
  const __m512i second = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);  // groups 4, 5, 6, 7
  _mm512_store_si512(out, _mm512_permutex2var_epi64(lo, first, hi));
  _mm512_store_si512(out + 16, _mm512_permutex2var_epi64(lo, second, hi));
}

__attribute__((target("avx512f"))) inline void draws_tile_avx512(uint64_t seed, uint64_t stream, uint64_t i0,
                                                                 int64_t len, uint32_t thr, uint32_t* draws) {
  constexpr int64_t kGroups = (kDrawTile / 8 + 2 + 15) / 16 * 16;
  alignas(64) uint32_t z[4 * kGroups + 16];  // + 16: the last widening may read past the draws
  const uint64_t g0 = i0 >> 3;
  const int64_t groups = int64_t(((i0 + uint64_t(len) + 7) >> 3) - g0);
  const __m512i m0 = _mm512_set1_epi64(int64_t(kPhiloxM0));
  const __m512i m1 = _mm512_set1_epi64(int64_t(kPhiloxM1));
  const __m512i lane = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
  const __m512i c2 = _mm512_set1_epi64(int64_t(stream & 0xFFFFFFFFu));
  const __m512i c3 = _mm512_set1_epi64(int64_t(stream >> 32));
  for (int64_t g = 0; g < groups; g += 16) {
    // Counter (group, stream), the 64-bit group index split into its two words.
    const __m512i ga = _mm512_add_epi64(_mm512_set1_epi64(int64_t(g0 + uint64_t(g))), lane);
    const __m512i gb = _mm512_add_epi64(ga, _mm512_set1_epi64(8));
    PhiloxLanes a{ga, _mm512_srli_epi64(ga, 32), c2, c3};
    PhiloxLanes b{gb, _mm512_srli_epi64(gb, 32), c2, c3};
    uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
    for (int round = 0; round < 10; ++round) {
      const __m512i vk0 = _mm512_set1_epi32(int(k0)), vk1 = _mm512_set1_epi32(int(k1));
      philox_round(a, m0, m1, vk0, vk1);
      philox_round(b, m0, m1, vk0, vk1);
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    store_lanes(a, z + 4 * g);
    store_lanes(b, z + 4 * g + 32);
  }
  // Little-endian: the words' halves in memory are the elements' high halves in order.
  const uint16_t* halves = reinterpret_cast<const uint16_t*>(z) + (i0 - 8 * g0);
  const __m512i tie = _mm512_set1_epi32(int((thr >> 8) << 8));
  __mmask16 any_tie = 0;
  for (int64_t j = 0; j < len; j += 16) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(halves + j));
    const __m512i v = _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 8);
    const int64_t rest = len - j;
    const __mmask16 valid = rest >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << rest) - 1u);
    _mm512_mask_storeu_epi32(draws + j, valid, v);
    any_tie |= _mm512_mask_cmpeq_epi32_mask(valid, v, tie);
  }
  if (any_tie) add_low_bits(seed, stream, i0, len, thr, draws);
}
#pragma GCC diagnostic pop
#endif

}  // namespace m2n2::cpu
