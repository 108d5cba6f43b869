// CPU niche statistics: OpenMP over fixed column chunks or row tiles, SIMD inside.
//
// As for the other CPU kernels, the hot loops are compiled once per instruction set
// with GCC's target_clones (AVX-512, AVX2+FMA, baseline x86-64) and the loader picks
// the clone for the CPU at hand; the bit counting of 0/1 scores adds an Ice Lake clone,
// whose vector popcount (AVX512-VPOPCNTDQ) counts eight words per instruction.
#include "niches_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "isa_clones.h"

namespace m2n2::cpu {
namespace {

// ---------------------------------------------------------------------------
// z, weights, fitness and the attraction row: one read of S.
// ---------------------------------------------------------------------------

// A column block of S (all its rows) is read from memory once for z, then again from
// L2 for the weighted sums: about this many bytes of S per block.
constexpr int64_t kBlockBytes = int64_t(1) << 20;
// Columns per block: bounds the fp32 partial sums (at most kMaxBlockCols / 16 terms
// per SIMD lane before they are added to fp64 totals).
constexpr int64_t kMaxBlockCols = 4096;
// z sums kZRows rows at a time in the compute type (fp32: exact for 0/1 scores, a
// blocked sum for others), then adds them to fp64 totals.
constexpr int64_t kZRows = 64;
// Column chunks, each summed by one thread into its own partials; the partials are
// added in chunk order. The chunking depends on the shape alone.
constexpr int64_t kMaxChunks = 64;
// Below this many element operations a call runs on one thread: waking a team costs
// more than the work (the digits archive, 20 x 1437, is far below it).
constexpr int64_t kParallelWork = int64_t(1) << 18;

int64_t stats_block_cols(int64_t rows, int64_t elem) {
  const int64_t cols = kBlockBytes / std::max<int64_t>(1, rows * elem) / 64 * 64;
  return std::clamp<int64_t>(cols, 64, kMaxBlockCols);
}

template <class T>
using score_t = decltype(score_value(T{}));

// Per-chunk outputs of the statistics pass.
struct ChunkSums {
  double* fitness;     // [fitness rows]
  double* attraction;  // [rows], or null
  int64_t bad_col;     // first column with a non-finite z, or cols
};

// The first column in [c0, c1) holding a negative score (rows and child), or c1. Only
// on the error path: it reads the block column by column.
template <class T>
int64_t first_negative_column(const NichesProblem& p, int64_t c0, int64_t c1) {
  const T* S = static_cast<const T*>(p.scores);
  const T* child = static_cast<const T*>(p.child);
  for (int64_t j = c0; j < c1; ++j) {
    for (int64_t i = 0; i < fitness_rows(p); ++i) {
      if (score_value((i < p.rows ? S + i * p.row_stride : child)[j]) < 0) return j;
    }
  }
  return c1;
}

// Columns [c0, c1) of S in blocks of `block` columns: z and u into z[], u[] (global
// column index), fitness and attraction-row partial sums into out.
template <class T>
M2N2_HD void stats_columns(const NichesProblem& p, int64_t c0, int64_t c1, int64_t block, double* z, double* u,
                   ChunkSums& out) {
  using C = score_t<T>;
  const T* S = static_cast<const T*>(p.scores);
  const T* child = static_cast<const T*>(p.child);
  const bool want_row = p.mode == AttractionMode::kRow;
  const int64_t fit_rows = fitness_rows(p);
  // Scores must be finite and >= 0: a NaN or inf makes its column's z non-finite (found
  // here); a negative score is found by the fitness loop below, as one more register
  // reduction (a min) over the values it reads anyway. 0/1 bytes are never negative.
  constexpr bool kSigned = !std::is_same_v<T, uint8_t>;
  std::vector<C> uloc(block), ploc(want_row ? block : 0), zrows(block);
  for (int64_t b0 = c0; b0 < c1; b0 += block) {
    const int64_t len = std::min(block, c1 - b0);
    double* zb = z + b0;
    std::fill(zb, zb + len, 0.0);
    C* zc = zrows.data();
    for (int64_t i0 = 0; i0 < fit_rows; i0 += kZRows) {
      std::fill(zc, zc + len, C(0));
      for (int64_t i = i0; i < std::min(fit_rows, i0 + kZRows); ++i) {
        const T* r = (i < p.rows ? S + i * p.row_stride : child) + b0;
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) zc[j] += score_value(r[j]);
      }
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) zb[j] += double(zc[j]);
    }
    bool finite = true;
    for (int64_t j = 0; j < len; ++j) finite &= std::isfinite(zb[j]);
    if (!finite) {
      // The first bad column of the block: a non-finite z, or a negative score before it.
      const int64_t nan_col = b0 + int64_t(std::find_if(zb, zb + len, [](double v) { return !std::isfinite(v); }) - zb);
      out.bad_col = kSigned ? first_negative_column<T>(p, b0, nan_col) : nan_col;
      return;
    }
    if (p.alpha == 1.0 || p.alpha == 0.0) {
      // niche_weight without pow(), which would cost more than the rest of the pass
      // for short archives (pow(x, 1) == x and pow(x, 0) == 1 exactly: same values).
      const bool one = p.alpha == 1.0;
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) {
        const double c = p.capacity != nullptr ? p.capacity[b0 + j] : 1.0;
        const double base = one ? (zb[j] != 0.0 ? zb[j] : 1.0) : 1.0;
        u[b0 + j] = c / (base + p.eps);
      }
    } else {
      for (int64_t j = 0; j < len; ++j) {
        u[b0 + j] = niche_weight(zb[j], p.capacity != nullptr ? p.capacity[b0 + j] : 1.0, p.alpha, p.eps);
      }
    }
    for (int64_t j = 0; j < len; ++j) uloc[j] = C(u[b0 + j]);
    if (want_row) {
      const T* r = S + p.parent * p.row_stride + b0;
      for (int64_t j = 0; j < len; ++j) ploc[j] = score_value(r[j]);
    }
    const C* uw = uloc.data();
    const C* pw = ploc.data();
    C block_low = 0;  // the smallest score of the block (floats only)
    for (int64_t i = 0; i < fit_rows; ++i) {
      const T* r = (i < p.rows ? S + i * p.row_stride : child) + b0;
      C f = 0;
      C low = 0;
      if (want_row && i < p.rows) {
        C a = 0;
#pragma omp simd reduction(+ : f, a) reduction(min : low)
        for (int64_t j = 0; j < len; ++j) {
          const C x = score_value(r[j]);
          f += uw[j] * x;
          if constexpr (kSigned) low = std::min(low, x);
          a += uw[j] * std::max(x - pw[j], C(0));
        }
        out.attraction[i] += double(a);
      } else {
#pragma omp simd reduction(+ : f) reduction(min : low)
        for (int64_t j = 0; j < len; ++j) {
          const C x = score_value(r[j]);
          f += uw[j] * x;
          if constexpr (kSigned) low = std::min(low, x);
        }
      }
      out.fitness[i] += double(f);
      block_low = std::min(block_low, low);
    }
    if (block_low < C(0)) {  // a negative score in this block (its partials are dropped)
      out.bad_col = first_negative_column<T>(p, b0, b0 + len);
      return;
    }
  }
}

