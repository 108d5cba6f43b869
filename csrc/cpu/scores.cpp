// CPU kernel of sample_scores_out: argument checks, value checks of the targets and
// out_index (before out is touched), then the torch-free loops of scores_kernels.cpp.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <string>

#include "../scores_args.h"
#include "scores_kernels.h"

namespace m2n2 {
namespace {

void sample_scores_out_cpu(const at::Tensor& logits, const at::Tensor& target,
                           const std::optional<at::Tensor>& mask, int64_t ignore_index,
                           c10::string_view kind, c10::string_view reduce, const at::Tensor& out,
                           const std::optional<at::Tensor>& out_index) {
  const ScoresProblem p = make_scores_problem(logits, target, mask, ignore_index, std::string(kind),
                                              std::string(reduce), out, out_index, c10::DeviceType::CPU);
  const int64_t bad_row = cpu::first_bad_target(p);
  raise_bad_target(p, bad_row, bad_row < 0 ? 0 : p.target[bad_row]);
  const int64_t bad_b = cpu::first_bad_out_index(p);
  raise_bad_out_index(p, bad_b, bad_b < 0 ? 0 : p.out_index[bad_b]);
  cpu::sample_scores(p);
}

}  // namespace
}  // namespace m2n2

TORCH_LIBRARY_IMPL(m2n2, CPU, m) {
  m.impl("sample_scores_out", &m2n2::sample_scores_out_cpu);
}
