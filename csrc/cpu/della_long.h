// DELLA's keep decisions within one long fiber (torch-free, CPU), streamed: nothing
// as long as the fiber is held (docs/semantics.md, "della"; the short fibers' kernel,
// della_ranks.h, holds each fiber whole).
//
// Element j is kept iff its draw u24 < T(r_j), r_j its ascending rank in the fiber by
// (|d|, index) and T(r) = dare_threshold(della_probability(rho, eps, n, r)), computed
// where needed rather than tabled per rank. Ranking by (|d|, index) is ranking by one
// integer, R = key << b | index (b: the bits of n - 1), distinct per element. A tree
// of buckets over R bounds every element's rank: the root buckets by octave; a bucket
// whose rank range leaves some draw undecided gets a child node, which buckets its R
// range by the next bits (the bits its keys differ in, then, where few keys or one
// remain, the indices'), or pivots on the key most of its undecided elements share
// (bf16's quantised deltas crowd a bucket with one key and a few rare neighbours).
// A bucket whose rank range has one threshold decides exactly (the draw's low byte
// where its high half ties). Streaming passes over the fiber (parallel over its
// chunks, per-thread sums combined in any order: counts and bits) build the tree a
// level at a time:
// - histogram: the newest buckets' counts (and key bits), whose rank ranges then
//   bound their members' thresholds (tlo, thi);
// - mark: where the newest buckets are many, which hold an element its draw leaves
//   undecided ("open"); where they are expected to be few, they are collected;
// - count: the collected elements' exact ranks, from the members of their buckets
//   counted against each bucket's sorted open elements.
// Spread fp32 deltas take histogram, histogram, mark and count; heavy ties (bf16, zero
// deltas) a level more. A level holds n / 4096 buckets (at least 4096), shared out by
// members (or by the square root of the open elements) per bucket; at most n / 2048
// open elements are collected (at least 4096); a pass's per-thread sums span one
// level. The merge's own passes then decide every element by walking down from its
// octave; most stop there.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "della_ranks.h"
#include "m2n2/task_merge.h"

namespace m2n2::cpu {

template <class Key>
class DellaLongFiber {
 public:
  // A level's buckets: n / 4096, at least kLevelMin (fewer take more levels, each a
  // pass or two); the open elements collected: n / 2048, at least kOpenMin.
  static constexpr int64_t kLevelMin = 4096;
  static int64_t level_budget(int64_t n) { return std::max<int64_t>(kLevelMin, n >> 12); }
  static constexpr int64_t kOpenMin = 4096;
  // The root's digit: a key's exponent, the bits above its mantissa.
  static constexpr int kMantissa = sizeof(Key) == 8 ? 52 : 23;
  // R: a 31-bit key (fp32) and a 32-bit index fit 64 bits; a 63-bit key needs 128.
  using Rank = std::conditional_t<sizeof(Key) == 8, unsigned __int128, uint64_t>;

  // An element its draw leaves undecided in its deepest bucket.
  struct Open {
    Rank r;
    uint32_t entry;  // its bucket
    uint32_t high;   // its draw's high half (hi16 << 8)
    uint32_t keep;   // after the count: 0 kept, 1 dropped (the passes' draws against 1)
  };
  // One thread's sums over one pass.
  struct Sums {
    bool used = false;
    std::vector<uint32_t> count;  // histogram: members per new bucket; mark: open ones
    std::vector<Key> all, any;    // histogram: per new bucket, the bits all its keys set, any sets
    std::vector<Open> open;       // mark: the open elements collected
    std::vector<Key> vote;        // mark: per new bucket, a majority vote over its open keys
    std::vector<uint32_t> votes;
    std::vector<uint32_t> below;  // count: members per slot (List)
  };
  enum class Step { kHistogram, kMark, kCount, kDone };