// One clone set per storage type: target_clones does not apply to templates.
#define M2N2_STATS_CLONE(NAME, T)                                                                         \
  M2N2_CLONES void NAME(const NichesProblem& p, int64_t c0, int64_t c1, int64_t block, double* z, double* u, \
                        ChunkSums& out) {                                                                 \
    stats_columns<T>(p, c0, c1, block, z, u, out);                                                        \
  }
M2N2_STATS_CLONE(stats_binary, uint8_t)
M2N2_STATS_CLONE(stats_half, half_t)
M2N2_STATS_CLONE(stats_bf16, bf16_t)
M2N2_STATS_CLONE(stats_float, float)
M2N2_STATS_CLONE(stats_double, double)
#undef M2N2_STATS_CLONE

void stats_dispatch(const NichesProblem& p, int64_t c0, int64_t c1, int64_t block, double* z, double* u,
                    ChunkSums& out) {
  switch (p.type) {
    case Dtype::kUInt8: return stats_binary(p, c0, c1, block, z, u, out);
    case Dtype::kHalf: return stats_half(p, c0, c1, block, z, u, out);
    case Dtype::kBFloat16: return stats_bf16(p, c0, c1, block, z, u, out);
    case Dtype::kFloat: return stats_float(p, c0, c1, block, z, u, out);
    case Dtype::kDouble: return stats_double(p, c0, c1, block, z, u, out);
    default: break;  // refused by the argument checks
  }
}

