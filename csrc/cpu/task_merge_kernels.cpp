// CPU task-vector merges: radix selection, statistics and the fused pass.
#include "task_merge_kernels.h"

#include <omp.h>

#include "dare_draws.h"
#include "isa_clones.h"
#include "radix_select.h"

#include <algorithm>
#include <cmath>


namespace m2n2::cpu {
namespace {

constexpr int64_t kChunk = int64_t(1) << 16;

// Elements [begin, end) of position `tensor`; `flat` is the unit index of `begin`.
struct Chunk {
  int64_t tensor;
  int64_t begin;
  int64_t end;
  int64_t flat;
};

// What one model keeps in one unit, and its rescale.
struct ModelPlan {
  bool keep_all = true;
  bool keep_none = false;
  uint64_t threshold = 0;  // magnitude: the key of the k-th largest |d|
  int64_t need = 0;        // magnitude: ties at the threshold to keep (lowest index first)
  bool partial_ties = false;
  uint32_t dare_threshold = 0;  // random: keep iff draw24 < this
  double scale = 1.0;
  std::vector<int64_t> tie_start;  // per chunk: ties at the threshold before it (partial ties only)
};

// f(T{}) with T the storage type of `dtype`: one dispatch for passes templated on
// more than the storage type.
template <class F>
void with_storage_type(Dtype dtype, F&& f) {
  switch (dtype) {
    case Dtype::kFloat: f(float{}); break;
    case Dtype::kDouble: f(double{}); break;
    case Dtype::kBFloat16: f(bf16_t{}); break;
    case Dtype::kHalf: f(half_t{}); break;
    default: break;
  }
}

template <class T>
const T* model_ptr(const TaskTensor& t, int k) {
  return static_cast<const T*>(t.models[size_t(k)]);
}

// The magnitude key of a delta in the unit's key width: 64-bit keys (of the delta
// widened to fp64, exactly) when the unit holds fp64 tensors, else 32-bit.
template <class Key, class C>
M2N2_HD Key key_of(C d) {
  if constexpr (sizeof(Key) == 8) {
    return magnitude_key(double(d));
  } else {
    return magnitude_key(float(d));
  }
}

// ---- tiles -------------------------------------------------------------------------
//
// Every pass walks a chunk in tiles: the base converted once per tile, then one
// vectorised loop per model (keys, factors, sums), with the per-element rule hoisted
// out of the loop.

constexpr int64_t kTile = 256;
static_assert(kTile <= kDrawTile, "draws_tile draws at most kDrawTile elements a call");

template <class T>
M2N2_HD void to_compute_tile(const T* x, int64_t len, compute_t<T>* out) {
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) out[j] = to_compute(x[j]);
}

// The magnitude keys of d = m - b over a tile (Key: uint32_t, or uint64_t for a unit
// that holds fp64 tensors).
template <class T, class Key>
M2N2_HD void keys_tile(const T* m, const compute_t<T>* b, int64_t len, Key* keys) {
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) keys[j] = key_of<Key>(to_compute(m[j]) - b[j]);
}

// The 24-bit DARE draws of elements i0 .. i0 + len - 1 of one model's stream
// (dare_draws.h), the portable loop compiled per ISA.
M2N2_CLONES void draws_tile_generic(uint64_t seed, uint64_t stream, uint64_t i0, int64_t len, uint32_t* draws) {
  draws_tile_portable(seed, stream, i0, len, draws);
}

void draws_tile(uint64_t seed, uint64_t stream, uint64_t i0, int64_t len, uint32_t* draws) {
#if M2N2_AVX512_DRAWS
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  if (avx512) {
    draws_tile_avx512(seed, stream, i0, len, draws);
    return;
  }
#endif
  draws_tile_generic(seed, stream, i0, len, draws);
}

