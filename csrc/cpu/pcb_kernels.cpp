// CPU PCB merging: clamp bounds (by extreme_select where their ranks lie near the ends,
// as with the authors' c = 1e-4, else by radix selection) and drop thresholds (by
// radix selection), then the fused pass (docs/semantics.md, "PCB merging").
#include "pcb_kernels.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "extreme_select.h"
#include "isa_clones.h"
#include "m2n2/dtypes.h"
#include "m2n2/pcb.h"
#include "m2n2/task_merge.h"
#include "radix_select.h"

namespace m2n2::cpu {
namespace {

constexpr int64_t kChunk = int64_t(1) << 16;
constexpr int64_t kTile = 256;

// Elements [begin, end) of position `tensor` of a unit.
struct Chunk {
  int64_t tensor;
  int64_t begin;
  int64_t end;
};

// f(T{}) with T the storage type of `dtype`, for a unit computing in U (an fp64
// tensor makes its unit fp64: the pair (double, float) never occurs).
template <class U, class F>
void with_storage_type(Dtype dtype, F&& f) {
  switch (dtype) {
    case Dtype::kFloat: f(float{}); break;
    case Dtype::kDouble:
      if constexpr (sizeof(U) == 8) f(double{});
      break;
    case Dtype::kBFloat16: f(bf16_t{}); break;
    case Dtype::kHalf: f(half_t{}); break;
    default: break;
  }
}

// ---- tiles ---------------------------------------------------------------------------
//
// U is the unit's compute type: a position's delta is formed in its own compute type
// (as task_merge forms it) and widened exactly to U, which is wider only where a
// global unit mixes fp64 with other tensors.

// The base over a tile: in its compute type (for the deltas) and in U (for the output).
template <class T, class U>
M2N2_HD void base_tile(const T* x, int64_t len, compute_t<T>* bc, U* bu) {
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) {
    bc[j] = to_compute(x[j]);
    bu[j] = U(bc[j]);
  }
}

template <class T, class U>
M2N2_HD void delta_tile(const T* m, const compute_t<T>* bc, int64_t len, U* d) {
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) d[j] = U(to_compute(m[j]) - bc[j]);
}

// out = T(b + merged * lam), each step rounded in U (a wider U is narrowed through
// the position's compute type, as torch converts fp64 to a 16-bit type).
template <class T, class U>
M2N2_HD void store_tile(const U* bu, const U* merged, U lam, int64_t len, T* out) {
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) out[j] = from_compute<T>(compute_t<T>(bu[j] + merged[j] * lam));
}

// One clone set per (storage, unit compute) pair (target_clones takes no templates).
#define M2N2_DEFINE_PCB_TILES(T, U)                                                                     \
  M2N2_CLONES void base_tile_k(const T* x, int64_t len, compute_t<T>* bc, U* bu) {                       \
    base_tile<T, U>(x, len, bc, bu);                                                                     \
  }                                                                                                      \
  M2N2_CLONES void delta_tile_k(const T* m, const compute_t<T>* bc, int64_t len, U* d) {                 \
    delta_tile<T, U>(m, bc, len, d);                                                                     \
  }                                                                                                      \
  M2N2_CLONES void store_tile_k(const U* bu, const U* merged, U lam, int64_t len, T* out) {              \
    store_tile<T, U>(bu, merged, lam, len, out);                                                         \
  }

M2N2_DEFINE_PCB_TILES(float, float)
M2N2_DEFINE_PCB_TILES(bf16_t, float)
M2N2_DEFINE_PCB_TILES(half_t, float)
M2N2_DEFINE_PCB_TILES(double, double)
M2N2_DEFINE_PCB_TILES(float, double)
M2N2_DEFINE_PCB_TILES(bf16_t, double)
M2N2_DEFINE_PCB_TILES(half_t, double)
#undef M2N2_DEFINE_PCB_TILES

// S = d_0 + d_1 + ... from +0, rounded after each addition.
template <class U>
M2N2_HD void delta_sum_tile(const U* d, int K, int64_t len, U* S) {
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) S[j] = U(0);
  for (int k = 0; k < K; ++k) {
    const U* dk = d + k * kTile;
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) S[j] = S[j] + dk[j];
  }
}

// What the passes know of one model in one unit.
template <class U>
struct PcbStats {
  U lo = U(0), hi = U(0);        // clamp bounds of |d|
  U theta = U(0), top = U(0);    // drop threshold and maximum of the scores
};

