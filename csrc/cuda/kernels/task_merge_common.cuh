// What the task-vector merges and PCB merging share on the GPU (torch-free): the
// segments of a unit and their plan, the element loads and stores, and the steps of a
// radix selection (per-block shared-memory counts, the digit choice of a block scan).
// Only inline functions and templates: every .cu may include it (a kernel defined here
// would be compiled, and defined, in each).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common.cuh"
#include "m2n2/dtypes.h"
#include "m2n2/task_merge.h"

namespace m2n2::cuda {

constexpr int kDigitBits = 11;            // radix digit: 2048 bins of 4 bytes in shared memory
constexpr int kBins = 1 << kDigitBits;
constexpr int kBinsPerThread = kBins / kThreads;
constexpr int kMaxVec = 4;                // elements per thread and step, at most
constexpr int64_t kTileElems = int64_t(kThreads) * kMaxVec;  // block chunks are multiples of this
constexpr int kSmallModels = 8;           // K up to this: factors of all models in registers
static_assert(kBins % kThreads == 0, "whole bins per thread");

// One tensor of a unit: its pointers, its place in the unit's flat index and in the
// unit's block numbering, and how its elements are cut into blocks.
struct TaskSegment {
  const void* base;
  void* out;
  const void* models[kMaxModels];
  int64_t numel;
  int64_t flat;    // the unit index of element 0
  int64_t chunk;   // elements per block (a multiple of kTileElems)
  int64_t blocks;  // ceil(numel / chunk)
  int64_t block0;  // the unit's block number of block 0 (partials are [K, total_blocks])
  Dtype dtype;
  int vec;         // elements per load: the 16-byte (8-byte for 16-bit types) vector, or 1
};

// Per model, on the device: the radix selection's progress, then the fused pass's inputs.
struct ModelState {
  uint64_t prefix;     // the digits chosen so far; after the last pass the threshold key
  int64_t remaining;   // elements still to keep among those whose key starts with prefix
  int64_t last_count;  // elements in the last chosen bin (after the last pass: the ties)
  double scale;        // s_k: host_scale, or the l1 ratio
  int32_t partial;     // ties at the threshold partly kept (lowest index first)
  int32_t pad;
};

template <class T>
constexpr int vector_elems() {
  return sizeof(T) == 2 ? 4 : int(16 / sizeof(T));  // 8 bytes of a 16-bit type (fewer registers), else 16
}

// V consecutive elements as compute-type values: one vector load when V > 1 and the
// whole vector lies before `end` (the plan guarantees the alignment), else guarded
// single loads (zero past `end`).
template <class T, int V>
M2N2_HD void load_elems(const T* ptr, int64_t j0, int64_t end, compute_t<T>* v) {
  if (V > 1 && j0 + V <= end) {
    T e[V];
    static_assert(V * sizeof(T) == 16 || V * sizeof(T) == 8 || V == 1, "a 16- or 8-byte vector");
#if defined(__CUDA_ARCH__)
    if constexpr (V * sizeof(T) == 16) {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(ptr + j0));
      memcpy(e, &raw, sizeof(raw));
    } else {
      const uint2 raw = __ldg(reinterpret_cast<const uint2*>(ptr + j0));
      memcpy(e, &raw, sizeof(raw));
    }
#else
    memcpy(e, ptr + j0, sizeof(e));
#endif
    M2N2_UNROLL
    for (int j = 0; j < V; ++j) v[j] = to_compute(e[j]);
  } else {
    M2N2_UNROLL
    for (int j = 0; j < V; ++j) v[j] = j0 + j < end ? to_compute(ptr[j0 + j]) : compute_t<T>(0);
  }
}

template <class T, int V>
M2N2_HD void store_elems(T* ptr, int64_t j0, int64_t end, const compute_t<T>* v) {
  if (V > 1 && j0 + V <= end) {
    T e[V];
    M2N2_UNROLL
    for (int j = 0; j < V; ++j) e[j] = from_compute<T>(v[j]);
    if constexpr (V * sizeof(T) == 16) {
      uint4 raw;
      memcpy(&raw, e, sizeof(raw));
      *reinterpret_cast<uint4*>(ptr + j0) = raw;
    } else {
      uint2 raw;
      memcpy(&raw, e, sizeof(raw));
      *reinterpret_cast<uint2*>(ptr + j0) = raw;
    }
  } else {
    M2N2_UNROLL
    for (int j = 0; j < V; ++j) {
      if (j0 + j < end) ptr[j0 + j] = from_compute<T>(v[j]);
    }
  }
}

