// Niche statistics on the GPU: torch-free CUDA kernels and their launchers.
//
// Raw pointers, a NichesProblem (m2n2/niches.h) and a cudaStream_t in, nothing else
// (csrc/cuda/niches.cu is the torch glue). The element maths (niche_weight,
// score_value, the bf16 split of a weight) lives in the shared header m2n2/niches.h.
//
// One call is a few launches on one stream:
//   1. column sums: each thread owns one 16-byte vector of columns (coalesced along j)
//      and adds its rows in fp64; when there are few columns and many rows, the rows
//      are cut into slices whose fp64 partials [row_slices, D] a second kernel adds in
//      slice order. The last step (finish_column) adds the child, writes z (out dtype)
//      and the weight u_j (compute dtype: fp32, fp64 for fp64 S), and records the
//      first non-finite z_j with an atomicMin (the caller reads it and raises before
//      step 2: the op's only host sync, skipped for 0/1 scores, which are always finite).
//   2. fitness (+ attraction row): a block owns (column slice, group of kRowGroup
//      rows); each thread loads u and the parent's scores for its vector of columns
//      once and adds u_j S_ij and u_j max(S_ij - S_parent,j, 0) for each row of the
//      group into fp32 (fp64) registers; a CUB BlockReduce gives one partial per
//      (slice, row) (fp64, in memory), summed in slice order by finish_rows.
//   3. attraction matrix (mode "matrix"): a block owns a kTile x kTile (a, b) tile of
//      A and a range of columns (split-K); kChunk columns at a time are staged in
//      shared memory (transposed, as compute-type values) and each of the 256 threads
//      updates a (kTile/16) x (kTile/16) register tile; fp32 sums are flushed into fp64
//      every kFlushChunks chunks. Several splits write fp64 partials [splits, N, N]
//      (splits bounded so that this stays under max(4 N^2, 2^20) doubles) that
//      finish_matrix adds in split order; one split writes A directly.
//      For 0/1 scores with N >= kGemmMinRows the glue uses tensor-core GEMMs instead
//      (A = (1 - S) diag(u) S^T); pack_binary_gemm below prepares their bf16 operands.
// Every sum runs in an order fixed by the shape alone (no float atomics), so results
// are deterministic and do not depend on the GPU. Indices are 64-bit throughout.
//
// The per-thread bodies are __host__ __device__ (M2N2_HD) so that
// tests/native/niches_cuda_host_check.cu can run every (block, thread) of a plan on
// the CPU and compare with a direct computation.
//
// This header holds the launchers (part 3 of 3); niches_plan.cuh the constants and
// the plan, niches_kernels.cuh the kernels.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "niches_kernels.cuh"
#include "niches_plan.cuh"