// The K deltas (and their base, and their sum) of one tile of a chunk.
template <class T, class U>
struct DeltaTile {
  alignas(64) compute_t<T> bc[kTile];
  alignas(64) U bu[kTile];
  alignas(64) U S[kTile];
  std::vector<U> d;  // K x kTile
  explicit DeltaTile(int K) : d(size_t(K) * kTile) {}

  void load(const TaskTensor& t, int64_t t0, int64_t len, int K) {
    base_tile_k(static_cast<const T*>(t.base) + t0, len, bc, bu);
    for (int k = 0; k < K; ++k) delta_tile_k(static_cast<const T*>(t.models[size_t(k)]) + t0, bc, len, row(k));
    delta_sum_tile(d.data(), K, len, S);
  }
  U* row(int k) { return d.data() + size_t(k) * kTile; }
};

template <class U>
using unit_key_t = decltype(magnitude_key(U(0)));

// Whether every |d S| of a tile lies in tanh's series range: then the score loops take
// the series alone (pcb.h, pcb_inter), the same bits without the long branch's expm1
// and division. Fine-tuning deltas are small (|d S| ~ 1e-5), so this is the common
// case.
template <class U>
M2N2_HD bool inter_in_series_tile(const U* d, const U* S, int64_t len) {
  int out = 0;
#pragma omp simd reduction(| : out)
  for (int64_t j = 0; j < len; ++j) out |= pcb_inter_in_series(d[j], S[j]) ? 0 : 1;
  return out == 0;
}

template <class U, bool Series>
M2N2_HD void score_keys_loop(const U* d, const U* S, int64_t len, U lo, U hi, U K, unit_key_t<U>* keys) {
  const PcbRange r = pcb_range(lo, hi);
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) keys[j] = score_key(pcb_score<U, Series>(d[j], S[j], lo, hi, r, K));
}

// The score keys of one model over a tile (every delta's sum S given).
template <class U>
M2N2_HD void score_keys_tile(const U* d, const U* S, int64_t len, U lo, U hi, U K, unit_key_t<U>* keys) {
  if (inter_in_series_tile(d, S, len)) {
    score_keys_loop<U, true>(d, S, len, lo, hi, K, keys);
  } else {
    score_keys_loop<U, false>(d, S, len, lo, hi, K, keys);
  }
}

// One model's share of a tile: num += t scale, den += scale.
template <class U, bool Series>
M2N2_HD void mix_loop(const U* d, const U* S, int64_t len, U lo, U hi, U theta, U top, U K, U* num, U* den) {
  const PcbRange r = pcb_range(lo, hi);
  const PcbRange drop = pcb_range(theta, top);
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) {
    const U scale = pcb_scale(pcb_score<U, Series>(d[j], S[j], lo, hi, r, K), theta, top, drop);
    const U clamped = pcb_signed(d[j], pcb_clamp_magnitude(pcb_abs(d[j]), lo, hi));
    num[j] = num[j] + clamped * scale;
    den[j] = den[j] + scale;
  }
}

template <class U>
M2N2_HD void mix_tile(const U* d, const U* S, int64_t len, U lo, U hi, U theta, U top, U K, U* num, U* den) {
  if (inter_in_series_tile(d, S, len)) {
    mix_loop<U, true>(d, S, len, lo, hi, theta, top, K, num, den);
  } else {
    mix_loop<U, false>(d, S, len, lo, hi, theta, top, K, num, den);
  }
}

#define M2N2_DEFINE_PCB_MODEL_TILES(U)                                                                          \
  M2N2_CLONES void score_keys_tile_k(const U* d, const U* S, int64_t len, U lo, U hi, U K,                      \
                                     unit_key_t<U>* keys) {                                                     \
    score_keys_tile<U>(d, S, len, lo, hi, K, keys);                                                             \
  }                                                                                                             \
  M2N2_CLONES void mix_tile_k(const U* d, const U* S, int64_t len, U lo, U hi, U theta, U top, U K, U* num,     \
                              U* den) {                                                                         \
    mix_tile<U>(d, S, len, lo, hi, theta, top, K, num, den);                                                    \
  }

M2N2_DEFINE_PCB_MODEL_TILES(float)
M2N2_DEFINE_PCB_MODEL_TILES(double)
#undef M2N2_DEFINE_PCB_MODEL_TILES

// ---- the passes' key sources (radix_select's keys_of_chunk) ---------------------------

