// CPU kernel of the task-vector merge op: the checks of task_merge_args.h, then the
// torch-free passes of task_merge_kernels.cpp on raw pointers.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "../task_merge_args.h"
#include "task_merge_kernels.h"

namespace m2n2 {
namespace {

// The tensors checked (check_task_tensors), as the kernels' positions; with_fibers:
// della's rows too.
std::vector<cpu::TaskTensor> task_tensors(at::TensorList base, at::TensorList models, at::TensorList out, int64_t K,
                                          bool with_fibers) {
  const std::vector<Dtype> dtypes = check_task_tensors(base, models, out, K, c10::DeviceType::CPU);
  std::vector<cpu::TaskTensor> tensors;
  const size_t L = base.size();
  for (size_t i = 0; i < L; ++i) {
    cpu::TaskTensor t{dtypes[i], base[i].data_ptr(), {}, out[i].data_ptr(), base[i].numel()};
    if (with_fibers) {
      const FiberShape f = della_fibers(base[i], c10::str("base", where(i, true)));
      t.fiber = f.fiber;
      t.fiber_stride = f.stride;
    }
    for (int64_t k = 0; k < K; ++k) t.models.push_back(models[k * L + i].data_ptr());
    tensors.push_back(std::move(t));
  }
  return tensors;
}

// The checks and settings both ops end with (lam, then the tensors: the order of
// the Python checks), then the passes.
void run_task_merge(cpu::TaskMergeConfig& cfg, at::TensorList base, at::TensorList models, at::TensorList out,
                    int64_t K, double lam, bool normalize, int64_t seed, bool with_fibers) {
  TORCH_CHECK_VALUE(std::isfinite(lam), "lam must be finite, got ", py_float(lam));
  cfg.normalize = normalize;
  cfg.lam = lam;
  cfg.seed = uint64_t(seed);
  std::vector<cpu::TaskTensor> tensors = task_tensors(base, models, out, K, with_fibers);
  cfg.memory_budget = cpu::selection_memory_budget(tensors, int(K));
  cpu::task_merge(tensors, cfg);
}

void task_merge_out_cpu(at::TensorList base, at::TensorList models, at::TensorList out, at::ArrayRef<double> weights,
                        at::ArrayRef<double> density, at::ArrayRef<double> gamma, c10::string_view sparsify,
                        c10::string_view consensus, c10::string_view rescale, bool normalize, double lam,
                        c10::string_view scope, int64_t seed) {
  const int64_t K = task_models_count(base, models);
  cpu::TaskMergeConfig cfg;
  cfg.weights = task_per_model(weights, K, "weights", false);
  cfg.density = task_per_model(density, K, "density", true);
  cfg.gamma = task_per_model(gamma, K, "gamma", true);
  cfg.sparsify = parse_sparsify(std::string(sparsify));
  check_task_model_count(K, cfg.sparsify);
  cfg.consensus = parse_consensus(std::string(consensus));
  cfg.rescale = parse_rescale(std::string(rescale));
  cfg.global_scope = parse_scope(std::string(scope));
  run_task_merge(cfg, base, models, out, K, lam, normalize, seed, false);
}

// DELLA (mergekit's della_magprune) on the same passes: DARE's draws against a
// probability from each element's magnitude rank in its fiber.
void della_merge_out_cpu(at::TensorList base, at::TensorList models, at::TensorList out, at::ArrayRef<double> weights,
                         at::ArrayRef<double> density, at::ArrayRef<double> epsilon, c10::string_view consensus,
                         c10::string_view rescale, bool normalize, double lam, c10::string_view scope, int64_t seed) {
  const int64_t K = task_models_count(base, models);
  cpu::TaskMergeConfig cfg;
  cfg.weights = task_per_model(weights, K, "weights", false);
  cfg.density = task_per_model(density, K, "density", true);
  cfg.epsilon = task_per_model(epsilon, K, "epsilon", true);
  cfg.gamma.assign(size_t(K), 0.0);
  cfg.sparsify = Sparsify::kDella;
  cfg.consensus = parse_consensus(std::string(consensus));
  cfg.rescale = parse_della_rescale(std::string(rescale));
  cfg.global_scope = parse_scope(std::string(scope));
  run_task_merge(cfg, base, models, out, K, lam, normalize, seed, true);
}

}  // namespace

TORCH_LIBRARY_IMPL(m2n2, CPU, m) {
  m.impl("task_merge_out", &task_merge_out_cpu);
  m.impl("della_merge_out", &della_merge_out_cpu);
}

}  // namespace m2n2
