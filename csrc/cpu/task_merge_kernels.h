// CPU task-vector merges (task arithmetic, TIES, DARE, breadcrumbs, DELLA) on raw
// pointers (torch-free).
//
// A few streaming passes per unit (a tensor, or the whole list with a global scope):
// TIES' thresholds by a candidate window (a sample, then one pass that counts and
// keeps the keys near each model's threshold; units of >= 2^21 elements) or, where
// the window misses or the unit is small, radix selection over the bits of |d| (16
// bits per pass where the memory budget holds the histograms, all K models in each
// pass); a statistics pass where an l1 rescale,
// or a partly kept tie the window did not count, needs it; then one fused pass that
// masks, elects signs, mixes and writes. Work is cut into
// chunks whose boundaries do not depend on the thread count; counts are integers and
// fp64 sums are combined in chunk order, so results do not depend on the threads.
// Extra memory: what the selections hold at once (radix histograms, a window's
// sample and candidates, collected keys) stays within the call's memory budget
// (selection_memory_budget: 0.5% of the call's inputs), with narrower radix digits,
// a sample recomputed rather than stored, or fewer windows where the budget asks;
// the results are the same. On a few threads (up to 5 for the 6 histograms of
// magnitude_outliers), the 7B block's own shapes (0.5% of their inputs: 8 MiB in
// bf16) keep 16-bit digits, the stored sample and every window.
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
  // della: the fibers whose magnitudes are ranked, `fiber` elements `fiber_stride`
  // apart (mergekit's rows along dim 1: shape[1] and the product of the later sides;
  // the whole tensor for fewer than two dims). numel is a whole number of slabs of
  // fiber * fiber_stride elements, each holding fiber_stride fibers.
  int64_t fiber = 0;
  int64_t fiber_stride = 1;
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
  std::vector<double> epsilon;  // K, finite (della only: the spread of its probabilities)
  // Bytes the selections may hold at once (radix_select.h; the candidate windows'
  // cap); ~0: none (16-bit digits always, windows uncapped).
  uint64_t memory_budget = ~uint64_t(0);
};

// The memory budget of a call over `tensors` with `models` models: kSelectionMemory
// of its input bytes (base and models, every tensor), kSelectionMemoryMin at least;
// or the bytes M2N2_SELECTION_MEMORY gives (tests force narrow digits with 0, the
// stored window sample with a large one). A call's units run one after another, so
// each may use all of it.
constexpr double kSelectionMemory = 0.005;  // half the 1% target: room for what the budget does not count
constexpr uint64_t kSelectionMemoryMin = uint64_t(512) << 10;  // small calls: a window's candidates at 2^21
uint64_t selection_memory_budget(const std::vector<TaskTensor>& tensors, int models);

void task_merge(const std::vector<TaskTensor>& tensors, const TaskMergeConfig& config);

// How a kernel selects its thresholds, from the environment variable `env`
// (M2N2_TIES_SELECT, M2N2_PCB_SELECT): unset, "" or "auto" (the candidate window, the
// radix passes where it misses), "radix" (the radix passes only: the A/B baseline, and
// the tests' way to run both paths on the same inputs), "window" (as auto, but a
// threshold that needs the radix passes is an error: lets tests assert which path
// ran). Anything else throws std::invalid_argument naming the variable.
enum class SelectMode : int { kAuto, kRadix, kWindowStrict };
SelectMode select_mode(const char* env);

}  // namespace m2n2::cpu
