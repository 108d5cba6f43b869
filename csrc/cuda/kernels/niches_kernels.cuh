// Niche statistics on the GPU, part 2 of 3: the kernels and their per-thread bodies
// (__host__ __device__, so that tests/native/niches_cuda_host_check.cu runs them on
// the CPU). Torch-free; see niches.cuh for the whole design.
#pragma once

#include <cuda_runtime.h>

#include <cub/block/block_reduce.cuh>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "niches_plan.cuh"

namespace m2n2::cuda {

// ---------------------------------------------------------------------------
// Loads: V consecutive scores as compute-type values, one 16-byte load when V > 1
// (the caller guarantees the alignment), or V = 1.
// ---------------------------------------------------------------------------

template <class T, int V>
M2N2_HD void load_scores(const T* ptr, acc_t<T>* v) {
  if constexpr (V == 1) {
    v[0] = score_value(ptr[0]);
  } else {
    static_assert(V * sizeof(T) == 16, "one 16-byte vector");
    T e[V];
#if defined(__CUDA_ARCH__)
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(ptr));
    memcpy(e, &raw, sizeof(raw));
#else
    memcpy(e, ptr, sizeof(e));
#endif
    M2N2_UNROLL
    for (int i = 0; i < V; ++i) v[i] = score_value(e[i]);
  }
}

// V weights (u is 16-byte aligned and g * V * sizeof(A) is a multiple of 16 when V > 1).
template <class A, int V>
M2N2_HD void load_weights(const A* ptr, A* v) {
  if constexpr (V == 1 || (V * sizeof(A)) % 16 != 0) {
    M2N2_UNROLL
    for (int i = 0; i < V; ++i) v[i] = ptr[i];
  } else {
    M2N2_UNROLL
    for (int q = 0; q < int(V * sizeof(A) / 16); ++q) {
#if defined(__CUDA_ARCH__)
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(ptr) + q);
      memcpy(v + q * (16 / sizeof(A)), &raw, sizeof(raw));
#else
      memcpy(v + q * (16 / sizeof(A)), reinterpret_cast<const char*>(ptr) + 16 * q, 16);
#endif
    }
  }
}

// Scores of columns [j0, j0 + V) of a row (zero past D): the vector load for a whole
// vector, single loads for the last, partial one.
template <class T, int V>
M2N2_HD void load_row_vec(const T* row, int64_t j0, int64_t cols, acc_t<T>* v) {
  if (j0 + V <= cols) {
    load_scores<T, V>(row + j0, v);
  } else {
    M2N2_UNROLL
    for (int i = 0; i < V; ++i) v[i] = j0 + i < cols ? score_value(row[j0 + i]) : acc_t<T>(0);
  }
}

template <class T>
M2N2_HD const T* score_row(const NichesProblem& p, int64_t r) {
  return r < p.rows ? static_cast<const T*>(p.scores) + r * p.row_stride : static_cast<const T*>(p.child);
}

M2N2_HD void store_out(const NichesProblem& p, void* out, int64_t i, double v) {
  if (p.out_double) {
    static_cast<double*>(out)[i] = v;
  } else {
    static_cast<float*>(out)[i] = float(v);
  }
}

// ---------------------------------------------------------------------------
// 1. Column sums and weights.
// ---------------------------------------------------------------------------

// Sums over rows [r0, r1) of the columns of vector g: fp64, or exact 32-bit counts for
// 0/1 scores (the plan keeps slices under 2^31 rows).
template <class T>
using colsum_t = typename std::conditional<std::is_same<T, uint8_t>::value, uint32_t, double>::type;

