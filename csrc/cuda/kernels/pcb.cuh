// PCB merging on the GPU: torch-free launchers (this header: the design, the plan and
// the launchers; pcb_kernels.cuh: the kernels and their per-thread bodies).
//
// Raw pointers, sizes and a cudaStream_t in; csrc/cuda/pcb.cu is the torch glue.
// docs/semantics.md "PCB merging" is the definition; the results equal the CPU kernel's
// (csrc/cpu/pcb_kernels.cpp) bit for bit: the same element maths (pcb.h, with the
// package's own exp and tanh), the same order statistics (exact, by radix
// selection on the same keys), the same order of every sum.
//
// A unit (a tensor, or the whole list with scope "global") is a list of segments cut
// into blocks as task_merge plans them (plan_task_unit). Launches of one unit, all on
// one stream, no host synchronisation:
//   0. pcb_init_kernel: the 4K targets' state, cleared histograms.
//   1. magnitudes: for each radix pass (11-bit digits of the 31 or 63 key bits: 3 or 6
//      passes), pcb_histogram_kernel<PHASE 0> (grid: blocks x K; a shared-memory
//      histogram per target, the two ranks lo_k and hi_k of model k in the same pass,
//      added to the unit's [2K, 2048] counts with 64-bit integer atomics), then
//      pcb_select_kernel (one block per target: the digit of the target's rank).
//   2. scores: the same with PHASE 1, the ranks theta_k and top (G_k) of g_k, keys of
//      all 32 or 64 bits (3 or 6 passes). Block (x, k) recomputes the scores of model
//      k, and so every delta of its chunk for their sum S: a score pass reads K^2
//      model tensors' worth (no n-element buffer is ever stored).
//   3. pcb_fused_kernel: scores, scales, mixes and writes (2K + 1 loads per element).
// Extra memory: 4K targets' state and [2K, 2048] histograms.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>
#include <vector>

#include "pcb_kernels.cuh"

namespace m2n2::cuda {

// A unit's settings (the CPU kernel's ranks: each index the truncation of the fp64
// expression exactly as written).
inline PcbParams make_pcb_params(int K, double ratio, double lam, double clamp, bool wide, int64_t n) {
  PcbParams p{};
  p.K = K;
  p.wide = wide;
  p.lam = lam;
  p.n = n;
  const double nd = double(n);
  const double keep_end = nd * (1.0 - clamp);  // (two statements: never an FMA)
  p.rank[kPcbLo] = int64_t(nd * clamp);
  p.rank[kPcbHi] = int64_t(keep_end - 1.0);
  p.rank[kPcbTheta] = int64_t(nd * (1.0 - ratio));
  p.rank[kPcbTop] = n - 1;
  return p;
}

// The unit's device workspace, carved from one buffer of pcb_workspace_bytes(p).
struct PcbWorkspace {
  ModelState* state;         // [4 kMaxModels]: pcb_target(K, phase, k, i)
  unsigned long long* hist;  // [2K, kBins]
};

inline int64_t pcb_workspace_bytes(const PcbParams& p) {
  return int64_t(sizeof(ModelState)) * 4 * kMaxModels + 8 * int64_t(2 * p.K) * kBins;
}

inline PcbWorkspace pcb_workspace(void* buffer) {
  char* at = static_cast<char*>(buffer);
  PcbWorkspace ws;
  ws.state = reinterpret_cast<ModelState*>(at);
  ws.hist = reinterpret_cast<unsigned long long*>(at + sizeof(ModelState) * 4 * kMaxModels);
  return ws;
}

// f<U>() with U the unit's compute type (an fp64 segment only occurs in a wide unit).
template <class T, class F>
void with_unit_type(bool wide, F&& f) {
  if (wide) {
    f(double{});
  } else if constexpr (!std::is_same<T, double>::value) {
    f(float{});
  }
}

template <class T>
void launch_pcb_histogram_t(const TaskSegment& s, const PcbParams& p, const PcbWorkspace& ws, int phase, int pass,
                            cudaStream_t stream) {
  const dim3 grid(unsigned(s.blocks), unsigned(p.K));
  with_unit_type<T>(p.wide, [&](auto tag) {
    using U = decltype(tag);
    if (phase == 0) {
      if (s.vec > 1) {
        pcb_histogram_kernel<T, U, vector_elems<T>(), 0><<<grid, kThreads, 0, stream>>>(s, p, ws.state, pass, ws.hist);
      } else {
        pcb_histogram_kernel<T, U, 1, 0><<<grid, kThreads, 0, stream>>>(s, p, ws.state, pass, ws.hist);
      }
    } else {
      if (s.vec > 1) {
        pcb_histogram_kernel<T, U, vector_elems<T>(), 1><<<grid, kThreads, 0, stream>>>(s, p, ws.state, pass, ws.hist);
      } else {
        pcb_histogram_kernel<T, U, 1, 1><<<grid, kThreads, 0, stream>>>(s, p, ws.state, pass, ws.hist);
      }
    }
  });
}

template <class T>
void launch_pcb_fused_t(const TaskSegment& s, const PcbParams& p, const PcbWorkspace& ws, cudaStream_t stream) {
  with_unit_type<T>(p.wide, [&](auto tag) {
    using U = decltype(tag);
    if (s.vec > 1) {
      pcb_fused_kernel<T, U, vector_elems<T>()><<<unsigned(s.blocks), kThreads, 0, stream>>>(s, p, ws.state);
    } else {
      pcb_fused_kernel<T, U, 1><<<unsigned(s.blocks), kThreads, 0, stream>>>(s, p, ws.state);
    }
  });
}

// Every launch of one unit (p.n > 0; plan_task_unit done and p.total_blocks set; the
// workspace of pcb_workspace_bytes(p) bytes, 16-byte aligned). Returns
// cudaGetLastError().
inline cudaError_t launch_pcb_unit(const std::vector<TaskSegment>& segs, const PcbParams& p, void* workspace,
                                   cudaStream_t stream) {
  const PcbWorkspace ws = pcb_workspace(workspace);
  pcb_init_kernel<<<1, kThreads, 0, stream>>>(p, ws.state, ws.hist);
  for (int phase = 0; phase < 2; ++phase) {
    const int bits = pcb_key_bits(p.wide, phase);
    for (int pass = 0; pass < pcb_passes(bits); ++pass) {
      for (const TaskSegment& s : segs) {
        if (s.blocks > 0) M2N2_DISPATCH_FLOAT(s.dtype, launch_pcb_histogram_t, s, p, ws, phase, pass, stream)
      }
      const int width = pcb_digit_hi(bits, pass) - pcb_digit_lo(bits, pass);
      pcb_select_kernel<<<unsigned(2 * p.K), kThreads, 0, stream>>>(ws.state + pcb_target(p.K, phase, 0, 0), ws.hist,
                                                                    width, pass + 1 == pcb_passes(bits));
    }
  }
  for (const TaskSegment& s : segs) {
    if (s.blocks > 0) M2N2_DISPATCH_FLOAT(s.dtype, launch_pcb_fused_t, s, p, ws, stream)
  }
  return cudaGetLastError();
}

}  // namespace m2n2::cuda
