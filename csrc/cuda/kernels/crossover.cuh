// Split-point crossover on the GPU: torch-free CUDA kernels and their launchers
// (this header: the launch shapes and launchers; crossover_kernels.cuh: the kernels).
//
// Raw pointers, sizes and a cudaStream_t in, nothing else: another merge library can
// include this header without libtorch (csrc/cuda/crossover.cu is the torch glue).
// Semantics are docs/semantics.md "Crossover" and m2n2_kernels/reference.py; the maths comes
// from the shared headers (interp.h coefficients, philox.h noise, dtypes.h
// conversions), so a child equals the CPU kernels' child bit for bit wherever the
// coefficients agree (always for lerp).
//
// One op is at most three launches on one stream, with no host synchronisation:
//   1. sums (slerp only): each block adds dot(a, b), |a|^2 and |b|^2 of each side of
//      the split in fp64 and writes them to a workspace of per-block partials;
//   2. coefficients: one block per child adds its partials in a fixed order (the
//      result does not depend on scheduling) and runs m2n2::split_coefs on the device;
//   3. elementwise: out = ca a + cb b (+ sigma z), the side picked per element.
// A model given as a list of tensors is a list of Segments forming one vector: up to
// kMaxSegments of them share one launch (their table is a kernel parameter), each
// with its own range of blocks sized by its numel. The batched form (K children of
// one archive) is one launch per pass, blockIdx.y picking the child.
//
// Usage (csrc/cuda/crossover.cu): plan_launches (or batch_shape); device workspaces of
// 6 doubles per planned block (the partials; slerp only) and 4 per child (the
// coefficients); then launch_list_sums, launch_coefs, launch_list_interp (or the
// launch_batch_* pair around launch_coefs); each returns cudaGetLastError()
// (the launch contract of common.cuh).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "crossover_kernels.cuh"