// A negative score makes its column's sum NaN, as a NaN score does: the caller's one
// check of z finds both (scores must be finite and >= 0; 0/1 bytes always are).
template <class T, int V>
M2N2_HD void column_sums_unit(const NichesProblem& p, int64_t g, int64_t r0, int64_t r1, colsum_t<T>* acc) {
  using C = colsum_t<T>;
  constexpr bool kSigned = !std::is_same<T, uint8_t>::value;
  const T* base = static_cast<const T*>(p.scores);
  const int64_t j0 = g * V;
  acc_t<T> low[V];  // the smallest score of each column (a NaN leaves it alone)
  M2N2_UNROLL
  for (int i = 0; i < V; ++i) {
    acc[i] = C(0);
    low[i] = acc_t<T>(0);
  }
  if (j0 + V <= p.cols) {
#if defined(__CUDA_ARCH__)
#pragma unroll 4
#endif
    for (int64_t r = r0; r < r1; ++r) {
      acc_t<T> v[V];
      load_scores<T, V>(base + r * p.row_stride + j0, v);
      M2N2_UNROLL
      for (int i = 0; i < V; ++i) {
        acc[i] += C(v[i]);
        if constexpr (kSigned) low[i] = v[i] < low[i] ? v[i] : low[i];
      }
    }
  } else {
    for (int64_t r = r0; r < r1; ++r) {
      M2N2_UNROLL
      for (int i = 0; i < V; ++i) {
        if (j0 + i < p.cols) {
          const acc_t<T> x = score_value(base[r * p.row_stride + j0 + i]);
          acc[i] += C(x);
          if constexpr (kSigned) low[i] = x < low[i] ? x : low[i];
        }
      }
    }
  }
  if constexpr (kSigned) {
    M2N2_UNROLL
    for (int i = 0; i < V; ++i) {
      if (low[i] < acc_t<T>(0)) acc[i] = C(NAN);
    }
  }
}

// z_j from the sum of the rows: adds the child, writes z[j] and u[j]; true when z_j is
// not finite (a NaN, inf or negative score in column j, or an fp64 overflow).
template <class T>
M2N2_HD bool finish_column(const NichesProblem& p, int64_t j, double z, acc_t<T>* u) {
  if (p.has_child) {
    const double c = double(score_value(static_cast<const T*>(p.child)[j]));
    z = c < 0.0 ? double(NAN) : z + c;
  }
  store_out(p, p.z, j, z);
  const double c = p.capacity != nullptr ? p.capacity[j] : 1.0;
  u[j] = acc_t<T>(niche_weight(z, c, p.alpha, p.eps));
  return !(z - z == 0.0);  // inf - inf and NaN - NaN are NaN
}

__device__ __forceinline__ void record_bad(unsigned long long* first_bad, int64_t j) {
  atomicMin(first_bad, static_cast<unsigned long long>(j));
}

// One thread per (row slice, column vector), grid-stride. kFinish (one slice): the
// thread finishes its columns; else it writes fp64 partials [slice, D].
template <class T, int V, bool kFinish>
__global__ void __launch_bounds__(kThreads)
    column_sums_kernel(const NichesProblem p, const NichesPlan plan, acc_t<T>* u, double* zpart,
                       unsigned long long* first_bad) {
  const int64_t units = plan.row_slices * plan.col_vecs;
  for (int64_t unit = int64_t(blockIdx.x) * kThreads + threadIdx.x; unit < units;
       unit += int64_t(gridDim.x) * kThreads) {
    const int64_t slice = unit / plan.col_vecs;
    const int64_t g = unit % plan.col_vecs;
    const int64_t r0 = slice * plan.slice_rows;
    const int64_t r1 = min64(p.rows, r0 + plan.slice_rows);
    colsum_t<T> acc[V];
    column_sums_unit<T, V>(p, g, r0, r1, acc);
    M2N2_UNROLL
    for (int i = 0; i < V; ++i) {
      const int64_t j = g * V + i;
      if (j >= p.cols) break;
      if constexpr (kFinish) {
        if (finish_column<T>(p, j, double(acc[i]), u) && first_bad != nullptr) record_bad(first_bad, j);
      } else {
        zpart[slice * p.cols + j] = double(acc[i]);
      }
    }
  }
}

