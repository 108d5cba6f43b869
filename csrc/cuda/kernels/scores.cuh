// CUDA per-sample score gathering on raw pointers (torch-free).
//
// Three launches on one stream:
//   1. find_bad_indices: the first valid target outside [0, V) and the first out_index
//      outside out (the caller reads these two numbers and raises before step 2).
//   2. row_states: each token row (or a slice of it, when there are few rows and a
//      long vocabulary) is read once by one warp (V <= kWarpRowMaxVocab) or one block,
//      with 128-bit loads of the native storage type (fp32, bf16, fp16 widened in
//      registers). It leaves one state per (row, slice): the online (max, sum of
//      exp) pair for "logprob"/"prob", or "some logit beats the target" for
//      "correct", reduced across the threads with CUB.
//   3. finish_samples: one warp per sample merges the slice states of each valid
//      token, reduces the token scores in fp64 and stores the score at
//      out[out_index[b]] in out's dtype.
// Extra memory: one 8-byte (or 1-byte) state per (row, slice). Every reduction runs
// in a fixed order, so results depend on the shape only, not on the GPU.
#pragma once

#include <cuda_runtime.h>

#include <cub/block/block_reduce.cuh>
#include <cub/warp/warp_reduce.cuh>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common.cuh"
#include "m2n2/scores.h"

namespace m2n2::cuda {

constexpr int64_t kWarpRowMaxVocab = 2048;  // above: one block of 256 threads per row
constexpr int64_t kMinSliceLen = 16384;      // logits per block when rows are sliced
constexpr int64_t kBusyUnits = 2048;         // blocks that keep every SM busy

// How a call is cut into (row, slice) units.
struct ScoresPlan {
  int64_t rows;
  int64_t slices;     // per row
  int64_t slice_len;  // logits per slice (a multiple of 8)
  bool warp_per_row;
};

inline ScoresPlan plan_scores(const ScoresProblem& p) {
  ScoresPlan plan{p.batch * p.tokens, 1, p.vocab, p.vocab <= kWarpRowMaxVocab};
  if (!plan.warp_per_row && plan.rows > 0 && plan.rows < kBusyUnits) {
    const int64_t by_rows = (kBusyUnits + plan.rows - 1) / plan.rows;
    const int64_t by_len = (p.vocab + kMinSliceLen - 1) / kMinSliceLen;
    const int64_t want = by_rows < by_len ? by_rows : by_len;
    if (want > 1) {
      plan.slice_len = ((p.vocab + want - 1) / want + 7) / 8 * 8;
      plan.slices = (p.vocab + plan.slice_len - 1) / plan.slice_len;
    }
  }
  return plan;
}

// Bytes of the per-unit state buffer the caller allocates.
inline size_t scores_state_bytes(const ScoresProblem& p, const ScoresPlan& plan) {
  const size_t units = size_t(plan.rows * plan.slices);
  return p.kind == ScoreKind::kCorrect ? units : units * sizeof(SoftmaxState);
}

// ---- 1. value checks ----

__global__ void find_bad_indices_kernel(ScoresProblem p, unsigned long long* first_bad) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t row = first; row < p.batch * p.tokens; row += stride) {
    if (target_out_of_range(p, row)) atomicMin(&first_bad[0], static_cast<unsigned long long>(row));
  }
  if (p.out_index == nullptr) return;
  for (int64_t b = first; b < p.batch; b += stride) {
    const int64_t k = p.out_index[b];
    if (k < 0 || k >= p.out_size) atomicMin(&first_bad[1], static_cast<unsigned long long>(b));
  }
}

// ---- 2. row states ----

// Elements of T in one 128-bit load.
template <class T>
constexpr int kVecElems = int(16 / sizeof(T));

template <class T>
__device__ __forceinline__ void load_vec(const T* p, float (&v)[kVecElems<T>]) {
  const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
  T e[kVecElems<T>];
  memcpy(e, &raw, sizeof(raw));
#pragma unroll
  for (int i = 0; i < kVecElems<T>; ++i) v[i] = to_compute(e[i]);
}

