// Every check of the task-vector merge op on the torch side, shared by its CPU (and
// later CUDA) glue, in the words of the Python API (m2n2_kernels/task_vectors.py,
// check_op_task_merge): the Python API raises them first; these guard direct
// torch.ops.m2n2 callers, before anything is written.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <string>
#include <vector>

#include "args_common.h"
#include "m2n2/dtypes.h"
#include "m2n2/task_merge.h"

namespace m2n2 {

inline Sparsify parse_sparsify(const std::string& s) {
  return parse_choice<Sparsify>(
      s, "sparsify",
      {{"none", Sparsify::kNone}, {"magnitude", Sparsify::kMagnitude}, {"random", Sparsify::kRandom},
       {"magnitude_outliers", Sparsify::kOutliers}});
}

inline Consensus parse_consensus(const std::string& s) {
  return parse_choice<Consensus>(s, "consensus",
                                 {{"none", Consensus::kNone}, {"sum", Consensus::kSum}, {"count", Consensus::kCount}});
}

inline Rescale parse_rescale(const std::string& s) {
  return parse_choice<Rescale>(s, "rescale",
                               {{"none", Rescale::kNone}, {"l1", Rescale::kL1}, {"density", Rescale::kDensity}});
}

// della's rescale: mergekit's l1 or none (the DARE paper's 1 / density has no per-model
// meaning where each element has its own probability).
inline Rescale parse_della_rescale(const std::string& s) {
  return parse_choice<Rescale>(s, "rescale", {{"none", Rescale::kNone}, {"l1", Rescale::kL1}});
}

// della's fibers of a tensor: mergekit ranks along dim 1 (a tensor of fewer dims is
// one row): `fiber` = shape[1], `stride` = the product of the later sides.
struct FiberShape {
  int64_t fiber;
  int64_t stride;
};

inline FiberShape della_fibers(const at::Tensor& t, const std::string& name) {
  FiberShape f{t.numel(), 1};
  if (t.dim() >= 2) {
    f.fiber = t.size(1);
    f.stride = 1;
    for (int64_t d = 2; d < t.dim(); ++d) f.stride *= t.size(d);
  }
  TORCH_CHECK_VALUE(f.fiber < (int64_t(1) << 32), name, " must have fibers (rows along dim 1) of fewer than 2^32 ",
                    "elements for della, got ", f.fiber);
  return f;
}

inline bool parse_scope(const std::string& s) {
  return parse_choice<bool>(s, "scope", {{"tensor", false}, {"global", true}});
}

// K from the flat, model-major list of models (K x len(base) tensors).
inline int64_t task_models_count(at::TensorList base, at::TensorList models) {
  TORCH_CHECK_VALUE(!base.empty(), "base must hold at least one tensor");
  TORCH_CHECK_VALUE(!models.empty(), "models must hold at least one model (K >= 1), got an empty list");
  TORCH_CHECK_VALUE(models.size() % base.size() == 0, "models must hold K x ", base.size(),
                    " tensors (K models shaped as base), got ", models.size());
  const int64_t K = int64_t(models.size() / base.size());
  TORCH_CHECK_VALUE(K <= kMaxModels, "models must hold at most ", kMaxModels, " models, got ", K);
  return K;
}

// magnitude_outliers selects 2K virtual models (each model twice), so K is at most half
// the kernels' model count there.
constexpr int64_t kMaxOutlierModels = kMaxModels / 2;

inline void check_task_model_count(int64_t K, Sparsify sparsify) {
  TORCH_CHECK_VALUE(sparsify != Sparsify::kOutliers || K <= kMaxOutlierModels, "models must hold at most ",
                    kMaxOutlierModels, " models with sparsify='magnitude_outliers', got ", K);
}

inline std::vector<double> task_per_model(at::ArrayRef<double> values, int64_t K, const char* name, bool unit_range) {
  TORCH_CHECK_VALUE(int64_t(values.size()) == K, name, " must hold one number per model (K = ", K, "), got ",
                    values.size());
  for (size_t k = 0; k < values.size(); ++k) {
    TORCH_CHECK_VALUE(std::isfinite(values[k]), name, "[", k, "] must be finite, got ", py_float(values[k]));
    TORCH_CHECK_VALUE(!unit_range || (values[k] >= 0.0 && values[k] <= 1.0), name, " must lie in [0, 1], got ",
                      py_float(values[k]));
  }
  return std::vector<double>(values.begin(), values.end());
}

// base (floating, one device), the models shaped as base position by position, out
// (base itself, or fresh tensors shaped as base, overlapping nothing), all contiguous.
inline std::vector<Dtype> check_task_tensors(at::TensorList base, at::TensorList models, at::TensorList out,
                                             int64_t K, c10::DeviceType device_type) {
  const size_t L = base.size();
  TORCH_CHECK_VALUE(out.size() == L, "out must hold as many tensors as base, got ", out.size(), " and ", L);
  const at::Device device = base[0].device();
  TORCH_CHECK_VALUE(device.type() == device_type, "base[0] must be on ", c10::DeviceTypeName(device_type),
                    ", got ", device);
  std::vector<Dtype> dtypes(L);
  for (size_t i = 0; i < L; ++i) {
    const std::string at = where(i, true);
    dtypes[i] = dtype_of(base[i], c10::str("base", at), {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16});
    TORCH_CHECK_VALUE(base[i].device() == device, "base", at, " must be on ", device, " (the device of base[0]), got ",
                      base[i].device());
    TORCH_CHECK_VALUE(base[i].is_contiguous(), "base", at, " must be contiguous");
    for (int64_t k = 0; k < K; ++k) {
      check_like(models[k * L + i], c10::str("models[", k, "]", at), base[i].scalar_type(), base[i].sizes(), device,
                 c10::str(" (as base", at, ")"));
    }
    check_like(out[i], c10::str("out", at), base[i].scalar_type(), base[i].sizes(), device,
               c10::str(" (as base", at, ")"));
  }
  // out[i] may be exactly base[i] (in place: each element is read before it is
  // written); nothing written may overlap anything else.
  std::vector<NamedTensor> written, read;
  for (size_t i = 0; i < L; ++i) {
    const bool in_place = out[i].data_ptr() == base[i].data_ptr() && out[i].numel() > 0;
    written.push_back({&out[i], "out", int64_t(i)});
    if (!in_place) read.push_back({&base[i], "base", int64_t(i)});
  }
  for (size_t m = 0; m < models.size(); ++m) read.push_back({&models[m], "models", int64_t(m)});
  check_disjoint(written, read);
  return dtypes;
}

}  // namespace m2n2