double score_at(const NichesProblem& p, int64_t row, int64_t col) {
  const int64_t k = row < p.rows ? row * p.row_stride + col : col;
  const void* base = row < p.rows ? p.scores : p.child;
  switch (p.type) {
    case Dtype::kUInt8: return score_value(static_cast<const uint8_t*>(base)[k]);
    case Dtype::kHalf: return score_value(static_cast<const half_t*>(base)[k]);
    case Dtype::kBFloat16: return score_value(static_cast<const bf16_t*>(base)[k]);
    case Dtype::kFloat: return score_value(static_cast<const float*>(base)[k]);
    case Dtype::kDouble: return score_value(static_cast<const double*>(base)[k]);
    default: break;  // refused by the argument checks
  }
  return 0.0;
}

// ---------------------------------------------------------------------------
// The attraction matrix for any scores: register tiles of 4 x 4 (a, b) pairs.
// ---------------------------------------------------------------------------

constexpr int64_t kTile = 4;
// Columns of the scaled block X (all rows): about 1 MiB, so that it stays in L2.
constexpr int64_t kTileBlockBytes = int64_t(1) << 20;
constexpr int64_t kMaxTileBlockCols = 512;

// Row i of X[i, j] = u_j S_ij for the columns [j0, j0 + len), zero-padded up to lenp
// columns (rows past N are all zero). u >= 0, so u max(S_b - S_a, 0) = max(X_b - X_a,
// 0) up to rounding.
template <class T>
M2N2_HD void scale_row(const NichesProblem& p, const double* u, int64_t i, int64_t j0, int64_t len, int64_t lenp,
                       score_t<T>* x) {
  using C = score_t<T>;
  if (i < p.rows) {
    const T* r = static_cast<const T*>(p.scores) + i * p.row_stride + j0;
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) x[j] = C(u[j0 + j]) * score_value(r[j]);
    std::fill(x + len, x + lenp, C(0));
  } else {
    std::fill(x, x + lenp, C(0));
  }
}

// acc[a][b] += sum_j max(X_b - X_a, 0) over the rows a0.. and b0.. of a 4 x 4 tile.
// GCC vector types keep the 16 accumulators in registers (one 512-bit vector each
// with AVX-512; the other clones split them into narrower registers).
template <class C>
struct vec512;
template <>
struct vec512<float> {
  typedef float type __attribute__((vector_size(64)));
};
template <>
struct vec512<double> {
  typedef double type __attribute__((vector_size(64)));
};
template <class C>
using vec_t = typename vec512<C>::type;

template <class C>
M2N2_HD void attraction_tile(const C* X, int64_t lenp, int64_t a0, int64_t b0, double* A, int64_t n) {
  using V = vec_t<C>;
  constexpr int64_t L = int64_t(sizeof(V) / sizeof(C));
  const V zero = V{} * C(0);
  V acc[kTile][kTile];
  for (auto& row : acc) {
    for (V& v : row) v = zero;
  }
  const C* xa = X + a0 * lenp;
  const C* xb = X + b0 * lenp;
  for (int64_t j = 0; j < lenp; j += L) {
    V va[kTile], vb[kTile];
    for (int64_t t = 0; t < kTile; ++t) {
      std::memcpy(&va[t], xa + t * lenp + j, sizeof(V));  // unaligned vector loads
      std::memcpy(&vb[t], xb + t * lenp + j, sizeof(V));
    }
    for (int64_t a = 0; a < kTile; ++a) {
      for (int64_t b = 0; b < kTile; ++b) {
        const V diff = vb[b] - va[a];
        acc[a][b] += diff > zero ? diff : zero;
      }
    }
  }
  for (int64_t a = 0; a < kTile && a0 + a < n; ++a) {
    for (int64_t b = 0; b < kTile && b0 + b < n; ++b) {
      C s = 0;
      for (int64_t l = 0; l < L; ++l) s += acc[a][b][l];
      A[(a0 + a) * n + b0 + b] += double(s);
    }
  }
}