// sum |d| and the sum of |d| where keep[j] (kept: key > threshold, or draw < thr),
// and the keys equal to the threshold, over a tile; fp64.
template <class T, class Key>
M2N2_HD void stats_tile(const T* m, const compute_t<T>* b, int64_t len, bool magnitude, uint64_t threshold,
                        const uint32_t* draws, uint32_t dare_thr, double* abs_sum, double* kept_sum, int64_t* ties) {
  double a = 0.0, kept = 0.0;
  int64_t tie = 0;
  if (magnitude) {
    const Key t = Key(threshold);
#pragma omp simd reduction(+ : a, kept, tie)
    for (int64_t j = 0; j < len; ++j) {
      const auto d = to_compute(m[j]) - b[j];
      const double ad = std::fabs(double(d));
      const Key key = key_of<Key>(d);
      a += ad;
      kept += key > t ? ad : 0.0;
      tie += key == t ? 1 : 0;
    }
  } else {
#pragma omp simd reduction(+ : a, kept)
    for (int64_t j = 0; j < len; ++j) {
      const double ad = std::fabs(double(to_compute(m[j]) - b[j]));
      a += ad;
      kept += draws[j] < dare_thr ? ad : 0.0;
    }
  }
  *abs_sum += a;
  *kept_sum += kept;
  *ties += tie;
}

#define M2N2_DEFINE_PASS_TILES(T)                                                                             \
  M2N2_CLONES void to_compute_tile_k(const T* x, int64_t len, compute_t<T>* out) {                            \
    to_compute_tile<T>(x, len, out);                                                                          \
  }                                                                                                           \
  M2N2_CLONES void keys_tile_k(const T* m, const compute_t<T>* b, int64_t len, uint32_t* keys) {              \
    keys_tile<T, uint32_t>(m, b, len, keys);                                                                  \
  }                                                                                                           \
  M2N2_CLONES void keys_tile_k(const T* m, const compute_t<T>* b, int64_t len, uint64_t* keys) {              \
    keys_tile<T, uint64_t>(m, b, len, keys);                                                                  \
  }                                                                                                           \
  M2N2_CLONES void stats_tile_k(const T* m, const compute_t<T>* b, int64_t len, bool magnitude, bool wide,    \
                                uint64_t threshold, const uint32_t* draws, uint32_t dare_thr, double* abs_sum, \
                                double* kept_sum, int64_t* ties) {                                            \
    if (wide) {                                                                                               \
      stats_tile<T, uint64_t>(m, b, len, magnitude, threshold, draws, dare_thr, abs_sum, kept_sum, ties);     \
    } else {                                                                                                  \
      stats_tile<T, uint32_t>(m, b, len, magnitude, threshold, draws, dare_thr, abs_sum, kept_sum, ties);     \
    }                                                                                                         \
  }

M2N2_DEFINE_PASS_TILES(float)
M2N2_DEFINE_PASS_TILES(double)
M2N2_DEFINE_PASS_TILES(bf16_t)
M2N2_DEFINE_PASS_TILES(half_t)
#undef M2N2_DEFINE_PASS_TILES

// ---- radix selection (radix_select.h) ---------------------------------------------

// The magnitude keys of the listed models over one chunk, tile by tile.
template <class T, class Key, class Sink>
void magnitude_keys_chunk(const TaskTensor& t, const Chunk& c, const std::vector<int>& models, Sink&& sink) {
  const T* base = static_cast<const T*>(t.base);
  alignas(64) compute_t<T> b[kTile];
  alignas(64) Key keys[kTile];
  for (int64_t t0 = c.begin; t0 < c.end; t0 += kTile) {
    const int64_t len = std::min(kTile, c.end - t0);
    to_compute_tile_k(base + t0, len, b);
    for (size_t a = 0; a < models.size(); ++a) {
      keys_tile_k(model_ptr<T>(t, models[a]) + t0, b, len, keys);
      sink(int(a), keys, len);
    }
  }
}

// Each partly keeping model's threshold: the key of its keep-th largest |d| (ascending
// rank n - keep), how many of the ties at it to keep (lowest index first) and whether
// that is fewer than all of them. Count as in radix_select.
template <class Key, class Count>
void select_thresholds(const std::vector<TaskTensor>& ts, const std::vector<Chunk>& chunks,
                       std::vector<ModelPlan>& plans, const std::vector<int64_t>& keep, int64_t n) {
  std::vector<RadixTarget> targets;
  for (int k = 0; k < int(plans.size()); ++k) {
    if (plans[k].keep_all || plans[k].keep_none) continue;
    RadixTarget target;
    target.source = k;
    target.rank = n - keep[k];
    targets.push_back(target);
  }
  radix_select<Key, Count>(int64_t(chunks.size()), targets, [&](int64_t i, const std::vector<int>& models, auto&& sink) {
    const Chunk& c = chunks[size_t(i)];
    const TaskTensor& t = ts[c.tensor];
    with_storage_type(t.dtype, [&](auto tag) { magnitude_keys_chunk<decltype(tag), Key>(t, c, models, sink); });
  });
  for (const RadixTarget& target : targets) {
    ModelPlan& p = plans[size_t(target.source)];
    const int64_t above = n - target.below - target.equal;
    p.threshold = target.key;
    p.need = keep[size_t(target.source)] - above;
    p.partial_ties = p.need < target.equal;
  }
}