  // A fiber of n (2 <= n < 2^32) elements, its model keeping with density rho, spread eps.
  void start(int64_t n, double rho, double eps) {
    n_ = n;
    rho_ = rho;
    eps_ = eps;
    index_bits_ = 64 - __builtin_clzll(uint64_t(n - 1));
    level_budget_ = level_budget(n);
    open_cap_ = std::max<int64_t>(kOpenMin, n >> 11);
    constexpr int kOctaves = sizeof(Key) == 8 ? 2048 : 256;  // a key has no sign bit
    nodes_.assign(1, Node{0, 0, kOctaves, 0, uint8_t(kMantissa), 0, kByKey, 0});
    entries_.assign(kOctaves, Entry{});
    first_new_node_ = 0;
    first_new_entry_ = 0;
    open_.clear();
    lists_.assign(1, List{0, 0, 0, 0, 0});
    pad_.clear();
    slots_ = 1;
    step_ = Step::kHistogram;
  }

  Step step() const { return step_; }

  // Sizes a thread's sums for the coming pass (and frees what it does not use).
  void prepare(Sums& s) const {
    s.used = true;
    const size_t fresh = entries_.size() - first_new_entry_;
    if (step_ != Step::kHistogram) {
      std::vector<Key>().swap(s.all);
      std::vector<Key>().swap(s.any);
    }
    if (step_ != Step::kMark) {
      std::vector<Open>().swap(s.open);
      std::vector<Key>().swap(s.vote);
      std::vector<uint32_t>().swap(s.votes);
    }
    if (step_ == Step::kCount) std::vector<uint32_t>().swap(s.count);
    if (step_ == Step::kHistogram) {
      s.count.assign(fresh, 0u);
      s.all.assign(fresh, ~Key(0));
      s.any.assign(fresh, Key(0));
    } else if (step_ == Step::kMark) {
      s.count.assign(fresh, 0u);
      s.open.clear();
      s.vote.assign(fresh, Key(0));
      s.votes.assign(fresh, 0u);
    } else if (step_ == Step::kCount) {
      s.below.assign(slots_, 0u);
    }
  }

  // The passes over elements j0 .. j0 + len - 1 of the fiber (keys: theirs; high:
  // their draws' high halves). `opened` counts the open elements over all threads.
  void histogram(const Key* keys, int64_t j0, int64_t len, Sums& s) const {
    for (int64_t j = 0; j < len; ++j) {
      const Key key = keys[j];
      uint32_t at = root_entry(key);
      for (;;) {
        if (at >= first_new_entry_) {
          const size_t f = at - first_new_entry_;
          ++s.count[f];
          s.all[f] &= key;
          s.any[f] |= key;
          break;
        }
        const int32_t next = entries_[at].next;
        if (next < 0) break;  // an older bucket without children: not counted
        at = entry_of(nodes_[uint32_t(next)], key, j0 + j);
      }
    }
  }

  void mark(const Key* keys, const uint32_t* high, int64_t j0, int64_t len, Sums& s,
            std::atomic<int64_t>& opened) const {
    for_each_open_at_root(keys, high, len, nullptr, [&](int64_t j, uint32_t at) {
      const uint32_t h = high[j];
      for (;;) {
        const Entry& e = entries_[at];
        // Decided by the bounds, or exactly where one threshold holds for the bucket.
        if ((h | 0xFFu) < e.tlo || h >= e.thi || e.tlo == e.thi) return;
        if (e.next < 0) break;
        at = entry_of(nodes_[uint32_t(e.next)], keys[j], j0 + j);
      }
      // Open, in one of the newest buckets (an older one without children had no
      // open element). The vote (Boyer-Moore) names the key most of them share, where
      // one does: bf16's quantised deltas crowd a bucket with one key.
      const size_t f = at - first_new_entry_;
      ++s.count[f];
      if (s.votes[f] == 0) {
        s.vote[f] = keys[j];
        s.votes[f] = 1;
      } else {
        s.votes[f] += s.vote[f] == keys[j] ? 1u : uint32_t(-1);
      }
      if (collect_ && opened.fetch_add(1, std::memory_order_relaxed) < open_cap_) {
        s.open.push_back({rank_key(keys[j], j0 + j), at, h, 1u});
      }
    });
  }

