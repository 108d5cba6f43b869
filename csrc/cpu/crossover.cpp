// CPU kernels of the crossover ops: argument checks, then the torch-free loops of
// crossover_kernels.cpp on raw pointers.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "../crossover_args.h"
#include "crossover_kernels.h"

namespace m2n2 {
namespace {

// The whole op once the tensors are checked: sums (slerp only), coefficients, pass.
void run_crossover(Dtype dtype, const std::vector<Segment>& segments, int64_t split, double w,
                   Method method, OmegaMode omega, double noise_std, int64_t seed, int64_t stream) {
  SplitSums sums{};
  if (method == Method::kSlerp) sums = cpu::split_sums(dtype, segments, split);
  const SplitCoefs coefs = split_coefs(method, omega, sums, w);
  cpu::split_interp(dtype, segments, split, coefs, noise_std, uint64_t(seed), uint64_t(stream));
}

void split_interpolate_out_cpu(at::TensorList a, at::TensorList b, at::TensorList out, int64_t split,
                               double w, c10::string_view method, c10::string_view omega,
                               double noise_std, int64_t seed, int64_t stream, int64_t index_offset) {
  const Method m = parse_method(std::string(method));
  const OmegaMode o = parse_omega(std::string(omega));
  const int64_t n = check_crossover_lists(a, b, out, c10::DeviceType::CPU);
  check_split(split, index_offset, n);
  run_crossover(storage_dtype(a[0].scalar_type()), make_segments(a, b, out, index_offset), split, w, m, o,
                noise_std, seed, stream);
}

void split_interpolate_inplace_cpu(at::TensorList self, at::TensorList other, int64_t split, double w,
                                   c10::string_view method, c10::string_view omega, double noise_std,
                                   int64_t seed, int64_t stream, int64_t index_offset, bool self_is_a) {
  at::TensorList a = self_is_a ? self : other;
  at::TensorList b = self_is_a ? other : self;
  split_interpolate_out_cpu(a, b, self, split, w, method, omega, noise_std, seed, stream, index_offset);
}

void crossover_batch_out_cpu(const at::Tensor& archive, const at::Tensor& ia, const at::Tensor& ib,
                             const at::Tensor& split, const at::Tensor& w, const at::Tensor& out,
                             c10::string_view method, c10::string_view omega, double noise_std,
                             int64_t seed) {
  TORCH_CHECK_VALUE(archive.dim() == 2 && out.dim() == 2, "archive and out must be 2-D");
  const int64_t k = out.size(0);
  const int64_t p = archive.size(0);
  for (const at::Tensor* t : {&ia, &ib, &split}) {
    TORCH_CHECK_TYPE(t->scalar_type() == at::kLong, "ia, ib and split must be int64");
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == k, "ia, ib, split and w must have length ", k);
  }
  TORCH_CHECK_TYPE(w.scalar_type() == at::kDouble, "w must be float64");
  TORCH_CHECK_VALUE(w.dim() == 1 && w.size(0) == k, "ia, ib, split and w must have length ", k);
  const at::Tensor ia_c = ia.contiguous(), ib_c = ib.contiguous(), s_c = split.contiguous();
  const at::Tensor w_c = w.contiguous();
  const int64_t* pa = ia_c.data_ptr<int64_t>();
  const int64_t* pb = ib_c.data_ptr<int64_t>();
  const int64_t* ps = s_c.data_ptr<int64_t>();
  const double* pw = w_c.data_ptr<double>();
  const int64_t n = archive.size(1);
  for (int64_t c = 0; c < k; ++c) {  // validate everything before writing anything
    TORCH_CHECK_VALUE(pa[c] >= 0 && pa[c] < p && pb[c] >= 0 && pb[c] < p, "ia/ib must lie in [0, ", p,
                      "), child ", c, " has ", pa[c], ", ", pb[c]);
    TORCH_CHECK_VALUE(ps[c] >= 0 && ps[c] <= n, "split must lie in [0, ", n, "], child ", c, " has ",
                      ps[c]);
  }
  for (int64_t c = 0; c < k; ++c) {
    const at::Tensor oc = out[c];
    split_interpolate_out_cpu({archive[pa[c]]}, {archive[pb[c]]}, {oc}, ps[c], pw[c], method, omega,
                              noise_std, seed, c, 0);
  }
}

}  // namespace
}  // namespace m2n2

TORCH_LIBRARY_IMPL(m2n2, CPU, m) {
  m.impl("split_interpolate_out", &m2n2::split_interpolate_out_cpu);
  m.impl("split_interpolate_", &m2n2::split_interpolate_inplace_cpu);
  m.impl("crossover_batch_out", &m2n2::crossover_batch_out_cpu);
}