// ---- statistics: l1 sums and tie counts per chunk ---------------------------------

struct ChunkStats {
  std::vector<double> abs_sum;   // per model: sum |d|
  std::vector<double> kept_sum;  // per model: sum |d| over the kept (magnitude: key > threshold)
  std::vector<int64_t> ties;     // per model: elements with key == threshold
};

template <class T, class Key>
void stats_chunk(const TaskTensor& t, const Chunk& c, const std::vector<ModelPlan>& plans, Sparsify sparsify,
                 bool l1, uint64_t seed, ChunkStats& out) {
  const T* base = static_cast<const T*>(t.base);
  const int K = int(plans.size());
  const bool magnitude = sparsify == Sparsify::kMagnitude;
  alignas(64) compute_t<T> b[kTile];
  alignas(64) uint32_t draws[kTile];
  alignas(64) Key keys[kTile];
  for (int64_t t0 = c.begin; t0 < c.end; t0 += kTile) {
    const int64_t len = std::min(kTile, c.end - t0);
    to_compute_tile_k(base + t0, len, b);
    for (int k = 0; k < K; ++k) {
      const ModelPlan& p = plans[k];
      if (p.keep_all || p.keep_none || !(l1 || p.partial_ties)) continue;
      if (!l1) {  // only the ties at the threshold: integer keys, no fp64 sums
        keys_tile_k(model_ptr<T>(t, k) + t0, b, len, keys);
        int64_t ties = 0;
        for (int64_t j = 0; j < len; ++j) ties += keys[j] == Key(p.threshold) ? 1 : 0;
        out.ties[k] += ties;
        continue;
      }
      if (!magnitude) draws_tile(seed, kDareStream + uint64_t(k), uint64_t(c.flat + (t0 - c.begin)), len, draws);
      stats_tile_k(model_ptr<T>(t, k) + t0, b, len, magnitude, sizeof(Key) == 8, p.threshold, draws,
                   p.dare_threshold, &out.abs_sum[k], &out.kept_sum[k], &out.ties[k]);
    }
  }
}

// ---- the fused pass ---------------------------------------------------------------
//
// Per tile: each model's factors e_k in a loop of its own (the keep rule hoisted out
// of it), then the combination of the K factors per element, vectorised across the
// tile.

enum class KeepMode : int { kAll, kNone, kAtLeast, kDraw };

// e[j] = keep_j ? (d_j s) w : 0 with d = m - b; kAtLeast keeps key(d) >= threshold
// (every tie kept: the partial-tie case takes the scalar path), kDraw keeps
// draw[j] < dare_threshold.
template <class T>
M2N2_HD void factors_tile(const T* m, const compute_t<T>* b, int64_t len, KeepMode mode, bool wide,
                          uint64_t threshold, const uint32_t* draws, uint32_t dare_thr, compute_t<T> s,
                          compute_t<T> w, compute_t<T>* e) {
  using C = compute_t<T>;
  switch (mode) {
    case KeepMode::kAll:
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) e[j] = ((to_compute(m[j]) - b[j]) * s) * w;
      break;
    case KeepMode::kNone:
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) e[j] = C(0);
      break;
    case KeepMode::kAtLeast:
      if (wide || sizeof(C) == 8) {
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) {
          const C d = to_compute(m[j]) - b[j];
          e[j] = magnitude_key(double(d)) >= threshold ? (d * s) * w : C(0);
        }
      } else {
        const uint32_t t32 = uint32_t(threshold);
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) {
          const C d = to_compute(m[j]) - b[j];
          e[j] = magnitude_key(float(d)) >= t32 ? (d * s) * w : C(0);
        }
      }
      break;
    case KeepMode::kDraw:
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) {
        const C d = to_compute(m[j]) - b[j];
        e[j] = draws[j] < dare_thr ? (d * s) * w : C(0);
      }
      break;
  }
}