// One row of 4 x 4 tiles: rows a0..a0+3 against every b.
template <class C>
M2N2_HD void attraction_tile_row(const C* X, int64_t lenp, int64_t a0, int64_t rows_pad, double* A, int64_t n) {
  for (int64_t b0 = 0; b0 < rows_pad; b0 += kTile) attraction_tile<C>(X, lenp, a0, b0, A, n);
}

// One clone set per storage type (target_clones does not apply to templates, and the
// loops OpenMP outlines are not cloned: the parallel loops call these).
#define M2N2_TILED_CLONES(SUFFIX, T)                                                                               \
  M2N2_CLONES void scale_row_##SUFFIX(const NichesProblem& p, const double* u, int64_t i, int64_t j0, int64_t len, \
                                      int64_t lenp, score_t<T>* x) {                                              \
    scale_row<T>(p, u, i, j0, len, lenp, x);                                                                      \
  }
M2N2_TILED_CLONES(binary, uint8_t)
M2N2_TILED_CLONES(half, half_t)
M2N2_TILED_CLONES(bf16, bf16_t)
M2N2_TILED_CLONES(float, float)
M2N2_TILED_CLONES(double, double)
#undef M2N2_TILED_CLONES

M2N2_CLONES void tile_row_float(const float* X, int64_t lenp, int64_t a0, int64_t rows_pad, double* A, int64_t n) {
  attraction_tile_row<float>(X, lenp, a0, rows_pad, A, n);
}
M2N2_CLONES void tile_row_double(const double* X, int64_t lenp, int64_t a0, int64_t rows_pad, double* A, int64_t n) {
  attraction_tile_row<double>(X, lenp, a0, rows_pad, A, n);
}

void scale_row_dispatch(const NichesProblem& p, const double* u, int64_t i, int64_t j0, int64_t len, int64_t lenp,
                        void* x) {
  switch (p.type) {
    case Dtype::kUInt8: return scale_row_binary(p, u, i, j0, len, lenp, static_cast<float*>(x));
    case Dtype::kHalf: return scale_row_half(p, u, i, j0, len, lenp, static_cast<float*>(x));
    case Dtype::kBFloat16: return scale_row_bf16(p, u, i, j0, len, lenp, static_cast<float*>(x));
    case Dtype::kFloat: return scale_row_float(p, u, i, j0, len, lenp, static_cast<float*>(x));
    case Dtype::kDouble: return scale_row_double(p, u, i, j0, len, lenp, static_cast<double*>(x));
    default: break;  // refused by the argument checks
  }
}

// Column blocks of X (all rows, about 1 MiB: it stays in L2) one after another; the
// tile rows of a block in parallel. Each A[a, b] adds its block sums in block order.
void attraction_matrix_tiled(const NichesProblem& p, const double* u, double* A) {
  const bool dbl = p.type == Dtype::kDouble;
  const int64_t elem = dbl ? 8 : 4;
  const int64_t L = 64 / elem;  // elements of one 512-bit vector
  const int64_t n = p.rows;
  const int64_t rows_pad = (n + kTile - 1) / kTile * kTile;
  const int64_t block = std::clamp<int64_t>(kTileBlockBytes / (rows_pad * elem) / L * L, L, kMaxTileBlockCols);
  std::vector<double> storage((rows_pad * block * elem + 7) / 8);  // 8-byte aligned X
  void* X = storage.data();
  const bool parallel = n * n * block >= kParallelWork;
  for (int64_t j0 = 0; j0 < p.cols; j0 += block) {
    const int64_t len = std::min(block, p.cols - j0);
    const int64_t lenp = (len + L - 1) / L * L;
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t i = 0; i < rows_pad; ++i) {
      scale_row_dispatch(p, u, i, j0, len, lenp, static_cast<char*>(X) + i * lenp * elem);
    }
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
    for (int64_t a0 = 0; a0 < rows_pad; a0 += kTile) {
      if (dbl) {
        tile_row_double(static_cast<const double*>(X), lenp, a0, rows_pad, A, n);
      } else {
        tile_row_float(static_cast<const float*>(X), lenp, a0, rows_pad, A, n);
      }
    }
  }
}

