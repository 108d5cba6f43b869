// A candidate window's pass over one tile of one model (torch-free, CPU): how many
// keys lie above, at and inside the window (lo, hi), and the keys inside it, in index
// order. TIES' keys are the magnitudes of d = m - b, formed here from the tile;
// PCB's are score keys it has formed. The portable loops and AVX-512 ones with the
// same results for the common case (32-bit keys; for TIES, from fp32 or bf16
// storage). task_merge_kernels.cpp compiles the portable loops per ISA; both kernels
// pick the AVX-512 ones where the CPU has them; tests/native/window_tiles_check.cpp
// holds them equal.
//
// Why the AVX-512 loops: the window holds about 1% of the keys, so TIES' pass is a
// read of the inputs with a few compares per key. Written portably it took three
// loops (keys to a buffer, compares and byte flags, a scan of the flags for the few
// keys to store), which GCC vectorised 4 lanes wide (the byte flags) and which cost
// about 2.5x the read. With masks, the keys never leave the registers and the few
// inside the window are compressed out of them.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "avx512.h"
#include "m2n2/dtypes.h"
#include "m2n2/task_merge.h"

namespace m2n2::cpu {

constexpr int64_t kWindowTile = 256;  // the most elements one call takes

// Per tile: keys > hi, == hi, == lo, and lo < key < hi (those are stored); and the
// largest key (0 for no keys), which PCB's pass needs and TIES' does not (one max a
// step, where its pass is bound by its reads).
struct WindowTileCounts {
  int gt_hi = 0, eq_hi = 0, eq_lo = 0, mid = 0;
  uint64_t top = 0;
};

// The counts of a tile of keys (len <= kWindowTile) and the keys inside the window
// copied to `inside` in index order, portably: one vectorised loop with byte flags,
// then a scan of the flags 8 at a time (they are sparse). Returns counts.mid.
template <class Key>
inline int window_keys_portable(const Key* keys, int64_t len, Key lo, Key hi, Key* inside, WindowTileCounts* counts) {
  alignas(64) uint8_t flags[kWindowTile];
  int g = 0, eh = 0, el = 0, md = 0;
  Key top = 0;
#pragma omp simd reduction(+ : g, eh, el, md) reduction(max : top)
  for (int64_t j = 0; j < len; ++j) {
    const Key key = keys[j];
    top = key > top ? key : top;
    const int in = (key > lo) & (key < hi);
    flags[j] = uint8_t(in);
    g += key > hi ? 1 : 0;
    eh += key == hi ? 1 : 0;
    el += key == lo ? 1 : 0;
    md += in;
  }
  *counts = WindowTileCounts{g, eh, el, md, uint64_t(top)};
  if (md == 0) return 0;
  Key* dst = inside;
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) {
    uint64_t word;
    std::memcpy(&word, flags + j, 8);
    while (word != 0) {
      *dst++ = keys[j + (__builtin_ctzll(word) >> 3)];
      word &= word - 1;
    }
  }
  for (; j < len; ++j) {
    if (flags[j]) *dst++ = keys[j];
  }
  return md;
}

// The portable loops over a tile of deltas: its keys, then window_keys_portable.
template <class T, class Key>
inline int window_tile_portable(const T* m, const compute_t<T>* b, int64_t len, Key lo, Key hi, Key* inside,
                                WindowTileCounts* counts) {
  alignas(64) Key keys[kWindowTile];
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) keys[j] = key_of<Key>(to_compute(m[j]) - b[j]);
  return window_keys_portable<Key>(keys, len, lo, hi, inside, counts);
}

#if M2N2_AVX512_LOOPS
// GCC 12's AVX-512 widening and shift intrinsics start from an undefined register,
// which its -W(maybe-)uninitialized reports (a false positive, as in dare_draws.h).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
// The window's counts kept per lane over 16 keys at a time, and the keys inside it
// appended (append_lanes). Needs AVX-512 F, BW and VL (avx512.h).
struct WindowLanes {
  __m512i vlo, vhi, one, g, eh, el, top;
  int md = 0;

  M2N2_AVX512_TARGET WindowLanes(uint32_t lo, uint32_t hi)
      : vlo(_mm512_set1_epi32(int(lo))), vhi(_mm512_set1_epi32(int(hi))), one(_mm512_set1_epi32(1)),
        g(_mm512_setzero_si512()), eh(g), el(g), top(g) {}

  // key: 0 in the lanes past the tile's end (the loads are zero-masked), so the max
  // needs no mask.
  M2N2_AVX512_TARGET void step(__m512i key, __mmask16 valid, uint32_t* inside) {
    g = _mm512_mask_add_epi32(g, _mm512_mask_cmpgt_epu32_mask(valid, key, vhi), g, one);
    eh = _mm512_mask_add_epi32(eh, _mm512_mask_cmpeq_epi32_mask(valid, key, vhi), eh, one);
    el = _mm512_mask_add_epi32(el, _mm512_mask_cmpeq_epi32_mask(valid, key, vlo), el, one);
    top = _mm512_max_epu32(top, key);
    const __mmask16 in = _mm512_mask_cmplt_epu32_mask(_mm512_mask_cmpgt_epu32_mask(valid, key, vlo), key, vhi);
    md = int(append_lanes(key, in, inside, md));
  }

  M2N2_AVX512_TARGET int finish(WindowTileCounts* counts) const {
    *counts = WindowTileCounts{_mm512_reduce_add_epi32(g), _mm512_reduce_add_epi32(eh), _mm512_reduce_add_epi32(el),
                               md, _mm512_reduce_max_epu32(top)};
    return md;
  }
};

// The window pass over a tile of deltas: the delta in fp32 (the same subtraction as
// the portable loop), its bits less the sign as the key. fp32 or bf16 (widened by a
// shift) storage.
template <class T>
M2N2_AVX512_TARGET inline int window_tile_avx512(const T* m, const float* b, int64_t len, uint32_t lo, uint32_t hi,
                                                 uint32_t* inside, WindowTileCounts* counts) {
  WindowLanes w(lo, hi);
  for (int64_t j = 0; j < len; j += 16) {
    const __mmask16 valid = lanes_of(len - j);
    w.step(delta_keys_lanes(m + j, b + j, valid), valid, inside);
  }
  return w.finish(counts);
}

// The same over a tile of 32-bit keys already formed (PCB's score keys).
M2N2_AVX512_TARGET inline int window_keys_avx512(const uint32_t* keys, int64_t len, uint32_t lo, uint32_t hi,
                                                 uint32_t* inside, WindowTileCounts* counts) {
  WindowLanes w(lo, hi);
  for (int64_t j = 0; j < len; j += 16) {
    const __mmask16 valid = lanes_of(len - j);
    w.step(_mm512_maskz_loadu_epi32(valid, keys + j), valid, inside);
  }
  return w.finish(counts);
}

#pragma GCC diagnostic pop
#endif

// The window's counts and inside keys of a tile of keys already formed: the AVX-512
// loop for 32-bit keys where the CPU has it, else the portable one.
template <class Key>
inline int window_keys(const Key* keys, int64_t len, Key lo, Key hi, Key* inside, WindowTileCounts* counts) {
#if M2N2_AVX512_LOOPS
  if constexpr (sizeof(Key) == 4) {
    if (cpu_has_avx512_loops()) return window_keys_avx512(keys, len, lo, hi, inside, counts);
  }
#endif
  return window_keys_portable<Key>(keys, len, lo, hi, inside, counts);
}

}  // namespace m2n2::cpu
