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
#include <utility>
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

// out is written (Written::kOut), or is exactly a (kA) or b (kB): in place.
// A launch plan per dtype present (a list may mix bf16 weights and fp32 norms).
std::vector<std::pair<Dtype, cuda::LaunchPlan>> plans_by_dtype(const std::vector<Segment>& segments, int device) {
  std::vector<std::pair<Dtype, cuda::LaunchPlan>> plans;
  const int budget = cuda::block_budget(device);  // queried once per call
  for (Dtype dtype : {Dtype::kFloat, Dtype::kDouble, Dtype::kBFloat16, Dtype::kHalf}) {
    std::vector<Segment> group;
    for (const Segment& s : segments) {
      if (s.dtype == dtype) group.push_back(s);
    }
    if (!group.empty()) {
      plans.emplace_back(dtype, cuda::plan_launches(group, cuda::unit_elems(dtype), budget));
    }
  }
  return plans;
}

// The slerp sums of every block of every plan: float64 [blocks, 6], one workspace in
// a fixed order (so the totals do not depend on the launch).
at::Tensor list_partials(const std::vector<std::pair<Dtype, cuda::LaunchPlan>>& plans, int64_t split,
                         const at::Tensor& like, cudaStream_t stream) {
  int64_t total_blocks = 0;
  for (const auto& p : plans) total_blocks += p.second.total_blocks;
  at::Tensor partials = workspace(6 * total_blocks, like).view({total_blocks, 6});
  int64_t first_block = 0;
  for (const auto& p : plans) {
    C10_CUDA_CHECK(
        cuda::launch_list_sums(p.first, p.second, split, partials.data_ptr<double>() + 6 * first_block, stream));
    first_block += p.second.total_blocks;
  }
  return partials;
}

void split_interpolate_cuda(at::TensorList a, at::TensorList b, at::TensorList out, Written written, int64_t split,
                            double w, c10::string_view method, c10::string_view omega,
                            double noise_std, int64_t seed, int64_t stream, int64_t index_offset,
                            const std::optional<at::Tensor>& sums, at::OptionalIntArrayRef index_offsets) {
  const Method m = parse_method(std::string(method));
  const OmegaMode o = parse_omega(std::string(omega));
  int64_t n = 0;
  const std::vector<Segment> segments =
      crossover_segments(a, b, out, c10::DeviceType::CUDA, index_offset, index_offsets, &n);
  check_crossover_aliasing(a, b, out, written);
  check_offsets(a, index_offset, index_offsets);
  check_split(split, index_offset, n, sums.has_value() || index_offsets.has_value());
  check_sums(sums, a[0].device());
  if (segments.empty()) return;

  const c10::cuda::CUDAGuard guard(a[0].device());
  const cudaStream_t cuda_stream = c10::cuda::getCurrentCUDAStream();
  const std::vector<std::pair<Dtype, cuda::LaunchPlan>> plans = plans_by_dtype(segments, a[0].device().index());

  cuda::CoefSource coefs{};
  at::Tensor coef_buffer;
  if (m == Method::kSlerp) {
    coef_buffer = workspace(4, a[0]);
    if (sums.has_value()) {  // the totals given: one row of "partials"
      C10_CUDA_CHECK(cuda::launch_coefs(sums->data_ptr<double>(), 1, 1, m, o, nullptr, w,
                                        coef_buffer.data_ptr<double>(), cuda_stream));
    } else {
      const at::Tensor partials = list_partials(plans, split, a[0], cuda_stream);
      C10_CUDA_CHECK(cuda::launch_coefs(partials.data_ptr<double>(), partials.size(0), 1, m, o, nullptr, w,
                                        coef_buffer.data_ptr<double>(), cuda_stream));
    }
    coefs.device = coef_buffer.data_ptr<double>();
  } else {  // lerp: the coefficients depend on w alone
    const SplitCoefs c = split_coefs(m, o, SplitSums{}, w);
    coefs.host[0] = c.ca[0];
    coefs.host[1] = c.cb[0];
    coefs.host[2] = c.ca[1];
    coefs.host[3] = c.cb[1];
  }
  for (const auto& p : plans) {
    C10_CUDA_CHECK(cuda::launch_list_interp(p.first, p.second, split, coefs, noise_std, uint64_t(seed), uint64_t(stream),
                            cuda_stream));
  }
}

void split_interpolate_inplace_cuda(at::TensorList self, at::TensorList other, int64_t split, double w,
                                    c10::string_view method, c10::string_view omega, double noise_std,
                                    int64_t seed, int64_t stream, int64_t index_offset, bool self_is_a,
                                    const std::optional<at::Tensor>& sums, at::OptionalIntArrayRef index_offsets) {
  at::TensorList a = self_is_a ? self : other;
  at::TensorList b = self_is_a ? other : self;
  split_interpolate_cuda(a, b, self, self_is_a ? Written::kA : Written::kB, split, w, method, omega, noise_std, seed,
                         stream, index_offset, sums, index_offsets);
}