namespace m2n2::cuda {

// ---------------------------------------------------------------------------
// Host side: launch shapes and launchers (all asynchronous on `stream`).
// ---------------------------------------------------------------------------

// Blocks that fill the device once at full occupancy (SMs x resident 256-thread blocks).
inline int block_budget(int device) {
  int sms = 0, threads = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  cudaDeviceGetAttribute(&threads, cudaDevAttrMaxThreadsPerMultiProcessor, device);
  return std::max(1, sms) * std::max(1, threads / kThreads);
}


// Blocks worth giving a buffer of numel elements: one unit per thread at most.
inline int64_t blocks_wanted(int64_t numel, int unit) {
  return std::max<int64_t>(1, ceil_div(ceil_div(numel, unit), kThreads));
}

struct LaunchPlan {
  std::vector<SegmentTable> tables;  // one launch each
  std::vector<int64_t> first_block;  // of each launch, in the numbering of the partials
  int64_t total_blocks = 0;          // partials: 6 doubles per block
};

// Segments in order, kMaxSegments per launch; within a launch each segment gets
// blocks in proportion to its size (at least 1, at most blocks_wanted), about `budget`
// blocks in all, so hundreds of small tensors cost a few launches of full blocks.
inline LaunchPlan plan_launches(const std::vector<Segment>& segments, int unit, int budget) {
  LaunchPlan plan;
  for (size_t begin = 0; begin < segments.size(); begin += kMaxSegments) {
    const size_t end = std::min(segments.size(), begin + size_t(kMaxSegments));
    double launch_numel = 0.0;
    for (size_t s = begin; s < end; ++s) launch_numel += double(segments[s].numel);
    SegmentTable table{};
    table.count = int32_t(end - begin);
    int32_t blocks = 0;
    for (size_t s = begin; s < end; ++s) {
      const int64_t numel = segments[s].numel;
      const int64_t share =
          launch_numel > 0.0 ? int64_t(std::ceil(double(budget) * double(numel) / launch_numel)) : 1;
      table.seg[s - begin] = segments[s];
      table.block_begin[s - begin] = blocks;
      blocks += int32_t(std::max<int64_t>(1, std::min(blocks_wanted(numel, unit), share)));
    }
    table.block_begin[table.count] = blocks;
    plan.tables.push_back(table);
    plan.first_block.push_back(plan.total_blocks);
    plan.total_blocks += blocks;
  }
  return plan;
}

// Grid of the batched kernels: blocks_x per child (about budget / K, at most
// blocks_wanted), blocks_y children at a time. Partials: 6 K blocks_x doubles.
struct BatchShape {
  int blocks_x;
  int blocks_y;
};

inline BatchShape batch_shape(int64_t n, int64_t children, int unit, int budget) {
  const int64_t per_child = std::max<int64_t>(1, ceil_div(budget, std::max<int64_t>(1, children)));
  return {int(std::min(blocks_wanted(n, unit), per_child)),
          int(std::max<int64_t>(1, std::min<int64_t>(children, 65535)))};
}

template <class T>
void launch_list_sums_t(const LaunchPlan& plan, int64_t split, double* partials, cudaStream_t stream) {
  for (size_t i = 0; i < plan.tables.size(); ++i) {
    const SegmentTable& table = plan.tables[i];
    list_sums_kernel<T><<<table.block_begin[table.count], kThreads, 0, stream>>>(
        table, split, partials + 6 * plan.first_block[i]);
  }
}

template <class T>
void launch_list_interp_t(const LaunchPlan& plan, int64_t split, const CoefSource& coefs,
                          double noise_std, uint64_t seed, uint64_t stream_id, cudaStream_t stream) {
  // As the CPU kernels: no noise term at all when sigma rounds to 0 in the compute type.
  const bool noise = compute_t<T>(noise_std) != compute_t<T>(0);
  for (const SegmentTable& table : plan.tables) {
    const int blocks = table.block_begin[table.count];
    if (noise) {
      list_interp_kernel<T, true>
          <<<blocks, kThreads, 0, stream>>>(table, split, coefs, noise_std, seed, stream_id);
    } else {
      list_interp_kernel<T, false>
          <<<blocks, kThreads, 0, stream>>>(table, split, coefs, noise_std, seed, stream_id);
    }
  }
}

template <class T>
void launch_batch_sums_t(const BatchArgs& args, BatchShape shape, double* partials, cudaStream_t stream) {
  const dim3 grid(unsigned(shape.blocks_x), unsigned(shape.blocks_y));
  batch_sums_kernel<T><<<grid, kThreads, 0, stream>>>(args, partials);
}

template <class T>
void launch_batch_interp_t(const BatchArgs& args, BatchShape shape, const double* coefs, double noise_std,
                           uint64_t seed, cudaStream_t stream) {
  const dim3 grid(unsigned(shape.blocks_x), unsigned(shape.blocks_y));
  if (compute_t<T>(noise_std) != compute_t<T>(0)) {
    batch_interp_kernel<T, true><<<grid, kThreads, 0, stream>>>(args, coefs, noise_std, seed);
  } else {
    batch_interp_kernel<T, false><<<grid, kThreads, 0, stream>>>(args, coefs, noise_std, seed);
  }
}

// Pass 1 of a list op (slerp): partials[6 plan.total_blocks].
inline cudaError_t launch_list_sums(Dtype dtype, const LaunchPlan& plan, int64_t split, double* partials,
                             cudaStream_t stream) {
  M2N2_DISPATCH_FLOAT(dtype, launch_list_sums_t, plan, split, partials, stream)
  return cudaGetLastError();
}

// Pass 2: coefs[4 children] from partials (blocks_per_child rows per child; 0 for lerp).
inline cudaError_t launch_coefs(const double* partials, int64_t blocks_per_child, int64_t children,
                         Method method, OmegaMode mode, const double* w_per_child, double w,
                         double* coefs, cudaStream_t stream) {
  coefs_kernel<kThreads><<<unsigned(children), kThreads, 0, stream>>>(
      partials, blocks_per_child, method, mode, w_per_child, w, coefs);
  return cudaGetLastError();
}

// Pass 3 of a list op; stream_id keys the noise (the schema's `stream`).
inline cudaError_t launch_list_interp(Dtype dtype, const LaunchPlan& plan, int64_t split, const CoefSource& coefs,
                               double noise_std, uint64_t seed, uint64_t stream_id, cudaStream_t stream) {
  M2N2_DISPATCH_FLOAT(dtype, launch_list_interp_t, plan, split, coefs, noise_std, seed, stream_id, stream)
  return cudaGetLastError();
}

// Pass 1 of the batched op (slerp): partials[6 K shape.blocks_x].
inline cudaError_t launch_batch_sums(Dtype dtype, const BatchArgs& args, BatchShape shape, double* partials,
                              cudaStream_t stream) {
  M2N2_DISPATCH_FLOAT(dtype, launch_batch_sums_t, args, shape, partials, stream)
  return cudaGetLastError();
}

// Pass 3 of the batched op: child k's noise uses stream k, index offset 0.
inline cudaError_t launch_batch_interp(Dtype dtype, const BatchArgs& args, BatchShape shape, const double* coefs,
                                double noise_std, uint64_t seed, cudaStream_t stream) {
  M2N2_DISPATCH_FLOAT(dtype, launch_batch_interp_t, args, shape, coefs, noise_std, seed, stream)
  return cudaGetLastError();
}


}  // namespace m2n2::cuda