// combine_factors (task_merge.h) over a tile, with the model loop outside so that every
// inner loop runs along the tile and vectorises: the same additions in the same
// order, element by element.
template <class C>
M2N2_HD C sign_of(C x) {
  return x > C(0) ? C(1) : (x < C(0) ? C(-1) : C(0));
}

template <class C>
M2N2_HD void combine_tile(const C* e, const C* w, int K, Consensus consensus, bool normalize, C lam, C plain_divisor,
                          const C* b, int64_t len, C* out) {
  alignas(64) C x[kTile];
  alignas(64) C divisor[kTile];
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) {
    x[j] = C(0);
    divisor[j] = plain_divisor;
  }
  if (consensus == Consensus::kNone) {
    for (int k = 0; k < K; ++k) {
      const C* ek = e + k * kTile;
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) x[j] = x[j] + ek[j];
    }
  } else {
    alignas(64) C sigma[kTile];
    alignas(64) C dsum[kTile];
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) sigma[j] = dsum[j] = C(0);  // sigma holds the vote first
    for (int k = 0; k < K; ++k) {
      const C* ek = e + k * kTile;
      if (consensus == Consensus::kSum) {
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) sigma[j] = sigma[j] + ek[j];
      } else {
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) sigma[j] = sigma[j] + sign_of(ek[j]);
      }
    }
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) sigma[j] = sigma[j] >= C(0) ? C(1) : C(-1);
    for (int k = 0; k < K; ++k) {
      const C* ek = e + k * kTile;
      const C wk = w[k];
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) {
        const bool agree = sign_of(ek[j]) == sigma[j];
        x[j] = x[j] + (agree ? ek[j] : C(0));
        dsum[j] = dsum[j] + (agree ? wk : C(0));
      }
    }
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) divisor[j] = dsum[j] == C(0) ? C(1) : dsum[j];
  }
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) {
    const C v = normalize ? x[j] / divisor[j] : x[j];
    out[j] = b[j] + v * lam;
  }
}

template <class T>
M2N2_HD void store_tile(const compute_t<T>* x, int64_t len, T* out) {
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) out[j] = from_compute<T>(x[j]);
}

// One clone set per storage type (target_clones does not apply to templates).
#define M2N2_DEFINE_TILE_KERNELS(T)                                                                        \
  M2N2_CLONES void factors_tile_k(const T* m, const compute_t<T>* b, int64_t len, KeepMode mode, bool wide, \
                                  uint64_t threshold, const uint32_t* draws, uint32_t dare_thr,            \
                                  compute_t<T> s, compute_t<T> w, compute_t<T>* e) {                       \
    factors_tile<T>(m, b, len, mode, wide, threshold, draws, dare_thr, s, w, e);                           \
  }                                                                                                        \
  M2N2_CLONES void store_tile_k(const compute_t<T>* x, int64_t len, T* out) { store_tile<T>(x, len, out); }

M2N2_DEFINE_TILE_KERNELS(float)
M2N2_DEFINE_TILE_KERNELS(double)
M2N2_DEFINE_TILE_KERNELS(bf16_t)
M2N2_DEFINE_TILE_KERNELS(half_t)
#undef M2N2_DEFINE_TILE_KERNELS

M2N2_CLONES void combine_tile_k(const float* e, const float* w, int K, Consensus consensus, bool normalize, float lam,
                                float plain_divisor, const float* b, int64_t len, float* out) {
  combine_tile<float>(e, w, K, consensus, normalize, lam, plain_divisor, b, len, out);
}
M2N2_CLONES void combine_tile_k(const double* e, const double* w, int K, Consensus consensus, bool normalize,
                                double lam, double plain_divisor, const double* b, int64_t len, double* out) {
  combine_tile<double>(e, w, K, consensus, normalize, lam, plain_divisor, b, len, out);
}

