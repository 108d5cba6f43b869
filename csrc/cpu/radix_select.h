// Exact order statistics without sorting (torch-free): radix selection over the bits
// of unsigned ordering keys, shared by the CPU merge kernels (TIES thresholds in
// task_merge_kernels.cpp, over all keys or over a candidate window's keys; PCB's
// clamp bounds and drop thresholds in pcb_kernels.cpp).
//
// Each pass histograms one digit of the keys of every source (a model) whose targets
// are still open, over all chunks at once (OpenMP, one histogram per thread); the
// counts are integers, so their sum and the result do not depend on the threads.
// Targets of the same source that share a prefix share a histogram (two ranks of one
// model cost one histogram in the first pass). A digit is 16 bits wide unless the
// caller's memory budget holds fewer counters: then the widest that fits (8 bits at
// least, where threads x slots x 2^8 counters do not fit either), at the cost of
// more passes; the digits need not divide the key's width (32 bits in 11 + 11 + 10).
// After the first pass, where the keys left under the targets' prefixes (the counts
// of their bins, known exactly) take less memory than the next pass's 16-bit
// histograms and than the budget, that pass collects those keys instead, into one
// buffer per prefix of exactly their count, and finishes each target by kth_key
// over them: exact, and the same whatever the threads (a rank in a multiset). A bin
// of a 16-bit digit of float keys spans under 1% of a value, so this is typically far
// fewer keys than threads x targets x 2^16 counters, and for 64-bit keys two passes
// instead of four. Extra memory: one pass's histograms (threads x slots x 2^digit
// counters), then the collected keys, each at most the budget (but 8-bit digits),
// and an eighth of a slot's more while kth_key selects in them, and per thread a stage of at most 16,384 of them (radix_finish_by_collecting);
// where the caller gives the sources' key counts and the keys take less memory than
// those counters (a candidate window's), the keys are collected from the start.
#pragma once

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <vector>

#include "page_array.h"

