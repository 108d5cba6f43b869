// Argument checks shared by the CPU and CUDA niche_stats kernels (torch side), and the
// translation of the tensors into the torch-free NichesProblem.
//
// The Python API (m2n2_kernels/niches.py) raises precise errors first and hands the op
// its canonical form (rows of S contiguous, capacity float64, outputs allocated); these
// checks guard direct torch.ops.m2n2 callers. Non-finite scores are found by each
// backend from z (a NaN or inf in column j makes z_j non-finite) before any output is
// written.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string>

#include "m2n2/niches.h"

namespace m2n2 {

inline NicheScore niche_score_type(at::ScalarType t) {
  switch (t) {
    case at::kBool:
    case at::kByte: return NicheScore::kBinary;
    case at::kHalf: return NicheScore::kHalf;
    case at::kBFloat16: return NicheScore::kBFloat16;
    case at::kFloat: return NicheScore::kFloat;
    case at::kDouble: return NicheScore::kDouble;
    default: TORCH_CHECK_TYPE(false, "S must be bool, uint8, float16, bfloat16, float32 or float64, got ", t);
  }
}

inline AttractionMode parse_attraction_mode(const std::string& mode) {
  if (mode == "none") return AttractionMode::kNone;
  if (mode == "row") return AttractionMode::kRow;
  if (mode == "matrix") return AttractionMode::kMatrix;
  TORCH_CHECK_VALUE(false, "mode must be 'none', 'row' or 'matrix', got '", mode, "'");
}

inline void check_niche_output(const at::Tensor& t, const char* name, at::ScalarType dtype,
                               at::IntArrayRef shape, const at::Tensor& S) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK_VALUE(t.device() == S.device(), name, " must be on ", S.device(), ", got ", t.device());
}

// Checks the arguments of niche_stats_out for a backend on `device_type` and
// describes them. Values (finiteness of S, 0/1 of uint8) are not read here.
inline NichesProblem make_niches_problem(const at::Tensor& S, const std::optional<at::Tensor>& child,
                                         const std::optional<at::Tensor>& capacity, double alpha, double eps,
                                         int64_t parent, const std::string& mode, const at::Tensor& z,
                                         const at::Tensor& fitness, const at::Tensor& attraction,
                                         c10::DeviceType device_type) {
  NichesProblem p{};
  TORCH_CHECK_VALUE(S.dim() == 2, "S must be 2-D [N, D], got shape ", S.sizes());
  TORCH_CHECK_VALUE(S.device().type() == device_type, "S must be on ", device_type, ", got ", S.device());
  p.type = niche_score_type(S.scalar_type());
  p.rows = S.size(0);
  p.cols = S.size(1);
  TORCH_CHECK_VALUE(S.stride(1) == 1 || p.cols <= 1, "S's rows must be contiguous (stride 1 along D)");
  p.row_stride = p.rows <= 1 ? p.cols : S.stride(0);
  TORCH_CHECK_VALUE(p.row_stride >= p.cols, "S's rows must not overlap");
  p.scores = S.data_ptr();
  TORCH_CHECK_VALUE(std::isfinite(alpha), "alpha must be finite, got ", alpha);
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0.0, "eps must be finite and >= 0, got ", eps);
  p.alpha = alpha;
  p.eps = eps;
  p.mode = parse_attraction_mode(mode);
  p.parent = parent;
  if (p.mode == AttractionMode::kRow) {
    TORCH_CHECK_INDEX(parent >= 0 && parent < p.rows, "parent must lie in [0, ", p.rows, "), got ", parent);
  }
  if (child.has_value()) {
    TORCH_CHECK_VALUE(p.mode == AttractionMode::kNone, "a child row is only counted with mode 'none'");
    TORCH_CHECK_TYPE(child->scalar_type() == S.scalar_type(), "child must be ", S.scalar_type(), " (the dtype of S), got ",
                     child->scalar_type());
    TORCH_CHECK_VALUE(child->dim() == 1 && child->size(0) == p.cols, "child must have shape [", p.cols, "], got ",
                      child->sizes());
    TORCH_CHECK_VALUE(child->is_contiguous(), "child must be contiguous");
    TORCH_CHECK_VALUE(child->device() == S.device(), "child must be on ", S.device(), ", got ", child->device());
    p.child = child->data_ptr();
  }
  if (capacity.has_value()) {
    TORCH_CHECK_TYPE(capacity->scalar_type() == at::kDouble, "capacity must be float64, got ", capacity->scalar_type());
    TORCH_CHECK_VALUE(capacity->dim() == 1 && capacity->size(0) == p.cols, "capacity must have shape [", p.cols,
                      "], got ", capacity->sizes());
    TORCH_CHECK_VALUE(capacity->is_contiguous(), "capacity must be contiguous");
    TORCH_CHECK_VALUE(capacity->device() == S.device(), "capacity must be on ", S.device(), ", got ",
                      capacity->device());
    p.capacity = capacity->data_ptr<double>();
  }
  p.out_double = S.scalar_type() == at::kDouble;
  const at::ScalarType out_dtype = p.out_double ? at::kDouble : at::kFloat;
  check_niche_output(z, "z", out_dtype, {p.cols}, S);
  check_niche_output(fitness, "fitness", out_dtype, {fitness_rows(p)}, S);
  p.z = z.data_ptr();
  p.fitness = fitness.data_ptr();
  switch (p.mode) {
    case AttractionMode::kNone: check_niche_output(attraction, "attraction", out_dtype, {0}, S); break;
    case AttractionMode::kRow: check_niche_output(attraction, "attraction", out_dtype, {p.rows}, S); break;
    case AttractionMode::kMatrix:
      check_niche_output(attraction, "attraction", out_dtype, {p.rows, p.rows}, S);
      break;
  }
  p.attraction = p.mode == AttractionMode::kNone ? nullptr : attraction.data_ptr();
  return p;
}

// The error for a non-finite score found at (row, col); row == rows means the child.
inline void raise_non_finite_score(const NichesProblem& p, int64_t row, int64_t col, double value) {
  if (row == p.rows) {
    TORCH_CHECK_VALUE(false, "child[", col, "] = ", value, ": scores must be finite");
  }
  TORCH_CHECK_VALUE(false, "S[", row, ", ", col, "] = ", value, ": scores must be finite");
}

}  // namespace m2n2
