// Niche statistics on the GPU, part 1 of 3: the constants and the plan (how one call
// is cut into blocks, and the scratch it needs). Torch-free; see niches.cuh for the
// whole design, niches_kernels.cuh for the kernels.
#pragma once

#include <cstdint>
#include <type_traits>

#include "common.cuh"
#include "m2n2/dtypes.h"
#include "m2n2/niches.h"

namespace m2n2::cuda {

constexpr int64_t kBusyBlocks = 2048;     // blocks that keep every SM of a large GPU busy
constexpr int64_t kBusyThreads = 1 << 17;  // threads that do the same for the column sums
constexpr int64_t kMinSliceRows = 64;     // rows per slice of the column sums, at least
constexpr int64_t kMaxSliceRows = int64_t(1) << 31;  // rows per slice, at most
constexpr int64_t kMaxZPartials = 1 << 21;  // doubles of column-sum partials, at most
constexpr int kRowGroup = 8;              // rows per block of the fitness kernel
constexpr int64_t kMinSliceCols = 8192;   // columns per fitness block, at least ...
constexpr int64_t kMaxSliceCols = 1 << 18;  // ... and at most (<= 1024 fp32 terms a thread)
constexpr int kChunk = 32;                // columns per shared-memory stage of the matrix
constexpr int kFlushChunks = 8;           // chunks between fp32 -> fp64 flushes
constexpr int64_t kMinSplitChunks = 8;    // chunks per matrix split, at least
constexpr int64_t kMaxMatrixPartials = 1 << 20;  // doubles of split partials (or 4 N^2)
constexpr int64_t kGemmMinRows = 128;     // 0/1 scores from this N on: tensor-core GEMMs
constexpr int64_t kGemmChunkElems = 1 << 21;  // N x chunk elements per GEMM operand

template <class T>
using acc_t = compute_t<T>;  // fp32, fp64 for fp64 S (uint8_t: fp32)

// How one call is cut up (plan_niches). Depends on the problem's shape and alignment only.
struct NichesPlan {
  int vec;           // columns per vector: 16 bytes of S, or 1 (unaligned rows)
  int64_t col_vecs;  // ceil(D / vec)
  // 1. column sums
  int64_t row_slices;  // > 1: partials [row_slices, D] and finish_columns
  int64_t slice_rows;
  // 2. fitness and attraction row
  int64_t fit_rows;  // N (+ 1 with a child)
  int64_t row_groups;
  int64_t col_slices;
  int64_t slice_vecs;
  // 3. attraction matrix
  int tile;        // 32 or 64
  int64_t tiles;   // per side
  int64_t splits;  // > 1: partials [splits, N, N] and finish_matrix
  int64_t split_cols;
  bool gemm;       // 0/1 scores, large N: the glue's GEMM path instead of the kernel
};

inline NichesPlan plan_niches(const NichesProblem& p) {
  NichesPlan plan{};
  const size_t bytes = size_t(dtype_bytes(p.type));
  const bool aligned = reinterpret_cast<uintptr_t>(p.scores) % 16 == 0 &&
                       (p.rows <= 1 || (uint64_t(p.row_stride) * bytes) % 16 == 0) &&
                       (p.child == nullptr || reinterpret_cast<uintptr_t>(p.child) % 16 == 0);
  plan.vec = aligned ? int(16 / bytes) : 1;
  plan.col_vecs = ceil_div(p.cols, plan.vec);

  plan.row_slices = 1;
  plan.slice_rows = p.rows;
  if (plan.col_vecs > 0 && plan.col_vecs < kBusyThreads && p.rows > 2 * kMinSliceRows) {
    int64_t want = ceil_div(kBusyThreads, plan.col_vecs);
    want = min64(want, ceil_div(p.rows, kMinSliceRows));
    want = min64(want, max64(1, kMaxZPartials / p.cols));
    if (want > 1) {
      plan.slice_rows = ceil_div(p.rows, want);
      plan.row_slices = ceil_div(p.rows, plan.slice_rows);
    }
  }
  if (plan.slice_rows > kMaxSliceRows) {  // 32-bit counts of 0/1 scores
    plan.slice_rows = kMaxSliceRows;
    plan.row_slices = ceil_div(p.rows, plan.slice_rows);
  }

  plan.fit_rows = fitness_rows(p);
  plan.row_groups = ceil_div(plan.fit_rows, kRowGroup);
  plan.col_slices = 1;
  plan.slice_vecs = plan.col_vecs;
  if (plan.row_groups > 0 && plan.col_vecs > 0) {
    int64_t slices = min64(ceil_div(kBusyBlocks, plan.row_groups), ceil_div(p.cols, kMinSliceCols));
    slices = max64(max64(slices, ceil_div(p.cols, kMaxSliceCols)), 1);
    plan.slice_vecs = ceil_div(plan.col_vecs, slices);
    plan.col_slices = ceil_div(plan.col_vecs, plan.slice_vecs);
  }

  plan.tile = p.rows <= 32 ? 32 : 64;
  plan.tiles = ceil_div(p.rows, plan.tile);
  plan.splits = 1;
  plan.split_cols = ceil_div(p.cols, kChunk) * kChunk;
  plan.gemm = p.mode == AttractionMode::kMatrix && p.type == Dtype::kUInt8 && p.rows >= kGemmMinRows;
  if (p.mode == AttractionMode::kMatrix && p.rows > 0 && p.cols > 0) {
    const int64_t chunks = ceil_div(p.cols, kChunk);
    int64_t splits = ceil_div(kBusyBlocks, plan.tiles * plan.tiles);
    splits = min64(splits, max64(4, kMaxMatrixPartials / (p.rows * p.rows)));
    splits = max64(1, min64(splits, ceil_div(chunks, kMinSplitChunks)));
    const int64_t split_chunks = ceil_div(chunks, splits);
    plan.split_cols = split_chunks * kChunk;
    plan.splits = ceil_div(chunks, split_chunks);
  }
  return plan;
}

// Scratch the caller allocates (device memory, any 16-byte aligned buffers).
inline int64_t z_partial_doubles(const NichesProblem& p, const NichesPlan& plan) {
  return plan.row_slices > 1 ? plan.row_slices * p.cols : 0;
}
inline int64_t row_partial_doubles(const NichesPlan& plan) { return 2 * plan.col_slices * plan.fit_rows; }
inline int64_t matrix_partial_doubles(const NichesProblem& p, const NichesPlan& plan) {
  return plan.splits > 1 ? plan.splits * p.rows * p.rows : 0;
}

}  // namespace m2n2::cuda
