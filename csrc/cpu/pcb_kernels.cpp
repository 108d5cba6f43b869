// CPU PCB merging: clamp bounds (by extreme_select where their ranks lie near the ends,
// as with the authors' c = 1e-4, else by radix selection) and drop thresholds (by
// radix selection), then the fused pass (docs/semantics.md, "PCB merging").
#include "pcb_kernels.h"

#include <algorithm>
#include <atomic>
#include <cmath>
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
#include "pcb_skip.h"
#include "radix_select.h"
#include "window_tiles.h"

#include <omp.h>

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

// A unit's ordering keys (of |d| and of scores): 32 bits for fp32 units, 64 for fp64.
template <class U>
using unit_key_t = decltype(magnitude_key(U(0)));

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

// |d| as ordering keys (magnitude_key) of one model over a tile.
template <class T, class U>
M2N2_HD void magnitude_keys_tile(const T* m, const compute_t<T>* bc, int64_t len, unit_key_t<U>* keys) {
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) keys[j] = magnitude_key(U(to_compute(m[j]) - bc[j]));
}

// The fused pass's last step: out = T(b + merged * lam) with merged = num / max(den,
// 1e-12), each step rounded in U (a wider U is narrowed through the position's compute
// type, as torch converts fp64 to a 16-bit type).
template <class T, class U>
M2N2_HD void finish_tile(const U* bu, const U* num, const U* den, U lam, int64_t len, T* out) {
  const U floor = U(kPcbScaleSumMin);
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) {
    const U merged = num[j] / (den[j] < floor ? floor : den[j]);
    out[j] = from_compute<T>(compute_t<T>(bu[j] + merged * lam));
  }
}

// One clone set per (storage, unit compute) pair (target_clones takes no templates).
#define M2N2_DEFINE_PCB_TILES(T, U)                                                                     \
  M2N2_CLONES void base_tile_k(const T* x, int64_t len, compute_t<T>* bc, U* bu) {                       \
    base_tile<T, U>(x, len, bc, bu);                                                                     \
  }                                                                                                      \
  M2N2_CLONES void delta_tile_k(const T* m, const compute_t<T>* bc, int64_t len, U* d) {                 \
    delta_tile<T, U>(m, bc, len, d);                                                                     \
  }                                                                                                      \
  M2N2_CLONES void magnitude_keys_tile_k(const T* m, const compute_t<T>* bc, int64_t len, unit_key_t<U>* keys) { \
    magnitude_keys_tile<T, U>(m, bc, len, keys);                                                         \
  }                                                                                                      \
  M2N2_CLONES void finish_tile_k(const U* bu, const U* num, const U* den, U lam, int64_t len, T* out) {   \
    finish_tile<T, U>(bu, num, den, lam, len, out);                                                      \
  }

M2N2_DEFINE_PCB_TILES(float, float)
M2N2_DEFINE_PCB_TILES(bf16_t, float)
M2N2_DEFINE_PCB_TILES(half_t, float)
M2N2_DEFINE_PCB_TILES(double, double)
M2N2_DEFINE_PCB_TILES(float, double)
M2N2_DEFINE_PCB_TILES(bf16_t, double)
M2N2_DEFINE_PCB_TILES(half_t, double)
#undef M2N2_DEFINE_PCB_TILES

// The next tile's lines of the base and of the models read (`models`; nullptr: all),
// [t0, min(t0 + kTile, end)), asked for while this tile computes. A thread alternates
// between loading a tile and computing its scores (an exp and a tanh per element and
// model), and the hardware prefetchers did not keep up: the loops that load the tiles
// held about a fifth of a fp32 call's perf samples; and the window's sample, every
// 16th-64th tile, is a stride they do not follow. Calls interleaved in one process with
// and without it (the scale-4 block's tensors, K = 3): fp32 calls 7-10% faster, bf16
// calls unchanged, the sample 15-20% faster in both.
template <class T>
void prefetch_tile(const TaskTensor& t, int64_t t0, int64_t end, const std::vector<int>* models = nullptr) {
  if (t0 >= end) return;
  const int64_t bytes = std::min(kTile, end - t0) * int64_t(sizeof(T));
  const auto lines = [&](const void* p) {
    const char* x = reinterpret_cast<const char*>(static_cast<const T*>(p) + t0);
    for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(x + o, 0, 3);
  };
  lines(t.base);
  if (models == nullptr) {
    for (const void* m : t.models) lines(m);
  } else {
    for (int k : *models) lines(t.models[size_t(k)]);
  }
}

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

