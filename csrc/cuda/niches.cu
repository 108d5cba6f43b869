// CUDA kernel of niche_stats_out: argument checks (make_niches_problem), scratch from
// torch's caching allocator, then the torch-free launchers of kernels/niches.cuh on the
// current stream. (c10 headers only: ATen/cuda/CUDAContext.h would pull in the
// cuBLAS/cuSPARSE headers that a minimal toolkit lacks.)
//
// Non-finite scores: the column-sum kernel records the first column whose z is not
// finite; one 8-byte device-to-host copy of that index (the op's only host sync) lets
// the op locate the score with ATen ops and raise before fitness or attraction is
// written. 0/1 scores are always finite: no copy, no sync.
//
// The attraction matrix of 0/1 scores with N >= kGemmMinRows uses the identity
//   A = (1 - S) diag(u) S^T
// on the tensor cores, through ATen's bf16 x bf16 -> fp32 GEMM (at::mm_out with
// out_dtype, cuBLAS) rather than an mma kernel of our own: cuBLAS already runs near
// the tensor-core peak for these shapes, and the operands are exact in bf16: 1 - S and S
// are 0/1, and u_j is split into three bf16 parts whose sum is u_j exactly (fp32 has 24
// mantissa bits, bf16 8), so S * part is exact and the only rounding is the GEMM's fp32
// accumulation, as in an fp32 GEMM. (A plain fp32 at::mm would not use the tensor
// cores unless TF32 is allowed, and TF32 would round u to 11 bits.) The columns go in
// chunks of c, so the extra memory is two bf16 [N, 3c] operands (N c <= 2^21) and one
// fp32 [N, N] product; chunks are added into A in column order.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <string>

#include "../niches_args.h"
#include "kernels/niches.cuh"

namespace m2n2 {
namespace {


// Called with the first column j holding a bad score (NaN, infinite or negative: its
// z is made NaN) : finds the score and raises (always).
void raise_bad_column(const NichesProblem& p, const at::Tensor& S, const std::optional<at::Tensor>& child,
                                   int64_t j) {
  if (p.rows > 0) {
    const at::Tensor column = S.select(1, j);
    const at::Tensor rows = at::isfinite(column).logical_not().logical_or(column < 0).nonzero();
    if (rows.numel() > 0) {
      const int64_t i = rows[0][0].item<int64_t>();
      raise_bad_score(p, i, j, column[i].item<double>());
    }
  }
  if (child.has_value()) {
    const double value = (*child)[j].item<double>();
    if (!std::isfinite(value) || value < 0.0) raise_bad_score(p, p.rows, j, value);
  }
  raise_column_overflow(j);
}

// A = (1 - S) diag(u) S^T for 0/1 scores, on the tensor cores (see the top of the file).
void attraction_matrix_gemm(const NichesProblem& p, const at::Tensor& u, const at::Tensor& attraction,
                            cudaStream_t stream) {
  const int64_t n = p.rows;
  int64_t chunk = (cuda::kGemmChunkElems / n) / 64 * 64;
  chunk = chunk < 64 ? 64 : chunk;
  chunk = chunk < p.cols ? chunk : p.cols;
  const at::TensorOptions bf16 = attraction.options().dtype(at::kBFloat16);
  const at::Tensor xbuf = at::empty({n * 3 * chunk}, bf16);
  const at::Tensor ybuf = at::empty({n * 3 * chunk}, bf16);
  at::Tensor product;
  at::Tensor out = attraction;  // written by the first chunk, added to by the others
  for (int64_t lo = 0; lo < p.cols; lo += chunk) {
    const int64_t c = p.cols - lo < chunk ? p.cols - lo : chunk;
    C10_CUDA_CHECK(cuda::launch_pack_binary(p, u.data_ptr<float>(), lo, c,
                                                 static_cast<bf16_t*>(xbuf.data_ptr()),
                                                 static_cast<bf16_t*>(ybuf.data_ptr()), stream));
    const at::Tensor x = xbuf.narrow(0, 0, n * 3 * c).view({n, 3 * c});
    const at::Tensor y = ybuf.narrow(0, 0, n * 3 * c).view({n, 3 * c});
    if (lo == 0) {
      at::mm_out(out, x, y.t(), at::kFloat);
    } else {
      if (!product.defined()) product = at::empty({n, n}, attraction.options());
      at::mm_out(product, x, y.t(), at::kFloat);
      out.add_(product);
    }
  }
}

void niche_stats_out_cuda(const at::Tensor& S, const std::optional<at::Tensor>& child,
                          const std::optional<at::Tensor>& capacity, double alpha, double eps, int64_t parent,
                          c10::string_view mode, const at::Tensor& z, const at::Tensor& fitness,
                          const at::Tensor& attraction) {
  const NichesProblem p = make_niches_problem(S, child, capacity, alpha, eps, parent, std::string(mode), z, fitness,
                                              attraction, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(S.device());
  if (p.cols == 0) {  // no datapoints: z is empty, every sum is 0
    fitness.zero_();
    attraction.zero_();
    return;
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const cuda::NichesPlan plan = cuda::plan_niches(p);
  const at::TensorOptions doubles = S.options().dtype(at::kDouble);
  auto scratch = [&](int64_t count) { return at::empty({count > 0 ? count : 1}, doubles); };

  // 1. z, the weights u, the first non-finite column.
  const at::Tensor u = at::empty({p.cols}, S.options().dtype(p.out_double ? at::kDouble : at::kFloat));
  const at::Tensor zpart = scratch(cuda::z_partial_doubles(p, plan));
  const bool binary = p.type == Dtype::kUInt8;
  at::Tensor first_bad;
  if (!binary) first_bad = at::full({1}, cuda::kNoIndex, S.options().dtype(at::kLong));
  C10_CUDA_CHECK(cuda::launch_column_sums(
      p, plan, u.data_ptr(), zpart.data_ptr<double>(),
      binary ? nullptr : reinterpret_cast<unsigned long long*>(first_bad.data_ptr<int64_t>()), stream));
  if (!binary) {
    const int64_t j = first_bad.item<int64_t>();  // the one host sync of the op
    if (j != cuda::kNoIndex) {
      raise_bad_column(p, S, child, j);
      return;  // (not reached: raise_bad_column always throws)
    }
  }

  // 2. fitness (and the attraction row).
  if (plan.fit_rows > 0) {
    const at::Tensor part = scratch(cuda::row_partial_doubles(plan));
    C10_CUDA_CHECK(cuda::launch_row_sums(p, plan, u.data_ptr(), part.data_ptr<double>(), stream));
  }

  // 3. the attraction matrix.
  if (p.mode == AttractionMode::kMatrix && p.rows > 0) {
    if (plan.gemm) {
      attraction_matrix_gemm(p, u, attraction, stream);
    } else {
      const at::Tensor part = scratch(cuda::matrix_partial_doubles(p, plan));
      C10_CUDA_CHECK(cuda::launch_attraction_matrix(p, plan, u.data_ptr(), part.data_ptr<double>(), stream));
    }
  }
}

}  // namespace
}  // namespace m2n2

TORCH_LIBRARY_IMPL(m2n2, CUDA, m) {
  m.impl("niche_stats_out", &m2n2::niche_stats_out_cuda);
}
