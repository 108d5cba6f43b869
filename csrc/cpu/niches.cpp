// CPU kernel of niche_stats_out: argument checks, then the torch-free loops of
// niches_kernels.cpp, which write nothing when S or the child holds a bad score.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <string>

#include "../niches_args.h"
#include "niches_kernels.h"

namespace m2n2 {
namespace {

void niche_stats_out_cpu(const at::Tensor& S, const std::optional<at::Tensor>& child,
                         const std::optional<at::Tensor>& capacity, double alpha, double eps, int64_t parent,
                         c10::string_view mode, const at::Tensor& z, const at::Tensor& fitness,
                         const at::Tensor& attraction) {
  const NichesProblem p = make_niches_problem(S, child, capacity, alpha, eps, parent, std::string(mode), z, fitness,
                                              attraction, c10::DeviceType::CPU);
  const cpu::BadScore bad = cpu::niche_stats(p);
  if (bad.row == cpu::BadScore::kColumnOverflow) raise_column_overflow(bad.col);
  if (bad.row != cpu::BadScore::kNoBadScore) raise_bad_score(p, bad.row, bad.col, bad.value);
}

}  // namespace
}  // namespace m2n2

TORCH_LIBRARY_IMPL(m2n2, CPU, m) {
  m.impl("niche_stats_out", &m2n2::niche_stats_out_cpu);
}