M2N2_HD void shared_inc(uint32_t* h, uint32_t bin) {
#if defined(__CUDA_ARCH__)
  atomicAdd(h + bin, 1u);
#else
  ++h[bin];
#endif
}

// Thread tid owns bins [kBins - (tid + 1) B, kBins - tid B) (B = kBinsPerThread):
// thread 0 the highest, so an exclusive scan of the threads' counts is the count of
// keys above each thread's bins.
M2N2_HD int64_t select_thread_sum(const unsigned long long* hist, int tid, uint64_t* counts) {
  int64_t sum = 0;
  M2N2_UNROLL
  for (int i = 0; i < kBinsPerThread; ++i) {  // i = 0: the thread's highest bin
    counts[i] = hist[kBins - 1 - (tid * kBinsPerThread + i)];
    sum += int64_t(counts[i]);
  }
  return sum;
}

// The thread whose bins hold the remaining-th largest key (counting from the top,
// `above` keys above its bins) appends that bin to the prefix; the others do nothing.
M2N2_HD void select_thread_find(const uint64_t* counts, int tid, int64_t above, int64_t remaining, int width,
                                bool last, ModelState* s) {
  M2N2_UNROLL
  for (int i = 0; i < kBinsPerThread; ++i) {
    const int64_t c = int64_t(counts[i]);
    if (above < remaining && above + c >= remaining) {
      const uint64_t bin = uint64_t(kBins - 1 - (tid * kBinsPerThread + i));
      s->prefix = (s->prefix << width) | bin;
      s->remaining = remaining - above;
      s->last_count = c;
      if (last) s->partial = (remaining - above) < c ? 1 : 0;
    }
    above += c;
  }
}

constexpr int64_t kMinChunkTiles = 8;             // a block counts at least this many steps' elements
constexpr int64_t kMaxChunk = int64_t(1) << 30;   // shared 32-bit histogram counts never overflow

// Blocks that fill the device once at full occupancy (SMs x resident 256-thread blocks).
inline int64_t task_block_budget(int device) {
  int sms = 0, threads = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  cudaDeviceGetAttribute(&threads, cudaDevAttrMaxThreadsPerMultiProcessor, device);
  return int64_t(std::max(1, sms)) * std::max(1, threads / kThreads);
}

// Elements per vector load of a storage dtype.
inline int task_vector_elems(Dtype dtype) {
  switch (dtype) {
    case Dtype::kDouble: return vector_elems<double>();
    case Dtype::kFloat: return vector_elems<float>();
    default: return vector_elems<half_t>();
  }
}

// Fills each segment's chunk, blocks, block0 and vec (segments with numel, flat,
// pointers, dtype and p.K set); returns the unit's blocks. About `budget` blocks in
// all, shared in proportion to the segments' sizes, chunks of at least min_tiles steps.
inline int64_t plan_task_unit(std::vector<TaskSegment>& segs, int K, int64_t budget,
                              int64_t min_tiles = kMinChunkTiles) {
  int64_t n = 0;
  for (const TaskSegment& s : segs) n += s.numel;
  int64_t blocks = 0;
  for (TaskSegment& s : segs) {
    const int vec = task_vector_elems(s.dtype);
    const uintptr_t bytes = uintptr_t(vec) * uintptr_t(dtype_bytes(s.dtype));
    bool aligned = reinterpret_cast<uintptr_t>(s.base) % bytes == 0 && reinterpret_cast<uintptr_t>(s.out) % bytes == 0;
    for (int k = 0; k < K; ++k) aligned = aligned && reinterpret_cast<uintptr_t>(s.models[k]) % bytes == 0;
    s.vec = aligned ? vec : 1;
    s.block0 = blocks;
    if (s.numel == 0) {
      s.chunk = kTileElems;
      s.blocks = 0;
      continue;
    }
    const int64_t want = max64(1, int64_t(double(budget) * double(s.numel) / double(n) + 1.0));
    int64_t chunk = ceil_div(ceil_div(s.numel, want), kTileElems) * kTileElems;
    chunk = min64(max64(chunk, min_tiles * kTileElems), kMaxChunk);
    s.chunk = chunk;
    s.blocks = ceil_div(s.numel, chunk);
    blocks += s.blocks;
  }
  return blocks;
}

}  // namespace m2n2::cuda
