// CPU kernel of the PCB merge op: the checks of pcb_args.h, then the torch-free
// passes of pcb_kernels.cpp on raw pointers.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "../pcb_args.h"
#include "pcb_kernels.h"

namespace m2n2 {
namespace {

void pcb_merge_out_cpu(at::TensorList base, at::TensorList models, at::TensorList out, double ratio, double lam,
                       c10::string_view scope, double clamp) {
  const int64_t K = task_models_count(base, models);
  const std::vector<Dtype> dtypes = check_task_tensors(base, models, out, K, c10::DeviceType::CPU);
  const PcbScalars s = check_pcb_scalars(ratio, lam, std::string(scope), clamp);
  std::vector<cpu::TaskTensor> tensors;
  const size_t L = base.size();
  for (size_t i = 0; i < L; ++i) {
    cpu::TaskTensor t{dtypes[i], base[i].data_ptr(), {}, out[i].data_ptr(), base[i].numel()};
    for (int64_t k = 0; k < K; ++k) t.models.push_back(models[k * L + i].data_ptr());
    tensors.push_back(std::move(t));
  }
  cpu::pcb_merge(tensors,
                 {s.ratio, s.lam, s.clamp, s.global_scope, int(K), cpu::selection_memory_budget(tensors, int(K))});
}

}  // namespace

TORCH_LIBRARY_IMPL(m2n2, CPU, m) { m.impl("pcb_merge_out", &pcb_merge_out_cpu); }

}  // namespace m2n2
