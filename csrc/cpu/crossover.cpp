// CPU kernels of the crossover ops: the checks of crossover_args.h, then the
// torch-free loops of crossover_kernels.cpp on raw pointers.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "../crossover_args.h"
#include "crossover_kernels.h"

namespace m2n2 {
namespace {

// out is written (Written::kOut), or is exactly a (kA) or b (kB): in place.
void split_interpolate_cpu(at::TensorList a, at::TensorList b, at::TensorList out, Written written, int64_t split,
                           double w, c10::string_view method, c10::string_view omega,
                           double noise_std, int64_t seed, int64_t stream, int64_t index_offset,
                           const std::optional<at::Tensor>& given_sums, at::OptionalIntArrayRef index_offsets) {
  const Method m = parse_method(std::string(method));
  const OmegaMode o = parse_omega(std::string(omega));
  int64_t n = 0;
  const std::vector<Segment> segments =
      crossover_segments(a, b, out, c10::DeviceType::CPU, index_offset, index_offsets, &n);
  check_crossover_aliasing(a, b, out, written);
  check_offsets(a, index_offset, index_offsets);
  check_split(split, index_offset, n, given_sums.has_value() || index_offsets.has_value());
  check_sums(given_sums, a[0].device());
  SplitSums sums{};
  if (m == Method::kSlerp) sums = given_sums ? sums_from_host(*given_sums) : cpu::split_sums(segments, split);
  const SplitCoefs coefs = split_coefs(m, o, sums, w);
  cpu::split_interp(segments, split, coefs, noise_std, uint64_t(seed), uint64_t(stream));
}

void split_interpolate_inplace_cpu(at::TensorList self, at::TensorList other, int64_t split, double w,
                                   c10::string_view method, c10::string_view omega, double noise_std,
                                   int64_t seed, int64_t stream, int64_t index_offset, bool self_is_a,
                                   const std::optional<at::Tensor>& sums, at::OptionalIntArrayRef index_offsets) {
  at::TensorList a = self_is_a ? self : other;
  at::TensorList b = self_is_a ? other : self;
  split_interpolate_cpu(a, b, self, self_is_a ? Written::kA : Written::kB, split, w, method, omega, noise_std, seed,
                        stream, index_offset, sums, index_offsets);
}

void split_interpolate_out_cpu(at::TensorList a, at::TensorList b, at::TensorList out, int64_t split, double w,
                                c10::string_view method, c10::string_view omega, double noise_std, int64_t seed,
                                int64_t stream, int64_t index_offset, const std::optional<at::Tensor>& sums,
                                at::OptionalIntArrayRef index_offsets) {
  split_interpolate_cpu(a, b, out, Written::kOut, split, w, method, omega, noise_std, seed, stream, index_offset,
                        sums, index_offsets);
}

at::Tensor interp_sums_cpu(at::TensorList a, at::TensorList b, int64_t split, int64_t index_offset,
                           at::OptionalIntArrayRef index_offsets) {
  int64_t n = 0;
  const std::vector<Segment> segments =
      crossover_segments(a, b, a, c10::DeviceType::CPU, index_offset, index_offsets, &n);
  check_offsets(a, index_offset, index_offsets);
  check_split(split, index_offset, n, /*piece=*/true);
  const SplitSums s = cpu::split_sums(segments, split);
  at::Tensor sums = at::empty({2, 3}, a[0].options().dtype(at::kDouble));
  double* p = sums.data_ptr<double>();
  for (int side = 0; side < 2; ++side) {
    p[3 * side] = s.dot[side];
    p[3 * side + 1] = s.aa[side];
    p[3 * side + 2] = s.bb[side];
  }
  return sums;
}

void crossover_batch_out_cpu(const at::Tensor& archive, const at::Tensor& ia, const at::Tensor& ib,
                             const at::Tensor& split, const at::Tensor& w, const at::Tensor& out,
                             c10::string_view method, c10::string_view omega, double noise_std,
                             int64_t seed) {
  check_batch(archive, ia, ib, split, w, out, c10::DeviceType::CPU);
  parse_method(std::string(method));
  parse_omega(std::string(omega));
  check_batch_values(archive, ia, ib, split);  // everything before writing anything
  const int64_t* pa = ia.data_ptr<int64_t>();
  const int64_t* pb = ib.data_ptr<int64_t>();
  const int64_t* ps = split.data_ptr<int64_t>();
  const double* pw = w.data_ptr<double>();
  for (int64_t c = 0; c < out.size(0); ++c) {
    split_interpolate_cpu({archive[pa[c]]}, {archive[pb[c]]}, {out[c]}, Written::kOut, ps[c], pw[c], method, omega,
                          noise_std, seed, c, 0, std::nullopt, std::nullopt);
  }
}

}  // namespace
}  // namespace m2n2

TORCH_LIBRARY_IMPL(m2n2, CPU, m) {
  m.impl("split_interpolate_out", &m2n2::split_interpolate_out_cpu);
  m.impl("split_interpolate_", &m2n2::split_interpolate_inplace_cpu);
  m.impl("crossover_batch_out", &m2n2::crossover_batch_out_cpu);
  m.impl("interp_sums", &m2n2::interp_sums_cpu);
}
