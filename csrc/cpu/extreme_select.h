// Exact keys of ranks near either end of each source's keys in ONE pass, where radix
// selection (radix_select.h) takes two: PCB's clamp bounds, ranks int(n c) and
// int(n (1 - c) - 1) of |d_k| with the authors' c = 1e-4, lie within n c of an end.
//
// A target of rank r among n keys is the k-th smallest key (k = r + 1) or the k-th
// largest (k = n - r), whichever end is nearer. Each thread keeps, per target, a buffer
// of the keys that may still be among the k most extreme of what it has seen: all of
// them until the buffer first holds 2k + kExtremeSlack, then only keys strictly beyond
// its bound (the k-th most extreme of the buffer when it was last pruned, by
// nth_element, back to k keys). A key it skips is never among its thread's k most
// extreme, so the union of the threads' buffers holds every target's k most extreme
// keys (in value, ties included), and nth_element over that union gives the exact key
// whatever the threads and the chunks' order. Only the key: PCB needs no counts of the
// keys below or equal to it, so none are filled in.
//
// Once every target of a source has settled, the sink's cut (ExtremeCut) lets the
// source hand on only the keys beyond the bounds: PCB's clamp pass forms them from the
// deltas in registers (delta_keys_beyond) rather than writing every key.
//
// Cost: a vectorised compare with the bound per key and target, and appends in
// proportion to k log(n / k) on data in no particular order (more where the keys come
// in order of extremeness, each append paid for by a prune of 2k keys). Extra memory:
// threads x targets x (2k + 2 kExtremeSlack) keys, a buffer's fullest where the pieces
// handed on hold at most kExtremeSlack keys (the kernels' tiles: 256).
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <type_traits>
#include <vector>

#include "avx512.h"
#include "m2n2/dtypes.h"
#include "radix_select.h"

