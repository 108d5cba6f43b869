// Task-vector merges (task arithmetic, TIES, DARE, DARE-TIES) on the GPU: torch-free
// kernels and launchers (this header: the design, the settings and the launchers;
// task_merge_kernels.cuh: the kernels and their per-thread bodies; task_merge_common.cuh:
// the segments and their plan, shared with PCB merging).
//
// Raw pointers, sizes and a cudaStream_t in; csrc/cuda/task_merge.cu is the torch glue.
// docs/semantics.md "Task-vector merges" is the definition; the results equal the CPU
// kernel's (csrc/cpu/task_merge_kernels.cpp) bit for bit: the same element maths
// (task_merge.h), the same tie rule, the same DARE draws; the l1 ratios come from fp64
// sums added in another (fixed) order, so they may differ from the CPU's in the last
// bits of the fp64 sums.
//
// A unit (a tensor, or the whole list with scope "global") is a list of segments, one
// per tensor; each kernel below is launched once per segment (its pointers and K model
// pointers are a kernel parameter), blocks numbered across the unit in segment order,
// so per-block partials sit in index order. Block x of a segment owns elements
// [x chunk, (x + 1) chunk) and walks them in steps of 256 V elements. Launches of one
// unit, all on one stream, no host synchronisation:
//   0. init_kernel: per-model state (keep counts, scales), cleared histograms.
//   1. magnitude: for each radix pass (11-bit digits from the top of the 31 or 63 key
//      bits: 3 passes for 32-bit keys, 6 for 64-bit ones), histogram_kernel (grid:
//      blocks x K; shared-memory histogram of the digit of the keys that match the
//      model's prefix, added to the unit's [K, 2048] counts with 64-bit integer
//      atomics), then select_digit_kernel (one block per model: the digit holding the
//      remaining-th largest key, by a block scan from the top bin).
//   2. where an l1 rescale or a partly kept tie needs it: stats_kernel (grid: blocks x
//      K; per-block fp64 sums and tie counts, CUB block reduction) and
//      finish_stats_kernel (one block per model: the partials in block order, the
//      ratio, the ties before each block by an exclusive scan).
//   3. fused_kernel: masks, elects signs, mixes and writes; a partly kept tie is kept
//      iff the ties before it (block offset + block scan of the step) are < need.
// magnitude_outliers keeps a band of ranks [start, end): steps 0-2 run on 2K virtual
// models, virtual k selecting model k's `end` largest and virtual K + k its `start`
// largest (the segments hold each model pointer twice), so each has the "magnitude"
// tie rule; the fused kernel keeps what virtual k keeps and virtual K + k does not.
// For an l1 rescale, virtual k's statistics sum |d| strictly between the two
// thresholds and finish_stats adds the band's ties at each (the band's sum directly:
// a difference of the two kept sums would lose a narrow band's bits to cancellation).
// Only the host setup, the statistics' bounds, the scale and the fused kernel know
// the band.
// Extra memory: the per-model state, [KV, 2048] histograms and [KV, blocks] partials
// (KV: K, or 2K for magnitude_outliers).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "task_merge_kernels.cuh"