// ---------------------------------------------------------------------------
// The attraction matrix for 0/1 scores: bit counting.
// ---------------------------------------------------------------------------
// For 0/1 scores max(S_b - S_a, 0) = S_b (1 - S_a), so with the columns grouped by
// their weight (columns of equal z share one when capacity is uniform),
//   A[a, b] = sum_g u_g * popcount(~bits_a & bits_b over the words of group g).
// Each row is packed into 64-bit words, one bit per score, every group starting on a
// word boundary: N * D / 8 bytes instead of the 2 * 4 * N * D of two float operands.

struct WeightGroup {
  int64_t word0;  // first word of the group in a packed row
  int64_t words;
  double weight;
};

constexpr int64_t kBitTile = 16;  // rows of a and of b per task: 32 packed rows in L2

// Without a vector popcount: per (a, b) pair, one popcount run per weight group.
M2N2_POPCOUNT_CLONES void bits_tile(const uint64_t* P, int64_t row_words, const WeightGroup* groups,
                                    int64_t n_groups, int64_t a0, int64_t a1, int64_t b0, int64_t b1, double* A,
                                    int64_t n) {
  for (int64_t a = a0; a < a1; ++a) {
    const uint64_t* pa = P + a * row_words;
    for (int64_t b = b0; b < b1; ++b) {
      const uint64_t* pb = P + b * row_words;
      double sum = 0.0;
      for (int64_t g = 0; g < n_groups; ++g) {
        if (groups[g].weight == 0.0) continue;  // capacity 0: the columns add nothing
        const uint64_t* x = pa + groups[g].word0;
        const uint64_t* y = pb + groups[g].word0;
        uint64_t count = 0;
        for (int64_t w = 0; w < groups[g].words; ++w) count += uint64_t(__builtin_popcountll(~x[w] & y[w]));
        sum += groups[g].weight * double(count);
      }
      A[a * n + b] = sum;
    }
  }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define M2N2_HAVE_VPOPCNT 1
// Ice Lake and later: eight words per instruction. Each word carries the weight of its
// group (words[w] of a packed row, weight[w]), so the loop has no group boundaries:
// per 8 words, 4 + 4 row loads feed 16 (a, b) pairs, counted, converted to fp64 and
// weighted in 16 accumulators. Rows are padded to a multiple of 4, words to 8.
// (GCC 12 wrongly reports the intrinsics' internal _mm512_undefined values as
// maybe-uninitialized.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
__attribute__((target("avx512f,avx512dq,avx512vpopcntdq"))) void bits_tile_row_vpopcnt(
    const uint64_t* P, int64_t row_words, const double* weight, int64_t a0, int64_t rows_pad, double* A, int64_t n) {
  for (int64_t b0 = 0; b0 < rows_pad; b0 += 4) {
    __m512d acc[4][4];
    for (auto& row : acc) {
      for (__m512d& v : row) v = _mm512_setzero_pd();
    }
    for (int64_t w = 0; w < row_words; w += 8) {
      __m512i xa[4], xb[4];
      for (int t = 0; t < 4; ++t) {
        xa[t] = _mm512_loadu_si512(P + (a0 + t) * row_words + w);
        xb[t] = _mm512_loadu_si512(P + (b0 + t) * row_words + w);
      }
      const __m512d wv = _mm512_loadu_pd(weight + w);
      for (int a = 0; a < 4; ++a) {
        for (int b = 0; b < 4; ++b) {
          const __m512i count = _mm512_popcnt_epi64(_mm512_andnot_si512(xa[a], xb[b]));
          acc[a][b] = _mm512_add_pd(acc[a][b], _mm512_mul_pd(_mm512_cvtepi64_pd(count), wv));
        }
      }
    }
    for (int a = 0; a < 4 && a0 + a < n; ++a) {
      for (int b = 0; b < 4 && b0 + b < n; ++b) A[(a0 + a) * n + b0 + b] = _mm512_reduce_add_pd(acc[a][b]);
    }
  }
}
#pragma GCC diagnostic pop
#else
#define M2N2_HAVE_VPOPCNT 0
#endif

bool cpu_has_vpopcnt() {
#if M2N2_HAVE_VPOPCNT
  return __builtin_cpu_supports("avx512vpopcntdq") && __builtin_cpu_supports("avx512dq");
#else
  return false;
#endif
}

// False (and nothing done) when the weights take so many distinct values that the
// word padding would outweigh the packing; the tiled pass runs then.
// Columns in an order that puts equal weights next to each other. Without capacities
// the weight is a function of the count z_j in [0, N]: a counting sort by z, O(D + N)
// (a comparison sort of a long archive's columns would cost more than the counting);
// else a sort by weight.
std::vector<int64_t> columns_by_weight(const NichesProblem& p, const double* z, const double* u) {
  const int64_t n = p.rows, d = p.cols;
  std::vector<int64_t> order(d);
  if (p.capacity == nullptr) {
    std::vector<int64_t> start(n + 2, 0);
    for (int64_t j = 0; j < d; ++j) ++start[int64_t(z[j]) + 1];
    for (int64_t k = 1; k <= n + 1; ++k) start[k] += start[k - 1];
    for (int64_t j = 0; j < d; ++j) order[start[int64_t(z[j])]++] = j;
  } else {
    std::iota(order.begin(), order.end(), int64_t(0));
    std::stable_sort(order.begin(), order.end(), [u](int64_t x, int64_t y) { return u[x] < u[y]; });
  }
  return order;
}

bool attraction_matrix_bits(const NichesProblem& p, const double* z, const double* u, double* A) {
  const int64_t n = p.rows, d = p.cols;
  const std::vector<int64_t> order = columns_by_weight(p, z, u);
  std::vector<WeightGroup> groups;
  std::vector<int64_t> bit_of(d);  // position of column j in a packed row
  int64_t words = 0;
  for (int64_t k = 0; k < d;) {
    int64_t e = k;
    while (e < d && u[order[e]] == u[order[k]]) ++e;
    for (int64_t m = k; m < e; ++m) bit_of[order[m]] = words * 64 + (m - k);
    groups.push_back({words, (e - k + 63) / 64, u[order[k]]});
    words += groups.back().words;
    k = e;
  }
  if (words > 2 * ((d + 63) / 64) + 64) return false;
  const bool vector = cpu_has_vpopcnt();
  const int64_t row_words = vector ? (words + 7) / 8 * 8 : words;
  const int64_t rows_pad = vector ? (n + 3) / 4 * 4 : n;
  std::vector<uint64_t> P(std::max<int64_t>(1, rows_pad * row_words), 0);
  const uint8_t* S = static_cast<const uint8_t*>(p.scores);
  const bool parallel = n * std::max(d, n * row_words) >= kParallelWork;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t* r = S + i * p.row_stride;
    uint64_t* row = P.data() + i * row_words;
    for (int64_t j = 0; j < d; ++j) {  // branch-free: the bytes are 0 or 1
      const int64_t bit = bit_of[j];
      row[bit >> 6] |= uint64_t(r[j]) << (bit & 63);
    }
  }
#if M2N2_HAVE_VPOPCNT
  if (vector) {
    std::vector<double> weight(row_words, 0.0);
    for (const WeightGroup& g : groups) std::fill_n(weight.begin() + g.word0, g.words, g.weight);
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
    for (int64_t a0 = 0; a0 < rows_pad; a0 += 4) {
      bits_tile_row_vpopcnt(P.data(), row_words, weight.data(), a0, rows_pad, A, n);
    }
    return true;
  }
#endif
  const int64_t tiles = (n + kBitTile - 1) / kBitTile;
#pragma omp parallel for collapse(2) schedule(dynamic, 1) if (parallel)
  for (int64_t ta = 0; ta < tiles; ++ta) {
    for (int64_t tb = 0; tb < tiles; ++tb) {
      bits_tile(P.data(), row_words, groups.data(), int64_t(groups.size()), ta * kBitTile,
                std::min(n, (ta + 1) * kBitTile), tb * kBitTile, std::min(n, (tb + 1) * kBitTile), A, n);
    }
  }
  return true;
}

