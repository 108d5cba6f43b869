// Argument checks shared by the CPU and CUDA niche_stats kernels (torch side), and the
// translation of the tensors into the torch-free NichesProblem.
//
// The words of the Python API's checks (m2n2_kernels/niches.py, check_op_args), which
// run first and hand the op its canonical form (rows of S contiguous, capacity float64, outputs allocated); these
// checks guard direct torch.ops.m2n2 callers. Non-finite scores are found by each
// backend from z (a NaN or inf in column j makes z_j non-finite) before any output is
// written.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string>

#include "args_common.h"
#include "m2n2/niches.h"

namespace m2n2 {

inline AttractionMode parse_attraction_mode(const std::string& mode) {
  return parse_choice<AttractionMode>(
      mode, "attraction_mode",
      {{"none", AttractionMode::kNone}, {"row", AttractionMode::kRow}, {"matrix", AttractionMode::kMatrix}});
}

// Checks the arguments of niche_stats_out for a backend on `device_type` and
// describes them. Values (finiteness of S, 0/1 of uint8) are not read here.
inline NichesProblem make_niches_problem(const at::Tensor& S, const std::optional<at::Tensor>& child,
                                         const std::optional<at::Tensor>& capacity, double alpha, double eps,
                                         int64_t parent, const std::string& mode, const at::Tensor& z,
                                         const at::Tensor& fitness, const at::Tensor& attraction,
                                         c10::DeviceType device_type) {
  NichesProblem p{};
  // bool and uint8 S both hold 0/1 bytes: the kernels read them alike (kUInt8).
  const Dtype type = dtype_of(S, "S", {at::kBool, at::kByte, at::kHalf, at::kBFloat16, at::kFloat, at::kDouble});
  p.type = type == Dtype::kBool ? Dtype::kUInt8 : type;
  TORCH_CHECK_VALUE(S.dim() == 2, "S must be 2-D [N models, D datapoints], got shape ", shape_str(S.sizes()));
  TORCH_CHECK_VALUE(S.device().type() == device_type, "S must be on ", c10::DeviceTypeName(device_type, true),
                    ", got ", S.device());
  p.rows = S.size(0);
  p.cols = S.size(1);
  TORCH_CHECK_VALUE(S.stride(1) == 1 || p.cols <= 1, "S's rows must be contiguous (stride 1 along D)");
  p.row_stride = p.rows <= 1 ? p.cols : S.stride(0);
  TORCH_CHECK_VALUE(p.row_stride >= p.cols, "S's rows must not overlap");
  p.scores = S.data_ptr();
  TORCH_CHECK_VALUE(std::isfinite(alpha), "alpha must be finite, got ", py_float(alpha));
  TORCH_CHECK_VALUE(std::isfinite(eps), "eps must be finite, got ", py_float(eps));
  TORCH_CHECK_VALUE(eps >= 0.0, "eps must be >= 0.0, got ", py_float(eps));
  p.alpha = alpha;
  p.eps = eps;
  p.mode = parse_attraction_mode(mode);
  p.parent = parent;
  if (p.mode == AttractionMode::kRow) {
    TORCH_CHECK_INDEX(parent >= 0 && parent < p.rows, "parent must lie in [0, ", p.rows, ") (a row of S), got ",
                      parent);
  }
  if (child.has_value()) {
    TORCH_CHECK_VALUE(p.mode == AttractionMode::kNone, "child is only counted with attraction_mode 'none'");
    check_like(*child, "child", S.scalar_type(), {p.cols}, S.device(), " (as a row of S)");
    p.child = child->data_ptr();
    p.has_child = true;
  }
  if (capacity.has_value()) {
    check_like(*capacity, "capacity", at::kDouble, {p.cols}, S.device(), " (one per column of S)");
    p.capacity = capacity->data_ptr<double>();
  }
  p.out_double = S.scalar_type() == at::kDouble;
  const at::ScalarType out_dtype = p.out_double ? at::kDouble : at::kFloat;
  check_like(z, "z", out_dtype, {p.cols}, S.device());
  check_like(fitness, "fitness", out_dtype, {fitness_rows(p)}, S.device());
  p.z = z.data_ptr();
  p.fitness = fitness.data_ptr();
  switch (p.mode) {
    case AttractionMode::kNone: check_like(attraction, "attraction", out_dtype, {0}, S.device()); break;
    case AttractionMode::kRow: check_like(attraction, "attraction", out_dtype, {p.rows}, S.device()); break;
    case AttractionMode::kMatrix:
      check_like(attraction, "attraction", out_dtype, {p.rows, p.rows}, S.device());
      break;
  }
  p.attraction = p.mode == AttractionMode::kNone ? nullptr : attraction.data_ptr();
  check_disjoint({{&z, "z"}, {&fitness, "fitness"}, {&attraction, "attraction"}},
                 {{&S, "S"}, {child ? &*child : nullptr, "child"}, {capacity ? &*capacity : nullptr, "capacity"}});
  return p;
}

// The error for a bad score (NaN, infinite or negative) found at (row, col); row ==
// rows means the child. Scores are resources shared among the models that earn them
// (z_j sums them), so they must be finite and >= 0 (m2n2_kernels/_values.py says the
// same).
[[noreturn]] inline void raise_bad_score(const NichesProblem& p, int64_t row, int64_t col, double value) {
  const std::string at = row == p.rows ? c10::str("child[", col, "]") : c10::str("S[", row, ", ", col, "]");
  TORCH_CHECK_VALUE(!std::isfinite(value), at, " = ", py_float(value),
                    ": scores must be >= 0 (log-probabilities are not: use sample_scores(kind='prob'))");
  TORCH_CHECK_VALUE(false, at, " = ", py_float(value), ": scores must be finite");
}

// Every score of column j is good but their sum is not finite (fp64 S near 1e308).
[[noreturn]] inline void raise_column_overflow(int64_t j) {
  TORCH_CHECK_VALUE(false, "z[", j, "] (the sum of column ", j, " of S) is not finite: scores must be finite");
}

}  // namespace m2n2
