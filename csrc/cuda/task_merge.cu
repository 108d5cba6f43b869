// CUDA kernel of task_merge_out: the checks of task_merge_args.h (the CPU entry's),
// a workspace per unit from torch's caching allocator, then the torch-free launchers
// of kernels/task_merge.cuh on the current stream. Nothing here waits for the device.
// (c10 headers only: ATen/cuda/CUDAContext.h would pull in the cuBLAS/cuSPARSE headers
// that a minimal toolkit lacks.)
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <string>
#include <vector>

#include "../task_merge_args.h"
#include "kernels/task_merge.cuh"
#include "task_units.h"

namespace m2n2 {
namespace {

void task_merge_out_cuda(at::TensorList base, at::TensorList models, at::TensorList out, at::ArrayRef<double> weights,
                         at::ArrayRef<double> density, at::ArrayRef<double> gamma, c10::string_view sparsify,
                         c10::string_view consensus, c10::string_view rescale, bool normalize, double lam,
                         c10::string_view scope, int64_t seed) {
  const int64_t K = task_models_count(base, models);
  const std::vector<double> w = task_per_model(weights, K, "weights", false);
  const std::vector<double> rho = task_per_model(density, K, "density", true);
  const std::vector<double> gam = task_per_model(gamma, K, "gamma", true);
  const Sparsify sp = parse_sparsify(std::string(sparsify));
  check_task_model_count(K, sp);
  const Consensus co = parse_consensus(std::string(consensus));
  const Rescale re = parse_rescale(std::string(rescale));
  const bool global_scope = parse_scope(std::string(scope));
  TORCH_CHECK_VALUE(std::isfinite(lam), "lam must be finite, got ", py_float(lam));
  const std::vector<Dtype> dtypes = check_task_tensors(base, models, out, K, c10::DeviceType::CUDA);

  const c10::cuda::CUDAGuard guard(base[0].device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t budget = cuda::task_block_budget(base[0].device().index());
  for_each_task_unit(base, models, out, dtypes, K, global_scope,
                     [&](std::vector<cuda::TaskSegment>& segs, int64_t n, bool wide) {
    cuda::TaskParams p = cuda::make_task_params(int(K), sp, co, re, normalize, lam, uint64_t(seed), w.data(),
                                                rho.data(), gam.data(), wide, n);
    p.total_blocks = cuda::plan_task_unit(segs, int(K), budget);
    cuda::task_virtual_models(segs, p);
    // Freed when the unit is enqueued: the caching allocator hands the memory out
    // again only in this stream's order.
    const at::Tensor workspace =
        at::empty({cuda::task_workspace_bytes(p)}, base[0].options().dtype(at::kByte));
    C10_CUDA_CHECK(cuda::launch_task_unit(segs, p, workspace.data_ptr(), stream));
  });
}

}  // namespace
}  // namespace m2n2

TORCH_LIBRARY_IMPL(m2n2, CUDA, m) { m.impl("task_merge_out", &m2n2::task_merge_out_cuda); }