template <class O>
void store(const double* from, int64_t count, void* to) {
  O* out = static_cast<O*>(to);
  for (int64_t k = 0; k < count; ++k) out[k] = O(from[k]);
}

}  // namespace

BadScore niche_stats(const NichesProblem& p) {
  const int64_t n = p.rows, d = p.cols, fit_rows = fitness_rows(p);
  const bool want_row = p.mode == AttractionMode::kRow;
  std::vector<double> z(d), u(d);
  const int64_t block = stats_block_cols(fit_rows, dtype_bytes(p.type));
  const int64_t blocks = (d + block - 1) / block;
  const int64_t chunks = std::min(blocks, kMaxChunks);
  std::vector<double> fit_part(std::max<int64_t>(1, chunks) * fit_rows, 0.0);
  std::vector<double> row_part(want_row ? chunks * n : 0, 0.0);
  std::vector<ChunkSums> sums(chunks);
  for (int64_t c = 0; c < chunks; ++c) {
    sums[c] = {fit_part.data() + c * fit_rows, want_row ? row_part.data() + c * n : nullptr, d};
  }
  const bool parallel = chunks > 1 && fit_rows * d >= kParallelWork;
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t c0 = c * blocks / chunks * block;
    const int64_t c1 = std::min(d, (c + 1) * blocks / chunks * block);
    stats_dispatch(p, c0, c1, block, z.data(), u.data(), sums[c]);
  }
  int64_t bad_col = d;
  for (const ChunkSums& s : sums) bad_col = std::min(bad_col, s.bad_col);
  if (bad_col < d) {
    for (int64_t i = 0; i < fit_rows; ++i) {
      const double v = score_at(p, i, bad_col);
      if (!std::isfinite(v) || v < 0.0) return {i, bad_col, v};
    }
    return {BadScore::kColumnOverflow, bad_col, 0.0};
  }

  std::vector<double> total(std::max(fit_rows, want_row ? n : int64_t(0)), 0.0);
  auto write = [&](const double* from, int64_t count, void* to) {
    if (p.out_double) {
      store<double>(from, count, to);
    } else {
      store<float>(from, count, to);
    }
  };
  write(z.data(), d, p.z);
  for (int64_t c = 0; c < chunks; ++c) {
    for (int64_t i = 0; i < fit_rows; ++i) total[i] += fit_part[c * fit_rows + i];
  }
  write(total.data(), fit_rows, p.fitness);
  if (want_row) {
    std::fill(total.begin(), total.end(), 0.0);
    for (int64_t c = 0; c < chunks; ++c) {
      for (int64_t i = 0; i < n; ++i) total[i] += row_part[c * n + i];
    }
    write(total.data(), n, p.attraction);
  } else if (p.mode == AttractionMode::kMatrix) {
    std::vector<double> A(n * n, 0.0);
    const bool done = p.type == Dtype::kUInt8 && n > 1 && attraction_matrix_bits(p, z.data(), u.data(), A.data());
    if (!done) attraction_matrix_tiled(p, u.data(), A.data());
    write(A.data(), n * n, p.attraction);
  }
  return {BadScore::kNoBadScore, 0, 0.0};
}

}  // namespace m2n2::cpu