void split_interpolate_out_cuda(at::TensorList a, at::TensorList b, at::TensorList out, int64_t split, double w,
                                c10::string_view method, c10::string_view omega, double noise_std, int64_t seed,
                                int64_t stream, int64_t index_offset, const std::optional<at::Tensor>& sums,
                                at::OptionalIntArrayRef index_offsets) {
  split_interpolate_cuda(a, b, out, Written::kOut, split, w, method, omega, noise_std, seed, stream, index_offset,
                         sums, index_offsets);
}

// The six sums over the piece: the block partials added in a fixed order (at::sum
// over the rows is deterministic); nothing waits for the device.
at::Tensor interp_sums_cuda(at::TensorList a, at::TensorList b, int64_t split, int64_t index_offset,
                            at::OptionalIntArrayRef index_offsets) {
  int64_t n = 0;
  const std::vector<Segment> segments =
      crossover_segments(a, b, a, c10::DeviceType::CUDA, index_offset, index_offsets, &n);
  check_offsets(a, index_offset, index_offsets);
  check_split(split, index_offset, n, /*piece=*/true);
  if (segments.empty()) return at::zeros({2, 3}, a[0].options().dtype(at::kDouble));
  const c10::cuda::CUDAGuard guard(a[0].device());
  const cudaStream_t cuda_stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor partials = list_partials(plans_by_dtype(segments, a[0].device().index()), split, a[0], cuda_stream);
  return partials.sum(0).view({2, 3});
}

// Shapes and dtypes only: the values of ia, ib and split live on the device, and
// checking them here would wait for it. The Python API checks them; a child whose
// values are out of range comes out NaN rather than reading out of bounds.
void crossover_batch_out_cuda(const at::Tensor& archive, const at::Tensor& ia, const at::Tensor& ib,
                              const at::Tensor& split, const at::Tensor& w, const at::Tensor& out,
                              c10::string_view method, c10::string_view omega, double noise_std,
                              int64_t seed) {
  const Dtype dtype = check_batch(archive, ia, ib, split, w, out, c10::DeviceType::CUDA);
  const Method m = parse_method(std::string(method));
  const OmegaMode o = parse_omega(std::string(omega));
  const int64_t k = out.size(0);
  const int64_t n = archive.size(1);
  TORCH_CHECK_VALUE(k <= std::numeric_limits<int32_t>::max(), "at most 2^31 - 1 children, got ", k);
  if (k == 0 || n == 0) return;

  const c10::cuda::CUDAGuard guard(archive.device());
  const cudaStream_t cuda_stream = c10::cuda::getCurrentCUDAStream();
  cuda::BatchArgs args{};
  args.archive = archive.data_ptr();
  args.out = out.data_ptr();
  args.rows = archive.size(0);
  args.n = n;
  args.children = k;
  args.ia = ia.data_ptr<int64_t>();
  args.ib = ib.data_ptr<int64_t>();
  args.split = split.data_ptr<int64_t>();
  const cuda::BatchShape shape =
      cuda::batch_shape(n, k, cuda::unit_elems(dtype), cuda::block_budget(archive.device().index()));

  const at::Tensor coefs = workspace(4 * k, archive);
  at::Tensor partials;
  int64_t blocks_per_child = 0;  // lerp: no sums
  if (m == Method::kSlerp) {
    blocks_per_child = shape.blocks_x;
    partials = workspace(6 * k * blocks_per_child, archive);
    C10_CUDA_CHECK(cuda::launch_batch_sums(dtype, args, shape, partials.data_ptr<double>(), cuda_stream));
  }
  C10_CUDA_CHECK(cuda::launch_coefs(partials.defined() ? partials.data_ptr<double>() : nullptr, blocks_per_child, k, m, o,
                    w.data_ptr<double>(), 0.0, coefs.data_ptr<double>(), cuda_stream));
  C10_CUDA_CHECK(cuda::launch_batch_interp(dtype, args, shape, coefs.data_ptr<double>(), noise_std, uint64_t(seed),
                           cuda_stream));
}

}  // namespace
}  // namespace m2n2

TORCH_LIBRARY_IMPL(m2n2, CUDA, m) {
  m.impl("split_interpolate_out", &m2n2::split_interpolate_out_cuda);
  m.impl("split_interpolate_", &m2n2::split_interpolate_inplace_cuda);
  m.impl("crossover_batch_out", &m2n2::crossover_batch_out_cuda);
  m.impl("interp_sums", &m2n2::interp_sums_cuda);
}
