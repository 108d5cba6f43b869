// Every check of the PCB merge op on the torch side, shared by its CPU (and later
// CUDA) glue, in the words of the Python API (m2n2_kernels/pcb.py,
// check_op_canonical): the models and tensors as task_merge checks them
// (task_merge_args.h), then the numbers and the scope, before anything is written.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <string>

#include "args_common.h"
#include "task_merge_args.h"

namespace m2n2 {

struct PcbScalars {
  double ratio, lam, clamp;
  bool global_scope;
};

inline double pcb_finite(double v, const char* name) {
  TORCH_CHECK_VALUE(std::isfinite(v), name, " must be finite, got ", py_float(v));
  return v;
}

inline PcbScalars check_pcb_scalars(double ratio, double lam, const std::string& scope, double clamp) {
  PcbScalars s;
  s.ratio = pcb_finite(ratio, "ratio");
  TORCH_CHECK_VALUE(ratio > 0.0 && ratio <= 1.0, "ratio must lie in (0, 1], got ", py_float(ratio));
  s.lam = pcb_finite(lam, "lam");
  s.global_scope = parse_scope(scope);
  s.clamp = pcb_finite(clamp, "clamp");
  TORCH_CHECK_VALUE(clamp >= 0.0 && clamp < 0.5, "clamp must lie in [0, 0.5), got ", py_float(clamp));
  return s;
}

}  // namespace m2n2