// Calls f(values, first_index) over x[lo, hi) for this thread (lane of `threads`):
// 128-bit vectors in the aligned middle, kUnroll of them loaded before any is used
// (several loads in flight per thread), single logits at both ends. Positions
// within a row fit in 32 bits (V < 2^31 is checked by the caller).
template <class T, class F>
__device__ __forceinline__ void for_each_logit(const T* __restrict__ x, int lo, int hi, int lane, int threads,
                                               F&& f) {
  constexpr int kVec = kVecElems<T>;
  constexpr int kUnroll = 4;
  const int misaligned = int((reinterpret_cast<uintptr_t>(x + lo) % 16) / sizeof(T));
  int head = misaligned == 0 ? 0 : kVec - misaligned;
  head = head < hi - lo ? head : hi - lo;
  for (int i = lo + lane; i < lo + head; i += threads) {
    const float v[1] = {to_compute(x[i])};
    f(v, i);
  }
  const int body = lo + head;
  const int vectors = (hi - body) / kVec;
  int k = lane;
  for (; k + (kUnroll - 1) * threads < vectors; k += kUnroll * threads) {
    float v[kUnroll][kVec];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) load_vec(x + body + (k + u * threads) * kVec, v[u]);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) f(v[u], body + (k + u * threads) * kVec);
  }
  for (; k < vectors; k += threads) {
    float v[kVec];
    load_vec(x + body + k * kVec, v);
    f(v, body + k * kVec);
  }
  for (int i = body + vectors * kVec + lane; i < hi; i += threads) {
    const float v[1] = {to_compute(x[i])};
    f(v, i);
  }
}

struct SoftmaxMergeOp {
  __device__ __forceinline__ SoftmaxState operator()(const SoftmaxState& a, const SoftmaxState& b) const {
    return softmax_merge(a, b);
  }
};

// One unit = (row, slice), handled by kThreadsPerRow threads (a warp, or the block).
template <class T, int kThreadsPerRow, bool kCorrect>
__global__ void __launch_bounds__(kThreads)
    row_states_kernel(ScoresProblem p, ScoresPlan plan, SoftmaxState* softmax, uint8_t* beaten) {
  static_assert(kThreadsPerRow == kWarp || kThreadsPerRow == kThreads, "a warp or the block per row");
  constexpr int kRowsPerBlock = kThreads / kThreadsPerRow;
  const int lane = int(threadIdx.x) % kThreadsPerRow;
  const int group = int(threadIdx.x) / kThreadsPerRow;
  const int64_t unit = int64_t(blockIdx.x) * kRowsPerBlock + group;
  // Every early return below is uniform over the threads of a row.
  if (unit >= plan.rows * plan.slices) return;
  const int64_t row = unit / plan.slices;
  const int64_t tgt = counted_target(p, row);
  if (tgt < 0) return;  // masked out or ignored: never read
  const T* x = static_cast<const T*>(p.logits) + (row / p.tokens) * p.stride_b + (row % p.tokens) * p.stride_t;
  const int lo = int((unit % plan.slices) * plan.slice_len);
  const int hi = int(lo + plan.slice_len < p.vocab ? lo + plan.slice_len : p.vocab);

  if constexpr (kCorrect) {
    const int t = int(tgt);
    const float xt = to_compute(x[t]);
    bool hit = false;
    for_each_logit(x, lo, hi, lane, kThreadsPerRow, [&](const auto& v, int first) {
      constexpr int n = int(std::extent_v<std::remove_reference_t<decltype(v)>>);
#pragma unroll
      for (int j = 0; j < n; ++j) {
        const int i = first + j;
        hit |= i < t ? beats_before(v[j], xt) : (i > t && beats_after(v[j], xt));
      }
    });
    if constexpr (kThreadsPerRow == kWarp) {
      hit = __any_sync(0xffffffffu, hit);
    } else {
      hit = __syncthreads_or(hit) != 0;
    }
    if (lane == 0) beaten[unit] = hit ? 1 : 0;
  } else {
    SoftmaxState st = softmax_empty();
    for_each_logit(x, lo, hi, lane, kThreadsPerRow, [&](const auto& v, int) {
      constexpr int n = int(std::extent_v<std::remove_reference_t<decltype(v)>>);
      float vmax = v[0] == v[0] ? v[0] : neg_inf();
#pragma unroll
      for (int j = 1; j < n; ++j) vmax = v[j] > vmax ? v[j] : vmax;  // skips NaNs
      if (vmax > st.m) {
        st.s = st.s * exp_approx(st.m - softmax_ref(vmax));
        st.m = vmax;
      }
      const float ref = softmax_ref(st.m);
#pragma unroll
      for (int j = 0; j < n; ++j) st.s += exp_approx(v[j] - ref);  // NaN stays NaN
    });
    if constexpr (kThreadsPerRow == kWarp) {
      using WarpReduce = cub::WarpReduce<SoftmaxState>;
      __shared__ typename WarpReduce::TempStorage temp[kRowsPerBlock];
      st = WarpReduce(temp[group]).Reduce(st, SoftmaxMergeOp());
    } else {
      using BlockReduce = cub::BlockReduce<SoftmaxState, kThreads>;
      __shared__ typename BlockReduce::TempStorage temp;
      st = BlockReduce(temp).Reduce(st, SoftmaxMergeOp());
    }
    if (lane == 0) softmax[unit] = st;
  }
}

