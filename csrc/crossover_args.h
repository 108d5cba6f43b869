// Argument checks shared by the CPU and CUDA crossover kernels (torch side).
//
// The Python API (m2n2_kernels/ops.py) raises precise ValueError/TypeError first;
// these checks guard direct torch.ops.m2n2 callers, before anything is written.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <string>
#include <vector>

#include "m2n2/dtypes.h"
#include "m2n2/interp.h"

namespace m2n2 {

inline Method parse_method(const std::string& method) {
  if (method == "lerp") return Method::kLerp;
  if (method == "slerp") return Method::kSlerp;
  TORCH_CHECK_VALUE(false, "method must be 'lerp' or 'slerp', got '", method, "'");
}

inline OmegaMode parse_omega(const std::string& omega) {
  if (omega == "global") return OmegaMode::kGlobal;
  if (omega == "segment") return OmegaMode::kSegment;
  TORCH_CHECK_VALUE(false, "omega must be 'global' or 'segment', got '", omega, "'");
}

inline bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

// Checks a, b (and out, when given) as lists of matching contiguous tensors of one
// floating dtype and one device; returns the total element count.
inline int64_t check_crossover_lists(at::TensorList a, at::TensorList b, at::TensorList out,
                                     c10::DeviceType device_type) {
  TORCH_CHECK_VALUE(!a.empty(), "a must hold at least one tensor");
  TORCH_CHECK_VALUE(a.size() == b.size(), "a and b must hold as many tensors (", a.size(), " vs ",
                    b.size(), ")");
  TORCH_CHECK_VALUE(out.empty() || out.size() == a.size(), "out must hold as many tensors as a (",
                    out.size(), " vs ", a.size(), ")");
  const at::ScalarType dtype = a[0].scalar_type();
  const at::Device device = a[0].device();
  TORCH_CHECK_TYPE(is_float_dtype(dtype), "a must be float32, float64, float16 or bfloat16, got ", dtype);
  TORCH_CHECK_VALUE(device.type() == device_type, "tensors must be on ", device_type, ", got ", device);
  int64_t total = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    for (const at::Tensor* t : {&a[i], &b[i], out.empty() ? &a[i] : &out[i]}) {
      TORCH_CHECK_TYPE(t->scalar_type() == dtype, "all tensors must have dtype ", dtype, ", got ",
                       t->scalar_type(), " at list position ", i);
      TORCH_CHECK_VALUE(t->device() == device, "all tensors must be on ", device, ", got ",
                        t->device(), " at list position ", i);
      TORCH_CHECK_VALUE(t->is_contiguous(), "tensors must be contiguous (list position ", i, ")");
      TORCH_CHECK_VALUE(t->numel() == a[i].numel(), "a, b and out must match in numel at list position ",
                        i, " (", a[i].numel(), " vs ", t->numel(), ")");
    }
    total += a[i].numel();
  }
  return total;
}

inline Dtype storage_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return Dtype::kFloat;
    case at::kDouble: return Dtype::kDouble;
    case at::kBFloat16: return Dtype::kBFloat16;
    case at::kHalf: return Dtype::kHalf;
    default: TORCH_CHECK_TYPE(false, "unsupported dtype ", t);
  }
}

// The non-empty tensors of checked lists as segments of one vector from index_offset.
inline std::vector<Segment> make_segments(at::TensorList a, at::TensorList b, at::TensorList out,
                                          int64_t index_offset) {
  std::vector<Segment> segments;
  int64_t first = index_offset;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].numel() > 0) {
      segments.push_back({a[i].data_ptr(), b[i].data_ptr(), out[i].data_ptr(), a[i].numel(), first});
    }
    first += a[i].numel();
  }
  return segments;
}

// With index_offset > 0 the buffer is one piece of a longer vector, whose split may
// lie past this piece's end.
inline void check_split(int64_t split, int64_t index_offset, int64_t numel) {
  TORCH_CHECK_VALUE(index_offset >= 0, "index_offset must be >= 0, got ", index_offset);
  TORCH_CHECK_VALUE(split >= 0 && (index_offset > 0 || split <= numel), "split must lie in [0, ",
                    numel, "], got ", split);
}

}  // namespace m2n2
