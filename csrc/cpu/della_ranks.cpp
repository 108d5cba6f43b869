// DELLA's per-fiber loops, compiled per instruction set (della_ranks.h).
#include "della_ranks.h"

#include <algorithm>

#include "isa_clones.h"

namespace m2n2::cpu {
namespace {

template <class Key>
inline Key key_max(const Key* keys, int64_t n) {
  // A plain compare: std::max (through its references) leaves the loop scalar.
  Key m = 0;
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) m = keys[j] > m ? keys[j] : m;
  return m;
}

template <class Key>
inline uint32_t digits_of(const Key* keys, int64_t n, int shift, int64_t low, uint16_t* digits) {
  uint32_t smallest = 0xFFFFu;
#pragma omp simd reduction(min : smallest)
  for (int64_t j = 0; j < n; ++j) {
    const int64_t d = int64_t(keys[j] >> shift) - low;
    const uint32_t digit = uint32_t(d < 0 ? 0 : d);
    digits[j] = uint16_t(digit);
    smallest = std::min(smallest, digit);
  }
  return smallest;
}

template <class Key>
inline int64_t rank_by_count(const Key* keys, int64_t n, Key key, int64_t j) {
  // One pass: the keys below key, and those equal to it before j. 32-bit counts and
  // indices (fibers hold fewer than 2^32 elements) keep all 16 lanes busy.
  const uint32_t m = uint32_t(n), before = uint32_t(j);
  uint32_t rank = 0;
#pragma omp simd reduction(+ : rank)
  for (uint32_t i = 0; i < m; ++i) rank += (keys[i] < key) | ((keys[i] == key) & (i < before)) ? 1u : 0u;
  return rank;
}

}  // namespace

M2N2_CLONES uint32_t della_key_max(const uint32_t* keys, int64_t n) { return key_max(keys, n); }
M2N2_CLONES uint64_t della_key_max(const uint64_t* keys, int64_t n) { return key_max(keys, n); }

M2N2_CLONES uint32_t della_digits(const uint32_t* keys, int64_t n, int shift, int64_t low, uint16_t* digits) {
  return digits_of(keys, n, shift, low, digits);
}
M2N2_CLONES uint32_t della_digits(const uint64_t* keys, int64_t n, int shift, int64_t low, uint16_t* digits) {
  return digits_of(keys, n, shift, low, digits);
}

M2N2_CLONES int64_t della_bounds(const uint16_t* digits, int64_t n, const uint32_t* high, const uint32_t* tlo,
                                 const uint32_t* thi, uint32_t* keep, uint8_t* open) {
  int64_t opened = 0;
#pragma omp simd reduction(+ : opened)
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t d = digits[j];
    const uint32_t h = high[j];
    const bool kept = (h | 0xFFu) < tlo[d];
    const bool dropped = h >= thi[d];
    keep[j] = kept ? 0u : 1u;
    open[j] = kept || dropped ? 0 : 1;
    opened += kept || dropped ? 0 : 1;
  }
  return opened;
}

M2N2_CLONES int64_t della_rank_by_count(const uint32_t* keys, int64_t n, uint32_t key, int64_t j) {
  return rank_by_count(keys, n, key, j);
}
M2N2_CLONES int64_t della_rank_by_count(const uint64_t* keys, int64_t n, uint64_t key, int64_t j) {
  return rank_by_count(keys, n, key, j);
}

}  // namespace m2n2::cpu
