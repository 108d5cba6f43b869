// Host-side check of the CUDA niche-statistics kernels' index logic, for machines
// without a GPU.
//
// The per-thread bodies of csrc/cuda/kernels/niches.cuh are __host__ __device__, so this
// program runs every unit and thread of the planned launches one after another on the
// CPU (block reductions in thread order, shared-memory stages as whole-block phases)
// and compares z, fitness, the attraction row and matrix with a direct fp64
// computation of the formulas (m2n2/niches.h). It covers every storage type, the
// 16-byte vector and scalar paths (aligned and unaligned rows, row strides past D),
// the partial last vector, a child row, capacities and alphas, row-sliced column sums,
// column-sliced fitness, split-K matrices (one and several splits, 32 and 64 tiles),
// the bf16 operands of the GEMM path for 0/1 scores (their product X Y^T must equal A
// to fp32 precision), and the first non-finite column. Build and run: `make
// cuda-host-check`.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "cuda/kernels/niches.cuh"

using namespace m2n2;
namespace kernels = m2n2::cuda;  // (plain `cuda::` would be ambiguous with libcu++'s ::cuda)
using namespace m2n2::cuda;

namespace {

int failures = 0;
int checks = 0;

void expect(bool ok, const char* what, const char* name, int64_t i) {
  ++checks;
  if (!ok && failures < 40) std::printf("FAIL: %s (%s) at %lld\n", what, name, static_cast<long long>(i));
  if (!ok) ++failures;
}

bool close(double got, double want, double scale, double tol) {
  return std::fabs(got - want) <= tol * (std::fabs(scale) + 1e-30);
}

template <class T>
struct Traits;
template <>
struct Traits<uint8_t> {
  static constexpr Dtype type = Dtype::kUInt8;
  static constexpr const char* name = "binary";
  static uint8_t make(double x) { return x >= 0.5 ? 1 : 0; }
};
template <>
struct Traits<half_t> {
  static constexpr Dtype type = Dtype::kHalf;
  static constexpr const char* name = "fp16";
  static half_t make(double x) { return from_compute<half_t>(float(x)); }
};
template <>
struct Traits<bf16_t> {
  static constexpr Dtype type = Dtype::kBFloat16;
  static constexpr const char* name = "bf16";
  static bf16_t make(double x) { return from_compute<bf16_t>(float(x)); }
};
template <>
struct Traits<float> {
  static constexpr Dtype type = Dtype::kFloat;
  static constexpr const char* name = "fp32";
  static float make(double x) { return float(x); }
};
template <>
struct Traits<double> {
  static constexpr Dtype type = Dtype::kDouble;
  static constexpr const char* name = "fp64";
  static double make(double x) { return x; }
};

// Storage whose first element sits `shift` elements past a 64-byte boundary.
template <class T>
struct Buffer {
  std::vector<unsigned char> store;
  T* data;
  Buffer(int64_t n, int shift) : store(size_t(n + 32) * sizeof(T) + 64, 0) {
    const uintptr_t p = (reinterpret_cast<uintptr_t>(store.data()) + 63) & ~uintptr_t(63);
    data = reinterpret_cast<T*>(p) + shift;
  }
};

struct Case {
  int64_t rows, cols, stride_pad;
  int shift;  // elements: 0 = 16-byte aligned rows (if the stride allows)
  bool child, capacity;
  double alpha, eps;
  AttractionMode mode;
};

// ---- emulation of the launches ----

template <class T, int V>
uint64_t emulate_columns(const NichesProblem& p, const NichesPlan& plan, acc_t<T>* u) {
  uint64_t first_bad = ~uint64_t(0);
  std::vector<double> zpart(size_t(z_partial_doubles(p, plan)) + 1);
  for (int64_t unit = 0; unit < plan.row_slices * plan.col_vecs; ++unit) {
    const int64_t slice = unit / plan.col_vecs, g = unit % plan.col_vecs;
    const int64_t r0 = slice * plan.slice_rows, r1 = min64(p.rows, r0 + plan.slice_rows);
    colsum_t<T> acc[V];
    column_sums_unit<T, V>(p, g, r0, r1, acc);
    for (int i = 0; i < V; ++i) {
      const int64_t j = g * V + i;
      if (j >= p.cols) break;
      if (plan.row_slices == 1) {
        if (finish_column<T>(p, j, double(acc[i]), u) && uint64_t(j) < first_bad) first_bad = uint64_t(j);
      } else {
        zpart[size_t(slice * p.cols + j)] = double(acc[i]);
      }
    }
  }
  if (plan.row_slices > 1) {
    for (int64_t j = 0; j < p.cols; ++j) {
      if (finish_column<T>(p, j, column_partial_sum(zpart.data(), plan.row_slices, p.cols, j), u) &&
          uint64_t(j) < first_bad) {
        first_bad = uint64_t(j);
      }
    }
  }
  return first_bad;
}

template <class T, int V, bool kAtt>
void emulate_rows(const NichesProblem& p, const NichesPlan& plan, const acc_t<T>* u) {
  std::vector<double> part(size_t(row_partial_doubles(plan)), std::nan(""));
  for (int64_t unit = 0; unit < plan.col_slices * plan.row_groups; ++unit) {
    const RowUnit w = row_unit(plan, unit);
    double fit[kRowGroup] = {}, att[kRowGroup] = {};
    for (int tid = 0; tid < kThreads; ++tid) {
      RowSums<acc_t<T>> s;
      row_sums_thread<T, V, kAtt>(p, plan, u, w, tid, kThreads, s);
      for (int r = 0; r < kRowGroup; ++r) {
        fit[r] += double(s.fit[r]);
        att[r] += double(s.att[r]);
      }
    }
    for (int r = 0; r < kRowGroup; ++r) {
      if (w.row0 + r < plan.fit_rows) {
        part[size_t(row_partial_index(plan, w, 0, r))] = fit[r];
        part[size_t(row_partial_index(plan, w, 1, r))] = att[r];
      }
    }
  }
  for (int64_t r = 0; r < plan.fit_rows; ++r) finish_row(p, plan, part.data(), r);
}

template <class T, int kTile>
void emulate_matrix(const NichesProblem& p, const NichesPlan& plan, const acc_t<T>* u) {
  using A = acc_t<T>;
  constexpr int kPer = kTile / kSide;
  constexpr bool kFlush = !std::is_same<A, double>::value;
  auto st = std::make_unique<MatrixStage<A, kTile>>();
  std::vector<double> part(size_t(matrix_partial_doubles(p, plan)) + 1, std::nan(""));
  struct Thread {
    A acc[kPer][kPer];
    double tot[kPer][kPer];
  };
  std::vector<Thread> th(kThreads);
  for (int64_t unit = 0; unit < plan.splits * plan.tiles * plan.tiles; ++unit) {
    const MatrixUnit w = matrix_unit(p, plan, unit);
    for (Thread& t : th) {
      for (int i = 0; i < kPer; ++i) {
        for (int jj = 0; jj < kPer; ++jj) {
          t.acc[i][jj] = A(0);
          t.tot[i][jj] = 0.0;
        }
      }
    }
    int since_flush = 0;
    for (int64_t k = w.k0; k < w.k1; k += kChunk) {
      std::memset(static_cast<void*>(st.get()), 0xFF, sizeof(*st));  // NaN: unstaged values show
      for (int tid = 0; tid < kThreads; ++tid) stage_chunk<T, kTile>(p, u, w, k, tid, *st);
      for (int tid = 0; tid < kThreads; ++tid) chunk_products<A, kTile>(*st, tid, th[size_t(tid)].acc);
      if (kFlush && ++since_flush == kFlushChunks) {
        since_flush = 0;
        for (Thread& t : th) {
          for (int i = 0; i < kPer; ++i) {
            for (int jj = 0; jj < kPer; ++jj) {
              t.tot[i][jj] += double(t.acc[i][jj]);
              t.acc[i][jj] = A(0);
            }
          }
        }
      }
    }
    for (int tid = 0; tid < kThreads; ++tid) {
      Thread& t = th[size_t(tid)];
      if (kFlush) {
        for (int i = 0; i < kPer; ++i) {
          for (int jj = 0; jj < kPer; ++jj) t.tot[i][jj] += double(t.acc[i][jj]);
        }
        store_matrix_tile<kTile>(p, plan, w, tid, t.tot, part.data());
      } else {
        store_matrix_tile<kTile>(p, plan, w, tid, t.acc, part.data());
      }
    }
  }
  if (plan.splits > 1) {
    for (int64_t e = 0; e < p.rows * p.rows; ++e) finish_matrix_elem(p, plan, part.data(), e);
  }
}

template <class T, int V>
uint64_t emulate_all(const NichesProblem& p, const NichesPlan& plan, acc_t<T>* u) {
  const uint64_t bad = emulate_columns<T, V>(p, plan, u);
  if (bad != ~uint64_t(0)) return bad;
  if (plan.fit_rows > 0) {
    if (p.mode == AttractionMode::kRow) {
      emulate_rows<T, V, true>(p, plan, u);
    } else {
      emulate_rows<T, V, false>(p, plan, u);
    }
  }
  if (p.mode == AttractionMode::kMatrix && p.rows > 0) {
    if (plan.tile == 32) {
      emulate_matrix<T, 32>(p, plan, u);
    } else {
      emulate_matrix<T, 64>(p, plan, u);
    }
  }
  return bad;
}

// ---- one case ----

template <class T>
void run_case(const Case& c, std::mt19937_64& rng, int64_t nan_at = -1) {
  using A = acc_t<T>;
  const char* name = Traits<T>::name;
  const int64_t stride = c.cols + c.stride_pad;
  Buffer<T> S(c.rows * stride + 1, c.shift);
  Buffer<T> child(c.cols + 1, c.shift);
  std::vector<double> sval(size_t(c.rows * c.cols)), cval(size_t(c.cols)), cap(size_t(c.cols));
  std::uniform_real_distribution<double> unif(0.0, 1.0);
  for (int64_t i = 0; i < c.rows; ++i) {
    for (int64_t j = 0; j < c.cols; ++j) {
      double x = unif(rng);
      if (unif(rng) < 0.3) x = std::floor(x * 4.0) / 4.0;
      if (j == 2 || i == 1) x = 0.0;  // an all-zero column and row
      const T v = Traits<T>::make(x);
      S.data[i * stride + j] = v;
      sval[size_t(i * c.cols + j)] = double(score_value(v));
    }
  }
  for (int64_t j = 0; j < c.cols; ++j) {
    const T v = Traits<T>::make(unif(rng));
    child.data[j] = v;
    cval[size_t(j)] = double(score_value(v));
    cap[size_t(j)] = j == 3 ? 0.0 : 2.0 * unif(rng);
  }
  if (nan_at >= 0) S.data[(c.rows - 2) * stride + nan_at] = Traits<T>::make(std::nan(""));

  const bool out_double = std::is_same<T, double>::value;
  const int64_t fit_rows = c.rows + (c.child ? 1 : 0);
  std::vector<double> zd(static_cast<size_t>(c.cols)), fd(static_cast<size_t>(fit_rows)), ad(static_cast<size_t>(c.rows * c.rows));
  std::vector<float> zf(zd.size()), ff(fd.size()), af(ad.size());
  NichesProblem p{};
  p.scores = S.data;
  p.type = Traits<T>::type;
  p.rows = c.rows;
  p.cols = c.cols;
  p.row_stride = stride;
  p.child = c.child ? child.data : nullptr;
  p.has_child = c.child;
  p.capacity = c.capacity ? cap.data() : nullptr;
  p.alpha = c.alpha;
  p.eps = c.eps;
  p.mode = c.mode;
  p.parent = c.rows / 2;
  p.out_double = out_double;
  p.z = out_double ? static_cast<void*>(zd.data()) : zf.data();
  p.fitness = out_double ? static_cast<void*>(fd.data()) : ff.data();
  p.attraction = c.mode == AttractionMode::kNone ? nullptr : (out_double ? static_cast<void*>(ad.data()) : af.data());
  // Outputs start as NaN: an element no thread writes shows.
  for (auto* v : {&zd, &fd, &ad}) std::fill(v->begin(), v->end(), std::nan(""));
  for (auto* v : {&zf, &ff, &af}) std::fill(v->begin(), v->end(), std::nanf(""));

  const NichesPlan plan = plan_niches(p);
  std::vector<A> u(size_t(c.cols) + 16);
  const uint64_t bad = plan.vec > 1 ? emulate_all<T, int(16 / sizeof(T))>(p, plan, u.data())
                                    : emulate_all<T, 1>(p, plan, u.data());
  if (nan_at >= 0) {
    expect(bad == uint64_t(nan_at), "first non-finite column", name, nan_at);
    return;
  }
  expect(bad == ~uint64_t(0), "no non-finite column", name, int64_t(bad));
  expect(plan.vec == 1 || c.shift == 0, "vector path only for aligned rows", name, c.shift);

  // The formulas in fp64.
  auto s_at = [&](int64_t r, int64_t j) { return r < c.rows ? sval[size_t(r * c.cols + j)] : cval[size_t(j)]; };
  std::vector<double> uw(size_t(c.cols));
  const double tol = out_double ? 1e-12 : 2e-6;
  for (int64_t j = 0; j < c.cols; ++j) {
    double z = 0.0;
    for (int64_t r = 0; r < fit_rows; ++r) z += s_at(r, j);
    uw[size_t(j)] = niche_weight(z, c.capacity ? cap[size_t(j)] : 1.0, c.alpha, c.eps);
    const double got = out_double ? zd[size_t(j)] : zf[size_t(j)];
    expect(close(got, z, z + 1.0, tol), "z", name, j);
    expect(close(double(u[size_t(j)]), uw[size_t(j)], uw[size_t(j)], tol), "u", name, j);
  }
  for (int64_t r = 0; r < fit_rows; ++r) {
    double f = 0.0, scale = 0.0;
    for (int64_t j = 0; j < c.cols; ++j) {
      f += uw[size_t(j)] * s_at(r, j);
      scale += std::fabs(uw[size_t(j)]);
    }
    const double got = out_double ? fd[size_t(r)] : ff[size_t(r)];
    expect(close(got, f, scale, tol), "fitness", name, r);
  }
  auto att = [&](int64_t a, int64_t b, double& scale) {
    double s = 0.0;
    scale = 0.0;
    for (int64_t j = 0; j < c.cols; ++j) {
      const double d = s_at(b, j) - s_at(a, j);
      s += uw[size_t(j)] * (d > 0 ? d : 0.0);
      scale += std::fabs(uw[size_t(j)]);
    }
    return s;
  };
  if (c.mode == AttractionMode::kRow) {
    for (int64_t b = 0; b < c.rows; ++b) {
      double scale;
      const double want = att(p.parent, b, scale);
      const double got = out_double ? ad[size_t(b)] : af[size_t(b)];
      expect(close(got, want, scale, tol), "attraction row", name, b);
    }
  }
  if (c.mode == AttractionMode::kMatrix) {
    for (int64_t a = 0; a < c.rows; ++a) {
      for (int64_t b = 0; b < c.rows; ++b) {
        double scale;
        const double want = att(a, b, scale);
        const double got = out_double ? ad[size_t(a * c.rows + b)] : af[size_t(a * c.rows + b)];
        expect(close(got, want, scale, tol), "attraction matrix", name, a * c.rows + b);
      }
    }
    // The GEMM operands of 0/1 scores: X Y^T over chunks of columns equals A.
    if constexpr (std::is_same<T, uint8_t>::value) {
      const int64_t chunk = c.cols > 40 ? 40 : c.cols;
      std::vector<double> g(size_t(c.rows * c.rows), 0.0);
      std::vector<bf16_t> x(size_t(c.rows * 3 * chunk)), y(x.size());
      for (int64_t lo = 0; lo < c.cols; lo += chunk) {
        const int64_t w = min64(chunk, c.cols - lo);
        for (int64_t e = 0; e < c.rows * w; ++e) pack_binary_elem(p, u.data(), lo, w, e, x.data(), y.data());
        for (int64_t a = 0; a < c.rows; ++a) {
          for (int64_t b = 0; b < c.rows; ++b) {
            double s = 0.0;
            for (int64_t k = 0; k < 3 * w; ++k) {
              s += double(to_compute(x[size_t(a * 3 * w + k)])) * double(to_compute(y[size_t(b * 3 * w + k)]));
            }
            g[size_t(a * c.rows + b)] += s;
          }
        }
      }
      for (int64_t e = 0; e < c.rows * c.rows; ++e) {
        double scale;
        const double want = att(e / c.rows, e % c.rows, scale);
        expect(close(g[size_t(e)], want, scale, 1e-6), "GEMM operands", name, e);
      }
    }
  }
}

template <class T>
void run_type(std::mt19937_64& rng) {
  const AttractionMode kNone = AttractionMode::kNone, kRow = AttractionMode::kRow, kMat = AttractionMode::kMatrix;
  const Case cases[] = {
      // rows, cols, stride pad, shift, child, capacity, alpha, eps, mode
      {1, 1, 0, 0, false, false, 1.0, 0.0, kMat},
      {3, 1, 0, 0, true, false, 1.0, 0.0, kNone},
      {5, 13, 0, 0, false, true, 2.0, 0.5, kRow},
      {7, 65, 0, 0, false, false, 0.5, 1e-3, kMat},
      {7, 64, 32, 0, true, true, 0.0, 0.0, kNone},   // aligned padded rows, child
      {6, 70, 1, 0, false, false, 1.0, 0.0, kRow},   // odd stride: scalar path
      {6, 70, 0, 1, false, true, 1.0, 0.25, kMat},   // unaligned base: scalar path
      {20, 1437, 3, 0, false, false, 1.0, 0.0, kMat},
      {40, 3000, 0, 0, false, true, 0.7, 0.0, kMat},  // 64-tiles, several splits
      {300, 50, 0, 0, false, false, 1.0, 0.0, kRow},  // row-sliced column sums
      {300, 49, 16, 0, true, false, 1.5, 0.0, kNone},
      {9, 20000, 0, 0, false, false, 1.0, 0.0, kRow},  // column-sliced fitness
      {17, 20001, 5, 0, true, true, 2.0, 0.1, kNone},
  };
  for (const Case& c : cases) run_case<T>(c, rng);
  if constexpr (!std::is_same<T, uint8_t>::value) {
    run_case<T>({6, 30, 0, 0, false, false, 1.0, 0.0, kRow}, rng, 17);
    run_case<T>({300, 50, 0, 0, false, false, 1.0, 0.0, kNone}, rng, 33);  // sliced rows
  }
  std::printf("%s: ok so far (%d failures)\n", Traits<T>::name, failures);
}

}  // namespace

int main() {
  std::mt19937_64 rng(2024);
  run_type<uint8_t>(rng);
  run_type<half_t>(rng);
  run_type<bf16_t>(rng);
  run_type<float>(rng);
  run_type<double>(rng);
  // The plan: scratch bounds and coverage of the shapes above.
  {
    NichesProblem p{};
    p.type = Dtype::kFloat;
    p.rows = 4000;
    p.cols = 10000000;
    p.row_stride = p.cols;
    p.mode = AttractionMode::kMatrix;
    static float dummy[4];
    p.scores = dummy;
    const NichesPlan plan = plan_niches(p);
    expect(matrix_partial_doubles(p, plan) <= max64(4 * p.rows * p.rows, kMaxMatrixPartials), "matrix scratch bound",
           "plan", plan.splits);
    expect(row_partial_doubles(plan) <= 2 * p.rows * (kBusyBlocks + p.cols / kMaxSliceCols + 1), "row scratch bound",
           "plan", plan.col_slices);
    expect(plan.slice_vecs * plan.vec <= kMaxSliceCols, "slice length bound", "plan", plan.slice_vecs);
  }
  std::printf("%d checks, %d failures\n", checks, failures);
  return failures == 0 ? 0 : 1;
}