// Adds the row-slice partials of column j in slice order.
M2N2_HD double column_partial_sum(const double* zpart, int64_t slices, int64_t cols, int64_t j) {
  double z = 0.0;
  for (int64_t s = 0; s < slices; ++s) z += zpart[s * cols + j];
  return z;
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    finish_columns_kernel(const NichesProblem p, const NichesPlan plan, acc_t<T>* u, const double* zpart,
                          unsigned long long* first_bad) {
  for (int64_t j = int64_t(blockIdx.x) * kThreads + threadIdx.x; j < p.cols; j += int64_t(gridDim.x) * kThreads) {
    const double z = column_partial_sum(zpart, plan.row_slices, p.cols, j);
    if (finish_column<T>(p, j, z, u) && first_bad != nullptr) record_bad(first_bad, j);
  }
}

// ---------------------------------------------------------------------------
// 2. Fitness and the attraction row.
// ---------------------------------------------------------------------------

// Per-thread sums of one block: fitness and attraction of each row of the group.
template <class A>
struct RowSums {
  A fit[kRowGroup];
  A att[kRowGroup];
};

template <class A>
struct RowSumsAdd {
  M2N2_HD RowSums<A> operator()(const RowSums<A>& x, const RowSums<A>& y) const {
    RowSums<A> s;
    M2N2_UNROLL
    for (int r = 0; r < kRowGroup; ++r) {
      s.fit[r] = x.fit[r] + y.fit[r];
      s.att[r] = x.att[r] + y.att[r];
    }
    return s;
  }
};

// Unit = slice * row_groups + group (the blocks of one column slice run together and
// share its weights and parent scores in L2).
struct RowUnit {
  int64_t slice, row0, g0, g1;
};

M2N2_HD RowUnit row_unit(const NichesPlan& plan, int64_t unit) {
  RowUnit w;
  w.slice = unit / plan.row_groups;
  w.row0 = (unit % plan.row_groups) * kRowGroup;
  w.g0 = w.slice * plan.slice_vecs;
  w.g1 = min64(plan.col_vecs, w.g0 + plan.slice_vecs);
  return w;
}

// Thread `tid` of `threads` of the unit: its share of sum_j u_j S_rj and (kAtt) of
// sum_j u_j max(S_rj - S_parent,j, 0) for the rows of the group.
template <class T, int V, bool kAtt>
M2N2_HD void row_sums_thread(const NichesProblem& p, const NichesPlan& plan, const acc_t<T>* u, const RowUnit& w,
                             int64_t tid, int64_t threads, RowSums<acc_t<T>>& s) {
  using A = acc_t<T>;
  constexpr bool kBinary = std::is_same<T, uint8_t>::value;
  M2N2_UNROLL
  for (int r = 0; r < kRowGroup; ++r) {
    s.fit[r] = A(0);
    s.att[r] = A(0);
  }
  const int nrows = int(min64(kRowGroup, plan.fit_rows - w.row0));
  const T* parent = kAtt ? score_row<T>(p, p.parent) : nullptr;
  for (int64_t g = w.g0 + tid; g < w.g1; g += threads) {
    const int64_t j0 = g * V;
    A uv[V];
    A pv[V];
    if (j0 + V <= p.cols) {
      load_weights<A, V>(u + j0, uv);
    } else {
      M2N2_UNROLL
      for (int i = 0; i < V; ++i) uv[i] = j0 + i < p.cols ? u[j0 + i] : A(0);
    }
    if constexpr (kAtt) {
      load_row_vec<T, V>(parent, j0, p.cols, pv);
      if constexpr (kBinary) {
        // 0/1 scores: u max(s - q, 0) = (u (1 - q)) s exactly; pv becomes u (1 - q),
        // which keeps one array of V values fewer alive across the rows.
        M2N2_UNROLL
        for (int i = 0; i < V; ++i) pv[i] = uv[i] * (A(1) - pv[i]);
      }
    }
    M2N2_UNROLL
    for (int r = 0; r < kRowGroup; ++r) {
      if (r < nrows) {
        A sv[V];
        load_row_vec<T, V>(score_row<T>(p, w.row0 + r), j0, p.cols, sv);
        M2N2_UNROLL
        for (int i = 0; i < V; ++i) {
          s.fit[r] += uv[i] * sv[i];
          if constexpr (kAtt && kBinary) {
            s.att[r] += pv[i] * sv[i];
          } else if constexpr (kAtt) {
            const A d = sv[i] - pv[i];
            s.att[r] += uv[i] * (d > A(0) ? d : A(0));
          }
        }
      }
    }
  }
}

// Where a unit's block total goes: partials [2, col_slices, fit_rows] (fitness, then
// attraction).
M2N2_HD int64_t row_partial_index(const NichesPlan& plan, const RowUnit& w, int which, int r) {
  return (which * plan.col_slices + w.slice) * plan.fit_rows + w.row0 + r;
}

template <class T, int V, bool kAtt>
__global__ void __launch_bounds__(kThreads)
    row_sums_kernel(const NichesProblem p, const NichesPlan plan, const acc_t<T>* u, double* part) {
  using A = acc_t<T>;
  using Reduce = cub::BlockReduce<RowSums<A>, kThreads>;
  __shared__ typename Reduce::TempStorage temp;
  const int64_t units = plan.col_slices * plan.row_groups;
  for (int64_t unit = blockIdx.x; unit < units; unit += gridDim.x) {
    const RowUnit w = row_unit(plan, unit);
    RowSums<A> s;
    row_sums_thread<T, V, kAtt>(p, plan, u, w, threadIdx.x, kThreads, s);
    const RowSums<A> total = Reduce(temp).Reduce(s, RowSumsAdd<A>());
    if (threadIdx.x == 0) {
#pragma unroll
      for (int r = 0; r < kRowGroup; ++r) {
        if (w.row0 + r < plan.fit_rows) {
          part[row_partial_index(plan, w, 0, r)] = double(total.fit[r]);
          part[row_partial_index(plan, w, 1, r)] = double(total.att[r]);
        }
      }
    }
    __syncthreads();  // temp is reused by the next unit
  }
}

// fitness[r] (and attraction[r], mode "row", r < N): the slice partials in slice order.
M2N2_HD void finish_row(const NichesProblem& p, const NichesPlan& plan, const double* part, int64_t r) {
  double fit = 0.0;
  double att = 0.0;
  for (int64_t s = 0; s < plan.col_slices; ++s) {
    fit += part[s * plan.fit_rows + r];
    att += part[(plan.col_slices + s) * plan.fit_rows + r];
  }
  store_out(p, p.fitness, r, fit);
  if (p.mode == AttractionMode::kRow && r < p.rows) store_out(p, p.attraction, r, att);
}

__global__ void __launch_bounds__(kThreads)
    finish_rows_kernel(const NichesProblem p, const NichesPlan plan, const double* part) {
  for (int64_t r = int64_t(blockIdx.x) * kThreads + threadIdx.x; r < plan.fit_rows;
       r += int64_t(gridDim.x) * kThreads) {
    finish_row(p, plan, part, r);
  }
}

// ---------------------------------------------------------------------------
// 3. Attraction matrix: tiled, split-K.
// ---------------------------------------------------------------------------

template <class A, int kTile>
struct MatrixStage {
  A a[kChunk][kTile + 1];  // a[k][row]: scores of the tile's rows a (transposed; +1: no bank conflicts)
  A b[kChunk][kTile + 1];  // the same for the rows b
  A u[kChunk];
};

struct MatrixUnit {
  int64_t split, a0, b0, k0, k1;
};

// Unit = (split * tiles + tile_a) * tiles + tile_b: the blocks of one split run together.
M2N2_HD MatrixUnit matrix_unit(const NichesProblem& p, const NichesPlan& plan, int64_t unit) {
  MatrixUnit w;
  w.split = unit / (plan.tiles * plan.tiles);
  const int64_t t = unit % (plan.tiles * plan.tiles);
  w.a0 = (t / plan.tiles) * plan.tile;
  w.b0 = (t % plan.tiles) * plan.tile;
  w.k0 = w.split * plan.split_cols;
  w.k1 = min64(p.cols, w.k0 + plan.split_cols);
  return w;
}

// Thread tid's share of staging columns [k, k + kChunk) (zeros past k1 or N: they add
// u * max(0 - 0, 0) = 0).
template <class T, int kTile>
M2N2_HD void stage_chunk(const NichesProblem& p, const acc_t<T>* u, const MatrixUnit& w, int64_t k, int tid,
                         MatrixStage<acc_t<T>, kTile>& st) {
  using A = acc_t<T>;
  const T* base = static_cast<const T*>(p.scores);
  M2N2_UNROLL
  for (int e = tid; e < kTile * kChunk; e += kThreads) {
    const int row = e / kChunk;
    const int col = e % kChunk;  // consecutive threads: consecutive columns (coalesced)
    const int64_t j = k + col;
    const bool in_cols = j < w.k1;
    const int64_t ra = w.a0 + row;
    const int64_t rb = w.b0 + row;
    st.a[col][row] = in_cols && ra < p.rows ? A(score_value(base[ra * p.row_stride + j])) : A(0);
    st.b[col][row] = in_cols && rb < p.rows ? A(score_value(base[rb * p.row_stride + j])) : A(0);
  }
  if (tid < kChunk) st.u[tid] = k + tid < w.k1 ? u[k + tid] : A(0);
}

constexpr int kSide = 16;  // threads per side of a tile (16 x 16 = kThreads)

// Thread tid updates its register tile: rows a = a0 + ty + 16 i, b = b0 + tx + 16 jj.
template <class A, int kTile>
M2N2_HD void chunk_products(const MatrixStage<A, kTile>& st, int tid, A (&acc)[kTile / kSide][kTile / kSide]) {
  constexpr int kPer = kTile / kSide;
  const int ty = tid / kSide;
  const int tx = tid % kSide;
  M2N2_UNROLL
  for (int kk = 0; kk < kChunk; ++kk) {
    const A uk = st.u[kk];
    A av[kPer];
    A bv[kPer];
    M2N2_UNROLL
    for (int i = 0; i < kPer; ++i) {
      av[i] = st.a[kk][ty + kSide * i];
      bv[i] = st.b[kk][tx + kSide * i];
    }
    M2N2_UNROLL
    for (int i = 0; i < kPer; ++i) {
      M2N2_UNROLL
      for (int jj = 0; jj < kPer; ++jj) {
        const A d = bv[jj] - av[i];
        acc[i][jj] += uk * (d > A(0) ? d : A(0));
      }
    }
  }
}

// Writes thread tid's tile: straight into A (one split) or into the split's partials.
template <int kTile, class S>
M2N2_HD void store_matrix_tile(const NichesProblem& p, const NichesPlan& plan, const MatrixUnit& w, int tid,
                               const S (&tot)[kTile / kSide][kTile / kSide], double* part) {
  constexpr int kPer = kTile / kSide;
  const int ty = tid / kSide;
  const int tx = tid % kSide;
  M2N2_UNROLL
  for (int i = 0; i < kPer; ++i) {
    const int64_t a = w.a0 + ty + kSide * i;
    M2N2_UNROLL
    for (int jj = 0; jj < kPer; ++jj) {
      const int64_t b = w.b0 + tx + kSide * jj;
      if (a < p.rows && b < p.rows) {
        if (plan.splits > 1) {
          part[(w.split * p.rows + a) * p.rows + b] = double(tot[i][jj]);
        } else {
          store_out(p, p.attraction, a * p.rows + b, double(tot[i][jj]));
        }
      }
    }
  }
}

// Two blocks of 256 threads per SM (<= 128 registers): the stage loads of one block
// overlap the products of the other. fp64 tiles fit in 128 registers without the bound.
template <class T>
constexpr int kMatrixMinBlocks = std::is_same<acc_t<T>, double>::value ? 1 : 2;

template <class T, int kTile>
__global__ void __launch_bounds__(kThreads, kMatrixMinBlocks<T>)
    attraction_matrix_kernel(const NichesProblem p, const NichesPlan plan, const acc_t<T>* u, double* part) {
  using A = acc_t<T>;
  constexpr int kPer = kTile / kSide;
  __shared__ MatrixStage<A, kTile> st;
  const int tid = int(threadIdx.x);
  const int64_t units = plan.splits * plan.tiles * plan.tiles;
  for (int64_t unit = blockIdx.x; unit < units; unit += gridDim.x) {
    const MatrixUnit w = matrix_unit(p, plan, unit);
    // fp32: sums of at most kFlushChunks * kChunk terms, flushed into fp64 totals;
    // fp64 (fp64 S): the sums are the totals.
    constexpr bool kFlush = !std::is_same<A, double>::value;
    double tot[kFlush ? kPer : 1][kFlush ? kPer : 1];
    A acc[kPer][kPer];
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
#pragma unroll
      for (int jj = 0; jj < kPer; ++jj) acc[i][jj] = A(0);
    }
    if constexpr (kFlush) {
#pragma unroll
      for (int i = 0; i < kPer; ++i) {
#pragma unroll
        for (int jj = 0; jj < kPer; ++jj) tot[i][jj] = 0.0;
      }
    }
    int since_flush = 0;
    for (int64_t k = w.k0; k < w.k1; k += kChunk) {
      stage_chunk<T, kTile>(p, u, w, k, tid, st);
      __syncthreads();
      chunk_products<A, kTile>(st, tid, acc);
      __syncthreads();
      if constexpr (kFlush) {
        if (++since_flush == kFlushChunks) {
          since_flush = 0;
#pragma unroll
          for (int i = 0; i < kPer; ++i) {
#pragma unroll
            for (int jj = 0; jj < kPer; ++jj) {
              tot[i][jj] += double(acc[i][jj]);
              acc[i][jj] = A(0);
            }
          }
        }
      }
    }
    if constexpr (kFlush) {
#pragma unroll
      for (int i = 0; i < kPer; ++i) {
#pragma unroll
        for (int jj = 0; jj < kPer; ++jj) tot[i][jj] += double(acc[i][jj]);
      }
      store_matrix_tile<kTile>(p, plan, w, tid, tot, part);
    } else {
      (void)since_flush;
      store_matrix_tile<kTile>(p, plan, w, tid, acc, part);
    }
  }
}