// ---- 3. samples ----

template <class T>
__global__ void __launch_bounds__(kThreads)
    finish_samples_kernel(ScoresProblem p, ScoresPlan plan, const SoftmaxState* softmax, const uint8_t* beaten) {
  const int64_t b = (int64_t(blockIdx.x) * kThreads + threadIdx.x) / kWarp;
  const int lane = int(threadIdx.x) % kWarp;
  if (b >= p.batch) return;  // uniform over the warp
  double sum = 0.0;
  long long count = 0;
  for (int64_t t = lane; t < p.tokens; t += kWarp) {
    const int64_t row = b * p.tokens + t;
    const int64_t tgt = counted_target(p, row);
    if (tgt < 0) continue;
    const int64_t u0 = row * plan.slices;
    count += 1;
    if (p.kind == ScoreKind::kCorrect) {
      bool hit = false;
      for (int64_t k = 0; k < plan.slices; ++k) hit = hit || beaten[u0 + k] != 0;
      sum += hit ? 0.0 : 1.0;
    } else {
      SoftmaxState st = softmax[u0];
      for (int64_t k = 1; k < plan.slices; ++k) st = softmax_merge(st, softmax[u0 + k]);
      const T* x = static_cast<const T*>(p.logits) + b * p.stride_b + t * p.stride_t;
      const float lp = softmax_logprob(st, to_compute(x[tgt]));
      sum += p.kind == ScoreKind::kLogprob ? double(lp) : double(expf(lp));
    }
  }
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    sum += __shfl_down_sync(0xffffffffu, sum, offset);
    count += __shfl_down_sync(0xffffffffu, count, offset);
  }
  if (lane == 0) {
    const int64_t pos = p.out_index != nullptr ? p.out_index[b] : b;
    store_score(p.out, pos * p.out_stride, p.out_type, sample_value(p.reduce, SampleSum{sum, int64_t(count)}));
  }
}

// ---- host launchers ----

// first_bad[0]: first bad row, first_bad[1]: first bad out_index position (each left
// at its initial value, e.g. ~0ull, when there is none).
inline cudaError_t launch_find_bad_indices(const ScoresProblem& p, unsigned long long* first_bad,
                                           cudaStream_t stream) {
  const int64_t n = p.batch * p.tokens > p.batch ? p.batch * p.tokens : p.batch;
  if (n == 0) return cudaSuccess;
  int64_t blocks = (n + kThreads - 1) / kThreads;
  blocks = blocks < 1024 ? blocks : 1024;
  find_bad_indices_kernel<<<unsigned(blocks), kThreads, 0, stream>>>(p, first_bad);
  return cudaGetLastError();
}

template <class T>
cudaError_t launch_scores_typed(const ScoresProblem& p, const ScoresPlan& plan, void* states,
                                cudaStream_t stream) {
  SoftmaxState* softmax = static_cast<SoftmaxState*>(states);
  uint8_t* beaten = static_cast<uint8_t*>(states);
  const int64_t units = plan.rows * plan.slices;
  if (units > 0) {
    const bool correct = p.kind == ScoreKind::kCorrect;
    if (plan.warp_per_row) {
      const int64_t blocks = (units + kThreads / kWarp - 1) / (kThreads / kWarp);
      auto kernel = correct ? row_states_kernel<T, kWarp, true> : row_states_kernel<T, kWarp, false>;
      kernel<<<unsigned(blocks), kThreads, 0, stream>>>(p, plan, softmax, beaten);
    } else {
      auto kernel = correct ? row_states_kernel<T, kThreads, true> : row_states_kernel<T, kThreads, false>;
      kernel<<<unsigned(units), kThreads, 0, stream>>>(p, plan, softmax, beaten);
    }
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  const int64_t blocks = (p.batch + kThreads / kWarp - 1) / (kThreads / kWarp);
  finish_samples_kernel<T><<<unsigned(blocks), kThreads, 0, stream>>>(p, plan, softmax, beaten);
  return cudaGetLastError();
}

// Steps 2 and 3; `states` holds scores_state_bytes(p, plan) bytes.
inline cudaError_t launch_sample_scores(const ScoresProblem& p, const ScoresPlan& plan, void* states,
                                        cudaStream_t stream) {
  if (p.batch == 0) return cudaSuccess;
  switch (p.dtype) {
    case Dtype::kFloat: return launch_scores_typed<float>(p, plan, states, stream);
    case Dtype::kBFloat16: return launch_scores_typed<bf16_t>(p, plan, states, stream);
    case Dtype::kHalf: return launch_scores_typed<half_t>(p, plan, states, stream);
    default: break;  // refused by the argument checks
  }
  return cudaErrorInvalidValue;
}

}  // namespace m2n2::cuda
