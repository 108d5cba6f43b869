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
// Cost: a vectorised compare with the bound per key and target, and appends in
// proportion to k log(n / k) on data in no particular order (more where the keys come
// in order of extremeness, each append paid for by a prune of 2k keys). Extra memory:
// threads x targets x (2k + kExtremeSlack) keys at most.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <vector>

#include "radix_select.h"

namespace m2n2::cpu {

constexpr int64_t kExtremeMaxDepth = int64_t(1) << 14;  // k up to this ...
constexpr int64_t kExtremeMaxFraction = 64;              // ... and up to n / 64
constexpr int64_t kExtremeSlack = 256;                   // keys past 2k before a prune

// k of a target of rank `rank` among n keys, from its nearer end (>= 1).
inline int64_t extreme_depth(int64_t rank, int64_t n) { return std::min(rank + 1, n - rank); }
inline bool extreme_from_top(int64_t rank, int64_t n) { return n - rank < rank + 1; }

// Whether extreme_select serves every target: each within kExtremeMaxDepth keys and
// within n / kExtremeMaxFraction of an end (so that the buffers stay small), and the
// buffers at their fullest (threads x targets x (2k + kExtremeSlack) keys of key_bytes)
// within budget_bytes (the call's selection memory: task_merge_kernels.h).
inline bool extreme_selectable(const std::vector<RadixTarget>& targets, int64_t n, size_t key_bytes,
                               uint64_t budget_bytes) {
  const int64_t max_depth = std::min(kExtremeMaxDepth, std::max<int64_t>(1, n / kExtremeMaxFraction));
  uint64_t keys = 0;
  for (const RadixTarget& t : targets) {
    if (t.rank < 0 || t.rank >= n || extreme_depth(t.rank, n) > max_depth) return false;
    keys += uint64_t(2 * extreme_depth(t.rank, n) + kExtremeSlack);
  }
  return uint64_t(omp_get_max_threads()) * keys * key_bytes <= budget_bytes;
}

namespace detail {

// One thread's buffer for one target.
template <class Key>
struct ExtremeBuffer {
  std::vector<Key> keys;
  Key bound = 0;       // after the first prune: take only keys strictly beyond it
  bool pruned = false;
};

// Whether key a is more extreme than b at the target's end.
template <class Key>
bool beyond(Key a, Key b, bool top) {
  return top ? a > b : a < b;
}

// The k most extreme of keys (k <= size) moved to the front, the k-th at k - 1.
template <class Key>
void nth_extreme(std::vector<Key>& keys, int64_t k, bool top) {
  if (top) {
    std::nth_element(keys.begin(), keys.begin() + (k - 1), keys.end(), std::greater<Key>());
  } else {
    std::nth_element(keys.begin(), keys.begin() + (k - 1), keys.end());
  }
}

// Appends the keys of a piece that may be among the k most extreme; prunes.
template <class Key>
void extreme_take(const Key* keys, int64_t len, int64_t k, bool top, ExtremeBuffer<Key>& b) {
  if (!b.pruned) {
    b.keys.insert(b.keys.end(), keys, keys + len);
  } else {
    const Key bound = b.bound;
    Key hits = 0;  // in Key's width: a widening stops the vectoriser
    if (top) {
#pragma omp simd reduction(| : hits)
      for (int64_t j = 0; j < len; ++j) hits |= Key(keys[j] > bound);
    } else {
#pragma omp simd reduction(| : hits)
      for (int64_t j = 0; j < len; ++j) hits |= Key(keys[j] < bound);
    }
    if (hits == 0) return;
    for (int64_t j = 0; j < len; ++j) {
      if (beyond(keys[j], bound, top)) b.keys.push_back(keys[j]);
    }
  }
  if (int64_t(b.keys.size()) >= 2 * k + kExtremeSlack) {
    nth_extreme(b.keys, k, top);
    b.bound = b.keys[size_t(k - 1)];
    b.keys.resize(size_t(k));
    b.pruned = true;
  }
}

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
#pragma omp parallel for schedule(dynamic) if (nchunks > 1)
  for (int64_t i = 0; i < nchunks; ++i) {
    detail::ExtremeBuffer<Key>* mine = bufs.data() + size_t(omp_get_thread_num()) * T;
    keys_of_chunk(i, sources, [&](int a, const Key* keys, int64_t len) {
      for (size_t t : targets_of[size_t(a)]) detail::extreme_take(keys, len, depth[t], top[t] != 0, mine[t]);
    });
  }
  for (size_t t = 0; t < T; ++t) {
    std::vector<Key> all;
    for (int th = 0; th < threads; ++th) {
      std::vector<Key>& v = bufs[size_t(th) * T + t].keys;
      all.insert(all.end(), v.begin(), v.end());
      std::vector<Key>().swap(v);
    }
    detail::nth_extreme(all, depth[t], top[t] != 0);
    targets[t].key = all[size_t(depth[t] - 1)];
  }
}

}  // namespace m2n2::cpu
