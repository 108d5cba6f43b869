// CUDA kernel of sample_scores_out: argument checks, the value checks of targets and
// out_index (one small kernel and one 16-byte device-to-host copy, so that a bad
// value raises before out is touched), then the kernels of kernels/scores.cuh on the
// current stream. (c10 headers only: ATen/cuda/CUDAContext.h would pull in the
// cuBLAS/cuSPARSE headers that a minimal toolkit lacks.)
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <string>

#include "../scores_args.h"
#include "kernels/scores.cuh"

namespace m2n2 {
namespace {


void check_values(const ScoresProblem& p, const at::Tensor& target, const std::optional<at::Tensor>& out_index,
                  cudaStream_t stream) {
  at::Tensor first_bad = at::full({2}, cuda::kNoIndex, target.options());
  C10_CUDA_CHECK(cuda::launch_find_bad_indices(
      p, reinterpret_cast<unsigned long long*>(first_bad.data_ptr<int64_t>()), stream));
  const at::Tensor host = first_bad.cpu();  // the one host sync of the op
  const int64_t row = host.data_ptr<int64_t>()[0];
  const int64_t b = host.data_ptr<int64_t>()[1];
  if (row != cuda::kNoIndex) raise_bad_target(p, row, target.reshape(-1)[row].item<int64_t>());
  if (b != cuda::kNoIndex) raise_bad_out_index(p, b, (*out_index)[b].item<int64_t>());
}

void sample_scores_out_cuda(const at::Tensor& logits, const at::Tensor& target,
                            const std::optional<at::Tensor>& mask, int64_t ignore_index,
                            c10::string_view kind, c10::string_view reduce, const at::Tensor& out,
                            const std::optional<at::Tensor>& out_index) {
  const ScoresProblem p = make_scores_problem(logits, target, mask, ignore_index, std::string(kind),
                                              std::string(reduce), out, out_index, c10::DeviceType::CUDA);
  if (p.batch == 0) return;
  const c10::cuda::CUDAGuard guard(logits.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  check_values(p, target, out_index, stream);
  const cuda::ScoresPlan plan = cuda::plan_scores(p);
  const int64_t state_bytes = int64_t(cuda::scores_state_bytes(p, plan));
  const at::Tensor states = at::empty({state_bytes > 0 ? state_bytes : 1}, logits.options().dtype(at::kByte));
  C10_CUDA_CHECK(cuda::launch_sample_scores(p, plan, states.data_ptr(), stream));
}

}  // namespace
}  // namespace m2n2

TORCH_LIBRARY_IMPL(m2n2, CUDA, m) {
  m.impl("sample_scores_out", &m2n2::sample_scores_out_cuda);
}