namespace m2n2::cuda {

// max(1, int(rho n)) (the product rounded in fp64), none for rho <= 0, all for rho >= 1.
inline int64_t task_keep_count(double rho, int64_t n) {
  if (n == 0 || rho <= 0.0) return 0;
  if (rho >= 1.0) return n;
  return std::max<int64_t>(1, int64_t(rho * double(n)));
}

// The mode of a magnitude selection of `keep` of n elements.
inline TaskMode task_select_mode(int64_t keep, int64_t n) {
  return keep == n ? TaskMode::kAll : keep == 0 ? TaskMode::kNone : TaskMode::kSelect;
}

// A unit's settings: what each model keeps and its host-known scale (the CPU kernel's
// plan). weights, density and gamma (read by magnitude_outliers only) hold K values;
// n is the unit's element count.
inline TaskParams make_task_params(int K, Sparsify sparsify, Consensus consensus, Rescale rescale, bool normalize,
                                   double lam, uint64_t seed, const double* weights, const double* density,
                                   const double* gamma, bool wide, int64_t n) {
  TaskParams p{};
  p.K = K;
  p.KV = sparsify == Sparsify::kOutliers ? 2 * K : K;
  p.sparsify = sparsify;
  p.consensus = consensus;
  p.rescale = rescale;
  p.normalize = normalize;
  p.wide = wide;
  p.lam = lam;
  p.seed = seed;
  p.n = n;
  for (int k = 0; k < K; ++k) {
    const double rho = density[k];
    p.weight[k] = weights[k];
    p.mode[k] = TaskMode::kAll;
    p.keep[k] = n;
    bool sparse = false;
    if (sparsify == Sparsify::kMagnitude) {
      p.keep[k] = task_keep_count(rho, n);
      p.mode[k] = task_select_mode(p.keep[k], n);
      sparse = p.mode[k] == TaskMode::kSelect;
    } else if (sparsify == Sparsify::kRandom) {
      p.dare_thr[k] = dare_threshold(rho);
      p.mode[k] = rho >= 1.0 ? TaskMode::kAll : p.dare_thr[k] == 0 ? TaskMode::kNone : TaskMode::kDraw;
      sparse = p.mode[k] == TaskMode::kDraw;
    } else if (sparsify == Sparsify::kOutliers) {
      int64_t start = 0, end = 0;
      outlier_band(rho, gamma[k], n, start, end);
      sparse = end - start > 0 && end - start < n;
      // An empty band selects nothing (both none); a full one is start 0, end n.
      p.keep[k] = end > start ? end : 0;
      p.keep[K + k] = end > start ? start : 0;
      p.mode[k] = task_select_mode(p.keep[k], n);
      p.mode[K + k] = task_select_mode(p.keep[K + k], n);
      p.host_scale[K + k] = 1.0;
    }
    p.host_scale[k] = rescale == Rescale::kDensity && sparse ? 1.0 / rho : 1.0;
  }
  return p;
}

// magnitude_outliers: virtual models K .. 2K - 1 read models 0 .. K - 1 again.
inline void task_virtual_models(std::vector<TaskSegment>& segs, const TaskParams& p) {
  for (TaskSegment& s : segs) {
    for (int k = p.K; k < p.KV; ++k) s.models[k] = s.models[k - p.K];
  }
}

// Which passes a unit runs (known on the host; the device skips a model's statistics
// when its selection needs none).
inline bool task_any_select(const TaskParams& p) {
  for (int k = 0; k < p.KV; ++k) {
    if (p.mode[k] == TaskMode::kSelect) return true;
  }
  return false;
}
inline bool task_may_need_stats(const TaskParams& p) {
  for (int k = 0; k < p.KV; ++k) {
    if (p.mode[k] == TaskMode::kSelect) return true;  // partial ties, or l1
    if (p.mode[k] == TaskMode::kDraw && p.rescale == Rescale::kL1) return true;
  }
  return false;
}

// The unit's device workspace, carved from one buffer of task_workspace_bytes(p).
struct TaskWorkspace {
  ModelState* state;               // [KV]
  unsigned long long* hist;        // [KV, kBins] (selection only)
  double* abs_part;                // [KV, total_blocks] (statistics only)
  double* kept_part;
  int64_t* tie_part;
};

inline int64_t task_hist_bins(const TaskParams& p) { return task_any_select(p) ? int64_t(p.KV) * kBins : 0; }
inline int64_t task_partials(const TaskParams& p) {
  return task_may_need_stats(p) ? int64_t(p.KV) * p.total_blocks : 0;
}

inline int64_t task_workspace_bytes(const TaskParams& p) {
  return int64_t(sizeof(ModelState)) * kMaxModels + 8 * task_hist_bins(p) + 24 * task_partials(p);
}

inline TaskWorkspace task_workspace(const TaskParams& p, void* buffer) {
  char* at = static_cast<char*>(buffer);
  TaskWorkspace ws;
  ws.state = reinterpret_cast<ModelState*>(at);
  at += sizeof(ModelState) * kMaxModels;
  ws.hist = reinterpret_cast<unsigned long long*>(at);
  at += 8 * task_hist_bins(p);
  const int64_t parts = task_partials(p);
  ws.abs_part = reinterpret_cast<double*>(at);
  ws.kept_part = ws.abs_part + parts;
  ws.tie_part = reinterpret_cast<int64_t*>(ws.kept_part + parts);
  return ws;
}

template <class T>
void launch_histogram_t(const TaskSegment& s, const TaskParams& p, const TaskWorkspace& ws, int pass,
                        cudaStream_t stream) {
  const dim3 grid(unsigned(s.blocks), unsigned(p.KV));
  if (s.vec > 1) {
    histogram_kernel<T, vector_elems<T>()><<<grid, kThreads, 0, stream>>>(s, p, ws.state, pass, ws.hist);
  } else {
    histogram_kernel<T, 1><<<grid, kThreads, 0, stream>>>(s, p, ws.state, pass, ws.hist);
  }
}

template <class T>
void launch_stats_t(const TaskSegment& s, const TaskParams& p, const TaskWorkspace& ws, cudaStream_t stream) {
  const dim3 grid(unsigned(s.blocks), unsigned(p.KV));
  if (s.vec > 1) {
    stats_kernel<T, vector_elems<T>()>
        <<<grid, kThreads, 0, stream>>>(s, p, ws.state, ws.abs_part, ws.kept_part, ws.tie_part);
  } else {
    stats_kernel<T, 1><<<grid, kThreads, 0, stream>>>(s, p, ws.state, ws.abs_part, ws.kept_part, ws.tie_part);
  }
}

// Factors in registers for aligned segments and K <= 8; otherwise single elements and
// the factors of up to 64 models in a local array.
template <class T>
void launch_fused_t(const TaskSegment& s, const TaskParams& p, const TaskWorkspace& ws, cudaStream_t stream) {
  if (s.vec > 1 && p.K <= kSmallModels) {
    fused_kernel<T, vector_elems<T>(), kSmallModels>
        <<<unsigned(s.blocks), kThreads, 0, stream>>>(s, p, ws.state, ws.tie_part);
  } else {
    fused_kernel<T, 1, kMaxModels><<<unsigned(s.blocks), kThreads, 0, stream>>>(s, p, ws.state, ws.tie_part);
  }
}

// Every launch of one unit (p.n > 0; plan_task_unit and task_virtual_models done; the
// workspace of task_workspace_bytes(p) bytes, 16-byte aligned). Returns cudaGetLastError().
inline cudaError_t launch_task_unit(const std::vector<TaskSegment>& segs, const TaskParams& p, void* workspace,
                                    cudaStream_t stream) {
  const TaskWorkspace ws = task_workspace(p, workspace);
  init_kernel<<<1, kThreads, 0, stream>>>(p, ws.state, ws.hist, task_hist_bins(p));
  if (task_any_select(p)) {  // magnitude, magnitude_outliers
    for (int pass = 0; pass < radix_passes(p.wide); ++pass) {
      for (const TaskSegment& s : segs) {
        if (s.blocks > 0) M2N2_DISPATCH_FLOAT(s.dtype, launch_histogram_t, s, p, ws, pass, stream)
      }
      select_digit_kernel<<<unsigned(p.KV), kThreads, 0, stream>>>(p, ws.state, ws.hist, pass);
    }
  }
  if (task_may_need_stats(p)) {
    for (const TaskSegment& s : segs) {
      if (s.blocks > 0) M2N2_DISPATCH_FLOAT(s.dtype, launch_stats_t, s, p, ws, stream)
    }
    finish_stats_kernel<<<unsigned(p.KV), kThreads, 0, stream>>>(p, ws.state, ws.abs_part, ws.kept_part,
                                                                 ws.tie_part);
  }
  for (const TaskSegment& s : segs) {
    if (s.blocks > 0) M2N2_DISPATCH_FLOAT(s.dtype, launch_fused_t, s, p, ws, stream)
  }
  return cudaGetLastError();
}

}  // namespace m2n2::cuda