  void count(const Key* keys, int64_t j0, int64_t len, Sums& s) const {
    for (int64_t j = 0; j < len; ++j) {
      const Rank r = rank_key(keys[j], j0 + j);
      uint32_t at = root_entry(keys[j]);
      for (int32_t next; (next = entries_[at].next) >= 0;) at = entry_of(nodes_[uint32_t(next)], keys[j], j0 + j);
      // The open elements at or below this member, 8 at a time (a bucket holds a
      // few); a bucket without any has list 0, of no blocks, and counts in slot 0.
      const int32_t next = entries_[at].next;
      const List& l = lists_[next <= -2 ? size_t(-1 - next) : 0];
      uint32_t at_or_below = 0;
      if (l.blocks <= kScanBlocks) {
        for (uint32_t b = 0; b < l.blocks; ++b) {
          const Rank* o = pad_.data() + l.padded + 8 * b;
#pragma omp simd reduction(+ : at_or_below)
          for (int q = 0; q < 8; ++q) at_or_below += o[q] <= r ? 1u : 0u;
        }
      } else {  // a bucket of many (heavy ties): a binary search
        const Rank* o = pad_.data() + l.padded;
        at_or_below = uint32_t(std::upper_bound(o, o + (l.end - l.begin), r) - o);
      }
      ++s.below[l.slot + at_or_below];
    }
  }

  // After a pass: the threads' sums combined (counts and key bits in any order; the
  // votes depend on which thread ran which chunk, and so may the tree's shape, never
  // a rank or a decision), the tree grown, the next step chosen. low8(index): the low
  // byte of the draw of the fiber's element `index` (asked for only where its high
  // half ties with the threshold's).
  template <class Low8>
  void advance(const std::vector<const Sums*>& sums, Low8&& low8);

  // keep[j] = 0 where element j0 + j is kept, else 1 (the passes' draws against 1).
  // low8(j): the low byte of its draw.
  template <class Low8>
  void decide(const Key* keys, const uint32_t* high, int64_t j0, int64_t len, Low8&& low8, uint32_t* keep) const {
    for_each_open_at_root(keys, high, len, keep, [&](int64_t j, uint32_t at) {
      const uint32_t h = high[j];
      for (;;) {
        const Entry& e = entries_[at];
        if ((h | 0xFFu) < e.tlo) {
          keep[j] = 0u;
          return;
        }
        if (h >= e.thi) {
          keep[j] = 1u;
          return;
        }
        if (e.tlo == e.thi) {  // one threshold for the bucket: the draw's low byte decides
          keep[j] = (h | low8(j)) < e.tlo ? 0u : 1u;
          return;
        }
        if (e.next < 0) break;
        at = entry_of(nodes_[uint32_t(e.next)], keys[j], j0 + j);
      }
      // Open: ranked by the count pass (once the tree is built, a bucket without
      // children holds open elements only where it has a list).
      const List& l = lists_[size_t(-1 - entries_[at].next)];
      uint32_t q = l.begin;
      const Rank r = rank_key(keys[j], j0 + j);
      while (q + 1 < l.end && open_[q].r != r) ++q;
      keep[j] = open_[q].keep;
    });
  }

