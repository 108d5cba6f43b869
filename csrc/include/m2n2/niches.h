// Niche statistics of an archive score matrix (torch-free, shared by the CPU and CUDA
// code). docs/semantics.md, "Niche statistics":
//   z_j = sum_k S_kj,  zhat_j = (z_j if z_j != 0 else 1) ** alpha + eps,
//   u_j = c_j / zhat_j                       (the weight of datapoint j),
//   fitness_i = sum_j u_j S_ij,
//   A[a, b]   = sum_j u_j max(S_bj - S_aj, 0)  (row a = the first parent).
// An optional child row counts as row N in z and fitness (replacement).
#pragma once

#include <math.h>

#include "m2n2/common.h"
#include "m2n2/dtypes.h"

namespace m2n2 {

// What the attraction output holds: nothing, the row A[parent, :], or all of A.
enum class AttractionMode : int { kNone = 0, kRow = 1, kMatrix = 2 };

// One call, on raw pointers (host or device memory alike).
struct NichesProblem {
  const void* scores;  // S [rows, cols]: S(i, j) at i * row_stride + j elements
  Dtype type;          // kUInt8 (0/1 bytes: bool or uint8 S), kHalf, kBFloat16, kFloat, kDouble
  int64_t rows;        // N
  int64_t cols;        // D
  int64_t row_stride;  // >= cols
  const void* child;   // [cols] contiguous, same type as S: row N of z and fitness (has_child)
  bool has_child;      // (with D = 0, child is counted though its pointer may be null)
  const double* capacity;  // [cols] contiguous, or null: c_j = 1
  double alpha;
  double eps;
  AttractionMode mode;
  int64_t parent;  // the row of A returned when mode == kRow
  // Outputs, float32 or (out_double) float64, contiguous.
  bool out_double;
  void* z;           // [cols]
  void* fitness;     // [rows + has_child]
  void* attraction;  // [rows] (kRow), [rows, rows] (kMatrix), or null (kNone)
};

M2N2_HD int64_t fitness_rows(const NichesProblem& p) { return p.rows + (p.has_child ? 1 : 0); }

// u_j from z_j. pow(x, 1) == x and pow(x, 0) == 1 exactly (IEEE 754), so alpha = 1
// and alpha = 0 (the GA baseline: every datapoint weighs c_j / (1 + eps)) need no
// special case.
M2N2_HD double niche_weight(double z, double capacity, double alpha, double eps) {
  const double base = z != 0.0 ? z : 1.0;
  return capacity / (pow(base, alpha) + eps);
}

// Scores as numbers: the binary storage holds the bytes 0 and 1 (torch.bool, or uint8
// checked by the Python API), converted as integers (a form every SIMD unit widens);
// fp16/bf16 are widened to fp32.
M2N2_HD float score_value(uint8_t x) { return float(x); }
M2N2_HD float score_value(half_t x) { return to_compute(x); }
M2N2_HD float score_value(bf16_t x) { return to_compute(x); }
M2N2_HD float score_value(float x) { return x; }
M2N2_HD double score_value(double x) { return x; }

// u = parts[0] + parts[1] + parts[2] exactly, each a bf16 (for the tensor-core GEMM of
// 0/1 scores, where products with 0/1 are exact): each step rounds off the top 8 bits
// of the mantissa and the remainder u - round(u) is exact in fp32 (24 bits = 3 x 8;
// bf16 has fp32's exponent range, so only remainders below 2^-126 would be lost).
M2N2_HD void split_bf16x3(float u, bf16_t parts[3]) {
  parts[0] = from_compute<bf16_t>(u);
  const float r1 = u - to_compute(parts[0]);
  parts[1] = from_compute<bf16_t>(r1);
  const float r2 = r1 - to_compute(parts[1]);
  parts[2] = from_compute<bf16_t>(r2);
}

}  // namespace m2n2
