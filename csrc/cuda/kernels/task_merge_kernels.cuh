// Task-vector merges on the GPU, the kernels and their per-thread bodies (torch-free;
// task_merge.cuh holds the design and the launchers, task_merge_common.cuh the segments,
// the plan and the helpers shared with PCB merging). The bodies are
// __host__ __device__ so that tests/native/task_merge_cuda_host_check.cu runs every
// block and thread of the planned launches on the CPU.
//
// The element maths is task_merge.h's (magnitude_key, dare_draws4, combine_factors),
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
struct TaskParams {
  int K;
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
  int64_t keep[kMaxModels];       // magnitude: elements to keep
  uint32_t dare_thr[kMaxModels];  // random: keep iff draw24 < this
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

// The 24-bit DARE draws of unit elements f0 .. f0 + V - 1 of one stream: the Philox
// groups they touch (one or two), word i % 4 of group i / 4.
// (Words picked by selects, not by indexing an array at a run-time offset, which
// would put the array in local memory.)
M2N2_HD uint32_t pick_word(int q, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3) {
  return q == 0 ? a0 : q == 1 ? a1 : q == 2 ? a2 : a3;
}

template <int V>
M2N2_HD void dare_draws(uint64_t seed, uint64_t stream, uint64_t f0, uint32_t* draws) {
  static_assert(V >= 1 && V <= 4, "at most two groups");
  const uint64_t g0 = f0 >> 2;
  const int off = int(f0 & 3u);
  uint32_t a0, a1, a2, a3, b0 = 0, b1 = 0, b2 = 0, b3 = 0;
  dare_draws4(seed, stream, g0, a0, a1, a2, a3);
  if (off + V > 4) dare_draws4(seed, stream, g0 + 1, b0, b1, b2, b3);
  M2N2_UNROLL
  for (int j = 0; j < V; ++j) {
    const int q = off + j;
    draws[j] = q < 4 ? pick_word(q, a0, a1, a2, a3) : pick_word(q - 4, b0, b1, b2, b3);
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
  if (threadIdx.x < unsigned(p.K)) init_model(p, int(threadIdx.x), st);
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

struct StatsAdd {
  M2N2_HD StatsAcc operator()(const StatsAcc& x, const StatsAcc& y) const {
    return StatsAcc{x.abs_sum + y.abs_sum, x.kept_sum + y.kept_sum, x.ties + y.ties};
  }
};

// Whether model k needs the statistics pass (read from the state after the selection).
M2N2_HD bool needs_stats(const TaskParams& p, const ModelState& s, int k) {
  const bool sparse = p.mode[k] == TaskMode::kSelect || p.mode[k] == TaskMode::kDraw;
  return sparse && (p.rescale == Rescale::kL1 || s.partial != 0);
}

template <class T, int V>
M2N2_HD void stats_thread(const TaskSegment& seg, const TaskParams& p, int k, uint64_t threshold, int64_t j0,
                          int64_t end, StatsAcc& acc) {
  using C = compute_t<T>;
  C b[V], m[V];
  load_elems<T, V>(static_cast<const T*>(seg.base), j0, end, b);
  load_elems<T, V>(static_cast<const T*>(seg.models[k]), j0, end, m);
  if (p.mode[k] == TaskMode::kSelect) {
    M2N2_UNROLL
    for (int j = 0; j < V; ++j) {
      if (j0 + j < end) {
        const C d = m[j] - b[j];
        const double ad = fabs(double(d));
        const uint64_t key = task_key<C>(d, p.wide);
        acc.abs_sum += ad;
        acc.kept_sum += key > threshold ? ad : 0.0;
        acc.ties += key == threshold ? 1 : 0;
      }
    }
  } else {
    uint32_t draws[V];
    dare_draws<V>(p.seed, kDareStream + uint64_t(k), uint64_t(seg.flat + j0), draws);
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
  const ModelState s = st[k];
  if (!needs_stats(p, s, k)) return;
  const int64_t begin = int64_t(blockIdx.x) * seg.chunk;
  const int64_t end = min64(seg.numel, begin + seg.chunk);
  StatsAcc acc{0.0, 0.0, 0};
  for (int64_t j0 = begin + int64_t(threadIdx.x) * V; j0 < end; j0 += int64_t(kThreads) * V) {
    stats_thread<T, V>(seg, p, k, s.prefix, j0, end, acc);
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

// The scale s_k from the unit's sums (the kept ties all have |d| = the threshold's value).
M2N2_HD void finish_scale(const TaskParams& p, int k, StatsAcc total, ModelState* s) {
  if (p.rescale != Rescale::kL1) return;
  double kept = total.kept_sum;
  if (p.mode[k] == TaskMode::kSelect) {
    const double at = p.wide ? bits_double(s->prefix) : double(bits_float(uint32_t(s->prefix)));
    kept += double(s->remaining) * at;
  }
  if (total.abs_sum >= kRescaleMin && kept >= kRescaleMin) s->scale = total.abs_sum / kept;
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
  if (tid == 0) finish_scale(p, k, total, st + k);
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
// combine_factors per element. rank[k]: for a model with partial ties, the unit rank
// of the first tie among these elements (ties kept while rank < need).
template <class T, int V, int KMAX>
M2N2_HD void fused_thread(const TaskSegment& seg, const TaskParams& p, const FusedModel* models,
                          const compute_t<T>* w, compute_t<T> plain_divisor, int64_t j0, int64_t end, int64_t* rank) {
  using C = compute_t<T>;
  const int K = p.K;
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
    C m[V];
    load_elems<T, V>(static_cast<const T*>(seg.models[k]), j0, end, m);
    uint32_t draws[V];
    if (md.mode == TaskMode::kDraw) dare_draws<V>(p.seed, kDareStream + uint64_t(k), uint64_t(seg.flat + j0), draws);
    const C s = C(md.scale);
    M2N2_UNROLL
    for (int j = 0; j < V; ++j) {
      const C d = m[j] - b[j];
      bool keep = md.mode == TaskMode::kAll;
      if (md.mode == TaskMode::kSelect) {
        const uint64_t key = task_key<C>(d, p.wide);
        keep = key > md.threshold;
        if (key == md.threshold && j0 + j < end) keep = md.partial ? rank[k]++ < md.need : true;
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
// consecutive elements: the thread order is the index order). Models with partial
// ties: the ties before each step's thread come from a block scan of the threads'
// counts, started at the block's offset (finish_stats_kernel), so ties are kept
// lowest index first whatever the launch.
template <class T, int V, int KMAX>
__global__ void __launch_bounds__(kThreads)
    fused_kernel(const TaskSegment seg, const TaskParams p, const ModelState* st, const int64_t* tie_start) {
  using Scan = cub::BlockScan<int64_t, kThreads>;
  __shared__ typename Scan::TempStorage temp;
  __shared__ FusedModel models[kMaxModels];
  const int tid = int(threadIdx.x);
  if (tid < p.K) models[tid] = fused_model(p, st[tid], tid);
  __syncthreads();
  compute_t<T> w[KMAX];
  const compute_t<T> plain_divisor = fused_weights<compute_t<T>, KMAX>(p, w);
  bool any_partial = false;
  for (int k = 0; k < p.K; ++k) any_partial |= models[k].partial;
  const int64_t begin = int64_t(blockIdx.x) * seg.chunk;
  const int64_t end = min64(seg.numel, begin + seg.chunk);
  int64_t running[KMAX];  // partial models: ties before the current step
  int64_t rank[KMAX];
  if (any_partial) {
    for (int k = 0; k < p.K; ++k) {
      running[k] = models[k].partial ? tie_start[int64_t(k) * p.total_blocks + seg.block0 + blockIdx.x] : 0;
    }
  }
  for (int64_t t0 = begin; t0 < end; t0 += int64_t(kThreads) * V) {
    const int64_t j0 = t0 + int64_t(tid) * V;
    if (any_partial) {  // block-uniform
      for (int k = 0; k < p.K; ++k) {
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