M2N2_CLONES void delta_sum_tile_k(const float* d, int K, int64_t len, float* S) { delta_sum_tile(d, K, len, S); }
M2N2_CLONES void delta_sum_tile_k(const double* d, int K, int64_t len, double* S) { delta_sum_tile(d, K, len, S); }

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
    delta_sum_tile_k(d.data(), K, len, S);
  }
  U* row(int k) { return d.data() + size_t(k) * kTile; }
};

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

// |d| of each listed model, every key; or, to extreme_select once a model's bounds
// have settled, only the keys beyond them (fp32 units of fp32 or bf16 storage, on
// AVX-512): one loop in registers instead of writing every key and comparing it after
// with each bound. Calls interleaved in one process with and without it (the scale-4
// block's tensors, K = 3): the clamp pass 10-16% faster, fp32 and bf16.
template <class T, class U, class Sink>
void magnitude_keys_chunk(const TaskTensor& t, const Chunk& c, const std::vector<int>& models, Sink&& sink) {
  alignas(64) compute_t<T> bc[kTile];
  alignas(64) U bu[kTile];
  alignas(64) unit_key_t<U> keys[kTile];
  for (int64_t t0 = c.begin; t0 < c.end; t0 += kTile) {
    const int64_t len = std::min(kTile, c.end - t0);
    base_tile_k(static_cast<const T*>(t.base) + t0, len, bc, bu);
    prefetch_tile<T>(t, t0 + kTile, c.end, &models);
    for (size_t a = 0; a < models.size(); ++a) {
      const T* m = static_cast<const T*>(t.models[size_t(models[a])]) + t0;
      if constexpr (sizeof(unit_key_t<U>) == 4) {
        // extreme_select's settled bounds: only the keys beyond them, formed in registers
        const ExtremeCut<uint32_t> cut = sink_cut<uint32_t>(sink, int(a), 0);
        const int64_t count = cut.active ? delta_keys_beyond<T>(m, bc, len, cut, keys) : -1;
        if (count >= 0) {
          if (count > 0) sink(int(a), keys, count);
          continue;
        }
      }
      magnitude_keys_tile_k(m, bc, len, keys);
      sink(int(a), keys, len);
    }
  }
}

// The elements of one model's tile that pcb_skip.h's bound does not skip, compacted
// (fp32 units): the filter's output, and the fused pass's terms of them.
struct SkipTile {
  uint16_t masks[kTile / 16];  // the survivors of each 16-lane step
  alignas(64) float d[kTile + 16];  // the filter stores whole 16-lane steps
  alignas(64) float S[kTile + 16];
  alignas(64) float num[kTile + 16];  // read 16 lanes at a time (pcb_expand_add)
  alignas(64) float den[kTile + 16];
};

// Each model's filter (pcb_skip.h), its floor floor_of(k) (a score): fp32 units only,
// and none under M2N2_PCB_SKIP=0 (every element scored: the same bits, slower; for
// comparisons).
template <class U, class FloorOf>
std::vector<PcbSkip> skip_plans(const std::vector<PcbStats<U>>& stats, FloorOf&& floor_of) {
  std::vector<PcbSkip> plans;
  const char* v = std::getenv("M2N2_PCB_SKIP");
  if constexpr (sizeof(U) == 4) {
    if (v == nullptr || std::strcmp(v, "0") != 0) {
      const int K = int(stats.size());
      for (int k = 0; k < K; ++k) {
        plans.push_back(pcb_skip_plan(stats[size_t(k)].lo, stats[size_t(k)].hi, K, floor_of(k)));
      }
    }
  }
  return plans;
}

