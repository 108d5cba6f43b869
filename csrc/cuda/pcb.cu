// CUDA kernel of pcb_merge_out: the checks of pcb_args.h (the CPU entry's, in its
// order), a workspace per unit from torch's caching allocator, then the torch-free
// launchers of kernels/pcb.cuh on the current stream. Nothing here waits for the
// device. (c10 headers only, as task_merge.cu.)
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "../pcb_args.h"
#include "kernels/pcb.cuh"
#include "task_units.h"

namespace m2n2 {
namespace {

void pcb_merge_out_cuda(at::TensorList base, at::TensorList models, at::TensorList out, double ratio, double lam,
                        c10::string_view scope, double clamp) {
  const int64_t K = task_models_count(base, models);
  const std::vector<Dtype> dtypes = check_task_tensors(base, models, out, K, c10::DeviceType::CUDA);
  const PcbScalars sc = check_pcb_scalars(ratio, lam, std::string(scope), clamp);

  const c10::cuda::CUDAGuard guard(base[0].device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t budget = cuda::task_block_budget(base[0].device().index());
  for_each_task_unit(base, models, out, dtypes, K, sc.global_scope,
                     [&](std::vector<cuda::TaskSegment>& segs, int64_t n, bool wide) {
    cuda::PcbParams p = cuda::make_pcb_params(int(K), sc.ratio, sc.lam, sc.clamp, wide, n);
    p.total_blocks = cuda::plan_task_unit(segs, int(K), budget);
    // Freed when the unit is enqueued: the caching allocator hands the memory out
    // again only in this stream's order.
    const at::Tensor workspace = at::empty({cuda::pcb_workspace_bytes(p)}, base[0].options().dtype(at::kByte));
    C10_CUDA_CHECK(cuda::launch_pcb_unit(segs, p, workspace.data_ptr(), stream));
  });
}

}  // namespace
}  // namespace m2n2

TORCH_LIBRARY_IMPL(m2n2, CUDA, m) { m.impl("pcb_merge_out", &m2n2::pcb_merge_out_cuda); }