 private:
  // A node's buckets: entries_[first + (R' >> shift) - base], `width` of them, R' =
  // (key >> key_shift) << b | index: R with the key bits that no member's key varies
  // in below its lowest varying bit dropped (all of the key where they tie), so that
  // a node spends its bits where its members differ; where its digit lies within the
  // key's bits (shift >= b), it is (key >> shift) - base, shift and base restated
  // (kByKey, as the root). A pivot node instead has one bucket for the keys below
  // pivot_key, width - 2 for pivot_key's members by index ((index >> shift) - base)
  // and one for the keys above: one key that holds most of a bucket gets all the bits
  // however far its few neighbours stretch the range.
  enum Mode : uint8_t { kByRank, kByKey, kPivot };
  struct Node {
    Rank base;
    uint32_t first;
    uint32_t width;
    uint32_t rank0;  // the rank of its lowest member
    uint8_t shift;
    uint8_t key_shift;
    Mode mode;
    Key pivot_key;
  };
  // A bucket: the rank of its lowest member, the thresholds at its lowest and highest
  // rank; next: its child node, -1 none, or -1 - the list (>= 1) of its open elements.
  struct Entry {
    uint32_t start = 0;
    uint32_t tlo = 0;
    uint32_t thi = 0;
    int32_t next = -1;
  };
  static constexpr uint32_t kScanBlocks = 4;  // a longer list is searched, not scanned
  static constexpr uint32_t kPivotMin = 64;   // open elements in a bucket worth a pivot
  // A bucket's open elements: open_[begin .. end), their R again in `blocks` blocks of
  // 8 from pad_[padded] (the last block padded with R above any element's); the count
  // pass counts its members in slots slot .. slot + end - begin by how many of its
  // open elements lie at or below each.
  struct List {
    uint32_t begin, end, padded, blocks, slot;
  };

  Rank rank_key(Key key, int64_t index) const { return (Rank(key) << index_bits_) | Rank(uint64_t(index)); }
  // The root's bucket: the key's octave (the root node's digit, a constant shift).
  static uint32_t root_entry(Key key) { return uint32_t(key >> kMantissa); }
  uint32_t entry_of(const Node& nd, Key key, int64_t index) const {
    if (nd.mode == kByKey) return nd.first + uint32_t((Rank(key) >> nd.shift) - nd.base);
    if (nd.mode == kPivot) {
      if (key != nd.pivot_key) return nd.first + (key < nd.pivot_key ? 0u : nd.width - 1u);
      return nd.first + 1u + uint32_t((Rank(uint64_t(index)) >> nd.shift) - nd.base);
    }
    const Rank r = ((Rank(key) >> nd.key_shift) << index_bits_) | Rank(uint64_t(index));
    return nd.first + uint32_t((r >> nd.shift) - nd.base);
  }
  uint32_t threshold(int64_t r) const { return dare_threshold(della_probability(rho_, eps_, n_, r)); }

  // f(j, the root bucket of j) for each element j < len that the root's bounds leave
  // undecided, in order; keep (where given) set for those they decide. The root's
  // stage runs vectorised (della_ranks.cpp's loops, on its octaves' bounds): most
  // elements stop there, and only the others walk the tree.
  template <class F>
  void for_each_open_at_root(const Key* keys, const uint32_t* high, int64_t len, uint32_t* keep, F&& f) const {
    constexpr int64_t kBlock = 256;
    alignas(64) uint16_t digits[kBlock];
    alignas(64) uint8_t open[kBlock];
    alignas(64) uint32_t scratch[kBlock];
    for (int64_t b0 = 0; b0 < len; b0 += kBlock) {
      const int64_t n = std::min(kBlock, len - b0);
      della_digits(keys + b0, n, kMantissa, 0, digits);
      uint32_t* decided = keep != nullptr ? keep + b0 : scratch;
      if (della_bounds(digits, n, high + b0, root_tlo_.data(), root_thi_.data(), decided, open) == 0) continue;
      della_for_each_open(open, n, [&](int64_t j) { f(b0 + j, uint32_t(digits[j])); });
    }
  }