namespace m2n2::cpu {

constexpr int64_t kExtremeMaxDepth = int64_t(1) << 14;  // k up to this ...
constexpr int64_t kExtremeMaxFraction = 64;              // ... and up to n / 64
constexpr int64_t kExtremeSlack = 256;                   // keys past 2k before a prune

// k of a target of rank `rank` among n keys, from its nearer end (>= 1).
inline int64_t extreme_depth(int64_t rank, int64_t n) { return std::min(rank + 1, n - rank); }
inline bool extreme_from_top(int64_t rank, int64_t n) { return n - rank < rank + 1; }
// A buffer's keys at its fullest: below 2k + kExtremeSlack before a piece of at most
// kExtremeSlack keys.
inline int64_t extreme_fullest(int64_t k) { return 2 * k + 2 * kExtremeSlack; }

// Whether extreme_select serves every target: each within kExtremeMaxDepth keys and
// within n / kExtremeMaxFraction of an end (so that the buffers stay small), and the
// buffers at their fullest (threads x targets x (2k + 2 kExtremeSlack) keys of key_bytes)
// within budget_bytes (the call's selection memory: task_merge_kernels.h).
inline bool extreme_selectable(const std::vector<RadixTarget>& targets, int64_t n, size_t key_bytes,
                               uint64_t budget_bytes) {
  const int64_t max_depth = std::min(kExtremeMaxDepth, std::max<int64_t>(1, n / kExtremeMaxFraction));
  uint64_t keys = 0;
  for (const RadixTarget& t : targets) {
    if (t.rank < 0 || t.rank >= n || extreme_depth(t.rank, n) > max_depth) return false;
    keys += uint64_t(extreme_fullest(extreme_depth(t.rank, n)));
  }
  return uint64_t(omp_get_max_threads()) * keys * key_bytes <= budget_bytes;
}

// The keys of keys[0, len) strictly beyond bound (above it where top, else below)
// appended to dst (room for len) in index order; returns how many. Most pieces hold
// none once the bound has settled: blocks of 64 keys with none are passed over by one
// vectorised compare, and only blocks with one are scanned.
template <class Key>
inline int64_t keys_beyond_portable(const Key* keys, int64_t len, Key bound, bool top, Key* dst) {
  int64_t count = 0;
  for (int64_t j0 = 0; j0 < len; j0 += 64) {
    const int64_t j1 = std::min(len, j0 + 64);
    Key hits = 0;  // in Key's width: a widening stops the vectoriser
    if (top) {
#pragma omp simd reduction(| : hits)
      for (int64_t j = j0; j < j1; ++j) hits |= Key(keys[j] > bound);
    } else {
#pragma omp simd reduction(| : hits)
      for (int64_t j = j0; j < j1; ++j) hits |= Key(keys[j] < bound);
    }
    if (hits == 0) continue;
    for (int64_t j = j0; j < j1; ++j) {
      if (top ? keys[j] > bound : keys[j] < bound) dst[count++] = keys[j];
    }
  }
  return count;
}

#if M2N2_AVX512_LOOPS
// The same for 32-bit keys, 16 at a time: a compare to a mask, and the few keys beyond
// appended (append_lanes).
template <bool Top>
M2N2_AVX512_TARGET inline int64_t keys_beyond_avx512(const uint32_t* keys, int64_t len, uint32_t bound,
                                                     uint32_t* dst) {
  const __m512i b = _mm512_set1_epi32(int(bound));
  int64_t count = 0;
  for (int64_t j = 0; j < len; j += 16) {
    const __mmask16 valid = lanes_of(len - j);
    const __m512i key = _mm512_maskz_loadu_epi32(valid, keys + j);
    const __mmask16 hit =
        Top ? _mm512_mask_cmpgt_epu32_mask(valid, key, b) : _mm512_mask_cmplt_epu32_mask(valid, key, b);
    count = append_lanes(key, hit, dst, count);
  }
  return count;
}
#endif

// keys_beyond_portable, by the AVX-512 loop for 32-bit keys where the CPU has it.
template <class Key>
inline int64_t keys_beyond(const Key* keys, int64_t len, Key bound, bool top, Key* dst) {
#if M2N2_AVX512_LOOPS
  if constexpr (sizeof(Key) == 4) {
    if (cpu_has_avx512_loops()) {
      return top ? keys_beyond_avx512<true>(keys, len, bound, dst) : keys_beyond_avx512<false>(keys, len, bound, dst);
    }
  }
#endif
  return keys_beyond_portable<Key>(keys, len, bound, top, dst);
}

// Where every target of a source has settled its bound, the keys that may still matter
// to one of them: key < below (a bottom target's) or key > above (a top target's).
// A source may hand on only those (in index order) and leave the rest unformed: the
// buffers take the same keys either way.
template <class Key>
struct ExtremeCut {
  bool active = false;  // false: every key matters (a target has not settled yet)
  Key below = 0;        // the largest bottom target's bound (0: none)
  Key above = ~Key(0);  // the smallest top target's bound (~0: none)
};

// The cut that sink offers for source a, or an inactive one where it offers none (the
// radix passes' sinks, which count every key).
template <class Key, class Sink>
auto sink_cut(const Sink& sink, int a, int) -> decltype(sink.cut(a)) {
  return sink.cut(a);
}
template <class Key, class Sink>
ExtremeCut<Key> sink_cut(const Sink&, int, long) {
  return {};
}

#if M2N2_AVX512_LOOPS
// The keys |m - b| (delta_keys_lanes) of a tile that lie beyond a cut, formed and
// compared in registers and compressed out in index order: PCB's clamp pass, where
// once the bounds settle hardly any key of a tile is beyond them, so the keys need not
// be written and read back. fp32 or bf16 storage; b in fp32. Returns how many.
template <class T>
M2N2_AVX512_TARGET inline int64_t delta_keys_beyond_avx512(const T* m, const float* b, int64_t len, uint32_t below,
                                                           uint32_t above, uint32_t* dst) {
  const __m512i lo = _mm512_set1_epi32(int(below)), hi = _mm512_set1_epi32(int(above));
  int64_t count = 0;
  for (int64_t j = 0; j < len; j += 16) {
    const __mmask16 valid = lanes_of(len - j);
    const __m512i key = delta_keys_lanes(m + j, b + j, valid);
    const __mmask16 hit = _mm512_mask_cmplt_epu32_mask(valid, key, lo) | _mm512_mask_cmpgt_epu32_mask(valid, key, hi);
    count = append_lanes(key, hit, dst, count);
  }
  return count;
}
#endif

// delta_keys_beyond_avx512 where it runs (fp32 or bf16 storage, an AVX-512 CPU); -1
// elsewhere, for the caller to form every key instead.
template <class T>
inline int64_t delta_keys_beyond(const T* m, const float* b, int64_t len, const ExtremeCut<uint32_t>& cut,
                                 uint32_t* dst) {
#if M2N2_AVX512_LOOPS
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, bf16_t>) {
    if (cpu_has_avx512_loops()) return delta_keys_beyond_avx512<T>(m, b, len, cut.below, cut.above, dst);
  }
#endif
  (void)m, (void)b, (void)len, (void)cut, (void)dst;
  return -1;
}