namespace m2n2::cpu {

constexpr int kRadixDigitBits = 16;     // a digit's width where the budget holds its counters
constexpr int kRadixMinDigitBits = 8;   // the narrowest digit, whatever the budget
constexpr int64_t kRadixBins = int64_t(1) << kRadixDigitBits;
constexpr uint64_t kNoMemoryBudget = ~uint64_t(0);

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

// The bins a histogram's scan sums at once where no target's rank lies among them.
constexpr int64_t kRadixScanBlock = 256;

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

// Each slot's targets in ascending remaining rank: both ways of finishing a slot
// (scanning its histogram, partitioning its collected keys) take its targets in that
// order, each resuming where the one before stopped.
inline std::vector<std::vector<size_t>> slot_targets_by_rank(const RadixSlots& slots,
                                                              const std::vector<int64_t>& remaining) {
  std::vector<std::vector<size_t>> by_slot(slots.slot_prefix.size());
  for (size_t t = 0; t < slots.target_slot.size(); ++t) by_slot[size_t(slots.target_slot[t])].push_back(t);
  for (std::vector<size_t>& ts : by_slot) {
    std::sort(ts.begin(), ts.end(), [&](size_t a, size_t b) { return remaining[a] < remaining[b]; });
  }
  return by_slot;
}

// The digit width of a pass over `nslots` histograms: 16 bits where threads x nslots
// x 2^16 counters fit the budget, else the widest that fits, kRadixMinDigitBits at
// least.
inline int radix_digit_bits(int threads, size_t nslots, size_t count_bytes, uint64_t budget) {
  int bits = kRadixDigitBits;
  while (bits > kRadixMinDigitBits && uint64_t(threads) * nslots * (uint64_t(1) << bits) * count_bytes > budget) {
    --bits;
  }
  return bits;
}

// Count the `bits`-wide digit at `shift` of the keys whose higher digits equal
// `prefix` (all of them in the first pass, where there are no higher digits).
template <class Key, class Count>
inline void radix_count(const Key* keys, int64_t len, int shift, int bits, bool first, uint64_t prefix, Count* h) {
  if (first) {
    for (int64_t j = 0; j < len; ++j) ++h[keys[j] >> shift];
    return;
  }
  const int high = shift + bits;
  const Key mask = Key((uint64_t(1) << bits) - 1);
  for (int64_t j = 0; j < len; ++j) {
    if (uint64_t(keys[j] >> high) == prefix) ++h[(keys[j] >> shift) & mask];
  }
}

// Hands on the keys whose bits from `high` up equal `want` (every key where `all`) as
// put(keys, count), a block of at most 64 at a time (all of them at once where
// `all`). The matches are few (the keys of one bin, or a few bins, of a digit), so a
// vectorised count per block of 64 keys skips the blocks without one, rather than
// testing and branching key by key.
template <class Key, class Put>
inline void collect_matching(const Key* keys, int64_t len, int high, bool all, uint64_t want, Put&& put) {
  if (all) {
    if (len > 0) put(keys, len);
    return;
  }
  constexpr int64_t kBlock = 64;
  const Key w = Key(want);  // compared in Key's width: a widening stops the vectoriser
  alignas(64) Key matched[kBlock];
  for (int64_t j0 = 0; j0 < len; j0 += kBlock) {
    const int64_t end = std::min(len, j0 + kBlock);
    Key hits = 0;
#pragma omp simd reduction(| : hits)
    for (int64_t j = j0; j < end; ++j) hits |= Key((keys[j] >> high) == w);
    if (hits == 0) continue;
    int64_t c = 0;
    for (int64_t j = j0; j < end; ++j) {
      if ((keys[j] >> high) == w) matched[c++] = keys[j];
    }
    put(matched, c);
  }
}

// The key of rank r (ascending, 0 <= r < m) among keys[0, m); it may reorder them (their
// multiset stays). nth_element moves every key with unpredictable branches (5 ns a
// key on tens of thousands of score keys: two thirds of a PCB window sample's
// selection); this histograms an 11-bit digit just below the bits all keys share,
// copies only the keys of the rank's bin to `scratch` and goes on there (compacting in
// place), down to kKthFew keys for nth_element. Where the rank's bin holds more than
// an eighth of the keys (heavy ties), nth_element finishes over the keys where they
// are, so scratch never holds more than an eighth of them (and one more).
constexpr int kKthDigitBits = 11;
constexpr int64_t kKthFew = 2048;

template <class Key>
Key kth_key(Key* keys, int64_t m, int64_t r, std::vector<Key>& scratch) {
  constexpr int kBins = 1 << kKthDigitBits;
  Key* src = keys;
  while (m > kKthFew) {
    // The bits where the keys differ: OR and AND vectorise in every clone (baseline
    // x86-64 has no unsigned 32-bit min or max).
    Key any = 0, all = Key(~Key(0));
#pragma omp simd reduction(| : any) reduction(& : all)
    for (int64_t j = 0; j < m; ++j) {
      any |= src[j];
      all &= src[j];
    }
    const Key differ = Key(any ^ all);
    if (differ == 0) return src[0];  // all equal
    const int top = sizeof(Key) == 8 ? 64 - __builtin_clzll(uint64_t(differ)) : 32 - __builtin_clz(uint32_t(differ));
    const int shift = std::max(0, top - kKthDigitBits);
    const Key mask = Key(kBins - 1);
    // Two interleaved histograms: a run of one bin (ties) chains fewer increments.
    uint32_t count[2][kBins] = {};
    const int64_t half = m / 2;
    for (int64_t j = 0; j < half; ++j) {
      ++count[0][(src[j] >> shift) & mask];
      ++count[1][(src[half + j] >> shift) & mask];
    }
    if (m % 2) ++count[1][(src[m - 1] >> shift) & mask];
    int64_t below = 0;
    Key bin = 0;
    for (int b = 0; b < kBins; ++b) {
      const int64_t c = int64_t(count[0][b]) + int64_t(count[1][b]);
      if (below + c > r) {
        bin = Key(b);
        break;
      }
      below += c;
    }
    const int64_t in_bin = int64_t(count[0][bin]) + int64_t(count[1][bin]);
    if (in_bin * 8 > m) break;  // heavy ties: nth_element where the keys are
    if (src == keys) scratch.resize(size_t(in_bin) + 1);  // the loop writes one past
    Key* dst = scratch.data();  // in place once src is scratch: writes trail reads
    int64_t n = 0;
    for (int64_t j = 0; j < m; ++j) {
      const Key k = src[j];
      dst[n] = k;
      n += ((k >> shift) & mask) == bin ? 1 : 0;
    }
    src = dst;
    m = in_bin;
    r -= below;
  }
  std::nth_element(src, src + r, src + m);
  return src[r];
}

// The most keys a thread stages per slot before it takes their place in the slot's
// buffer, and the most it stages over all slots (fewer per slot where there are many).
constexpr int64_t kCollectStage = 1024;
constexpr int64_t kCollectStageTotal = int64_t(1) << 14;
// The collected keys from which the slots' selections run in parallel.
constexpr int64_t kParallelFinishKeys = int64_t(1) << 14;

// The last stage of radix_select: the keys under each slot's prefix (their bits from
// `high` up equal to it) gathered from every chunk into one buffer per slot of exactly
// its `open` keys (their count, known exactly), then each target's key by kth_key
// over its slot's keys at its remaining rank, with the keys below and equal to it
// there. The threads take their places in a buffer from an atomic count: the keys'
// order then depends on the threads, their multiset and so the result does not. Each
// thread stages a slot's matched keys (collect_matching) and takes places for up to
// kCollectStage at a time: taken block by block, the one count per slot bounced
// between the cores where most keys match (bf16's tied keys), a quarter of this
// stage's time in bf16 breadcrumbs. The stages take threads x at most
// kCollectStageTotal keys (64 KiB per thread for 32-bit keys) and never more than a
// slot's count, outside the callers' memory budgets.
template <class Key, class KeysOfChunk>
void radix_finish_by_collecting(int64_t nchunks, std::vector<RadixTarget>& targets, const RadixSlots& slots,
                                int high, const std::vector<int64_t>& remaining, const std::vector<int64_t>& open,
                                KeysOfChunk&& keys_of_chunk) {
  const size_t nslots = slots.slot_prefix.size();
  const bool all = high >= int(8 * sizeof(Key));  // no prefix yet: every key (and no shift by the width)
  std::vector<PageArray<Key>> got(nslots);
  std::unique_ptr<std::atomic<int64_t>[]> filled(new std::atomic<int64_t>[nslots]);
  const int64_t per_slot = std::clamp<int64_t>(kCollectStageTotal / int64_t(std::max<size_t>(nslots, 1)), 1,
                                               kCollectStage);
  std::vector<int64_t> stage_at(nslots + 1, 0);  // slot q stages in [stage_at[q], stage_at[q + 1])
  for (size_t q = 0; q < nslots; ++q) {
    got[q].reset(size_t(open[q]));
    filled[q].store(0, std::memory_order_relaxed);
    stage_at[q + 1] = stage_at[q] + std::min(per_slot, open[q]);
  }
  std::atomic<bool> overflow{false};
  // Puts c keys into slot q's buffer.
  const auto place = [&](size_t q, const Key* keys, int64_t c) {
    const int64_t at = filled[q].fetch_add(c, std::memory_order_relaxed);
    if (at + c > open[q]) {  // more keys than counted: a caller's wrong count
      overflow.store(true, std::memory_order_relaxed);
      return;
    }
    std::memcpy(got[q].get() + at, keys, size_t(c) * sizeof(Key));
  };
#pragma omp parallel if (nchunks > 1)
  {
    std::vector<Key> stage(static_cast<size_t>(stage_at[nslots]));
    std::vector<int64_t> staged(nslots, 0);
    const auto flush = [&](size_t q) {
      if (staged[q] > 0) place(q, stage.data() + stage_at[q], staged[q]);
      staged[q] = 0;
    };
#pragma omp for schedule(dynamic)
    for (int64_t i = 0; i < nchunks; ++i) {
      keys_of_chunk(i, slots.sources, [&](int a, const Key* keys, int64_t len) {
        for (int slot : slots.slots_of[size_t(a)]) {
          const size_t q = size_t(slot);
          const int64_t room = stage_at[q + 1] - stage_at[q];
          collect_matching(keys, len, high, all, slots.slot_prefix[q], [&](const Key* hits, int64_t c) {
            if (staged[q] + c > room) flush(q);
            if (c > room) {
              place(q, hits, c);
              return;
            }
            std::memcpy(stage.data() + stage_at[q] + staged[q], hits, size_t(c) * sizeof(Key));
            staged[q] += c;
          });
        }
      });
    }
    for (size_t q = 0; q < nslots; ++q) flush(q);
  }
  for (size_t q = 0; q < nslots; ++q) {
    if (overflow.load() || filled[q].load() != open[q]) {
      throw std::logic_error("radix_select: the keys under a prefix differ from their count");
    }
  }
  const std::vector<std::vector<size_t>> slot_targets = slot_targets_by_rank(slots, remaining);
  // The slots' buffers are disjoint: their selections run in parallel (a window's
  // sample collects its K models' keys at once, tens of thousands each).
  int64_t all_open = 0;
  for (int64_t o : open) all_open += o;
#pragma omp parallel for schedule(dynamic) if (nslots > 1 && all_open >= kParallelFinishKeys)
  for (size_t q = 0; q < nslots; ++q) {
    Key* keys = got[q].get();
    const int64_t m = open[q];
    std::vector<Key> scratch;
    for (size_t t : slot_targets[q]) {
      const Key key = kth_key(keys, m, remaining[t], scratch);
      int64_t below = 0, equal = 0;
      for (int64_t j = 0; j < m; ++j) {
        below += keys[j] < key ? 1 : 0;
        equal += keys[j] == key ? 1 : 0;
      }
      targets[t].key = key;
      targets[t].below += below;
      targets[t].equal = equal;
    }
    got[q].release();
  }
}

}  // namespace detail