  // Children for the newest buckets where grow(f) (f: the bucket's place among them),
  // each sharing out the level's budget by weight(f): about budget * weight / total
  // buckets, at least 2. pivot(f, key): whether the child pivots on `key` (Node). A
  // child's R' range: its keys' varying bits, then the indices: all of them, or
  // those its bucket spans where the parent's bucket fixed the key and the top index
  // bits.
  template <class Grow, class Weight, class Pivot>
  void add_children(Grow&& grow, Weight&& weight, Pivot&& pivot) {
    double total = 0.0;
    const uint32_t fresh = uint32_t(entries_.size()) - first_new_entry_;
    for (uint32_t f = 0; f < fresh; ++f) total += grow(f) ? weight(f) : 0.0;
    const uint32_t new_node = uint32_t(nodes_.size()), new_entry = uint32_t(entries_.size());
    uint32_t added = 0;
    for (uint32_t v = first_new_node_; v < new_node; ++v) {
      for (uint32_t d = 0; d < nodes_[v].width; ++d) {
        const uint32_t at = nodes_[v].first + d, f = at - first_new_entry_;
        if (!grow(f)) continue;
        const double share = double(level_budget_) * weight(f) / total;
        const int bits = std::clamp(int(std::log2(std::max(share, 2.0))), 1, 20);
        Rank first_index = 0, last_index = Rank(n_ - 1);
        bucket_indices(nodes_[v], d, first_index, last_index);
        Node child{};
        child.rank0 = entries_[at].start;
        child.first = new_entry + added;
        Key key = 0;
        if (pivot(f, key)) {
          child.mode = kPivot;
          child.pivot_key = key;
          child.shift = uint8_t(std::max(0, span_of(first_index ^ last_index) - bits));
          child.base = first_index >> child.shift;
          child.width = uint32_t((last_index >> child.shift) - child.base) + 3u;
        } else {
          const Key varying = new_all_[f] ^ new_any_[f];
          const int key_shift = varying == 0 ? int(8 * sizeof(Key)) : __builtin_ctzll(uint64_t(varying));
          const Rank lo = ((Rank(new_all_[f]) >> key_shift) << index_bits_) | first_index;
          const Rank hi = ((Rank(new_any_[f]) >> key_shift) << index_bits_) | last_index;
          const int shift = std::max(0, span_of(lo ^ hi) - bits);
          child.width = uint32_t((hi >> shift) - (lo >> shift)) + 1u;
          child.base = lo >> shift;
          child.mode = shift >= index_bits_ ? kByKey : kByRank;
          child.shift = uint8_t(child.mode == kByKey ? key_shift + shift - index_bits_ : shift);
          child.key_shift = uint8_t(key_shift);
        }
        entries_[at].next = int32_t(nodes_.size());
        nodes_.push_back(child);
        added += child.width;
      }
    }
    // Grown once to the size asked for (not by doubling: the tree is most of a
    // streamed call's memory).
    entries_.reserve(entries_.size() + added);
    entries_.resize(entries_.size() + added);
    first_new_node_ = new_node;
    first_new_entry_ = new_entry;
  }

  // The bits up to the highest set one.
  static int span_of(Rank x) {
    int span = 0;
    while (span < int(8 * sizeof(Rank)) && (x >> span) != 0) ++span;
    return span;
  }

  // Narrows [first, last] to the indices bucket d of node nd can hold: those of its
  // cell where the cell fixes the key (a pivot's middle buckets; a bucket finer than
  // the key), else all.
  void bucket_indices(const Node& nd, uint32_t d, Rank& first, Rank& last) const {
    Rank cell;
    if (nd.mode == kPivot) {
      if (d == 0 || d + 1 == nd.width) return;
      cell = nd.base + (d - 1);
    } else {
      if (nd.mode == kByKey) return;
      cell = nd.base + d;
    }
    const Rank mask = (Rank(1) << index_bits_) - 1;
    first = (cell << nd.shift) & mask;
    last = std::min(last, (((cell + 1) << nd.shift) - 1) & mask);
  }

