// The units of a task-vector call (task_merge_out, pcb_merge_out) as the CUDA
// launchers take them: torch glue shared by task_merge.cu and pcb.cu.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "kernels/task_merge_common.cuh"

namespace m2n2 {

// Calls unit(segments, n, wide) once per unit: every list position alone (scope
// "tensor") or the whole list as one flat vector (scope "global"), each position a
// segment at its offset in the unit. models is model-major (K x L), checked; n is the
// unit's element count (units without elements are skipped: they write nothing);
// wide says the unit holds fp64 and computes in it.
template <class Unit>
void for_each_task_unit(at::TensorList base, at::TensorList models, at::TensorList out,
                        const std::vector<Dtype>& dtypes, int64_t K, bool global_scope, Unit&& unit) {
  const size_t L = base.size();
  auto one = [&](size_t first, size_t last) {
    std::vector<cuda::TaskSegment> segs;
    int64_t n = 0;
    bool wide = false;
    for (size_t i = first; i < last; ++i) {
      cuda::TaskSegment s{};
      s.base = base[i].data_ptr();
      s.out = out[i].data_ptr();
      for (int64_t k = 0; k < K; ++k) s.models[k] = models[k * L + i].data_ptr();
      s.numel = base[i].numel();
      s.flat = n;
      s.dtype = dtypes[i];
      n += s.numel;
      wide = wide || dtypes[i] == Dtype::kDouble;
      segs.push_back(s);
    }
    if (n > 0) unit(segs, n, wide);
  };
  if (global_scope) {
    one(0, L);
  } else {
    for (size_t i = 0; i < L; ++i) one(i, i + 1);
  }
}

}  // namespace m2n2
