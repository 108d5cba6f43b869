// CPU task-vector merges (task arithmetic, TIES, DARE) on raw pointers (torch-free).
//
// A few streaming passes per unit (a tensor, or the whole list with a global scope):
// TIES' thresholds by a candidate window (a sample, then one pass that counts and
// keeps the keys near each model's threshold; units of >= 2^21 elements) or, where
// the window misses or the unit is small, radix selection over the bits of |d| (16
// bits per pass, all K models in each pass); a statistics pass where an l1 rescale,
// or a partly kept tie the window did not count, needs it; then one fused pass that
// masks, elects signs, mixes and writes. Work is cut into
// chunks whose boundaries do not depend on the thread count; counts are integers and
// fp64 sums are combined in chunk order, so results do not depend on the threads.
#pragma once

#include <cstdint>
#include <vector>

#include "m2n2/dtypes.h"
#include "m2n2/task_merge.h"

namespace m2n2::cpu {

// One list position: base, the K models (same dtype and size) and the output (may be base).
struct TaskTensor {
  Dtype dtype;
  const void* base;
  std::vector<const void*> models;
  void* out;
  int64_t numel;
};

struct TaskMergeConfig {
  Sparsify sparsify;
  Consensus consensus;
  Rescale rescale;
  bool normalize;
  double lam;
  bool global_scope;  // one unit for the whole list (else one per position)
  uint64_t seed;
  std::vector<double> weights;  // K
  std::vector<double> density;  // K, in [0, 1]
  std::vector<double> gamma;    // K, in [0, 1] (magnitude_outliers only)
};

void task_merge(const std::vector<TaskTensor>& tensors, const TaskMergeConfig& config);

}  // namespace m2n2::cpu