template <class T, class Key>
void fused_chunk(const TaskTensor& t, const Chunk& c, int64_t chunk_index, const std::vector<ModelPlan>& plans,
                 const TaskMergeConfig& cfg) {
  using C = compute_t<T>;
  const T* base = static_cast<const T*>(t.base);
  T* out = static_cast<T*>(t.out);
  const int K = int(plans.size());
  const bool wide = sizeof(Key) == 8;
  C w[kMaxModels], s[kMaxModels];
  int64_t rank[kMaxModels];
  KeepMode mode[kMaxModels];
  C wsum = C(0);
  for (int k = 0; k < K; ++k) {
    const ModelPlan& p = plans[k];
    w[k] = C(cfg.weights[k]);
    s[k] = C(p.scale);
    rank[k] = p.partial_ties ? p.tie_start[chunk_index] : 0;
    mode[k] = p.keep_all ? KeepMode::kAll
              : p.keep_none ? KeepMode::kNone
              : cfg.sparsify == Sparsify::kMagnitude ? KeepMode::kAtLeast
                                                      : KeepMode::kDraw;
    wsum = wsum + w[k];
  }
  const C plain_divisor = (wsum < C(0) ? -wsum : wsum) < C(kDivisorMin) ? C(1) : wsum;
  const C lam = C(cfg.lam);
  std::vector<C> e(size_t(K) * kTile);
  alignas(64) C b[kTile];
  alignas(64) C merged[kTile];
  alignas(64) uint32_t draws[kTile];
  alignas(64) Key keys[kTile];
  for (int64_t t0 = c.begin; t0 < c.end; t0 += kTile) {
    const int64_t len = std::min(kTile, c.end - t0);
    to_compute_tile_k(base + t0, len, b);
    for (int k = 0; k < K; ++k) {
      const ModelPlan& p = plans[k];
      const T* m = model_ptr<T>(t, k) + t0;
      C* ek = e.data() + size_t(k) * kTile;
      uint64_t threshold = p.threshold;
      if (mode[k] == KeepMode::kAtLeast && p.partial_ties) {
        // Ties at the threshold are kept lowest index first, by a running count. Only
        // the tile where the count passes `need` takes it element by element; before
        // it every tie is kept (key >= threshold), after it none (key > threshold).
        keys_tile_k(m, b, len, keys);
        int64_t ties = 0;
        for (int64_t j = 0; j < len; ++j) ties += keys[j] == Key(p.threshold) ? 1 : 0;
        if (rank[k] >= p.need) {
          threshold = p.threshold + 1;  // keys are integers: >= threshold + 1 is > threshold
        } else if (rank[k] + ties > p.need) {
          for (int64_t j = 0; j < len; ++j) {
            const C d = to_compute(m[j]) - b[j];
            const bool keep = keys[j] > Key(p.threshold) || (keys[j] == Key(p.threshold) && rank[k]++ < p.need);
            ek[j] = keep ? (d * s[k]) * w[k] : C(0);
          }
          continue;
        }
        rank[k] += ties;
      }
      if (mode[k] == KeepMode::kDraw) {
        draws_tile(cfg.seed, kDareStream + uint64_t(k), uint64_t(c.flat + (t0 - c.begin)), len, draws);
      }
      factors_tile_k(m, b, len, mode[k], wide, threshold, draws, p.dare_threshold, s[k], w[k], ek);
    }
    combine_tile_k(e.data(), w, K, cfg.consensus, cfg.normalize, lam, plain_divisor, b, len, merged);
    store_tile_k(merged, len, out + t0);
  }
}

// ---- one unit -----------------------------------------------------------------------

int64_t keep_count(double rho, int64_t n) {
  if (n == 0 || rho <= 0.0) return 0;
  if (rho >= 1.0) return n;
  return std::max<int64_t>(1, int64_t(rho * double(n)));
}

