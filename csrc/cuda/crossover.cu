// CUDA kernels of the crossover ops: argument checks, workspaces from torch's caching
// allocator, then the torch-free launchers of kernels/crossover.cuh on the current
// stream. Nothing here waits for the device. (c10 headers only: ATen/cuda/CUDAContext.h
// would pull in cuBLAS/cuSPARSE headers that a minimal toolkit lacks.)
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>
#include <string>
#include <vector>

#include "../crossover_args.h"
#include "kernels/crossover.cuh"

namespace m2n2 {
namespace {

// fp64 scratch on the tensors' device. Freed when the op returns, the memory goes back
// to the caching allocator, which hands it out again only in this stream's order.
at::Tensor workspace(int64_t doubles, const at::Tensor& like) {
  return at::empty({doubles}, like.options().dtype(at::kDouble));
}

void split_interpolate_out_cuda(at::TensorList a, at::TensorList b, at::TensorList out, int64_t split,
                                double w, c10::string_view method, c10::string_view omega,
                                double noise_std, int64_t seed, int64_t stream, int64_t index_offset) {
  const Method m = parse_method(std::string(method));
  const OmegaMode o = parse_omega(std::string(omega));
  const int64_t n = check_crossover_lists(a, b, out, c10::DeviceType::CUDA);
  check_split(split, index_offset, n);
  const std::vector<Segment> segments = make_segments(a, b, out, index_offset);
  if (segments.empty()) return;

  const c10::cuda::CUDAGuard guard(a[0].device());
  const cudaStream_t cuda_stream = c10::cuda::getCurrentCUDAStream();
  const Dtype dtype = storage_dtype(a[0].scalar_type());
  const gpu::LaunchPlan plan =
      gpu::plan_launches(segments, gpu::unit_elems(dtype), gpu::block_budget(a[0].device().index()));

  gpu::CoefSource coefs{};
  at::Tensor coef_buffer;
  if (m == Method::kSlerp) {
    const at::Tensor partials = workspace(6 * plan.total_blocks, a[0]);
    coef_buffer = workspace(4, a[0]);
    gpu::launch_list_sums(dtype, plan, split, partials.data_ptr<double>(), cuda_stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    gpu::launch_coefs(partials.data_ptr<double>(), plan.total_blocks, 1, m, o, nullptr, w,
                      coef_buffer.data_ptr<double>(), cuda_stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    coefs.device = coef_buffer.data_ptr<double>();
  } else {  // lerp: the coefficients depend on w alone
    const SplitCoefs c = split_coefs(m, o, SplitSums{}, w);
    coefs.host[0] = c.ca[0];
    coefs.host[1] = c.cb[0];
    coefs.host[2] = c.ca[1];
    coefs.host[3] = c.cb[1];
  }
  gpu::launch_list_interp(dtype, plan, split, coefs, noise_std, uint64_t(seed), uint64_t(stream),
                          cuda_stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void split_interpolate_inplace_cuda(at::TensorList self, at::TensorList other, int64_t split, double w,
                                    c10::string_view method, c10::string_view omega, double noise_std,
                                    int64_t seed, int64_t stream, int64_t index_offset, bool self_is_a) {
  at::TensorList a = self_is_a ? self : other;
  at::TensorList b = self_is_a ? other : self;
  split_interpolate_out_cuda(a, b, self, split, w, method, omega, noise_std, seed, stream, index_offset);
}

// Shapes and dtypes only: the values of ia, ib and split live on the device, and
// checking them here would wait for it. The Python API checks them; a child whose
// values are out of range comes out NaN rather than reading out of bounds.
void crossover_batch_out_cuda(const at::Tensor& archive, const at::Tensor& ia, const at::Tensor& ib,
                              const at::Tensor& split, const at::Tensor& w, const at::Tensor& out,
                              c10::string_view method, c10::string_view omega, double noise_std,
                              int64_t seed) {
  const Method m = parse_method(std::string(method));
  const OmegaMode o = parse_omega(std::string(omega));
  TORCH_CHECK_VALUE(archive.dim() == 2 && out.dim() == 2, "archive and out must be 2-D");
  TORCH_CHECK_TYPE(is_float_dtype(archive.scalar_type()),
                   "archive must be float32, float64, float16 or bfloat16, got ", archive.scalar_type());
  TORCH_CHECK_TYPE(out.scalar_type() == archive.scalar_type(), "out must have dtype ", archive.scalar_type(),
                   ", got ", out.scalar_type());
  TORCH_CHECK_VALUE(archive.is_cuda() && out.device() == archive.device(),
                    "archive and out must be on one CUDA device, got ", archive.device(), " and ",
                    out.device());
  TORCH_CHECK_VALUE(archive.is_contiguous() && out.is_contiguous(), "archive and out must be contiguous");
  const int64_t k = out.size(0);
  const int64_t n = archive.size(1);
  TORCH_CHECK_VALUE(out.size(1) == n, "out must have ", n, " columns (as archive), got ", out.size(1));
  for (const at::Tensor* t : {&ia, &ib, &split}) {
    TORCH_CHECK_TYPE(t->scalar_type() == at::kLong, "ia, ib and split must be int64");
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == k, "ia, ib, split and w must have length ", k);
  }
  TORCH_CHECK_TYPE(w.scalar_type() == at::kDouble, "w must be float64");
  TORCH_CHECK_VALUE(w.dim() == 1 && w.size(0) == k, "ia, ib, split and w must have length ", k);
  for (const at::Tensor* t : {&ia, &ib, &split, &w}) {
    TORCH_CHECK_VALUE(t->device() == archive.device(), "ia, ib, split and w must be on ", archive.device(),
                      ", got ", t->device());
  }
  TORCH_CHECK_VALUE(k <= std::numeric_limits<int32_t>::max(), "at most 2^31 - 1 children, got ", k);
  if (k == 0 || n == 0) return;

  const c10::cuda::CUDAGuard guard(archive.device());
  const cudaStream_t cuda_stream = c10::cuda::getCurrentCUDAStream();
  const Dtype dtype = storage_dtype(archive.scalar_type());
  const at::Tensor ia_c = ia.contiguous(), ib_c = ib.contiguous(), split_c = split.contiguous();
  const at::Tensor w_c = w.contiguous();
  gpu::BatchArgs args{};
  args.archive = archive.data_ptr();
  args.out = out.data_ptr();
  args.rows = archive.size(0);
  args.n = n;
  args.children = k;
  args.ia = ia_c.data_ptr<int64_t>();
  args.ib = ib_c.data_ptr<int64_t>();
  args.split = split_c.data_ptr<int64_t>();
  const gpu::BatchShape shape =
      gpu::batch_shape(n, k, gpu::unit_elems(dtype), gpu::block_budget(archive.device().index()));

  const at::Tensor coefs = workspace(4 * k, archive);
  at::Tensor partials;
  int64_t blocks_per_child = 0;  // lerp: no sums
  if (m == Method::kSlerp) {
    blocks_per_child = shape.blocks_x;
    partials = workspace(6 * k * blocks_per_child, archive);
    gpu::launch_batch_sums(dtype, args, shape, partials.data_ptr<double>(), cuda_stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  gpu::launch_coefs(partials.defined() ? partials.data_ptr<double>() : nullptr, blocks_per_child, k, m, o,
                    w_c.data_ptr<double>(), 0.0, coefs.data_ptr<double>(), cuda_stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  gpu::launch_batch_interp(dtype, args, shape, coefs.data_ptr<double>(), noise_std, uint64_t(seed),
                           cuda_stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace
}  // namespace m2n2

TORCH_LIBRARY_IMPL(m2n2, CUDA, m) {
  m.impl("split_interpolate_out", &m2n2::split_interpolate_out_cuda);
  m.impl("split_interpolate_", &m2n2::split_interpolate_inplace_cuda);
  m.impl("crossover_batch_out", &m2n2::crossover_batch_out_cuda);
}