namespace detail {

// One thread's buffer for one target, on cache lines of its own: every piece writes
// its count, and a thread's last buffer shared a line with the next thread's first.
template <class Key>
struct alignas(64) ExtremeBuffer {
  std::vector<Key> keys;  // [0, used): the candidates; past it, room for the next piece
  size_t used = 0;
  Key bound = 0;          // after the first prune: take only keys strictly beyond it
  bool pruned = false;
};

// The k most extreme of keys[0, size) (k <= size) moved to the front, the k-th at k - 1.
template <class Key>
void nth_extreme(Key* keys, size_t size, int64_t k, bool top) {
  if (top) {
    std::nth_element(keys, keys + (k - 1), keys + size, std::greater<Key>());
  } else {
    std::nth_element(keys, keys + (k - 1), keys + size);
  }
}

// Appends the keys of a piece that may be among the k most extreme; prunes.
template <class Key>
void extreme_take(const Key* keys, int64_t len, int64_t k, bool top, ExtremeBuffer<Key>& b) {
  if (b.keys.size() < b.used + size_t(len)) b.keys.resize(b.used + size_t(len));  // only for longer pieces
  Key* dst = b.keys.data() + b.used;
  if (!b.pruned) {
    std::copy(keys, keys + len, dst);
    b.used += size_t(len);
  } else {
    b.used += size_t(keys_beyond(keys, len, b.bound, top, dst));
  }
  if (int64_t(b.used) >= 2 * k + kExtremeSlack) {
    nth_extreme(b.keys.data(), b.used, k, top);
    b.bound = b.keys[size_t(k - 1)];
    b.used = size_t(k);
    b.pruned = true;
  }
}

// What extreme_select hands its source: sink(a, keys, len) as radix_select's, and
// cut(a), this thread's ExtremeCut of source a.
template <class Key>
struct ExtremeSink {
  const std::vector<std::vector<size_t>>* targets_of;  // per source: its targets
  const std::vector<int64_t>* depth;
  const std::vector<char>* top;
  ExtremeBuffer<Key>* mine;  // this thread's buffers, per target

  void operator()(int a, const Key* keys, int64_t len) const {
    for (size_t t : (*targets_of)[size_t(a)]) extreme_take(keys, len, (*depth)[t], (*top)[t] != 0, mine[t]);
  }
  ExtremeCut<Key> cut(int a) const {
    ExtremeCut<Key> c;
    for (size_t t : (*targets_of)[size_t(a)]) {
      const ExtremeBuffer<Key>& b = mine[t];
      if (!b.pruned) return {};
      if ((*top)[t]) {
        c.above = std::min(c.above, b.bound);
      } else {
        c.below = std::max(c.below, b.bound);
      }
    }
    c.active = true;
    return c;
  }
};

}  // namespace detail

// Fills in each target's key (extreme_selectable(targets, n, ...) must hold; n: the
// keys of every source). keys_of_chunk(chunk, sources, sink) as radix_select's.
template <class Key, class KeysOfChunk>
void extreme_select(int64_t nchunks, int64_t n, std::vector<RadixTarget>& targets, KeysOfChunk&& keys_of_chunk) {
  if (targets.empty()) return;
  const int threads = omp_get_max_threads();
  const size_t T = targets.size();
  std::vector<int> sources;
  for (const RadixTarget& t : targets) sources.push_back(t.source);
  std::sort(sources.begin(), sources.end());
  sources.erase(std::unique(sources.begin(), sources.end()), sources.end());
  std::vector<std::vector<size_t>> targets_of(sources.size());  // per entry of sources
  std::vector<int64_t> depth(T);
  std::vector<char> top(T);
  for (size_t t = 0; t < T; ++t) {
    const size_t a = size_t(std::lower_bound(sources.begin(), sources.end(), targets[t].source) - sources.begin());
    targets_of[a].push_back(t);
    depth[t] = extreme_depth(targets[t].rank, n);
    top[t] = extreme_from_top(targets[t].rank, n) ? 1 : 0;
  }
  std::vector<detail::ExtremeBuffer<Key>> bufs(size_t(threads) * T);  // per thread and target
  for (size_t b = 0; b < bufs.size(); ++b) bufs[b].keys.resize(size_t(extreme_fullest(depth[b % T])));
#pragma omp parallel for schedule(dynamic) if (nchunks > 1)
  for (int64_t i = 0; i < nchunks; ++i) {
    const detail::ExtremeSink<Key> sink{&targets_of, &depth, &top, bufs.data() + size_t(omp_get_thread_num()) * T};
    keys_of_chunk(i, sources, sink);
  }
  for (size_t t = 0; t < T; ++t) {
    std::vector<Key> all;
    for (int th = 0; th < threads; ++th) {
      detail::ExtremeBuffer<Key>& b = bufs[size_t(th) * T + t];
      all.insert(all.end(), b.keys.begin(), b.keys.begin() + b.used);
      std::vector<Key>().swap(b.keys);
    }
    detail::nth_extreme(all.data(), all.size(), depth[t], top[t] != 0);
    targets[t].key = all[size_t(depth[t] - 1)];
  }
}

}  // namespace m2n2::cpu