// |d| of each listed model.
template <class T, class U, class Sink>
void magnitude_keys_chunk(const TaskTensor& t, const Chunk& c, const std::vector<int>& models, Sink&& sink) {
  alignas(64) compute_t<T> bc[kTile];
  alignas(64) U bu[kTile];
  alignas(64) U d[kTile];
  alignas(64) unit_key_t<U> keys[kTile];
  for (int64_t t0 = c.begin; t0 < c.end; t0 += kTile) {
    const int64_t len = std::min(kTile, c.end - t0);
    base_tile_k(static_cast<const T*>(t.base) + t0, len, bc, bu);
    for (size_t a = 0; a < models.size(); ++a) {
      delta_tile_k(static_cast<const T*>(t.models[size_t(models[a])]) + t0, bc, len, d);
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) keys[j] = magnitude_key(d[j]);
      sink(int(a), keys, len);
    }
  }
}

// The score g of each listed model (every delta is needed for their sum S).
template <class T, class U, class Sink>
void score_keys_chunk(const TaskTensor& t, const Chunk& c, const std::vector<int>& models,
                      const std::vector<PcbStats<U>>& stats, Sink&& sink) {
  const int K = int(stats.size());
  DeltaTile<T, U> tile(K);
  alignas(64) unit_key_t<U> keys[kTile];
  for (int64_t t0 = c.begin; t0 < c.end; t0 += kTile) {
    const int64_t len = std::min(kTile, c.end - t0);
    tile.load(t, t0, len, K);
    for (size_t a = 0; a < models.size(); ++a) {
      const PcbStats<U>& s = stats[size_t(models[a])];
      score_keys_tile_k(tile.row(models[a]), tile.S, len, s.lo, s.hi, U(K), keys);
      sink(int(a), keys, len);
    }
  }
}

// ---- the fused pass --------------------------------------------------------------------

// merged = sum_k t_k scale_k / max(sum_k scale_k, 1e-12), sums from +0 in model order.
template <class T, class U>
void fused_chunk(const TaskTensor& t, const Chunk& c, const std::vector<PcbStats<U>>& stats, U lam) {
  const int K = int(stats.size());
  DeltaTile<T, U> tile(K);
  alignas(64) U num[kTile];
  alignas(64) U den[kTile];
  T* out = static_cast<T*>(t.out);
  for (int64_t t0 = c.begin; t0 < c.end; t0 += kTile) {
    const int64_t len = std::min(kTile, c.end - t0);
    tile.load(t, t0, len, K);
    std::fill(num, num + len, U(0));
    std::fill(den, den + len, U(0));
    for (int k = 0; k < K; ++k) {
      const PcbStats<U>& s = stats[size_t(k)];
      mix_tile_k(tile.row(k), tile.S, len, s.lo, s.hi, s.theta, s.top, U(K), num, den);
    }
    const U floor = U(kPcbScaleSumMin);
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) num[j] = num[j] / (den[j] < floor ? floor : den[j]);
    store_tile_k(tile.bu, num, lam, len, out + t0);
  }
}

// ---- one unit ----------------------------------------------------------------------------

// radix_select with the narrowest counter that holds n, within the call's memory budget.
template <class Key, class Source>
void select_ranks(int64_t n, int64_t nchunks, std::vector<RadixTarget>& targets, uint64_t budget, Source&& source) {
  if (n < (int64_t(1) << 32)) {
    radix_select<Key, uint32_t>(nchunks, targets, source, nullptr, budget);
  } else {
    radix_select<Key, uint64_t>(nchunks, targets, source, nullptr, budget);
  }
}

// M2N2_PCB_SELECT: unset or "auto" (clamp bounds near the ends by extreme_select, in
// one pass), "radix" (radix selection for them too: the A/B baseline, and the tests'
// way to run both paths on the same inputs).
bool extreme_bounds() {
  const char* v = std::getenv("M2N2_PCB_SELECT");
  if (v == nullptr || std::strcmp(v, "") == 0 || std::strcmp(v, "auto") == 0) return true;
  if (std::strcmp(v, "radix") == 0) return false;
  throw std::invalid_argument("M2N2_PCB_SELECT must be auto or radix");
}

// Two targets per model: ranks r0 and r1 of its keys.
inline std::vector<RadixTarget> rank_pairs(int K, int64_t r0, int64_t r1) {
  std::vector<RadixTarget> targets(size_t(2 * K));
  for (int k = 0; k < K; ++k) {
    targets[size_t(2 * k)].source = targets[size_t(2 * k + 1)].source = k;
    targets[size_t(2 * k)].rank = r0;
    targets[size_t(2 * k + 1)].rank = r1;
  }
  return targets;
}

