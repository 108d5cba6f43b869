// Task-vector merges on the GPU, the kernels and their per-thread bodies (torch-free;
// task_merge.cuh holds the design and the launchers, task_merge_common.cuh the segments,
// the plan and the helpers shared with PCB merging). The bodies are
// __host__ __device__ so that tests/native/task_merge_cuda_host_check.cu runs every
// block and thread of the planned launches on the CPU.
//
// The element maths is task_merge.h's (magnitude_key, dare_draw, combine_factors),
// in the order of the CPU kernel (csrc/cpu/task_merge_kernels.cpp), so that the two
// write the same bits.
#pragma once

#include <cuda_runtime.h>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <cstdint>
#include <cstring>

#include "common.cuh"
#include "m2n2/dtypes.h"
#include "m2n2/task_merge.h"
#include "task_merge_common.cuh"

namespace m2n2::cuda {

// What model k does with its deltas in one unit (fixed on the host).
enum class TaskMode : uint8_t { kAll, kNone, kSelect, kDraw };

// The call's settings, per unit (a kernel parameter: under 4 KB with the segment).
// The selection and statistics run on KV virtual models: the K models, or for
// magnitude_outliers 2K, virtual k (its `end` largest) and K + k (its `start` largest)
// both model k, the segments' model pointers doubled (task_virtual_models); the
// per-model arrays below are per virtual model, weight per model.
struct TaskParams {
  int K;
  int KV;
  Sparsify sparsify;
  Consensus consensus;
  Rescale rescale;
  bool normalize;
  bool wide;  // 64-bit magnitude keys (the unit holds an fp64 tensor)
  double lam;
  uint64_t seed;
  int64_t n;             // elements of the unit
  int64_t total_blocks;  // blocks of the unit, all segments
  double weight[kMaxModels];
  double host_scale[kMaxModels];  // 1, or 1 / rho for rescale "density"
  int64_t keep[kMaxModels];       // magnitude (outliers: each virtual model): elements to keep
  uint32_t dare_thr[kMaxModels];  // random: keep iff draw < this (dare_draw)
  TaskMode mode[kMaxModels];
};

// ---------------------------------------------------------------------------
// Element helpers.
// ---------------------------------------------------------------------------

// Key of |d| in the unit's width: a delta widened to fp64 (exactly) where the unit
// holds an fp64 tensor, as the CPU kernel does.
template <class C>
M2N2_HD uint64_t task_key(C d, bool wide) {
  return wide ? magnitude_key(double(d)) : uint64_t(magnitude_key(float(d)));
}

// lo8 of element i, out of line: the fused kernels inline dare_draws once per model
// (64 times where K > 8), and a Philox call inlined in each rare branch cost registers
// (and spills) that the common path paid for.
__host__ __device__ __noinline__ inline uint32_t dare_low8_call(uint64_t seed, uint64_t stream, uint64_t i) {
  return dare_low8(seed, stream, i);
}

// DARE draws of unit elements f0 .. f0 + V - 1 of one stream against the model's
// threshold thr, as task_merge.h's dare_draw (compares with thr as u24 does). The high
// halves come from the one or two 8-element Philox groups the run touches (the second
// only when it crosses a group boundary, and then only its words 0 and 1); the low
// bytes, one Philox call each, only where a high half ties with thr's (one element in
// 65,536), at one call site in a loop that is not unrolled. Words, halves and draws are
// picked by selects, not by indexing an array at a run-time offset, which would put the
// array in local memory.
template <int V>
M2N2_HD void dare_draws(uint64_t seed, uint64_t stream, uint64_t f0, uint32_t thr, uint32_t* draws) {
  static_assert(V >= 1 && V <= 4, "at most two groups");
  const uint64_t g0 = f0 >> 3;
  const int off = int(f0 & 7u);
  uint32_t a0, a1, a2, a3, b0 = 0, b1 = 0, b2 = 0, b3 = 0;
  dare_words(seed, stream, g0, a0, a1, a2, a3);
  if (off + V > 8) dare_words(seed, stream, g0 + 1, b0, b1, b2, b3);
  uint32_t ties = 0;  // bit j: element j's high half ties with thr's
  M2N2_UNROLL
  for (int j = 0; j < V; ++j) {
    const int q = off + j;  // 8 .. 10: elements 0 .. 2 of group g0 + 1
    const uint32_t hi16 =
        q < 8 ? dare_high16(uint64_t(q), a0, a1, a2, a3) : dare_high16(uint64_t(q - 8), b0, b1, b2, b3);
    draws[j] = hi16 << 8;
    ties |= uint32_t(hi16 == (thr >> 8)) << j;
  }
  if (ties != 0) {
#if defined(__CUDA_ARCH__)
#pragma unroll 1
#endif
    for (int t = 0; t < V; ++t) {
      if (((ties >> t) & 1u) == 0) continue;
      const uint32_t lo = dare_low8_call(seed, stream, f0 + uint64_t(t));
      M2N2_UNROLL
      for (int j = 0; j < V; ++j) draws[j] |= j == t ? lo : 0u;
    }
  }
}

// The bits of pass `pass` of the radix selection: [lo, hi), 11 bits from the top of
// the 31 (63) bits a magnitude key can use; the last digit may be narrower.
M2N2_HD int key_bits(bool wide) { return wide ? 63 : 31; }
M2N2_HD int radix_passes(bool wide) { return (key_bits(wide) + kDigitBits - 1) / kDigitBits; }
M2N2_HD int digit_hi(bool wide, int pass) { return key_bits(wide) - kDigitBits * pass; }
M2N2_HD int digit_lo(bool wide, int pass) {
  const int lo = digit_hi(wide, pass) - kDigitBits;
  return lo > 0 ? lo : 0;
}

// ---------------------------------------------------------------------------
// 0. Per-model state and the cleared histograms (one block).
// ---------------------------------------------------------------------------

M2N2_HD void init_model(const TaskParams& p, int k, ModelState* st) {
  ModelState s{};
  s.prefix = 0;
  s.remaining = p.keep[k];
  s.last_count = p.n;
  s.scale = p.host_scale[k];
  s.partial = 0;
  st[k] = s;
}

__global__ void __launch_bounds__(kThreads)
    init_kernel(const TaskParams p, ModelState* st, unsigned long long* hist, int64_t hist_bins) {
  if (threadIdx.x < unsigned(p.KV)) init_model(p, int(threadIdx.x), st);
  for (int64_t i = threadIdx.x; i < hist_bins; i += kThreads) hist[i] = 0;
}

// ---------------------------------------------------------------------------
// 1. Radix selection of the k-th largest key: histogram, then the chosen digit.
// ---------------------------------------------------------------------------

// Thread's elements j0 .. j0 + V - 1 (before `end`) of model k: counts the digit
// [lo, hi) of the keys whose bits from hi up equal `prefix`.
template <class T, int V>
M2N2_HD void histogram_thread(const TaskSegment& seg, int k, bool wide, int64_t j0, int64_t end, uint64_t prefix,
                              int lo, int hi, uint32_t* h) {
  using C = compute_t<T>;
  C b[V], m[V];
  load_elems<T, V>(static_cast<const T*>(seg.base), j0, end, b);
  load_elems<T, V>(static_cast<const T*>(seg.models[k]), j0, end, m);
  const uint64_t mask = (uint64_t(1) << (hi - lo)) - 1;
  M2N2_UNROLL
  for (int j = 0; j < V; ++j) {
    const uint64_t key = task_key<C>(m[j] - b[j], wide);
    if (j0 + j < end && (key >> hi) == prefix) shared_inc(h, uint32_t((key >> lo) & mask));
  }
}

// Grid (segment blocks, K): block (x, k) counts its chunk's digits of model k in shared
// memory and adds the nonzero bins to the unit's histogram of k (integer atomics: the
// totals do not depend on the order).
template <class T, int V>
__global__ void __launch_bounds__(kThreads)
    histogram_kernel(const TaskSegment seg, const TaskParams p, const ModelState* st, int pass,
                     unsigned long long* hist) {
  const int k = int(blockIdx.y);
  if (p.mode[k] != TaskMode::kSelect) return;
  __shared__ uint32_t h[kBins];
  for (int i = threadIdx.x; i < kBins; i += kThreads) h[i] = 0;
  __syncthreads();
  const uint64_t prefix = st[k].prefix;
  const int hi = digit_hi(p.wide, pass);
  const int lo = digit_lo(p.wide, pass);
  const int64_t begin = int64_t(blockIdx.x) * seg.chunk;
  const int64_t end = min64(seg.numel, begin + seg.chunk);
  for (int64_t j0 = begin + int64_t(threadIdx.x) * V; j0 < end; j0 += int64_t(kThreads) * V) {
    histogram_thread<T, V>(seg, k, p.wide, j0, end, prefix, lo, hi, h);
  }
  __syncthreads();
  unsigned long long* out = hist + int64_t(k) * kBins;
  for (int i = threadIdx.x; i < kBins; i += kThreads) {
    if (h[i] != 0) atomicAdd(out + i, static_cast<unsigned long long>(h[i]));
  }
}

// One block per model: the digit of its remaining-th largest key; clears the
// histogram for the next pass.
__global__ void __launch_bounds__(kThreads)
    select_digit_kernel(const TaskParams p, ModelState* st, unsigned long long* hist, int pass) {
  using Scan = cub::BlockScan<int64_t, kThreads>;
  __shared__ typename Scan::TempStorage temp;
  const int k = int(blockIdx.x);
  if (p.mode[k] != TaskMode::kSelect) return;
  unsigned long long* h = hist + int64_t(k) * kBins;
  const int tid = int(threadIdx.x);
  uint64_t counts[kBinsPerThread];
  const int64_t sum = select_thread_sum(h, tid, counts);
  const int64_t remaining = st[k].remaining;
  int64_t above = 0;
  Scan(temp).ExclusiveSum(sum, above);
  __syncthreads();  // every thread has read st[k] and its bins
  M2N2_UNROLL
  for (int i = 0; i < kBinsPerThread; ++i) h[kBins - 1 - (tid * kBinsPerThread + i)] = 0;
  const int width = digit_hi(p.wide, pass) - digit_lo(p.wide, pass);
  select_thread_find(counts, tid, above, remaining, width, pass + 1 == radix_passes(p.wide), st + k);
}

// ---------------------------------------------------------------------------
// 2. Statistics: l1 sums (fp64) and ties at the threshold, per block, then per model.
// ---------------------------------------------------------------------------

struct StatsAcc {
  double abs_sum;
  double kept_sum;  // magnitude: over key > threshold (the kept ties are added at the end)
  int64_t ties;
};

// What a virtual model's magnitude statistics count: kept_sum over the keys in
// [lo, hi), ties of the key `tie`. Magnitude: the keys above the threshold, the ties
// at it. magnitude_outliers' virtual k: the keys strictly inside its model's band
// (above virtual k's threshold, or all where it keeps all; below virtual K + k's,
// where that selects), the ties at virtual k's threshold where it selects.
struct StatsKeys {
  uint64_t lo, hi, tie;
};

constexpr uint64_t kNoKey = ~uint64_t(0);  // above every key (keys clear the top bit)

M2N2_HD StatsKeys stats_keys(const TaskParams& p, const ModelState* st, int k) {
  const uint64_t thr = st[k].prefix;
  if (p.KV == p.K || k >= p.K) return StatsKeys{thr + 1, kNoKey, thr};
  const bool top_sel = p.mode[p.K + k] == TaskMode::kSelect;
  const bool all = p.mode[k] == TaskMode::kAll;
  return StatsKeys{all ? 0 : thr + 1, top_sel ? st[p.K + k].prefix : kNoKey, all ? kNoKey : thr};
}

struct StatsAdd {
  M2N2_HD StatsAcc operator()(const StatsAcc& x, const StatsAcc& y) const {
    return StatsAcc{x.abs_sum + y.abs_sum, x.kept_sum + y.kept_sum, x.ties + y.ties};
  }
};

// Whether virtual model k needs the statistics pass (read from the state after the
// selection). magnitude_outliers: virtual k sums its model's band where either of the
// two selects (l1), virtual K + k counts only its ties.
M2N2_HD bool needs_stats(const TaskParams& p, const ModelState& s, int k) {
  if (p.KV > p.K) {
    const bool partial = p.mode[k] == TaskMode::kSelect && s.partial != 0;
    if (k >= p.K) return partial;
    const bool band = p.mode[k] == TaskMode::kSelect || p.mode[p.K + k] == TaskMode::kSelect;
    return partial || (p.rescale == Rescale::kL1 && band);
  }
  const bool sparse = p.mode[k] == TaskMode::kSelect || p.mode[k] == TaskMode::kDraw;
  return sparse && (p.rescale == Rescale::kL1 || s.partial != 0);
}

template <class T, int V>
M2N2_HD void stats_thread(const TaskSegment& seg, const TaskParams& p, int k, StatsKeys keys, int64_t j0,
                          int64_t end, StatsAcc& acc) {
  using C = compute_t<T>;
  C b[V], m[V];
  load_elems<T, V>(static_cast<const T*>(seg.base), j0, end, b);
  load_elems<T, V>(static_cast<const T*>(seg.models[k]), j0, end, m);
  if (p.mode[k] != TaskMode::kDraw) {
    M2N2_UNROLL
    for (int j = 0; j < V; ++j) {
      if (j0 + j < end) {
        const C d = m[j] - b[j];
        const double ad = fabs(double(d));
        const uint64_t key = task_key<C>(d, p.wide);
        acc.abs_sum += ad;
        acc.kept_sum += key >= keys.lo && key < keys.hi ? ad : 0.0;
        acc.ties += key == keys.tie ? 1 : 0;
      }
    }
  } else {
    uint32_t draws[V];
    dare_draws<V>(p.seed, kDareStream + uint64_t(k), uint64_t(seg.flat + j0), p.dare_thr[k], draws);
    M2N2_UNROLL
    for (int j = 0; j < V; ++j) {
      if (j0 + j < end) {
        const double ad = fabs(double(m[j] - b[j]));
        acc.abs_sum += ad;
        acc.kept_sum += draws[j] < p.dare_thr[k] ? ad : 0.0;
      }
    }
  }
}

// Grid (segment blocks, K): block (x, k) writes its chunk's sums of model k at
// [k, block0 + x] of the partials (CUB's block reduction: a fixed order).
template <class T, int V>
__global__ void __launch_bounds__(kThreads)
    stats_kernel(const TaskSegment seg, const TaskParams p, const ModelState* st, double* abs_part,
                 double* kept_part, int64_t* tie_part) {
  using Reduce = cub::BlockReduce<StatsAcc, kThreads>;
  __shared__ typename Reduce::TempStorage temp;
  const int k = int(blockIdx.y);
  if (!needs_stats(p, st[k], k)) return;
  const StatsKeys keys = stats_keys(p, st, k);
  const int64_t begin = int64_t(blockIdx.x) * seg.chunk;
  const int64_t end = min64(seg.numel, begin + seg.chunk);
  StatsAcc acc{0.0, 0.0, 0};
  for (int64_t j0 = begin + int64_t(threadIdx.x) * V; j0 < end; j0 += int64_t(kThreads) * V) {
    stats_thread<T, V>(seg, p, k, keys, j0, end, acc);
  }
  const StatsAcc total = Reduce(temp).Reduce(acc, StatsAdd());
  if (threadIdx.x == 0) {
    const int64_t i = int64_t(k) * p.total_blocks + seg.block0 + blockIdx.x;
    abs_part[i] = total.abs_sum;
    kept_part[i] = total.kept_sum;
    tie_part[i] = total.ties;
  }
}

// Thread tid of the finishing block adds blocks [tid per, (tid + 1) per) in order.
M2N2_HD StatsAcc finish_thread_sum(const double* abs_part, const double* kept_part, const int64_t* tie_part,
                                   int64_t blocks, int tid) {
  const int64_t per = ceil_div(blocks, kThreads);
  StatsAcc acc{0.0, 0.0, 0};
  for (int64_t i = tid * per; i < min64(blocks, (tid + 1) * per); ++i) {
    acc.abs_sum += abs_part[i];
    acc.kept_sum += kept_part[i];
    acc.ties += tie_part[i];
  }
  return acc;
}

// The thread's blocks' tie counts become the ties before each block (exclusive scan;
// `before`: the ties of the blocks before the thread's).
M2N2_HD void finish_thread_ties(int64_t* tie_part, int64_t blocks, int tid, int64_t before) {
  const int64_t per = ceil_div(blocks, kThreads);
  for (int64_t i = tid * per; i < min64(blocks, (tid + 1) * per); ++i) {
    const int64_t c = tie_part[i];
    tie_part[i] = before;
    before += c;
  }
}

// The |d| of a key of the unit's width.
M2N2_HD double key_value(uint64_t key, bool wide) {
  return wide ? bits_double(key) : double(bits_float(uint32_t(key)));
}

// The l1 scale s_k from the unit's sums: the kept ties all have |d| = their threshold's
// value. magnitude_outliers (virtual k, which summed its model's band): the band's
// ties at virtual K + k's threshold (those it does not keep) and at virtual k's (those
// it keeps), or, where the two thresholds are one key, the ranks between the two needs.
M2N2_HD void finish_scale(const TaskParams& p, int k, StatsAcc total, ModelState* st) {
  if (p.rescale != Rescale::kL1 || k >= p.K) return;  // (virtual K + k: ties only)
  ModelState& s = st[k];
  const bool sel = p.mode[k] == TaskMode::kSelect;
  double kept = total.kept_sum;
  if (p.KV > p.K) {
    const ModelState& top = st[p.K + k];
    const bool top_sel = p.mode[p.K + k] == TaskMode::kSelect;
    if (sel && top_sel && s.prefix == top.prefix) {
      kept += double(s.remaining - top.remaining) * key_value(s.prefix, p.wide);
    } else {
      if (top_sel) kept += double(top.last_count - top.remaining) * key_value(top.prefix, p.wide);
      if (sel) kept += double(s.remaining) * key_value(s.prefix, p.wide);
    }
  } else if (sel) {
    kept += double(s.remaining) * key_value(s.prefix, p.wide);
  }
  if (total.abs_sum >= kRescaleMin && kept >= kRescaleMin) s.scale = total.abs_sum / kept;
}

// One block per model: the totals (per-thread ranges in order, then CUB's fixed tree)
// and the tie offsets of every block.
__global__ void __launch_bounds__(kThreads)
    finish_stats_kernel(const TaskParams p, ModelState* st, const double* abs_part, const double* kept_part,
                        int64_t* tie_part) {
  using Reduce = cub::BlockReduce<StatsAcc, kThreads>;
  using Scan = cub::BlockScan<int64_t, kThreads>;
  __shared__ union {
    typename Reduce::TempStorage reduce;
    typename Scan::TempStorage scan;
  } temp;
  const int k = int(blockIdx.x);
  if (!needs_stats(p, st[k], k)) return;
  const int tid = int(threadIdx.x);
  const int64_t B = p.total_blocks;
  const int64_t row = int64_t(k) * B;
  const StatsAcc mine = finish_thread_sum(abs_part + row, kept_part + row, tie_part + row, B, tid);
  const StatsAcc total = Reduce(temp.reduce).Reduce(mine, StatsAdd());
  __syncthreads();  // temp is reused
  int64_t before = 0;
  Scan(temp.scan).ExclusiveSum(mine.ties, before);
  if (st[k].partial != 0) finish_thread_ties(tie_part + row, B, tid, before);
  if (tid == 0) finish_scale(p, k, total, st);
}

// ---------------------------------------------------------------------------
// 3. The fused pass: mask, elect, mix, write.
// ---------------------------------------------------------------------------

// What the fused pass needs of model k (a row of the block's table in shared memory).
struct FusedModel {
  uint64_t threshold;
  int64_t need;  // ties to keep (partial only)
  double scale;
  uint32_t dare_thr;
  TaskMode mode;
  bool partial;
};

M2N2_HD FusedModel fused_model(const TaskParams& p, const ModelState& s, int k) {
  FusedModel m;
  m.threshold = s.prefix;
  m.need = s.remaining;
  m.scale = s.scale;
  m.dare_thr = p.dare_thr[k];
  m.mode = p.mode[k];
  m.partial = p.mode[k] == TaskMode::kSelect && s.partial != 0;
  return m;
}

// Ties at the threshold among the thread's elements j0 .. j0 + V - 1 (before `end`).
template <class T, int V>
M2N2_HD int64_t count_ties_thread(const TaskSegment& seg, bool wide, int k, uint64_t threshold, int64_t j0,
                                  int64_t end) {
  using C = compute_t<T>;
  if (j0 >= end) return 0;
  C b[V], m[V];
  load_elems<T, V>(static_cast<const T*>(seg.base), j0, end, b);
  load_elems<T, V>(static_cast<const T*>(seg.models[k]), j0, end, m);
  int64_t c = 0;
  M2N2_UNROLL
  for (int j = 0; j < V; ++j) c += (j0 + j < end && task_key<C>(m[j] - b[j], wide) == threshold) ? 1 : 0;
  return c;
}

// The model count passed to combine_factors: KMAX when the factor arrays are in
// registers (padding models add +0 factors and +0 weights, which change no sum: a sum
// that starts at +0 is never -0), else K.
template <int KMAX>
M2N2_HD int combine_count(int K) {
  return KMAX <= kSmallModels ? KMAX : K;
}

// Rows of the fused pass's tie ranks: the virtual models of up to KMAX models.
template <int KMAX>
constexpr int kFusedRows = 2 * KMAX < kMaxModels ? 2 * KMAX : kMaxModels;

// Whether a virtual model keeps an element of key `key` (`valid`: inside the segment):
// all, none, or above its threshold with ties kept while rank < need (rank counts the
// virtual model's ties, lowest index first).
M2N2_HD bool virtual_keeps(const FusedModel& md, uint64_t key, bool valid, int64_t& rank) {
  if (md.mode != TaskMode::kSelect) return md.mode == TaskMode::kAll;
  if (key != md.threshold) return key > md.threshold;
  return valid && (!md.partial || rank++ < md.need);
}

// The weights in c (zero past K) and the divisor without consensus: their sum, 1 where
// |sum| < 1e-8 (the CPU kernel's rule and order).
template <class C, int KMAX>
M2N2_HD C fused_weights(const TaskParams& p, C* w) {
  C wsum = C(0);
  M2N2_UNROLL
  for (int k = 0; k < KMAX; ++k) {
    w[k] = k < p.K ? C(p.weight[k]) : C(0);
    if (k < p.K) wsum = wsum + w[k];
  }
  return (wsum < C(0) ? -wsum : wsum) < C(kDivisorMin) ? C(1) : wsum;
}

// Thread's elements j0 .. j0 + V - 1 (before `end`): e_k for every model, then
// combine_factors per element. rank[k]: for a virtual model with partial ties, the
// unit rank of the first tie among these elements (ties kept while rank < need).
// magnitude_outliers keeps an element of model k iff virtual k keeps it and virtual
// K + k does not.
template <class T, int V, int KMAX>
M2N2_HD void fused_thread(const TaskSegment& seg, const TaskParams& p, const FusedModel* models,
                          const compute_t<T>* w, compute_t<T> plain_divisor, int64_t j0, int64_t end, int64_t* rank) {
  using C = compute_t<T>;
  const int K = p.K;
  const bool band = p.KV > K;  // magnitude_outliers
  C b[V];
  load_elems<T, V>(static_cast<const T*>(seg.base), j0, end, b);
  C e[KMAX * V];
  M2N2_UNROLL
  for (int k = 0; k < KMAX; ++k) {
    if (k >= K) {
      M2N2_UNROLL
      for (int j = 0; j < V; ++j) e[k * V + j] = C(0);
      continue;
    }
    const FusedModel md = models[k];
    const FusedModel top = band ? models[K + k] : md;  // (read only for a band)
    C m[V];
    load_elems<T, V>(static_cast<const T*>(seg.models[k]), j0, end, m);
    uint32_t draws[V];
    if (md.mode == TaskMode::kDraw) {
      dare_draws<V>(p.seed, kDareStream + uint64_t(k), uint64_t(seg.flat + j0), md.dare_thr, draws);
    }
    const C s = C(md.scale);
    M2N2_UNROLL
    for (int j = 0; j < V; ++j) {
      const C d = m[j] - b[j];
      bool keep = md.mode == TaskMode::kAll;
      if (md.mode == TaskMode::kSelect || band) {
        const uint64_t key = task_key<C>(d, p.wide);
        const bool valid = j0 + j < end;
        keep = virtual_keeps(md, key, valid, rank[k]);
        if (band) keep = !virtual_keeps(top, key, valid, rank[K + k]) && keep;  // both count their ties
      } else if (md.mode == TaskMode::kDraw) {
        keep = draws[j] < md.dare_thr;
      }
      e[k * V + j] = keep ? (d * s) * w[k] : C(0);
    }
  }
  C out[V];
  const C lam = C(p.lam);
  M2N2_UNROLL
  for (int j = 0; j < V; ++j) {
    out[j] = combine_factors<C>(e + j, V, w, combine_count<KMAX>(K), p.consensus, p.normalize, lam, b[j],
                                plain_divisor);
  }
  store_elems<T, V>(static_cast<T*>(seg.out), j0, end, out);
}

// One block per chunk, in steps of kThreads V elements (consecutive threads,
// consecutive elements: the thread order is the index order). Virtual models with
// partial ties: the ties before each step's thread come from a block scan of the threads'
// counts, started at the block's offset (finish_stats_kernel), so ties are kept
// lowest index first whatever the launch.
template <class T, int V, int KMAX>
__global__ void __launch_bounds__(kThreads)
    fused_kernel(const TaskSegment seg, const TaskParams p, const ModelState* st, const int64_t* tie_start) {
  using Scan = cub::BlockScan<int64_t, kThreads>;
  __shared__ typename Scan::TempStorage temp;
  __shared__ FusedModel models[kMaxModels];
  const int tid = int(threadIdx.x);
  if (tid < p.KV) models[tid] = fused_model(p, st[tid], tid);
  __syncthreads();
  compute_t<T> w[KMAX];
  const compute_t<T> plain_divisor = fused_weights<compute_t<T>, KMAX>(p, w);
  bool any_partial = false;
  for (int k = 0; k < p.KV; ++k) any_partial |= models[k].partial;
  const int64_t begin = int64_t(blockIdx.x) * seg.chunk;
  const int64_t end = min64(seg.numel, begin + seg.chunk);
  int64_t running[kFusedRows<KMAX>];  // partial virtual models: ties before the current step
  int64_t rank[kFusedRows<KMAX>];
  if (any_partial) {
    for (int k = 0; k < p.KV; ++k) {
      running[k] = models[k].partial ? tie_start[int64_t(k) * p.total_blocks + seg.block0 + blockIdx.x] : 0;
    }
  }
  for (int64_t t0 = begin; t0 < end; t0 += int64_t(kThreads) * V) {
    const int64_t j0 = t0 + int64_t(tid) * V;
    if (any_partial) {  // block-uniform
      for (int k = 0; k < p.KV; ++k) {
        if (!models[k].partial) continue;
        const int64_t c = count_ties_thread<T, V>(seg, p.wide, k, models[k].threshold, j0, end);
        int64_t before = 0, step = 0;
        Scan(temp).ExclusiveSum(c, before, step);
        __syncthreads();  // temp is reused
        rank[k] = running[k] + before;
        running[k] += step;
      }
    }
    if (j0 < end) fused_thread<T, V, KMAX>(seg, p, models, w, plain_divisor, j0, end, rank);
  }
}

}  // namespace m2n2::cuda