// Sources of at most this many keys are best collected at once, where their callers
// pass their key counts: one pass and nth_element over a few thousand keys, where a
// histogram's fixed cost (2^15 to 2^16 counters per model to zero, fault in and sum)
// took most of a small unit's time. Measured on 64 tensors of 1024 (2048, 4096)
// elements, K = 3: PCB about 220 -> 100 (250 -> 140, 300 -> 265) us a tensor, TIES
// 90 -> 60 (97 -> 87, 115 -> 175): from 4096 keys TIES' nth_element is the slower.
constexpr int64_t kRadixCollectAtOnceMax = int64_t(1) << 11;

// Selects every target. keys_of_chunk(chunk, sources, sink) must produce the keys of
// each listed source over chunk `chunk` (in any pieces, e.g. tiles) and hand them on
// as sink(index into sources, keys, count). Count: the histogram counter, uint32_t
// (half the cache of uint64_t) unless a source has 2^32 keys or more. source_keys
// (optional): each source's key count, where the caller knows it; sources with fewer
// keys than the first pass's histograms have counters (and within the budget) are
// collected at once (a candidate window's few keys need no 2^16 counters per thread).
// budget: the bytes the histograms and collected keys may take (narrower digits where
// 16-bit ones do not fit; see above); kNoMemoryBudget: 16-bit digits always.
template <class Key, class Count, class KeysOfChunk>
void radix_select(int64_t nchunks, std::vector<RadixTarget>& targets, KeysOfChunk&& keys_of_chunk,
                  const std::vector<int64_t>* source_keys = nullptr, uint64_t budget = kNoMemoryBudget) {
  if (targets.empty()) return;
  constexpr int kWidth = int(8 * sizeof(Key));
  // A single chunk is counted on one thread (the passes run in parallel only over two
  // chunks or more): one thread's histograms, not every thread's to zero and sum.
  const int threads = nchunks > 1 ? omp_get_max_threads() : 1;
  const size_t ntargets = targets.size();
  std::vector<uint64_t> prefix(ntargets, 0);
  std::vector<int64_t> remaining(ntargets);
  for (size_t t = 0; t < ntargets; ++t) {
    remaining[t] = targets[t].rank;
    targets[t].below = 0;
  }
  PageArray<Count> hist;  // page_array.h: freed to the OS between passes
  for (int done = 0; done < kWidth;) {  // done: the high bits every target's prefix holds
    const bool first = done == 0;
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
      const uint64_t wide_hist_bytes = uint64_t(threads) * nslots * kRadixBins * sizeof(Count);
      if (uint64_t(open_keys) * sizeof(Key) <= std::min(wide_hist_bytes, budget)) {
        hist.release();  // the last pass's histograms, before the keys
        detail::radix_finish_by_collecting<Key>(nchunks, targets, slots, kWidth - done, remaining, open,
                                                keys_of_chunk);
        return;
      }
    }
    const int bits = std::min(kWidth - done, detail::radix_digit_bits(threads, nslots, sizeof(Count), budget));
    const int shift = kWidth - done - bits;
    const int64_t bins = int64_t(1) << bits;
    hist.reset(size_t(threads) * nslots * size_t(bins));  // zeros; the last pass's freed first: never both
#pragma omp parallel for schedule(dynamic) if (nchunks > 1)
    for (int64_t i = 0; i < nchunks; ++i) {
      Count* h = hist.get() + size_t(omp_get_thread_num()) * nslots * size_t(bins);
      keys_of_chunk(i, slots.sources, [&](int a, const Key* keys, int64_t len) {
        for (int q : slots.slots_of[size_t(a)]) {
          detail::radix_count<Key, Count>(keys, len, shift, bits, first, slots.slot_prefix[size_t(q)],
                                          h + size_t(q) * size_t(bins));
        }
      });
    }
    // The threads' counts summed into the first thread's (a bin's total, the keys of one
    // source, fits Count), then each slot's bins scanned once for all its targets in
    // ascending rank: a bin at a time with the threads' counts gathered per bin, this
    // took 0.3-0.5 ms a pass in a 2^15-bin histogram, what a whole small unit is worth.
    Count* h = hist.get();
    const size_t per_thread = nslots * size_t(bins);
    for (int th = 1; th < threads; ++th) {
      const Count* other = h + size_t(th) * per_thread;
#pragma omp simd
      for (size_t i = 0; i < per_thread; ++i) h[i] += other[i];
    }
    const std::vector<std::vector<size_t>> slot_targets = detail::slot_targets_by_rank(slots, remaining);
    for (size_t q = 0; q < nslots; ++q) {
      const std::vector<size_t>& order = slot_targets[q];
      const Count* hq = h + q * size_t(bins);
      int64_t cum = 0;
      size_t next = 0;
      for (int64_t b0 = 0; b0 < bins && next < order.size(); b0 += detail::kRadixScanBlock) {
        // A block of bins at once (a vectorised sum) unless the next target's rank lies
        // in it: most bins of a small unit's wide histogram are empty.
        const int64_t b1 = std::min<int64_t>(bins, b0 + detail::kRadixScanBlock);
        uint64_t block = 0;
#pragma omp simd reduction(+ : block)
        for (int64_t bin = b0; bin < b1; ++bin) block += hq[bin];
        if (cum + int64_t(block) <= remaining[order[next]]) {
          cum += int64_t(block);
          continue;
        }
        for (int64_t bin = b0; bin < b1 && next < order.size(); ++bin) {
          const int64_t count = int64_t(hq[bin]);
          for (; next < order.size() && cum + count > remaining[order[next]]; ++next) {
            const size_t t = order[next];
            remaining[t] -= cum;
            targets[t].below += cum;
            targets[t].equal = count;
            prefix[t] = (prefix[t] << bits) | uint64_t(bin);
          }
          cum += count;
        }
      }
    }
    done += bits;
  }
  for (size_t t = 0; t < ntargets; ++t) targets[t].key = prefix[t];
}

}  // namespace m2n2::cpu