// A[e] (e = a * N + b) from the split partials, in split order.
M2N2_HD void finish_matrix_elem(const NichesProblem& p, const NichesPlan& plan, const double* part, int64_t e) {
  const int64_t nn = p.rows * p.rows;
  double s = 0.0;
  for (int64_t q = 0; q < plan.splits; ++q) s += part[q * nn + e];
  store_out(p, p.attraction, e, s);
}

__global__ void __launch_bounds__(kThreads)
    finish_matrix_kernel(const NichesProblem p, const NichesPlan plan, const double* part) {
  const int64_t nn = p.rows * p.rows;
  for (int64_t e = int64_t(blockIdx.x) * kThreads + threadIdx.x; e < nn; e += int64_t(gridDim.x) * kThreads) {
    finish_matrix_elem(p, plan, part, e);
  }
}

// ---------------------------------------------------------------------------
// The bf16 operands of the GEMM path for 0/1 scores (columns [lo, lo + c)):
//   X [N, 3c]: (1 - S_rj) three times; Y [N, 3c]: S_rj * (h_j, m_j, l_j), where
//   h + m + l = u_j to fp32 precision (split_bf16x3). Every product X Y^T term is
//   exact in bf16 and the tensor cores add in fp32: A[a, b] = sum_k X[a, k] Y[b, k].
// ---------------------------------------------------------------------------

M2N2_HD void pack_binary_elem(const NichesProblem& p, const float* u, int64_t lo, int64_t c, int64_t e,
                              bf16_t* x, bf16_t* y) {
  const int64_t r = e / c;
  const int64_t k = e % c;
  const bool s = static_cast<const uint8_t*>(p.scores)[r * p.row_stride + lo + k] != 0;
  bf16_t parts[3];
  split_bf16x3(u[lo + k], parts);
  const bf16_t one{uint16_t(0x3F80)};
  const bf16_t zero{uint16_t(0)};
  for (int t = 0; t < 3; ++t) {
    x[r * 3 * c + t * c + k] = s ? zero : one;
    y[r * 3 * c + t * c + k] = s ? parts[t] : zero;
  }
}

__global__ void __launch_bounds__(kThreads) pack_binary_kernel(const NichesProblem p, const float* u, int64_t lo,
                                                               int64_t c, bf16_t* x, bf16_t* y) {
  for (int64_t e = int64_t(blockIdx.x) * kThreads + threadIdx.x; e < p.rows * c; e += int64_t(gridDim.x) * kThreads) {
    pack_binary_elem(p, u, lo, c, e, x, y);
  }
}

}  // namespace m2n2::cuda