template <class Key>
void merge_unit(const std::vector<TaskTensor>& ts, const TaskMergeConfig& cfg) {
  std::vector<Chunk> chunks;
  int64_t n = 0;
  for (int64_t p = 0; p < int64_t(ts.size()); ++p) {
    for (int64_t begin = 0; begin < ts[p].numel; begin += kChunk) {
      chunks.push_back({p, begin, std::min(ts[p].numel, begin + kChunk), n + begin});
    }
    n += ts[p].numel;
  }
  if (n == 0) return;
  const int K = int(cfg.weights.size());
  const int64_t nchunks = int64_t(chunks.size());
  std::vector<ModelPlan> plans(static_cast<size_t>(K));
  std::vector<int64_t> keep(size_t(K), n);
  for (int k = 0; k < K; ++k) {
    ModelPlan& p = plans[k];
    const double rho = cfg.density[k];
    if (cfg.sparsify == Sparsify::kMagnitude) {
      keep[k] = keep_count(rho, n);
      p.keep_all = keep[k] == n;
      p.keep_none = keep[k] == 0;
    } else if (cfg.sparsify == Sparsify::kRandom) {
      p.dare_threshold = dare_threshold(rho);
      p.keep_all = rho >= 1.0;
      p.keep_none = p.dare_threshold == 0;
    }
    if (cfg.rescale == Rescale::kDensity && !p.keep_all && !p.keep_none) p.scale = 1.0 / rho;
  }
  if (cfg.sparsify == Sparsify::kMagnitude) {
    if (n < (int64_t(1) << 32)) {
      select_thresholds<Key, uint32_t>(ts, chunks, plans, keep, n);
    } else {
      select_thresholds<Key, uint64_t>(ts, chunks, plans, keep, n);
    }
  }

  const bool l1 = cfg.rescale == Rescale::kL1;
  bool need_stats = false;
  for (const ModelPlan& p : plans) {
    need_stats |= !p.keep_all && !p.keep_none && (l1 || p.partial_ties);
  }
  if (need_stats) {
    std::vector<ChunkStats> stats(static_cast<size_t>(nchunks));
#pragma omp parallel for schedule(static) if (nchunks > 1)
    for (int64_t i = 0; i < nchunks; ++i) {
      const Chunk& c = chunks[i];
      ChunkStats& st = stats[i];
      st.abs_sum.assign(size_t(K), 0.0);
      st.kept_sum.assign(size_t(K), 0.0);
      st.ties.assign(size_t(K), 0);
      const TaskTensor& t = ts[c.tensor];
      with_storage_type(t.dtype, [&](auto tag) {
        stats_chunk<decltype(tag), Key>(t, c, plans, cfg.sparsify, l1, cfg.seed, st);
      });
    }
    for (int k = 0; k < K; ++k) {
      ModelPlan& p = plans[k];
      if (p.keep_all || p.keep_none) continue;
      double abs_sum = 0.0, kept_sum = 0.0;
      int64_t ties = 0;
      if (p.partial_ties) p.tie_start.resize(static_cast<size_t>(nchunks));
      for (int64_t i = 0; i < nchunks; ++i) {  // chunk order: independent of the threads
        abs_sum += stats[i].abs_sum[k];
        kept_sum += stats[i].kept_sum[k];
        if (p.partial_ties) p.tie_start[i] = ties;
        ties += stats[i].ties[k];
      }
      if (cfg.sparsify == Sparsify::kMagnitude) {
        // The kept ties all have |d| = the threshold's value.
        const double at = sizeof(Key) == 8 ? bits_double(p.threshold) : double(bits_float(uint32_t(p.threshold)));
        kept_sum += double(p.need) * at;
      }
      if (cfg.rescale == Rescale::kL1 && abs_sum >= kRescaleMin && kept_sum >= kRescaleMin) {
        p.scale = abs_sum / kept_sum;
      }
    }
  }

#pragma omp parallel for schedule(static) if (nchunks > 1)
  for (int64_t i = 0; i < nchunks; ++i) {
    const Chunk& c = chunks[i];
    const TaskTensor& t = ts[c.tensor];
    with_storage_type(t.dtype, [&](auto tag) { fused_chunk<decltype(tag), Key>(t, c, i, plans, cfg); });
  }
}

void merge_unit_any(const std::vector<TaskTensor>& ts, const TaskMergeConfig& cfg) {
  const bool wide = std::any_of(ts.begin(), ts.end(), [](const TaskTensor& t) { return t.dtype == Dtype::kDouble; });
  if (wide) {
    merge_unit<uint64_t>(ts, cfg);
  } else {
    merge_unit<uint32_t>(ts, cfg);
  }
}

}  // namespace

void task_merge(const std::vector<TaskTensor>& tensors, const TaskMergeConfig& config) {
  if (config.global_scope) {
    merge_unit_any(tensors, config);
    return;
  }
  for (const TaskTensor& t : tensors) merge_unit_any({t}, config);
}

}  // namespace m2n2::cpu