// The score g of each listed model (every delta is needed for their sum S), over every
// `stride`-th tile of the chunk (1: all of them; more: the window's sample). skips (one
// per listed model, or none): only the keys of the elements the bound does not skip
// go to the sink; skipped[a] counts the others (their scores lie below skips[a].floor).
template <class T, class U, class Sink>
void score_keys_chunk(const TaskTensor& t, const Chunk& c, const std::vector<int>& models,
                      const std::vector<PcbStats<U>>& stats, Sink&& sink, int64_t stride = 1,
                      const PcbSkip* skips = nullptr, int64_t* skipped = nullptr) {
  const int K = int(stats.size());
  DeltaTile<T, U> tile(K);
  SkipTile kept;
  alignas(64) unit_key_t<U> keys[kTile];
  for (int64_t t0 = c.begin; t0 < c.end; t0 += stride * kTile) {
    const int64_t len = std::min(kTile, c.end - t0);
    tile.load(t, t0, len, K);
    prefetch_tile<T>(t, t0 + stride * kTile, c.end);
    for (size_t a = 0; a < models.size(); ++a) {
      const PcbStats<U>& s = stats[size_t(models[a])];
      const U* d = tile.row(models[a]);
      const U* S = tile.S;
      int64_t n = len;
      int64_t scored = len;
      if constexpr (sizeof(U) == 4) {
        const int64_t survivors = skips ? pcb_survivors(d, S, len, skips[a], nullptr, kept.d, kept.S) : -1;
        if (survivors >= 0) {
          d = kept.d, S = kept.S, n = survivors, scored = pcb_padded(survivors);
          skipped[a] += len - survivors;
        }
      }
      score_keys_tile_k(d, S, scored, s.lo, s.hi, U(K), keys);
      sink(int(a), keys, n);
    }
  }
}

// ---- the fused pass --------------------------------------------------------------------

// One model's share of a tile (mix_tile): over the elements the bound does not skip
// where skip runs (a skipped element's scale is exactly 0: its terms would add +-0), else
// over all of them.
template <class U>
void mix_model(const U* d, const U* S, int64_t len, const PcbStats<U>& s, const PcbSkip* skip, U K, U* num, U* den,
               SkipTile& kept) {
  if constexpr (sizeof(U) == 4) {
    const int64_t n = skip ? pcb_survivors(d, S, len, *skip, kept.masks, kept.d, kept.S) : -1;
    if (n >= 0) {
      // Each survivor's terms alone (0 + t is t, and adding +0 for -0 changes no sum),
      // then added to its element's sums (+0 to the others').
      const int64_t padded = pcb_padded(n);
      std::fill(kept.num, kept.num + padded, 0.0f);
      std::fill(kept.den, kept.den + padded, 0.0f);
      mix_tile_k(kept.d, kept.S, padded, s.lo, s.hi, s.theta, s.top, K, kept.num, kept.den);
      pcb_expand_add(kept.masks, len, kept.num, kept.den, num, den);
      return;
    }
  }
  mix_tile_k(d, S, len, s.lo, s.hi, s.theta, s.top, K, num, den);
}

// merged = sum_k t_k scale_k / max(sum_k scale_k, 1e-12), sums from +0 in model order.
// skips: one per model (each floor its drop threshold), or empty.
template <class T, class U>
void fused_chunk(const TaskTensor& t, const Chunk& c, const std::vector<PcbStats<U>>& stats,
                 const std::vector<PcbSkip>& skips, U lam) {
  const int K = int(stats.size());
  DeltaTile<T, U> tile(K);
  SkipTile kept;
  alignas(64) U num[kTile];
  alignas(64) U den[kTile];
  T* out = static_cast<T*>(t.out);
  for (int64_t t0 = c.begin; t0 < c.end; t0 += kTile) {
    const int64_t len = std::min(kTile, c.end - t0);
    tile.load(t, t0, len, K);
    prefetch_tile<T>(t, t0 + kTile, c.end);
    std::fill(num, num + len, U(0));
    std::fill(den, den + len, U(0));
    for (int k = 0; k < K; ++k) {
      mix_model(tile.row(k), tile.S, len, stats[size_t(k)], skips.empty() ? nullptr : &skips[size_t(k)], U(K), num,
                den, kept);
    }
    finish_tile_k(tile.bu, num, den, lam, len, out + t0);
  }
}

// ---- one unit ----------------------------------------------------------------------------