  int64_t n_ = 0;
  double rho_ = 0.0, eps_ = 0.0;
  int index_bits_ = 1;
  int64_t level_budget_ = 0;  // buckets per level
  int64_t open_cap_ = 0;      // open elements collected
  bool collect_ = true;       // whether this mark pass collects them
  Step step_ = Step::kDone;
  std::vector<Node> nodes_;
  std::vector<Entry> entries_;
  uint32_t first_new_node_ = 0;  // the nodes (and their buckets) the next pass serves
  uint32_t first_new_entry_ = 0;
  std::vector<uint32_t> new_count_;  // the newest buckets' member counts and key bits
  std::vector<Key> new_all_, new_any_;
  std::vector<Open> open_;  // sorted by (bucket, R)
  std::vector<List> lists_;
  std::vector<Rank> pad_;
  uint32_t slots_ = 1;
  std::vector<uint32_t> root_tlo_, root_thi_;  // the root's bounds, by octave
};

template <class Key>
template <class Low8>
void DellaLongFiber<Key>::advance(const std::vector<const Sums*>& sums, Low8&& low8) {
  const size_t fresh = entries_.size() - first_new_entry_;
  if (step_ == Step::kHistogram) {
    new_count_.assign(fresh, 0u);
    new_all_.assign(fresh, ~Key(0));
    new_any_.assign(fresh, Key(0));
    for (const Sums* s : sums) {
      for (size_t f = 0; f < fresh; ++f) {
        new_count_[f] += s->count[f];
        new_all_[f] &= s->all[f];
        new_any_[f] |= s->any[f];
      }
    }
    // Each new node's buckets in rank order from its lowest member's rank.
    int64_t possible = 0;  // buckets where some draw could be left undecided
    for (uint32_t v = first_new_node_; v < uint32_t(nodes_.size()); ++v) {
      const Node& nd = nodes_[v];
      uint32_t rank = nd.rank0;
      for (uint32_t d = 0; d < nd.width; ++d) {
        Entry& e = entries_[nd.first + d];
        const uint32_t c = new_count_[nd.first + d - first_new_entry_];
        e.start = rank;
        e.tlo = threshold(std::min<int64_t>(rank, n_ - 1));
        e.thi = c > 0 ? threshold(int64_t(rank) + c - 1) : e.tlo;  // empty: never read, never split
        rank += c;
        possible += e.tlo < e.thi ? 1 : 0;
      }
    }
    if (first_new_node_ == 0) {  // the root's: fixed from now on
      root_tlo_.resize(nodes_[0].width);
      root_thi_.resize(nodes_[0].width);
      for (uint32_t d = 0; d < nodes_[0].width; ++d) {
        root_tlo_[d] = entries_[d].tlo;
        root_thi_[d] = entries_[d].thi;
      }
    }
    if (possible == 0) {
      step_ = Step::kDone;
    } else if (possible * 16 <= level_budget_) {
      // Few enough to give each children without marking the open ones first, by
      // members: equal counts per new bucket leave the fewest open.
      add_children([&](uint32_t f) { return entries_[first_new_entry_ + f].tlo < entries_[first_new_entry_ + f].thi; },
                   [&](uint32_t f) { return double(new_count_[f]); }, [](uint32_t, Key&) { return false; });
    } else {
      step_ = Step::kMark;  // new_all_, new_any_ kept for the children
      // Collect the open elements only where they are expected to be few enough
      // (a bucket leaves about (thi - tlo) / 2^24 of its draws undecided): else the
      // collection would be dropped.
      double expected = 0.0;
      for (uint32_t at = first_new_entry_; at < uint32_t(entries_.size()); ++at) {
        const Entry& e = entries_[at];
        expected += double(new_count_[at - first_new_entry_]) * double(e.thi - e.tlo + 0xFFu) / 16777216.0;
      }
      collect_ = expected <= 4.0 * double(open_cap_);
    }
    return;
  }
  if (step_ == Step::kMark) {
    std::vector<uint32_t> opened(fresh, 0u);
    size_t collected = 0;
    for (const Sums* s : sums) {
      for (size_t f = 0; f < fresh; ++f) opened[f] += s->count[f];
      collected += s->open.size();
    }
    int64_t total = 0;
    for (uint32_t c : opened) total += c;
    if (total == 0) {
      step_ = Step::kDone;
    } else if (collect_ && total <= open_cap_) {
      open_.clear();
      open_.reserve(collected);
      for (const Sums* s : sums) open_.insert(open_.end(), s->open.begin(), s->open.end());
      std::sort(open_.begin(), open_.end(),
                [](const Open& a, const Open& b) { return a.entry < b.entry || (a.entry == b.entry && a.r < b.r); });
      for (size_t q = 0; q < open_.size();) {
        size_t end = q;
        while (end < open_.size() && open_[end].entry == open_[q].entry) ++end;
        entries_[open_[q].entry].next = -1 - int32_t(lists_.size());
        const uint32_t blocks = uint32_t(end - q + 7) / 8, padded = uint32_t(pad_.size());
        lists_.push_back({uint32_t(q), uint32_t(end), padded, blocks, slots_});
        slots_ += uint32_t(end - q) + 1;
        pad_.resize(padded + 8 * blocks, ~Rank(0));
        for (size_t i = q; i < end; ++i) pad_[padded + (i - q)] = open_[i].r;
        q = end;
      }
      step_ = Step::kCount;
    } else {
      // Too many to collect: the buckets holding them split further, shared out by
      // the square root of their open counts (a split in 2^b leaves about 2^-b of
      // a bucket's open elements, so this spreads the budget best). A bucket of many
      // where the vote names a key (and its keys do not all tie) pivots on it.
      std::vector<Key> vote(fresh, Key(0));
      std::vector<uint32_t> votes(fresh, 0u);
      for (const Sums* s : sums) {
        for (size_t f = 0; f < fresh; ++f) {
          if (s->votes[f] > votes[f] || (s->votes[f] == votes[f] && s->votes[f] > 0 && s->vote[f] < vote[f])) {
            vote[f] = s->vote[f];
            votes[f] = s->votes[f];
          }
        }
      }
      add_children([&](uint32_t f) { return opened[f] > 0; }, [&](uint32_t f) { return std::sqrt(double(opened[f])); },
                   [&](uint32_t f, Key& key) {
                     key = vote[f];
                     return opened[f] >= kPivotMin && votes[f] > 0 && new_all_[f] != new_any_[f];
                   });
      step_ = Step::kHistogram;
    }
    if (step_ != Step::kHistogram) {
      std::vector<Key>().swap(new_all_);
      std::vector<Key>().swap(new_any_);
      std::vector<uint32_t>().swap(new_count_);
    }
    return;
  }
  if (step_ == Step::kCount) {
    std::vector<uint32_t> below(slots_, 0u);
    for (const Sums* s : sums) {
      for (size_t q = 0; q < below.size(); ++q) below[q] += s->below[q];
    }
    for (size_t i = 1; i < lists_.size(); ++i) {
      const List& l = lists_[i];
      uint32_t rank = entries_[open_[l.begin].entry].start;
      for (uint32_t q = l.begin; q < l.end; ++q) {
        rank += below[l.slot + (q - l.begin)];  // the members from open q - 1 (itself included) up to open q
        Open& o = open_[q];
        const uint32_t t = threshold(rank);
        const uint32_t u = (o.high >> 8) == (t >> 8) ? o.high | low8(uint32_t(uint64_t(o.r) & ((uint64_t(1) << index_bits_) - 1))) : o.high;
        o.keep = u < t ? 0u : 1u;
      }
    }
    step_ = Step::kDone;
  }
}

}  // namespace m2n2::cpu
