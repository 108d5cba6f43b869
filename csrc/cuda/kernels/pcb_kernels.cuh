// PCB merging on the GPU, the kernels and their per-thread bodies (torch-free;
// pcb.cuh holds the design, the plan and the launchers). The bodies are
// __host__ __device__ so that tests/native/pcb_cuda_host_check.cu runs every block and
// thread of the planned launches on the CPU.
//
// The element maths is pcb.h's (pcb_score, pcb_scale, pcb_signed, ...), in the order
// of the CPU kernel (csrc/cpu/pcb_kernels.cpp), so that the two write the same bits.
// The segments, loads, stores and the digit choice of a radix pass are task_merge's
// (task_merge_common.cuh).
#pragma once

#include <cuda_runtime.h>

#include <cub/block/block_scan.cuh>

#include <cstdint>

#include "common.cuh"
#include "m2n2/dtypes.h"
#include "m2n2/pcb.h"
#include "task_merge_common.cuh"

namespace m2n2::cuda {

// Order statistics per model: ranks int(n c) and int(n (1 - c) - 1) of |d| (the clamp
// bounds), then int(n (1 - ratio)) and n - 1 of the scores (threshold, maximum).
enum PcbRank : int { kPcbLo, kPcbHi, kPcbTheta, kPcbTop, kPcbRanks };

// The call's settings, per unit (a kernel parameter, with the segment).
struct PcbParams {
  int K;
  bool wide;             // the unit computes in fp64 (it holds an fp64 tensor)
  double lam;
  int64_t n;             // elements of the unit
  int64_t total_blocks;  // blocks of the unit, all segments
  int64_t rank[kPcbRanks];
};

// The selection's targets: state [phase][model][2] (phase 0: magnitudes, ranks lo and
// hi; phase 1: scores, ranks theta and top), task_merge's ModelState counting from the
// top: remaining = n - rank (the (n - rank)-th largest key is the rank-th smallest).
M2N2_HD int pcb_target(int K, int phase, int k, int i) { return (phase * K + k) * 2 + i; }

// Key bits per phase: magnitudes use 31 (63) bits, scores all 32 (64).
M2N2_HD int pcb_key_bits(bool wide, int phase) { return (wide ? 63 : 31) + phase; }
M2N2_HD int pcb_passes(int bits) { return (bits + kDigitBits - 1) / kDigitBits; }
M2N2_HD int pcb_digit_hi(int bits, int pass) { return bits - kDigitBits * pass; }
M2N2_HD int pcb_digit_lo(int bits, int pass) {
  const int lo = pcb_digit_hi(bits, pass) - kDigitBits;
  return lo > 0 ? lo : 0;
}
// The key's bits from hi up (none when hi is 64: a shift by 64 is undefined).
M2N2_HD uint64_t pcb_high(uint64_t key, int hi) { return hi >= 64 ? 0 : key >> hi; }

// A model's statistics as values of the unit's compute type U.
template <class U>
M2N2_HD U pcb_magnitude_value(uint64_t key) {
  if constexpr (sizeof(U) == 8) {
    return bits_double(key);
  } else {
    return bits_float(uint32_t(key));
  }
}
template <class U>
M2N2_HD U pcb_score_value(uint64_t key) {
  if constexpr (sizeof(U) == 8) {
    return score_from_key(key);
  } else {
    return score_from_key(uint32_t(key));
  }
}

template <class U>
struct PcbModel {
  U lo, hi, theta, top;
  PcbRange<U> mag, drop;
};

// Model k's statistics after the selections (the prefixes are then whole keys).
template <class U>
M2N2_HD PcbModel<U> pcb_model(const ModelState* st, int K, int k) {
  PcbModel<U> m;
  m.lo = pcb_magnitude_value<U>(st[pcb_target(K, 0, k, 0)].prefix);
  m.hi = pcb_magnitude_value<U>(st[pcb_target(K, 0, k, 1)].prefix);
  m.theta = pcb_score_value<U>(st[pcb_target(K, 1, k, 0)].prefix);
  m.top = pcb_score_value<U>(st[pcb_target(K, 1, k, 1)].prefix);
  m.mag = pcb_range(m.lo, m.hi);
  m.drop = pcb_range(m.theta, m.top);
  return m;
}

// ---------------------------------------------------------------------------
// 0. The targets' state and the cleared histograms (one block).
// ---------------------------------------------------------------------------

M2N2_HD void pcb_init_target(const PcbParams& p, int t, ModelState* st) {
  ModelState s{};
  const int phase = t / (2 * p.K);
  s.prefix = 0;
  s.remaining = p.n - p.rank[2 * phase + (t & 1)];
  s.last_count = p.n;
  s.scale = 0.0;
  s.partial = 0;
  st[t] = s;
}

__global__ void __launch_bounds__(kThreads)
    pcb_init_kernel(const PcbParams p, ModelState* st, unsigned long long* hist) {
  for (int t = int(threadIdx.x); t < 4 * p.K; t += kThreads) pcb_init_target(p, t, st);
  for (int64_t i = threadIdx.x; i < int64_t(2 * p.K) * kBins; i += kThreads) hist[i] = 0;
}

// ---------------------------------------------------------------------------
// 1. Radix selection of both targets of every model: histograms, then digits.
// ---------------------------------------------------------------------------

// Counts the digit [lo, hi) of a key in each target's histogram whose prefix it matches
// (both, while the two prefixes are equal).
M2N2_HD void pcb_count(uint64_t key, uint64_t prefix0, uint64_t prefix1, int lo, int hi, uint32_t* h0,
                       uint32_t* h1) {
  const uint64_t high = pcb_high(key, hi);
  const uint32_t bin = uint32_t((key >> lo) & ((uint64_t(1) << (hi - lo)) - 1));
  if (high == prefix0) shared_inc(h0, bin);
  if (high == prefix1) shared_inc(h1, bin);
}

// Thread's elements j0 .. j0 + V - 1 (before `end`) of model k: the keys of |d| (d
// formed in the position's compute type, widened to U).
template <class T, class U, int V>
M2N2_HD void pcb_magnitude_thread(const TaskSegment& seg, int k, int64_t j0, int64_t end, uint64_t prefix0,
                                  uint64_t prefix1, int lo, int hi, uint32_t* h0, uint32_t* h1) {
  using C = compute_t<T>;
  C b[V], m[V];
  load_elems<T, V>(static_cast<const T*>(seg.base), j0, end, b);
  load_elems<T, V>(static_cast<const T*>(seg.models[k]), j0, end, m);
  M2N2_UNROLL
  for (int j = 0; j < V; ++j) {
    if (j0 + j < end) pcb_count(uint64_t(magnitude_key(U(m[j] - b[j]))), prefix0, prefix1, lo, hi, h0, h1);
  }
}

// The K deltas' sum S (in U, from +0, model order) and model k's delta over the
// thread's elements.
template <class T, class U, int V>
M2N2_HD void pcb_deltas(const TaskSegment& seg, int K, int k, int64_t j0, int64_t end, const compute_t<T>* b, U* S,
                        U* dk) {
  using C = compute_t<T>;
  M2N2_UNROLL
  for (int j = 0; j < V; ++j) {
    S[j] = U(0);
    dk[j] = U(0);
  }
  for (int q = 0; q < K; ++q) {
    C m[V];
    load_elems<T, V>(static_cast<const T*>(seg.models[q]), j0, end, m);
    M2N2_UNROLL
    for (int j = 0; j < V; ++j) {
      const U d = U(m[j] - b[j]);
      S[j] = S[j] + d;
      if (q == k) dk[j] = d;
    }
  }
}

// Thread's elements of model k: the keys of its scores g (every delta is needed for S).
template <class T, class U, int V>
M2N2_HD void pcb_score_thread(const TaskSegment& seg, int K, int k, U mlo, U mhi, const PcbRange<U>& r, int64_t j0,
                              int64_t end, uint64_t prefix0, uint64_t prefix1, int lo, int hi, uint32_t* h0,
                              uint32_t* h1) {
  using C = compute_t<T>;
  C b[V];
  load_elems<T, V>(static_cast<const T*>(seg.base), j0, end, b);
  U S[V], dk[V];
  pcb_deltas<T, U, V>(seg, K, k, j0, end, b, S, dk);
  M2N2_UNROLL
  for (int j = 0; j < V; ++j) {
    if (j0 + j < end) {
      const U g = pcb_score<U>(dk[j], S[j], mlo, mhi, r, U(K));
      pcb_count(uint64_t(score_key(g)), prefix0, prefix1, lo, hi, h0, h1);
    }
  }
}

// Grid (segment blocks, K): block (x, k) counts its chunk's digits of model k's two
// targets of the phase (0: |d|, 1: scores) in shared memory and adds the nonzero bins
// to the unit's [2K, 2048] histograms (integer atomics: the totals do not depend on
// the order).
template <class T, class U, int V, int PHASE>
__global__ void __launch_bounds__(kThreads)
    pcb_histogram_kernel(const TaskSegment seg, const PcbParams p, const ModelState* st, int pass,
                         unsigned long long* hist) {
  const int k = int(blockIdx.y);
  __shared__ uint32_t h[2 * kBins];
  for (int i = threadIdx.x; i < 2 * kBins; i += kThreads) h[i] = 0;
  __syncthreads();
  const uint64_t prefix0 = st[pcb_target(p.K, PHASE, k, 0)].prefix;
  const uint64_t prefix1 = st[pcb_target(p.K, PHASE, k, 1)].prefix;
  const int bits = pcb_key_bits(p.wide, PHASE);
  const int hi = pcb_digit_hi(bits, pass);
  const int lo = pcb_digit_lo(bits, pass);
  const int64_t begin = int64_t(blockIdx.x) * seg.chunk;
  const int64_t end = min64(seg.numel, begin + seg.chunk);
  if constexpr (PHASE == 0) {
    for (int64_t j0 = begin + int64_t(threadIdx.x) * V; j0 < end; j0 += int64_t(kThreads) * V) {
      pcb_magnitude_thread<T, U, V>(seg, k, j0, end, prefix0, prefix1, lo, hi, h, h + kBins);
    }
  } else {
    const U mlo = pcb_magnitude_value<U>(st[pcb_target(p.K, 0, k, 0)].prefix);
    const U mhi = pcb_magnitude_value<U>(st[pcb_target(p.K, 0, k, 1)].prefix);
    const PcbRange r = pcb_range(mlo, mhi);
    for (int64_t j0 = begin + int64_t(threadIdx.x) * V; j0 < end; j0 += int64_t(kThreads) * V) {
      pcb_score_thread<T, U, V>(seg, p.K, k, mlo, mhi, r, j0, end, prefix0, prefix1, lo, hi, h, h + kBins);
    }
  }
  __syncthreads();
  unsigned long long* out = hist + int64_t(2 * k) * kBins;
  for (int i = threadIdx.x; i < 2 * kBins; i += kThreads) {
    if (h[i] != 0) atomicAdd(out + i, static_cast<unsigned long long>(h[i]));
  }
}

// One block per target of the phase (2K): the digit of its remaining-th largest key
// (task_merge's block scan from the top bin); clears the histogram for the next pass.
__global__ void __launch_bounds__(kThreads)
    pcb_select_kernel(ModelState* st, unsigned long long* hist, int width, bool last) {
  using Scan = cub::BlockScan<int64_t, kThreads>;
  __shared__ typename Scan::TempStorage temp;
  const int t = int(blockIdx.x);
  unsigned long long* h = hist + int64_t(t) * kBins;
  const int tid = int(threadIdx.x);
  uint64_t counts[kBinsPerThread];
  const int64_t sum = select_thread_sum(h, tid, counts);
  const int64_t remaining = st[t].remaining;
  int64_t above = 0;
  Scan(temp).ExclusiveSum(sum, above);
  __syncthreads();  // every thread has read st[t] and its bins
  M2N2_UNROLL
  for (int i = 0; i < kBinsPerThread; ++i) h[kBins - 1 - (tid * kBinsPerThread + i)] = 0;
  select_thread_find(counts, tid, above, remaining, width, last, st + t);
}

// ---------------------------------------------------------------------------
// 2. The fused pass: score, scale, mix, write.
// ---------------------------------------------------------------------------

// Thread's elements j0 .. j0 + V - 1 (before `end`): S from the K deltas, then each
// model's share in model order (num += t scale, den += scale, from +0), then
// out = T(C(base) + merged lam) as the CPU kernel rounds it.
template <class T, class U, int V>
M2N2_HD void pcb_fused_thread(const TaskSegment& seg, const PcbParams& p, const PcbModel<U>* models, int64_t j0,
                              int64_t end) {
  using C = compute_t<T>;
  const int K = p.K;
  C b[V];
  load_elems<T, V>(static_cast<const T*>(seg.base), j0, end, b);
  U S[V], unused[V];
  pcb_deltas<T, U, V>(seg, K, -1, j0, end, b, S, unused);
  U num[V], den[V];
  M2N2_UNROLL
  for (int j = 0; j < V; ++j) {
    num[j] = U(0);
    den[j] = U(0);
  }
  for (int k = 0; k < K; ++k) {
    const PcbModel<U> md = models[k];
    C m[V];
    load_elems<T, V>(static_cast<const T*>(seg.models[k]), j0, end, m);
    M2N2_UNROLL
    for (int j = 0; j < V; ++j) {
      const U d = U(m[j] - b[j]);
      const U scale = pcb_scale(pcb_score<U>(d, S[j], md.lo, md.hi, md.mag, U(K)), md.theta, md.top, md.drop);
      const U clamped = pcb_signed(d, pcb_clamp_magnitude(pcb_abs(d), md.lo, md.hi));
      num[j] = num[j] + clamped * scale;
      den[j] = den[j] + scale;
    }
  }
  const U floor = U(kPcbScaleSumMin);
  const U lam = U(p.lam);
  C out[V];
  M2N2_UNROLL
  for (int j = 0; j < V; ++j) {
    const U merged = num[j] / (den[j] < floor ? floor : den[j]);
    out[j] = C(U(b[j]) + merged * lam);
  }
  store_elems<T, V>(static_cast<T*>(seg.out), j0, end, out);
}

// One block per chunk, in steps of kThreads V elements; the models' statistics in a
// shared table.
template <class T, class U, int V>
__global__ void __launch_bounds__(kThreads)
    pcb_fused_kernel(const TaskSegment seg, const PcbParams p, const ModelState* st) {
  __shared__ PcbModel<U> models[kMaxModels];
  const int tid = int(threadIdx.x);
  if (tid < p.K) models[tid] = pcb_model<U>(st, p.K, tid);
  __syncthreads();
  const int64_t begin = int64_t(blockIdx.x) * seg.chunk;
  const int64_t end = min64(seg.numel, begin + seg.chunk);
  for (int64_t j0 = begin + int64_t(tid) * V; j0 < end; j0 += int64_t(kThreads) * V) {
    pcb_fused_thread<T, U, V>(seg, p, models, j0, end);
  }
}

}  // namespace m2n2::cuda