// radix_select with the narrowest counter that holds n, within the call's memory budget.
template <class Key, class Source>
void select_ranks(int64_t n, int64_t nchunks, std::vector<RadixTarget>& targets, uint64_t budget, Source&& source,
                  const std::vector<int64_t>* source_keys = nullptr) {
  if (n < (int64_t(1) << 32)) {
    radix_select<Key, uint32_t>(nchunks, targets, source, source_keys, budget);
  } else {
    radix_select<Key, uint64_t>(nchunks, targets, source, source_keys, budget);
  }
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

// ---- the drop thresholds by a candidate window ------------------------------------
//
// The radix passes over the scores cost two score evaluations of every element, and
// a score (an exp and a tanh per element and model) is PCB's main cost. As TIES'
// thresholds in task_merge_kernels.cpp: a deterministic sample (every 16th to 64th
// tile of each chunk: pcb_pick_sample) gives each model's drop rank a window [lo, hi]
// of score keys (radix selection over the sample, recomputed in each of its passes,
// never stored); ONE pass then counts the keys below lo, at lo and at hi, keeps the
// few strictly inside, and takes each model's maximum; the threshold follows from the
// counts, or from kth_key over the kept keys (a rank in a multiset: whatever the
// threads). A model whose window misses its rank takes the radix passes, and every
// model does where the kept keys would exceed the memory budget: the threshold is
// exact either way.
constexpr int64_t kPcbWindowMinN = int64_t(1) << 18;  // smaller units: radix (the sample would be small)
constexpr int64_t kPcbSampleStrideMin = 16;           // every 16th tile: n / 16 scores per model ...
constexpr int64_t kPcbSampleStrideMax = 64;           // ... to every 64th, where the budget holds the wider window
constexpr double kPcbSampleSigmas = 4.0;              // an i.i.d. unit misses with probability ~6e-5
constexpr int64_t kPcbReserve = 4096;                 // keys of the budget a thread reserves at a time

// The window's sample: every `stride`-th tile of each chunk, m scores per model, window
// ranks [lo, hi] in it, and the keys the full pass expects inside the window per model.
struct PcbSamplePlan {
  int64_t stride = 0, m = 0, lo = 0, hi = 0, expected = 0;
  bool fits = false;  // both window ranks inside the sample
};

inline PcbSamplePlan pcb_sample_plan(const std::vector<Chunk>& chunks, int64_t n, int64_t r, int64_t stride) {
  PcbSamplePlan p;
  p.stride = stride;
  for (const Chunk& c : chunks) {
    for (int64_t t0 = c.begin; t0 < c.end; t0 += stride * kTile) p.m += std::min(kTile, c.end - t0);
  }
  const double q = double(r) / double(n);
  const double margin = kPcbSampleSigmas * std::sqrt(double(p.m) * q * (1.0 - q)) + 2.0;
  p.lo = int64_t(std::floor(q * double(p.m) - margin));
  p.hi = int64_t(std::ceil(q * double(p.m) + margin));
  p.fits = p.lo >= 0 && p.hi < p.m;
  if (p.fits) p.expected = int64_t(double(n) * double(p.hi - p.lo) / double(p.m));
  return p;
}

// The sparsest sample whose window the budget holds with room to spare: every model's
// expected keys inside twice over, and the keys the threads may have reserved and not
// used (kPcbReserve each). The sample's selection costs in proportion to its size, the
// window's kept keys and last step in proportion to 1 / sqrt(its size): on fp32
// tensors of a 7B model's block (K = 3, 2 threads) every 16th tile took 10-12 ms of a
// 95-110 ms call and every 64th 4.6-5.5, the last step growing from 1.5-1.9 ms to
// 2.7-3.3. Where no sparser one fits, every 16th tile (the pass's cap then decides).
inline PcbSamplePlan pcb_pick_sample(const std::vector<Chunk>& chunks, int64_t n, int64_t r, int K,
                                     size_t key_bytes, uint64_t budget) {
  for (int64_t stride = kPcbSampleStrideMax; stride > kPcbSampleStrideMin; stride /= 2) {
    const PcbSamplePlan p = pcb_sample_plan(chunks, n, r, stride);
    const double kept_bytes =
        (2.0 * double(K) * double(p.expected) + double(omp_get_max_threads()) * double(kPcbReserve)) * double(key_bytes);
    if (p.fits && kept_bytes <= double(budget)) return p;
  }
  return pcb_sample_plan(chunks, n, r, kPcbSampleStrideMin);
}

// M2N2_PCB_SELECT (select_mode, task_merge_kernels.h): under auto and window the clamp
// bounds near the ends are taken by extreme_select, in one pass, and the drop
// thresholds by the window where it holds them; under radix both by radix selection.

// One chunk's counts against one model's window.
template <class Key>
struct PcbWindowCounts {
  int64_t below = 0, at_lo = 0, at_hi = 0, inside = 0;
  Key top = 0;  // the largest key
};

// The drop thresholds (rank r of every model's scores) and maxima by windows. Fills
// drops[2k] (the threshold) and drops[2k + 1] (the maximum) of the models it holds;
// returns, per model, whether it did.
template <class U>
std::vector<char> window_drops(const std::vector<TaskTensor>& ts, const std::vector<Chunk>& chunks, int64_t n,
                               int64_t r, const std::vector<PcbStats<U>>& stats, uint64_t budget,
                               std::vector<RadixTarget>& drops) {
  using Key = unit_key_t<U>;
  const int K = int(stats.size());
  const int64_t nchunks = int64_t(chunks.size());
  std::vector<char> held(static_cast<size_t>(K), 0);
  if (n < kPcbWindowMinN) return held;
  const auto scores = [&](int64_t i, const std::vector<int>& models, auto&& sink, int64_t stride,
                          const PcbSkip* skips = nullptr, int64_t* skipped = nullptr) {
    const Chunk& c = chunks[size_t(i)];
    with_storage_type<U>(ts[c.tensor].dtype, [&](auto tag) {
      score_keys_chunk<decltype(tag), U>(ts[c.tensor], c, models, stats, sink, stride, skips, skipped);
    });
  };
  // The sample's size per model, and its window ranks.
  const PcbSamplePlan plan = pcb_pick_sample(chunks, n, r, K, sizeof(Key), budget);
  if (!plan.fits) return held;  // a rank near an end: the radix passes
  std::vector<RadixTarget> sample_targets = rank_pairs(K, plan.lo, plan.hi);
  const std::vector<int64_t> sample_keys(static_cast<size_t>(K), plan.m);  // collected at once where they fit
  select_ranks<Key>(plan.m, nchunks, sample_targets, budget,
                    [&](int64_t i, const std::vector<int>& models, auto&& sink) {
                      scores(i, models, sink, plan.stride);
                    },
                    &sample_keys);
  std::vector<Key> lo(static_cast<size_t>(K)), hi(static_cast<size_t>(K));
  for (int k = 0; k < K; ++k) {
    lo[size_t(k)] = Key(sample_targets[size_t(2 * k)].key);
    hi[size_t(k)] = Key(sample_targets[size_t(2 * k + 1)].key);
  }

  // The pass: per chunk and model, the counts; the keys inside, per thread.
  const int threads = omp_get_max_threads();
  // The kept keys' cap: the budget (they are all the pass holds).
  const int64_t cap = int64_t(std::min<uint64_t>(budget, uint64_t(1) << 60) / sizeof(Key));
  std::atomic<int64_t> reserved{0};
  std::vector<PcbWindowCounts<Key>> counts(size_t(nchunks) * size_t(K));
  // Each thread's kept keys per model, reserved for all the keys the sample expects
  // inside the window and more (the cap at most): a reservation takes address space,
  // and only the pages written count, so the vectors need not grow by doubling and
  // thread 0's can take every thread's keys without moving.
  const size_t room_keys = size_t(std::min(cap, 2 * plan.expected + kPcbReserve));
  std::vector<std::vector<std::vector<Key>>> inside(static_cast<size_t>(threads),
                                                 std::vector<std::vector<Key>>(static_cast<size_t>(K)));
  for (auto& per_thread : inside) {
    for (std::vector<Key>& v : per_thread) v.reserve(room_keys);
  }
  std::vector<char> overflow(size_t(threads), 0);
  std::vector<int64_t> allowance(size_t(threads), 0);
  std::vector<int> all(static_cast<size_t>(K));
  for (int k = 0; k < K; ++k) all[size_t(k)] = k;
  // The scores the bound puts below a model's window need not be computed: they are
  // counted below it.
  const std::vector<PcbSkip> skips = skip_plans(stats, [&](int k) { return score_from_key(lo[size_t(k)]); });
#pragma omp parallel for schedule(dynamic) if (nchunks > 1)
  for (int64_t i = 0; i < nchunks; ++i) {
    const int th = omp_get_thread_num();
    PcbWindowCounts<Key>* cc = counts.data() + size_t(i) * size_t(K);
    int64_t room = allowance[size_t(th)];
    bool over = overflow[size_t(th)] != 0;
    std::vector<int64_t> skipped(size_t(K), 0);
    scores(i, all, [&](int a, const Key* keys, int64_t len) {
      const Key l = lo[size_t(a)], h = hi[size_t(a)];
      alignas(64) Key kept[kTile];
      WindowTileCounts tc;
      const int mid = window_keys<Key>(keys, len, l, h, kept, &tc);
      PcbWindowCounts<Key>& wc = cc[a];
      wc.below += len - tc.gt_hi - tc.eq_lo - (l == h ? 0 : tc.eq_hi) - mid;
      wc.at_lo += tc.eq_lo;
      wc.at_hi += tc.eq_hi;
      wc.inside += mid;
      wc.top = std::max(wc.top, Key(tc.top));
      if (mid == 0 || over) return;
      if (room < mid) {
        const int64_t want = std::max<int64_t>(mid, kPcbReserve);
        if (reserved.fetch_add(want, std::memory_order_relaxed) + want > cap) {
          reserved.fetch_sub(want, std::memory_order_relaxed);
          over = true;  // every model of this thread: the radix passes
          return;
        }
        room += want;
      }
      room -= mid;
      std::vector<Key>& dst = inside[size_t(th)][size_t(a)];
      dst.insert(dst.end(), kept, kept + mid);
    }, 1, skips.empty() ? nullptr : skips.data(), skipped.data());
    for (int k = 0; k < K; ++k) cc[k].below += skipped[size_t(k)];
    allowance[size_t(th)] = room;
    overflow[size_t(th)] = over ? 1 : 0;
  }
  if (std::any_of(overflow.begin(), overflow.end(), [](char o) { return o != 0; })) return held;

  // Each model's threshold from its own counts and kept keys: the models in parallel
  // (a selection over some 10^4 keys each).
#pragma omp parallel for schedule(dynamic) if (K > 1 && nchunks > 1)
  for (int k = 0; k < K; ++k) {
    PcbWindowCounts<Key> sum;
    for (int64_t i = 0; i < nchunks; ++i) {
      const PcbWindowCounts<Key>& wc = counts[size_t(i) * size_t(K) + size_t(k)];
      sum.below += wc.below;
      sum.at_lo += wc.at_lo;
      sum.at_hi += wc.at_hi;
      sum.inside += wc.inside;
      sum.top = std::max(sum.top, wc.top);
    }
    const Key l = lo[size_t(k)], h = hi[size_t(k)];
    if (l == h) sum.at_hi = 0;  // the same keys as at_lo
    int64_t rest = r - sum.below;
    Key theta;
    if (rest < 0) {
      continue;  // below the window: missed
    } else if (rest < sum.at_lo) {
      theta = l;
    } else if ((rest -= sum.at_lo) < sum.inside) {
      std::vector<Key>& keys = inside[0][size_t(k)];  // every thread's, in thread 0's room
      for (int th = 1; th < threads; ++th) {
        std::vector<Key>& part = inside[size_t(th)][size_t(k)];
        keys.insert(keys.end(), part.begin(), part.end());
        std::vector<Key>().swap(part);
      }
      std::vector<Key> scratch;
      theta = detail::kth_key(keys.data(), int64_t(keys.size()), rest, scratch);
    } else if (rest - sum.inside < sum.at_hi) {
      theta = h;
    } else {
      continue;  // above the window: missed
    }
    drops[size_t(2 * k)].key = theta;
    drops[size_t(2 * k + 1)].key = sum.top;
    held[size_t(k)] = 1;
  }
  return held;
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
  // Every model's key count, given to the radix passes of small units (collected at once).
  const std::vector<int64_t> model_keys(static_cast<size_t>(K), n);
  const std::vector<int64_t>* small_unit = n <= kRadixCollectAtOnceMax ? &model_keys : nullptr;

  // Pass 1: the clamp bounds, ranks int(n c) and int(n (1 - c) - 1) of |d_k|.
  const double nd = double(n);
  std::vector<RadixTarget> bounds = rank_pairs(K, int64_t(nd * cfg.clamp), int64_t(nd * (1.0 - cfg.clamp) - 1.0));
  const auto magnitudes = [&](int64_t i, const std::vector<int>& models, auto&& sink) {
    const Chunk& c = chunks[size_t(i)];
    with_storage_type<U>(ts[c.tensor].dtype, [&](auto tag) {
      magnitude_keys_chunk<decltype(tag), U>(ts[c.tensor], c, models, sink);
    });
  };
  const SelectMode select = select_mode("M2N2_PCB_SELECT");
  if (select != SelectMode::kRadix && extreme_selectable(bounds, n, sizeof(Key), cfg.memory_budget)) {
    extreme_select<Key>(nchunks, n, bounds, magnitudes);  // ranks near the ends (c = 1e-4): one pass
  } else {
    select_ranks<Key>(n, nchunks, bounds, cfg.memory_budget, magnitudes, small_unit);
  }
  for (int k = 0; k < K; ++k) {
    stats[size_t(k)].lo = magnitude_from_key<U>(Key(bounds[size_t(2 * k)].key));
    stats[size_t(k)].hi = magnitude_from_key<U>(Key(bounds[size_t(2 * k + 1)].key));
  }

  // Pass 2: the drop threshold, rank int(n (1 - ratio)) of g_k, and the maximum, rank
  // n - 1: by the window where it holds them, else (the models it does not hold) radix.
  const int64_t drop_rank = int64_t(nd * (1.0 - cfg.ratio));
  std::vector<RadixTarget> drops = rank_pairs(K, drop_rank, n - 1);
  std::vector<char> held(size_t(K), 0);
  if (select != SelectMode::kRadix) held = window_drops<U>(ts, chunks, n, drop_rank, stats, cfg.memory_budget, drops);
  std::vector<RadixTarget> rest;
  for (int k = 0; k < K; ++k) {
    if (held[size_t(k)]) continue;
    rest.push_back(drops[size_t(2 * k)]);
    rest.push_back(drops[size_t(2 * k + 1)]);
  }
  if (!rest.empty() && select == SelectMode::kWindowStrict) {
    throw std::runtime_error("M2N2_PCB_SELECT=window: a drop threshold needed the radix passes");
  }
  select_ranks<Key>(n, nchunks, rest, cfg.memory_budget, [&](int64_t i, const std::vector<int>& models, auto&& sink) {
    const Chunk& c = chunks[size_t(i)];
    with_storage_type<U>(ts[c.tensor].dtype, [&](auto tag) {
      score_keys_chunk<decltype(tag), U>(ts[c.tensor], c, models, stats, sink);
    });
  }, small_unit);
  for (size_t j = 0; j < rest.size(); j += 2) {  // back to their places: two per model, in order
    drops[size_t(2 * rest[j].source)] = rest[j];
    drops[size_t(2 * rest[j].source + 1)] = rest[j + 1];
  }
  for (int k = 0; k < K; ++k) {
    stats[size_t(k)].theta = score_from_key(Key(drops[size_t(2 * k)].key));
    stats[size_t(k)].top = score_from_key(Key(drops[size_t(2 * k + 1)].key));
  }

  // Pass 3: score, scale, mix, write; where the bound shows a score below its model's
  // threshold, nothing (pcb_skip.h; fp32 units).
  const U lam = U(cfg.lam);
  const std::vector<PcbSkip> skips = skip_plans(stats, [&](int k) { return stats[size_t(k)].theta; });
#pragma omp parallel for schedule(dynamic) if (nchunks > 1)
  for (int64_t i = 0; i < nchunks; ++i) {
    const Chunk& c = chunks[size_t(i)];
    with_storage_type<U>(ts[c.tensor].dtype,
                         [&](auto tag) { fused_chunk<decltype(tag), U>(ts[c.tensor], c, stats, skips, lam); });
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