namespace m2n2::cuda {

// ---------------------------------------------------------------------------
// Host launchers (check cudaGetLastError() / their result afterwards).
// ---------------------------------------------------------------------------

inline unsigned grid_for(int64_t threads_needed) {
  return unsigned(max64(1, min64(ceil_div(threads_needed, kThreads), kMaxGrid)));
}

template <class T, int V>
cudaError_t launch_columns_typed(const NichesProblem& p, const NichesPlan& plan, void* u, double* zpart,
                                 unsigned long long* first_bad, cudaStream_t stream) {
  using A = acc_t<T>;
  if (plan.row_slices > 1) {
    column_sums_kernel<T, V, false><<<grid_for(plan.row_slices * plan.col_vecs), kThreads, 0, stream>>>(
        p, plan, static_cast<A*>(u), zpart, first_bad);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    finish_columns_kernel<T><<<grid_for(p.cols), kThreads, 0, stream>>>(p, plan, static_cast<A*>(u), zpart,
                                                                          first_bad);
  } else {
    column_sums_kernel<T, V, true><<<grid_for(plan.col_vecs), kThreads, 0, stream>>>(p, plan, static_cast<A*>(u),
                                                                                       zpart, first_bad);
  }
  return cudaGetLastError();
}

template <class T, int V>
cudaError_t launch_rows_typed(const NichesProblem& p, const NichesPlan& plan, const void* u, double* part,
                              cudaStream_t stream) {
  using A = acc_t<T>;
  const int64_t units = plan.col_slices * plan.row_groups;
  const unsigned blocks = unsigned(min64(units, kMaxGrid));
  if (p.mode == AttractionMode::kRow) {
    row_sums_kernel<T, V, true><<<blocks, kThreads, 0, stream>>>(p, plan, static_cast<const A*>(u), part);
  } else {
    row_sums_kernel<T, V, false><<<blocks, kThreads, 0, stream>>>(p, plan, static_cast<const A*>(u), part);
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  finish_rows_kernel<<<grid_for(plan.fit_rows), kThreads, 0, stream>>>(p, plan, part);
  return cudaGetLastError();
}

template <class T>
cudaError_t launch_matrix_typed(const NichesProblem& p, const NichesPlan& plan, const void* u, double* part,
                                cudaStream_t stream) {
  using A = acc_t<T>;
  const unsigned blocks = unsigned(min64(plan.splits * plan.tiles * plan.tiles, kMaxGrid));
  if (plan.tile == 32) {
    attraction_matrix_kernel<T, 32><<<blocks, kThreads, 0, stream>>>(p, plan, static_cast<const A*>(u), part);
  } else {
    attraction_matrix_kernel<T, 64><<<blocks, kThreads, 0, stream>>>(p, plan, static_cast<const A*>(u), part);
  }
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || plan.splits == 1) return err;
  finish_matrix_kernel<<<grid_for(p.rows * p.rows), kThreads, 0, stream>>>(p, plan, part);
  return cudaGetLastError();
}

// Calls op.template run<T, V>() for the storage type and vector width of the call.
template <class Op>
cudaError_t dispatch_type(const NichesProblem& p, const NichesPlan& plan, const Op& op) {
  const bool vec = plan.vec > 1;
  switch (p.type) {
    case Dtype::kUInt8: return vec ? op.template run<uint8_t, 16>() : op.template run<uint8_t, 1>();
    case Dtype::kHalf: return vec ? op.template run<half_t, 8>() : op.template run<half_t, 1>();
    case Dtype::kBFloat16: return vec ? op.template run<bf16_t, 8>() : op.template run<bf16_t, 1>();
    case Dtype::kFloat: return vec ? op.template run<float, 4>() : op.template run<float, 1>();
    case Dtype::kDouble: return vec ? op.template run<double, 2>() : op.template run<double, 1>();
    default: break;  // refused by the argument checks
  }
  return cudaErrorInvalidValue;
}

struct ColumnsOp {
  const NichesProblem& p;
  const NichesPlan& plan;
  void* u;
  double* zpart;
  unsigned long long* first_bad;
  cudaStream_t stream;
  template <class T, int V>
  cudaError_t run() const {
    return launch_columns_typed<T, V>(p, plan, u, zpart, first_bad, stream);
  }
};

struct RowsOp {
  const NichesProblem& p;
  const NichesPlan& plan;
  const void* u;
  double* part;
  cudaStream_t stream;
  template <class T, int V>
  cudaError_t run() const {
    return launch_rows_typed<T, V>(p, plan, u, part, stream);
  }
};

struct MatrixOp {
  const NichesProblem& p;
  const NichesPlan& plan;
  const void* u;
  double* part;
  cudaStream_t stream;
  template <class T, int V>
  cudaError_t run() const {
    if constexpr (V == 1) return launch_matrix_typed<T>(p, plan, u, part, stream);
    return cudaSuccess;  // (the matrix kernel has no vector form: dispatched with V = 1)
  }
};

// Step 1 (cols > 0): z, the weights u (D values of the compute type: float, double for
// fp64 S), and *first_bad = min(its value, the first column with a non-finite z).
// zpart: z_partial_doubles(p, plan) doubles. first_bad may be null (0/1 scores).
inline cudaError_t launch_column_sums(const NichesProblem& p, const NichesPlan& plan, void* u, double* zpart,
                                      unsigned long long* first_bad, cudaStream_t stream) {
  if (p.cols == 0) return cudaSuccess;
  return dispatch_type(p, plan, ColumnsOp{p, plan, u, zpart, first_bad, stream});
}

// Step 2 (cols > 0): fitness, and the attraction row in mode "row". part:
// row_partial_doubles(plan) doubles.
inline cudaError_t launch_row_sums(const NichesProblem& p, const NichesPlan& plan, const void* u, double* part,
                                   cudaStream_t stream) {
  if (p.cols == 0 || plan.fit_rows == 0) return cudaSuccess;
  return dispatch_type(p, plan, RowsOp{p, plan, u, part, stream});
}

// Step 3 (mode "matrix", cols > 0, rows > 0): all of A. part: matrix_partial_doubles.
inline cudaError_t launch_attraction_matrix(const NichesProblem& p, const NichesPlan& plan, const void* u,
                                            double* part, cudaStream_t stream) {
  if (p.cols == 0 || p.rows == 0) return cudaSuccess;
  NichesPlan scalar = plan;
  scalar.vec = 1;
  return dispatch_type(p, scalar, MatrixOp{p, plan, u, part, stream});
}

// GEMM operands of columns [lo, lo + c) for 0/1 scores: x and y hold N * 3c values each.
inline cudaError_t launch_pack_binary(const NichesProblem& p, const float* u, int64_t lo, int64_t c, bf16_t* x,
                                      bf16_t* y, cudaStream_t stream) {
  if (p.rows == 0 || c == 0) return cudaSuccess;
  pack_binary_kernel<<<grid_for(p.rows * c), kThreads, 0, stream>>>(p, u, lo, c, x, y);
  return cudaGetLastError();
}

}  // namespace m2n2::cuda
