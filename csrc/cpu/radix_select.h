// Exact order statistics without sorting (torch-free): radix selection over the bits
// of unsigned ordering keys, shared by the CPU merge kernels (TIES thresholds in
// task_merge_kernels.cpp, over all keys or over a candidate window's keys; PCB's
// clamp bounds and drop thresholds in pcb_kernels.cpp).
//
// Each pass histograms one 16-bit digit of the keys of every source (a model) whose
// targets are still open, over all chunks at once (OpenMP, one histogram per thread);
// the counts are integers, so their sum and the result do not depend on the threads.
// Targets of the same source that share a prefix share a histogram (two ranks of one
// model cost one histogram in the first pass). After the first pass, where the keys
// left under the targets' prefixes (the counts of their bins, known exactly) take
// less memory than the next pass's histograms, that pass collects those keys instead
// and finishes each target by nth_element over them: exact, and the same whatever the
// threads (a rank in a multiset). A bin of a 16-bit digit of float keys spans under
// 1% of a value, so this is typically far fewer keys than threads x targets x 2^16
// counters, and for 64-bit keys two passes instead of four. Extra memory: threads x
// sources x 2^16 counters (the first pass), then the smaller of the two; where the
// caller gives the sources' key counts and the keys take less memory than those
// counters (a candidate window's), the keys are collected from the start.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace m2n2::cpu {

constexpr int kRadixDigitBits = 16;
constexpr int64_t kRadixBins = int64_t(1) << kRadixDigitBits;

// One order statistic: the key of 0-based ascending rank `rank` among the keys of
// `source` (rank must lie in [0, n)). Filled in: the key, how many keys lie strictly
// below it and how many equal it.
struct RadixTarget {
  int source = 0;
  int64_t rank = 0;
  uint64_t key = 0;
  int64_t below = 0;
  int64_t equal = 0;
};

namespace detail {

// The histograms of one pass: slot = a distinct (source, prefix) among the targets.
struct RadixSlots {
  std::vector<int> sources;                   // distinct sources, ascending
  std::vector<std::vector<int>> slots_of;     // per entry of sources: its slots
  std::vector<uint64_t> slot_prefix;          // per slot
  std::vector<int> target_slot;               // per target
};

inline RadixSlots radix_slots(const std::vector<RadixTarget>& targets, const std::vector<uint64_t>& prefix) {
  RadixSlots s;
  std::vector<int> slot_source;
  for (size_t t = 0; t < targets.size(); ++t) {
    int found = -1;
    for (size_t q = 0; q < slot_source.size() && found < 0; ++q) {
      if (slot_source[q] == targets[t].source && s.slot_prefix[q] == prefix[t]) found = int(q);
    }
    if (found < 0) {
      found = int(slot_source.size());
      slot_source.push_back(targets[t].source);
      s.slot_prefix.push_back(prefix[t]);
    }
    s.target_slot.push_back(found);
  }
  s.sources = slot_source;
  std::sort(s.sources.begin(), s.sources.end());
  s.sources.erase(std::unique(s.sources.begin(), s.sources.end()), s.sources.end());
  s.slots_of.resize(s.sources.size());
  for (size_t q = 0; q < slot_source.size(); ++q) {
    const size_t at = size_t(std::lower_bound(s.sources.begin(), s.sources.end(), slot_source[q]) - s.sources.begin());
    s.slots_of[at].push_back(int(q));
  }
  return s;
}

// Count the digit at `shift` of the keys whose higher digits equal `prefix` (all of
// them in the first pass, where there are no higher digits).
template <class Key, class Count>
inline void radix_count(const Key* keys, int64_t len, int shift, bool first, uint64_t prefix, Count* h) {
  if (first) {
    for (int64_t j = 0; j < len; ++j) ++h[keys[j] >> shift];
    return;
  }
  const int high = shift + kRadixDigitBits;
  for (int64_t j = 0; j < len; ++j) {
    if (uint64_t(keys[j] >> high) == prefix) ++h[(keys[j] >> shift) & (kRadixBins - 1)];
  }
}

// Appends the keys whose bits from `high` up equal `want` (every key where `all`). The
// matches are few (the keys of one bin, or a few bins, of a 16-bit digit), so a
// vectorised count per block of 64 keys skips the blocks without one, rather than
// testing and branching key by key.
template <class Key>
inline void collect_matching(const Key* keys, int64_t len, int high, bool all, uint64_t want, std::vector<Key>& v) {
  if (all) {
    v.insert(v.end(), keys, keys + len);
    return;
  }
  constexpr int64_t kBlock = 64;
  const Key w = Key(want);  // compared in Key's width: a widening stops the vectoriser
  for (int64_t j0 = 0; j0 < len; j0 += kBlock) {
    const int64_t end = std::min(len, j0 + kBlock);
    Key hits = 0;
#pragma omp simd reduction(| : hits)
    for (int64_t j = j0; j < end; ++j) hits |= Key((keys[j] >> high) == w);
    if (hits == 0) continue;
    for (int64_t j = j0; j < end; ++j) {
      if ((keys[j] >> high) == w) v.push_back(keys[j]);
    }
  }
}

// The last stage of radix_select: the keys under each slot's prefix (their bits from
// `high` up equal to it) gathered from every chunk, then each target's key by
// nth_element over its slot's keys at its remaining rank, with the keys below and
// equal to it there.
template <class Key, class KeysOfChunk>
void radix_finish_by_collecting(int64_t nchunks, std::vector<RadixTarget>& targets, const RadixSlots& slots,
                                int high, const std::vector<int64_t>& remaining, KeysOfChunk&& keys_of_chunk) {
  const int threads = omp_get_max_threads();
  const size_t nslots = slots.slot_prefix.size();
  const bool all = high >= int(8 * sizeof(Key));  // no prefix yet: every key (and no shift by the width)
  std::vector<std::vector<Key>> got(size_t(threads) * nslots);  // per thread and slot
#pragma omp parallel for schedule(dynamic) if (nchunks > 1)
  for (int64_t i = 0; i < nchunks; ++i) {
    std::vector<Key>* mine = got.data() + size_t(omp_get_thread_num()) * nslots;
    keys_of_chunk(i, slots.sources, [&](int a, const Key* keys, int64_t len) {
      for (int q : slots.slots_of[size_t(a)]) {
        const uint64_t want = slots.slot_prefix[size_t(q)];
        collect_matching(keys, len, high, all, want, mine[size_t(q)]);
      }
    });
  }
  for (size_t q = 0; q < nslots; ++q) {
    std::vector<Key> keys;
    for (int th = 0; th < threads; ++th) {
      std::vector<Key>& v = got[size_t(th) * nslots + q];
      keys.insert(keys.end(), v.begin(), v.end());
      std::vector<Key>().swap(v);
    }
    for (size_t t = 0; t < targets.size(); ++t) {
      if (size_t(slots.target_slot[t]) != q) continue;
      const int64_t r = remaining[t];
      std::nth_element(keys.begin(), keys.begin() + r, keys.end());
      const Key key = keys[size_t(r)];
      int64_t below = 0, equal = 0;
      for (const Key k : keys) {
        below += k < key ? 1 : 0;
        equal += k == key ? 1 : 0;
      }
      targets[t].key = key;
      targets[t].below += below;
      targets[t].equal = equal;
    }
  }
}

}  // namespace detail

