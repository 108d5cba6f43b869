// CPU PCB merging on raw pointers (torch-free).
//
// Per unit (a tensor, or the whole list with a global scope), three kinds of
// streaming passes: the clamp bounds lo_k, hi_k of |d_k| (both ranks of every model
// in the same pass: extreme_select.h where the ranks lie near the ends, as with the
// authors' c = 1e-4, else radix selection), the drop threshold theta_k and the
// maximum G_k of the scores g_k by radix selection (the scores recomputed in each
// pass, never stored), then one fused pass that scores, scales, mixes and writes.
// Work is cut into chunks whose boundaries do not depend on the thread count and
// every element's result depends on the unit's order statistics alone, so results do
// not depend on the threads. Extra memory, within the call's memory budget: histograms
// (narrower digits where it asks: radix_select.h) or extreme_select's buffers, and
// per-model scalars.
#pragma once

#include <vector>

#include "task_merge_kernels.h"  // TaskTensor: one list position (base, K models, out)

namespace m2n2::cpu {

struct PcbConfig {
  double ratio;       // the fraction of scores kept, in (0, 1]
  double lam;         // the merged task vector's factor
  double clamp;       // the magnitude clamp's ratio, in [0, 0.5)
  bool global_scope;  // one unit for the whole list (else one per position)
  int models;         // K
  uint64_t memory_budget = ~uint64_t(0);  // bytes its radix selections may hold (TaskMergeConfig's)
};

void pcb_merge(const std::vector<TaskTensor>& tensors, const PcbConfig& config);

}  // namespace m2n2::cpu