template <class U>
U magnitude_from_key(unit_key_t<U> k) {
  if constexpr (sizeof(U) == 8) {
    return bits_double(k);
  } else {
    return bits_float(k);
  }
}

template <class U>
void merge_unit(const std::vector<TaskTensor>& ts, const PcbConfig& cfg) {
  using Key = unit_key_t<U>;
  std::vector<Chunk> chunks;
  int64_t n = 0;
  for (int64_t p = 0; p < int64_t(ts.size()); ++p) {
    for (int64_t begin = 0; begin < ts[p].numel; begin += kChunk) {
      chunks.push_back({p, begin, std::min(ts[p].numel, begin + kChunk)});
    }
    n += ts[p].numel;
  }
  if (n == 0) return;
  const int K = cfg.models;
  const int64_t nchunks = int64_t(chunks.size());
  std::vector<PcbStats<U>> stats(static_cast<size_t>(K));

  // Pass 1: the clamp bounds, ranks int(n c) and int(n (1 - c) - 1) of |d_k|.
  const double nd = double(n);
  std::vector<RadixTarget> bounds = rank_pairs(K, int64_t(nd * cfg.clamp), int64_t(nd * (1.0 - cfg.clamp) - 1.0));
  const auto magnitudes = [&](int64_t i, const std::vector<int>& models, auto&& sink) {
    const Chunk& c = chunks[size_t(i)];
    with_storage_type<U>(ts[c.tensor].dtype, [&](auto tag) {
      magnitude_keys_chunk<decltype(tag), U>(ts[c.tensor], c, models, sink);
    });
  };
  if (extreme_bounds() && extreme_selectable(bounds, n, sizeof(Key), cfg.memory_budget)) {
    extreme_select<Key>(nchunks, n, bounds, magnitudes);  // ranks near the ends (c = 1e-4): one pass
  } else {
    select_ranks<Key>(n, nchunks, bounds, cfg.memory_budget, magnitudes);
  }
  for (int k = 0; k < K; ++k) {
    stats[size_t(k)].lo = magnitude_from_key<U>(Key(bounds[size_t(2 * k)].key));
    stats[size_t(k)].hi = magnitude_from_key<U>(Key(bounds[size_t(2 * k + 1)].key));
  }

  // Pass 2: the drop threshold, rank int(n (1 - ratio)) of g_k, and the maximum, rank n - 1.
  std::vector<RadixTarget> drops = rank_pairs(K, int64_t(nd * (1.0 - cfg.ratio)), n - 1);
  select_ranks<Key>(n, nchunks, drops, cfg.memory_budget, [&](int64_t i, const std::vector<int>& models, auto&& sink) {
    const Chunk& c = chunks[size_t(i)];
    with_storage_type<U>(ts[c.tensor].dtype, [&](auto tag) {
      score_keys_chunk<decltype(tag), U>(ts[c.tensor], c, models, stats, sink);
    });
  });
  for (int k = 0; k < K; ++k) {
    stats[size_t(k)].theta = score_from_key(Key(drops[size_t(2 * k)].key));
    stats[size_t(k)].top = score_from_key(Key(drops[size_t(2 * k + 1)].key));
  }

  // Pass 3: score, scale, mix, write.
  const U lam = U(cfg.lam);
#pragma omp parallel for schedule(dynamic) if (nchunks > 1)
  for (int64_t i = 0; i < nchunks; ++i) {
    const Chunk& c = chunks[size_t(i)];
    with_storage_type<U>(ts[c.tensor].dtype,
                         [&](auto tag) { fused_chunk<decltype(tag), U>(ts[c.tensor], c, stats, lam); });
  }
}

// A unit holding an fp64 tensor computes in fp64, any other in fp32.
void merge_unit_any(const std::vector<TaskTensor>& ts, const PcbConfig& cfg) {
  const bool wide = std::any_of(ts.begin(), ts.end(), [](const TaskTensor& t) { return t.dtype == Dtype::kDouble; });
  if (wide) {
    merge_unit<double>(ts, cfg);
  } else {
    merge_unit<float>(ts, cfg);
  }
}

}  // namespace

void pcb_merge(const std::vector<TaskTensor>& tensors, const PcbConfig& config) {
  if (config.global_scope) {
    merge_unit_any(tensors, config);
    return;
  }
  for (const TaskTensor& t : tensors) merge_unit_any({t}, config);
}

}  // namespace m2n2::cpu