// Selects every target. keys_of_chunk(chunk, sources, sink) must produce the keys of
// each listed source over chunk `chunk` (in any pieces, e.g. tiles) and hand them on
// as sink(index into sources, keys, count). Count: the histogram counter, uint32_t
// (half the cache of uint64_t) unless a source has 2^32 keys or more. source_keys
// (optional): each source's key count, where the caller knows it; sources with fewer
// keys than the first pass's histograms have counters are collected at once (a
// candidate window's few keys need no 2^16 counters per thread).
template <class Key, class Count, class KeysOfChunk>
void radix_select(int64_t nchunks, std::vector<RadixTarget>& targets, KeysOfChunk&& keys_of_chunk,
                  const std::vector<int64_t>* source_keys = nullptr) {
  if (targets.empty()) return;
  const int threads = omp_get_max_threads();
  const size_t ntargets = targets.size();
  std::vector<uint64_t> prefix(ntargets, 0);
  std::vector<int64_t> remaining(ntargets);
  for (size_t t = 0; t < ntargets; ++t) {
    remaining[t] = targets[t].rank;
    targets[t].below = 0;
  }
  std::vector<Count> hist;
  for (int shift = int(8 * sizeof(Key)) - kRadixDigitBits; shift >= 0; shift -= kRadixDigitBits) {
    const bool first = shift + kRadixDigitBits >= int(8 * sizeof(Key));
    const detail::RadixSlots slots = detail::radix_slots(targets, prefix);
    const size_t nslots = slots.slot_prefix.size();
    if (!first || source_keys != nullptr) {
      std::vector<int64_t> open(nslots, 0);  // keys under each slot's prefix: its targets' last bin count
      if (first) {
        for (size_t a = 0; a < slots.sources.size(); ++a) {
          for (int q : slots.slots_of[a]) open[size_t(q)] = (*source_keys)[size_t(slots.sources[a])];
        }
      } else {
        for (size_t t = 0; t < ntargets; ++t) open[size_t(slots.target_slot[t])] = targets[t].equal;
      }
      int64_t open_keys = 0;
      for (int64_t o : open) open_keys += o;
      const uint64_t hist_bytes = uint64_t(threads) * nslots * kRadixBins * sizeof(Count);
      if (uint64_t(open_keys) * sizeof(Key) <= hist_bytes) {
        std::vector<Count>().swap(hist);  // the first pass's histograms, before the keys
        detail::radix_finish_by_collecting<Key>(nchunks, targets, slots, shift + kRadixDigitBits, remaining,
                                                keys_of_chunk);
        return;
      }
    }
    hist.assign(size_t(threads) * nslots * kRadixBins, Count(0));
#pragma omp parallel for schedule(dynamic) if (nchunks > 1)
    for (int64_t i = 0; i < nchunks; ++i) {
      Count* h = hist.data() + size_t(omp_get_thread_num()) * nslots * kRadixBins;
      keys_of_chunk(i, slots.sources, [&](int a, const Key* keys, int64_t len) {
        for (int q : slots.slots_of[size_t(a)]) {
          detail::radix_count<Key, Count>(keys, len, shift, first, slots.slot_prefix[size_t(q)],
                                          h + size_t(q) * kRadixBins);
        }
      });
    }
    for (size_t t = 0; t < ntargets; ++t) {
      const size_t q = size_t(slots.target_slot[t]);
      int64_t cum = 0;
      for (int64_t bin = 0; bin < kRadixBins; ++bin) {
        uint64_t count = 0;
        for (int th = 0; th < threads; ++th) count += hist[(size_t(th) * nslots + q) * kRadixBins + size_t(bin)];
        if (cum + int64_t(count) > remaining[t]) {
          remaining[t] -= cum;
          targets[t].below += cum;
          targets[t].equal = int64_t(count);
          prefix[t] = (prefix[t] << kRadixDigitBits) | uint64_t(bin);
          break;
        }
        cum += int64_t(count);
      }
    }
  }
  for (size_t t = 0; t < ntargets; ++t) targets[t].key = prefix[t];
}

}  // namespace m2n2::cpu
