// CPU task-vector merges: candidate-window and radix selection, statistics and the fused pass.
#include "task_merge_kernels.h"

#include <omp.h>

#include "dare_draws.h"
#include "della_long.h"
#include "della_ranks.h"
#include "isa_clones.h"
#include "page_array.h"
#include "radix_select.h"
#include "window_tiles.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>


namespace m2n2::cpu {
namespace {

constexpr int64_t kChunk = int64_t(1) << 16;
constexpr int64_t kDellaChunk = int64_t(1) << 13;  // della's chunks: whole slabs, about this many elements
// della may stream the ranks of contiguous fibers at least this long (della_long.h,
// della_streams): about where streaming one fiber measured as fast as holding it whole.
constexpr int64_t kDellaLongFiber = int64_t(1) << 16;

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
  bool ties_known = false;  // tie_start already filled (by the candidate window)
  uint32_t dare_threshold = 0;  // random: keep iff draw < this (dare_draws.h)
  double scale = 1.0;
  std::vector<int64_t> tie_start;  // per chunk: ties at the threshold before it (partial ties only)
  // della: per position of the unit, the threshold of each rank within its rows
  // (dare_threshold of della_probability), formed once per call; empty where the
  // rows are streamed, which have their trees instead (per position, per row; the
  // unit's key width).
  std::vector<std::vector<uint32_t>> della_by_rank;
  std::vector<std::vector<DellaLongFiber<uint32_t>>> della_long32;
  std::vector<std::vector<DellaLongFiber<uint64_t>>> della_long64;

  bool selects() const { return !keep_all && !keep_none; }  // keeps some elements but not all
};

template <class Key>
std::vector<std::vector<DellaLongFiber<Key>>>& long_fibers(ModelPlan& p) {
  if constexpr (sizeof(Key) == 8) {
    return p.della_long64;
  } else {
    return p.della_long32;
  }
}
template <class Key>
const std::vector<std::vector<DellaLongFiber<Key>>>& long_fibers(const ModelPlan& p) {
  return long_fibers<Key>(const_cast<ModelPlan&>(p));
}

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

// The |d| a key of the unit's width stands for.
template <class Key>
double key_value(uint64_t key) {
  if constexpr (sizeof(Key) == 8) {
    return bits_double(key);
  } else {
    return double(bits_float(uint32_t(key)));
  }
}

// A threshold whose ties are kept lowest index first while their rank (counted in
// index order across the unit) is below `need`. How a tile stands against it: every
// tie in it kept, none, or the count passes `need` inside it (then element by element,
// with in_top). For all and none, `rank` moves past the tile's ties.
enum class TieRun : int { kAll, kNone, kSplit };

// The keys equal to `threshold` among keys[0, len) (a tile). Per ISA, and in 32
// bits: compiled for baseline x86-64 with a 64-bit count, this loop was 5% of bf16
// TIES (its thresholds tie, so every tile counts).
template <class Key>
M2N2_HD int count_ties(const Key* keys, int64_t len, Key threshold) {
  int ties = 0;
#pragma omp simd reduction(+ : ties)
  for (int64_t j = 0; j < len; ++j) ties += keys[j] == threshold ? 1 : 0;
  return ties;
}
M2N2_CLONES int count_ties_k(const uint32_t* keys, int64_t len, uint32_t threshold) {
  return count_ties(keys, len, threshold);
}
M2N2_CLONES int count_ties_k(const uint64_t* keys, int64_t len, uint64_t threshold) {
  return count_ties(keys, len, threshold);
}

template <class Key>
TieRun tie_run(const Key* keys, int64_t len, Key threshold, int64_t& rank, int64_t need) {
  const int64_t ties = count_ties_k(keys, len, threshold);
  if (rank < need && rank + ties > need) return TieRun::kSplit;
  const TieRun run = rank >= need ? TieRun::kNone : TieRun::kAll;
  rank += ties;
  return run;
}

// Whether a key is among the largest kept (the element-by-element form of a split tile).
template <class Key>
bool in_top(Key key, Key threshold, int64_t& rank, int64_t need) {
  return key > threshold || (key == threshold && rank++ < need);
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

// The DARE draws of elements i0 .. i0 + len - 1 of one model's stream against the
// threshold thr (dare_draws.h: draw < thr iff the element is kept), the portable loop
// compiled per ISA.
M2N2_CLONES void draws_tile_generic(uint64_t seed, uint64_t stream, uint64_t i0, int64_t len, uint32_t thr,
                                    uint32_t* draws) {
  draws_tile_portable(seed, stream, i0, len, thr, draws);
}

void draws_tile(uint64_t seed, uint64_t stream, uint64_t i0, int64_t len, uint32_t thr, uint32_t* draws) {
#if M2N2_AVX512_DRAWS
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  if (avx512) {
    draws_tile_avx512(seed, stream, i0, len, thr, draws);
    return;
  }
#endif
  draws_tile_generic(seed, stream, i0, len, thr, draws);
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

// magnitude_outliers' statistics over a tile: sum |d|, the sum of |d| over lo <= key <
// hi (the keys strictly inside the band's two thresholds) and the keys equal to each
// threshold (te, ts; ~0, which no key is, where a threshold is not selected); fp64.
template <class T, class Key>
M2N2_HD void band_stats_tile(const T* m, const compute_t<T>* b, int64_t len, Key lo, Key hi, Key te, Key ts,
                             double* abs_sum, double* kept_sum, int64_t* ties_e, int64_t* ties_s) {
  double a = 0.0, kept = 0.0;
  int64_t e = 0, s = 0;
#pragma omp simd reduction(+ : a, kept, e, s)
  for (int64_t j = 0; j < len; ++j) {
    const auto d = to_compute(m[j]) - b[j];
    const double ad = std::fabs(double(d));
    const Key key = key_of<Key>(d);
    a += ad;
    kept += key >= lo && key < hi ? ad : 0.0;
    e += key == te ? 1 : 0;
    s += key == ts ? 1 : 0;
  }
  *abs_sum += a;
  *kept_sum += kept;
  *ties_e += e;
  *ties_s += s;
}

// (to_compute_tile_k of fp32 and fp64 is unused: base_tile reads those in place.)
#define M2N2_DEFINE_PASS_TILES(T)                                                                             \
  [[maybe_unused]] M2N2_CLONES void to_compute_tile_k(const T* x, int64_t len, compute_t<T>* out) {           \
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
  }                                                                                                           \
  M2N2_CLONES void band_stats_tile_k(const T* m, const compute_t<T>* b, int64_t len, uint32_t lo, uint32_t hi, \
                                     uint32_t te, uint32_t ts, double* abs_sum, double* kept_sum,             \
                                     int64_t* ties_e, int64_t* ties_s) {                                      \
    band_stats_tile<T, uint32_t>(m, b, len, lo, hi, te, ts, abs_sum, kept_sum, ties_e, ties_s);               \
  }                                                                                                           \
  M2N2_CLONES void band_stats_tile_k(const T* m, const compute_t<T>* b, int64_t len, uint64_t lo, uint64_t hi, \
                                     uint64_t te, uint64_t ts, double* abs_sum, double* kept_sum,             \
                                     int64_t* ties_e, int64_t* ties_s) {                                      \
    band_stats_tile<T, uint64_t>(m, b, len, lo, hi, te, ts, abs_sum, kept_sum, ties_e, ties_s);               \
  }

M2N2_DEFINE_PASS_TILES(float)
M2N2_DEFINE_PASS_TILES(double)
M2N2_DEFINE_PASS_TILES(bf16_t)
M2N2_DEFINE_PASS_TILES(half_t)
#undef M2N2_DEFINE_PASS_TILES

// The base of a tile in the compute type: the storage itself where they are the same
// type (fp32, fp64), else converted into `buf`.
template <class T>
const compute_t<T>* base_tile(const T* base, int64_t len, compute_t<T>* buf) {
  if constexpr (std::is_same_v<T, compute_t<T>>) {
    return base;
  } else {
    to_compute_tile_k(base, len, buf);
    return buf;
  }
}

// ---- della: keep decisions from each element's rank in its fiber -------------------

template <class Key>
struct DellaScratch {
  DellaFiber fiber;
  std::vector<Key> keys;       // one fiber's
  std::vector<uint32_t> high;  // the chunk's draws (high halves)
  std::vector<uint32_t> fiber_high, fiber_keep;  // one strided fiber's, gathered
};

// Model k's DELLA decisions over chunk c (whole slabs of its tensor), as draws against
// the threshold 1: keep[e] = 0 where the chunk's element e is kept (u24 <
// dare_threshold(della_probability(rho, eps, B, r)), r its ascending magnitude rank in
// its fiber, ties lowest index first; the plan's thresholds by rank), else 1.
template <class T, class Key>
void della_keeps(const TaskTensor& t, const Chunk& c, int k, const ModelPlan& plan, uint64_t seed,
                 DellaScratch<Key>& s, uint32_t* keep) {
  using Cm = compute_t<T>;
  const T* m = model_ptr<T>(t, k);
  const T* base = static_cast<const T*>(t.base);
  const int64_t B = t.fiber, C = t.fiber_stride, slab = B * C, len = c.end - c.begin;
  const uint64_t stream = kDareStream + uint64_t(k);
  alignas(64) Cm b_buf[kTile];
  const auto& streamed = long_fibers<Key>(plan);
  if (!streamed.empty() && !streamed[size_t(c.tensor)].empty()) {
    // A streamed fiber (C = 1): its tree decides tile by tile.
    const DellaLongFiber<Key>& tree = streamed[size_t(c.tensor)][size_t(c.begin / B)];
    const int64_t j0 = c.begin % B;
    alignas(64) Key tile_keys[kTile];
    alignas(64) uint32_t tile_high[kTile];
    for (int64_t t0 = 0; t0 < len; t0 += kTile) {
      const int64_t n = std::min(kTile, len - t0);
      keys_tile_k(m + c.begin + t0, base_tile<T>(base + c.begin + t0, n, b_buf), n, tile_keys);
      draws_tile(seed, stream, uint64_t(c.flat + t0), n, 1u << 24, tile_high);
      tree.decide(tile_keys, tile_high, j0 + t0, n,
                  [&](int64_t j) { return dare_low8(seed, stream, uint64_t(c.flat + t0 + j)); }, keep + t0);
    }
    return;
  }
  const uint32_t* by_rank = plan.della_by_rank[size_t(c.tensor)].data();
  const int octaves = DellaFiber::octaves_for(int(sizeof(T)));
  s.keys.resize(size_t(B));
  s.high.resize(size_t(len));
  // The high halves of the chunk's draws (hi16 << 8: no tie with 2^24's).
  uint32_t* high = s.high.data();
  for (int64_t t0 = 0; t0 < len; t0 += kDrawTile) {
    draws_tile(seed, stream, uint64_t(c.flat + t0), std::min(kDrawTile, len - t0), 1u << 24, high + t0);
  }
  Key* keys = s.keys.data();
  if (C > 1) {
    s.fiber_high.resize(size_t(B));
    s.fiber_keep.resize(size_t(B));
  }
  for (int64_t s0 = c.begin; s0 < c.end; s0 += slab) {
    for (int64_t f = 0; f < C; ++f) {
      const int64_t first = s0 + f, o = first - c.begin;
      auto low8 = [&](int64_t j) { return dare_low8(seed, stream, uint64_t(c.flat + o + j * C)); };
      if (C == 1) {
        for (int64_t j0 = 0; j0 < B; j0 += kTile) {
          const int64_t n = std::min(kTile, B - j0);
          keys_tile_k(m + first + j0, base_tile<T>(base + first + j0, n, b_buf), n, keys + j0);
        }
        s.fiber.decide(keys, B, high + o, by_rank, low8, keep + o, octaves);
        continue;
      }
      uint32_t* fh = s.fiber_high.data();
      uint32_t* fk = s.fiber_keep.data();
      for (int64_t j = 0; j < B; ++j) {
        const int64_t e = first + j * C;
        keys[j] = key_of<Key>(to_compute(m[e]) - to_compute(base[e]));
        fh[j] = high[o + j * C];
      }
      s.fiber.decide(keys, B, fh, by_rank, low8, fk, octaves);
      for (int64_t j = 0; j < B; ++j) keep[o + j * C] = fk[j];
    }
  }
}

// The decisions of every model that keeps some but not all of the unit, K x (chunk
// length), model-major (empty where the call is not della).
template <class T, class Key>
std::vector<uint32_t> della_chunk_keeps(const TaskTensor& t, const Chunk& c, const std::vector<ModelPlan>& plans,
                                        const TaskMergeConfig& cfg) {
  std::vector<uint32_t> keep;
  if (cfg.sparsify != Sparsify::kDella) return keep;
  const int64_t len = c.end - c.begin;
  keep.resize(plans.size() * size_t(len));
  DellaScratch<Key> scratch;
  for (size_t k = 0; k < plans.size(); ++k) {
    if (!plans[k].selects()) continue;
    della_keeps<T, Key>(t, c, int(k), plans[k], cfg.seed, scratch, keep.data() + k * size_t(len));
  }
  return keep;
}

// ---- della on long fibers: the trees' passes ---------------------------------------

// M2N2_DELLA_LONG_FIBER=n: della streams every contiguous fiber of at least n
// elements (tests set it low to run the streamed kernel on small tensors); 0 where
// unset (the choice below).
int64_t della_long_fiber() {
  const char* v = std::getenv("M2N2_DELLA_LONG_FIBER");
  if (v == nullptr || *v == '\0') return 0;
  char* end = nullptr;
  const long long n = std::strtoll(v, &end, 10);
  if (*end != '\0' || n < 2) throw std::invalid_argument("M2N2_DELLA_LONG_FIBER must be a number of elements >= 2");
  return int64_t(n);
}

// Whether della streams the fibers of tensor t (della_long.h): contiguous (C = 1),
// indexable in 32 bits, and at least `forced` long where forced > 0; else at least
// kDellaLongFiber long and where the trees (about 3 levels of level_budget 16-byte
// buckets per fiber and model) take less than the fibers held whole (some
// 32 bytes per element, one fiber per thread): one long row or a few, not a
// tensor of many (those run in parallel over their rows).
bool della_streams(const TaskTensor& t, int64_t forced, int models, int threads) {
  if (t.fiber_stride != 1 || t.fiber < 2 || t.fiber >= (int64_t(1) << 32)) return false;
  if (forced > 0) return t.fiber >= forced;
  if (t.fiber < kDellaLongFiber) return false;
  const double rows = double(t.numel / t.fiber);
  const double trees = rows * models * 3.0 * 16.0 *
                       double(DellaLongFiber<uint32_t>::level_budget(t.fiber));
  const double whole = std::min(rows, double(threads)) * 32.0 * double(t.fiber);
  return trees < whole;
}

// One pass of the streamed fibers' trees over chunk c (within one fiber): trees[k]
// model k's tree of that fiber (null where the model keeps all or none, or its tree
// is built), sums[k] this thread's sums for it, opened[k] its open count.
template <class T, class Key>
void della_long_chunk(const TaskTensor& t, const Chunk& c, uint64_t seed, DellaLongFiber<Key>* const* trees,
                      typename DellaLongFiber<Key>::Sums* const* sums, std::atomic<int64_t>* const* opened) {
  using Step = typename DellaLongFiber<Key>::Step;
  const T* base = static_cast<const T*>(t.base);
  const int K = int(t.models.size());
  const int64_t j0 = c.begin % t.fiber;
  alignas(64) compute_t<T> b_buf[kTile];
  alignas(64) Key keys[kTile];
  alignas(64) uint32_t high[kTile];
  for (int64_t t0 = c.begin; t0 < c.end; t0 += kTile) {
    const int64_t len = std::min(kTile, c.end - t0), j = j0 + (t0 - c.begin);
    const compute_t<T>* b = base_tile<T>(base + t0, len, b_buf);
    for (int k = 0; k < K; ++k) {
      DellaLongFiber<Key>* tree = trees[k];
      if (tree == nullptr) continue;
      auto& s = *sums[k];
      if (!s.used) tree->prepare(s);
      keys_tile_k(model_ptr<T>(t, k) + t0, b, len, keys);
      switch (tree->step()) {
        case Step::kHistogram: tree->histogram(keys, j, len, s); break;
        case Step::kMark:
          draws_tile(seed, kDareStream + uint64_t(k), uint64_t(c.flat + (t0 - c.begin)), len, 1u << 24, high);
          tree->mark(keys, high, j, len, s, *opened[k]);
          break;
        case Step::kCount: tree->count(keys, j, len, s); break;
        default: break;
      }
    }
  }
}

// Builds the trees of every streamed fiber of the unit (positions where
// streams[p]), a pass at a time over their chunks, all models in each pass.
template <class Key>
void della_long_build(const std::vector<TaskTensor>& ts, const std::vector<Chunk>& chunks,
                      const std::vector<char>& streams, std::vector<ModelPlan>& plans, const TaskMergeConfig& cfg) {
  using Tree = DellaLongFiber<Key>;
  const int K = int(plans.size());
  // Trees are numbered fiber-major: (the fiber's number among the unit's streamed
  // fibers) * K + k.
  std::vector<int64_t> first_fiber(ts.size(), 0), unit_offset(ts.size(), 0);
  int64_t fibers = 0, offset = 0;
  for (size_t p = 0; p < ts.size(); ++p) {
    first_fiber[p] = fibers;
    unit_offset[p] = offset;
    offset += ts[p].numel;
    if (streams[p]) fibers += ts[p].numel / ts[p].fiber;
  }
  if (fibers == 0) return;
  std::vector<Tree*> trees(size_t(fibers * K), nullptr);
  std::vector<int64_t> tree_flat(trees.size(), 0);  // the unit index of the fiber's first element
  for (int k = 0; k < K; ++k) {
    ModelPlan& plan = plans[size_t(k)];
    if (!plan.selects()) continue;
    auto& per_position = long_fibers<Key>(plan);
    per_position.resize(ts.size());
    for (size_t p = 0; p < ts.size(); ++p) {
      if (!streams[p]) continue;
      const int64_t B = ts[p].fiber, rows = ts[p].numel / B;
      per_position[p].resize(size_t(rows));
      for (int64_t r = 0; r < rows; ++r) {
        Tree& tree = per_position[p][size_t(r)];
        tree.start(B, cfg.density[size_t(k)], cfg.epsilon[size_t(k)]);
        const size_t id = size_t((first_fiber[p] + r) * K + k);
        trees[id] = &tree;
        tree_flat[id] = unit_offset[p] + r * B;
      }
    }
  }
  std::vector<int64_t> work;  // the chunks of streamed fibers
  for (int64_t i = 0; i < int64_t(chunks.size()); ++i) {
    if (streams[size_t(chunks[size_t(i)].tensor)]) work.push_back(i);
  }
  const int threads = omp_get_max_threads();
  std::vector<std::vector<typename Tree::Sums>> sums(size_t(threads), std::vector<typename Tree::Sums>(trees.size()));
  std::unique_ptr<std::atomic<int64_t>[]> opened(new std::atomic<int64_t>[trees.size()]);
  for (;;) {
    bool active = false;
    for (size_t id = 0; id < trees.size(); ++id) {
      active |= trees[id] != nullptr && trees[id]->step() != Tree::Step::kDone;
      opened[id].store(0);
      for (auto& per_thread : sums) per_thread[id].used = false;
    }
    if (!active) break;
#pragma omp parallel for schedule(dynamic) if (work.size() > 1)
    for (int64_t w = 0; w < int64_t(work.size()); ++w) {
      const Chunk& c = chunks[size_t(work[size_t(w)])];
      const TaskTensor& t = ts[size_t(c.tensor)];
      const size_t first = size_t((first_fiber[size_t(c.tensor)] + c.begin / t.fiber) * K);
      Tree* row[kMaxModels];
      typename Tree::Sums* row_sums[kMaxModels];
      std::atomic<int64_t>* row_opened[kMaxModels];
      bool any = false;
      for (int k = 0; k < K; ++k) {
        Tree* tree = trees[first + size_t(k)];
        row[k] = tree != nullptr && tree->step() != Tree::Step::kDone ? tree : nullptr;
        row_sums[k] = &sums[size_t(omp_get_thread_num())][first + size_t(k)];
        row_opened[k] = &opened[first + size_t(k)];
        any |= row[k] != nullptr;
      }
      if (!any) continue;
      with_storage_type(t.dtype, [&](auto tag) {
        della_long_chunk<decltype(tag), Key>(t, c, cfg.seed, row, row_sums, row_opened);
      });
    }
    for (size_t id = 0; id < trees.size(); ++id) {
      Tree* tree = trees[id];
      if (tree == nullptr || tree->step() == Tree::Step::kDone) continue;
      std::vector<const typename Tree::Sums*> used;
      for (auto& per_thread : sums) {
        if (per_thread[id].used) used.push_back(&per_thread[id]);
      }
      const uint64_t stream = kDareStream + uint64_t(id % size_t(K));
      const int64_t flat = tree_flat[id];
      tree->advance(used, [&](uint32_t j) { return dare_low8(cfg.seed, stream, uint64_t(flat + int64_t(j))); });
    }
  }
}

// The draws of model k over a tile, compared with p.dare_threshold by the passes:
// DARE's, or della's decisions (della: its model's, from the tile's first element).
const uint32_t* model_draws_tile(const TaskMergeConfig& cfg, const ModelPlan& p, int k, uint64_t i0, int64_t len,
                                 const uint32_t* della, uint32_t* draws) {
  if (cfg.sparsify == Sparsify::kDella) return della;
  draws_tile(cfg.seed, kDareStream + uint64_t(k), i0, len, p.dare_threshold, draws);
  return draws;
}

// ---- radix selection (radix_select.h) ---------------------------------------------

// The magnitude keys of the listed models over one chunk, tile by tile.
template <class T, class Key, class Sink>
void magnitude_keys_chunk(const TaskTensor& t, const Chunk& c, const std::vector<int>& models, Sink&& sink) {
  const T* base = static_cast<const T*>(t.base);
  alignas(64) compute_t<T> b_buf[kTile];
  alignas(64) Key keys[kTile];
  for (int64_t t0 = c.begin; t0 < c.end; t0 += kTile) {
    const int64_t len = std::min(kTile, c.end - t0);
    const compute_t<T>* b = base_tile<T>(base + t0, len, b_buf);
    for (size_t a = 0; a < models.size(); ++a) {
      keys_tile_k(model_ptr<T>(t, models[a]) + t0, b, len, keys);
      sink(int(a), keys, len);
    }
  }
}

// Each partly keeping model's threshold: the key of its keep-th largest |d| (ascending
// rank n - keep), how many of the ties at it to keep (lowest index first) and whether
// that is fewer than all of them. Count and budget (bytes) as in radix_select.
template <class Key, class Count>
void select_thresholds(const std::vector<TaskTensor>& ts, const std::vector<Chunk>& chunks,
                       std::vector<ModelPlan>& plans, const std::vector<int64_t>& keep, int64_t n,
                       const std::vector<char>& selected, uint64_t budget) {
  std::vector<RadixTarget> targets;
  for (int k = 0; k < int(plans.size()); ++k) {
    if (!plans[k].selects() || selected[size_t(k)]) continue;
    RadixTarget target;
    target.source = k;
    target.rank = n - keep[k];
    targets.push_back(target);
  }
  const std::vector<int64_t> model_keys(plans.size(), n);  // a small unit's: collected at once
  radix_select<Key, Count>(int64_t(chunks.size()), targets, [&](int64_t i, const std::vector<int>& models, auto&& sink) {
    const Chunk& c = chunks[size_t(i)];
    const TaskTensor& t = ts[c.tensor];
    with_storage_type(t.dtype, [&](auto tag) { magnitude_keys_chunk<decltype(tag), Key>(t, c, models, sink); });
  }, n <= kRadixCollectAtOnceMax ? &model_keys : nullptr, budget);
  for (const RadixTarget& target : targets) {
    ModelPlan& p = plans[size_t(target.source)];
    const int64_t above = n - target.below - target.equal;
    p.threshold = target.key;
    p.need = keep[size_t(target.source)] - above;
    p.partial_ties = p.need < target.equal;
  }
}

// ---- candidate-window selection ----------------------------------------------------
//
// The radix passes scatter every key into a 2^16-bin histogram (about 1 ns a key, the
// cost of TIES on CPU). Instead, a small deterministic sample of each model's keys
// estimates its k-th largest key and a window [lo, hi] around it, kSampleSigmas
// standard deviations of the sample quantile wide on either side; ONE pass over the
// unit (all models) then counts, per chunk, the keys > hi, == hi and == lo with
// vectorised compares and copies the few keys strictly inside (lo, hi) into
// per-thread candidate buffers, in chunk order. The exact threshold follows from the
// counts or from radix selection over the candidates only (radix_select.h on each
// chunk's candidate segment: ~1% of the keys, left in place), and the per-chunk ties
// at it (the lowest-index-first rule) from the per-chunk counts or the candidates'
// chunk segments, so the statistics pass is not needed for the ties. A model whose
// window misses its k-th key (or whose candidates overflow the cap) falls back to the
// radix passes over all keys: the threshold is exact either way, so the result is the
// same; only the time differs. Keys equal to lo or hi are counted rather than stored,
// so a heavily tied value (bf16 deltas) at an end of the window costs no memory.
// Passes over the inputs: the sample's fraction + 1, against 2 radix passes (+ 1
// statistics pass for partly kept ties) before. Memory, within the call's budget
// (TaskMergeConfig::memory_budget): the sample is stored where it takes at most half
// of it, else its keys are recomputed from the inputs in each pass of its selection;
// the candidates of all models take at most kWindowBudgetShare of it, their own
// selection the rest.

// Smaller units: radix (the sample, n / 16 keys, would be a large part). 2^18 rather
// than 2^21 since the window pass reads a tile in one AVX-512 loop: the scale-4
// benchmark's 1024 x 1024 units then take the window too (TIES there, interleaved:
// fp32 ~66 -> ~50 ms, bf16 ~65 -> ~34 ms); 2^16 measured no better than 2^18.
constexpr int64_t kWindowMinN = int64_t(1) << 18;
// The window's width in ranks is ~ 2 kSampleSigmas sqrt(q (1 - q) / m) n for a sample
// of m keys: 2^19 keys (3% of a 4096 x 4096 unit, n / 16 at most) keep it near 0.45%
// of n for q = 0.8, so that K = 3 models' candidates stay under the memory cap below
// even for 2-byte inputs in units of 2^24 elements and more. kSampleSigmas = 4: an
// i.i.d. unit misses with probability ~6e-5 per model (then radix, same result). A
// block's keys are neighbours in one row: where neighbours' magnitudes go together,
// the sample is worth fewer independent keys and the window misses more often (the
// same result again, only slower).
constexpr int64_t kSampleBlock = 32;                // elements per sample block: 1, 2 or 4 cache lines (2-, 4-, 8-byte)
constexpr int64_t kSampleKeys = int64_t(1) << 19;   // sampled keys per model, at most
constexpr double kSampleSigmas = 4.0;
// The candidates' share of the call's memory budget: the rest is left to their own
// selection (radix_select over them: histograms, or the candidates collected once).
constexpr double kWindowBudgetShare = 0.75;


// The window pass over one tile of one model (window_tiles.h): the portable loops
// compiled per ISA, or the AVX-512 loop for 32-bit keys of fp32 and bf16 storage.
static_assert(kTile <= kWindowTile, "window_tile takes at most kWindowTile elements a call");

#define M2N2_DEFINE_WINDOW_TILES(T)                                                                         \
  M2N2_CLONES int window_tile_k(const T* m, const compute_t<T>* b, int64_t len, uint32_t lo, uint32_t hi,    \
                                uint32_t* inside, WindowTileCounts* counts) {                               \
    return window_tile_portable<T, uint32_t>(m, b, len, lo, hi, inside, counts);                            \
  }                                                                                                         \
  M2N2_CLONES int window_tile_k(const T* m, const compute_t<T>* b, int64_t len, uint64_t lo, uint64_t hi,    \
                                uint64_t* inside, WindowTileCounts* counts) {                               \
    return window_tile_portable<T, uint64_t>(m, b, len, lo, hi, inside, counts);                            \
  }
M2N2_DEFINE_WINDOW_TILES(float)
M2N2_DEFINE_WINDOW_TILES(double)
M2N2_DEFINE_WINDOW_TILES(bf16_t)
M2N2_DEFINE_WINDOW_TILES(half_t)
#undef M2N2_DEFINE_WINDOW_TILES

template <class T, class Key>
int window_tile(const T* m, const compute_t<T>* b, int64_t len, Key lo, Key hi, Key* inside,
                WindowTileCounts* counts) {
#if M2N2_AVX512_LOOPS
  if constexpr (sizeof(Key) == 4 && (std::is_same_v<T, float> || std::is_same_v<T, bf16_t>)) {
    if (cpu_has_avx512_loops()) return window_tile_avx512<T>(m, b, len, lo, hi, inside, counts);
  }
#endif
  return window_tile_k(m, b, len, lo, hi, inside, counts);
}

// One model's window and candidate buffer (per thread: cap_per_thread keys each).
template <class Key>
struct ModelWindow {
  int model = 0;
  Key lo = 0, hi = 0;
  int64_t cap_per_thread = 0;
  PageArray<Key> buf;  // threads x cap_per_thread, mapped (page_array.h): only the pages written count
};

// Per (chunk, window) counts of the candidate pass.
struct WindowCounts {
  int64_t gt_hi = 0, eq_hi = 0, eq_lo = 0, mid = 0;
  int64_t start = 0;  // where the chunk's candidates start in its thread's buffer
  int thread = 0;
};

// The sample: kSampleKeys / kSampleBlock blocks of contiguous elements (n / 16 keys
// at most), block j starting at the multiple of kSampleBlock just below (j + 1/2) n /
// blocks - kSampleBlock / 2, so that its lines are whole (a block is cut at its
// chunk's end). Each block follows from j alone (never stored), so the blocks are read
// in parallel and the sample (a multiset of keys) does not depend on the threads.
struct SampleBlock {
  int64_t tensor, i0, i1;  // elements [i0, i1) of position `tensor`
};

inline int64_t sample_block_count(int64_t n) { return std::min(kSampleKeys, n / 16) / kSampleBlock; }

inline SampleBlock sample_block(const std::vector<Chunk>& chunks, int64_t n, int64_t blocks, int64_t j) {
  const int64_t centre = int64_t((double(j) + 0.5) * double(n) / double(blocks));
  const int64_t aligned = (centre - kSampleBlock / 2) / kSampleBlock * kSampleBlock;
  const int64_t start = std::clamp<int64_t>(aligned, 0, n - kSampleBlock);
  // The last chunk starting at or before `start` (chunks ascend in flat index).
  const auto after = std::upper_bound(chunks.begin(), chunks.end(), start,
                                      [](int64_t i, const Chunk& c) { return i < c.flat; });
  const Chunk& c = *(after - 1);
  const int64_t i0 = c.begin + (start - c.flat);
  return {c.tensor, i0, std::min(c.end, i0 + kSampleBlock)};
}

// Model k's sample keys of blocks [j0, j1) of `blocks`, handed to sink(0, keys,
// count) a block at a time. A block is whole cache lines of the model and of the
// base, so the read costs the lines the blocks touch, not the keys they hold.
//
// The blocks lie far apart, where the hardware prefetchers do not follow, so each
// block's lines were a wait on memory (TIES' sample, recomputed in each pass of its
// selection, cost as much as the window pass): the lines of the block
// kSamplePrefetch on are prefetched.
constexpr int64_t kSamplePrefetch = 8;

// Always inlined: GCC finds a function whose only effect is prefetches pure, and drops
// the calls.
[[gnu::always_inline]] inline void sample_block_prefetch(const std::vector<TaskTensor>& ts, const SampleBlock& blk, int k) {
  const TaskTensor& t = ts[size_t(blk.tensor)];
  const int64_t size = dtype_bytes(t.dtype);
  const char* base = static_cast<const char*>(t.base) + blk.i0 * size;
  const char* mk = static_cast<const char*>(t.models[size_t(k)]) + blk.i0 * size;
  for (int64_t b = 0; b < (blk.i1 - blk.i0) * size; b += 64) {
    __builtin_prefetch(base + b);
    __builtin_prefetch(mk + b);
  }
}

template <class Key, class Sink>
void sample_block_keys(const std::vector<TaskTensor>& ts, const std::vector<Chunk>& chunks, int64_t n,
                       int64_t blocks, int k, int64_t j0, int64_t j1, Sink&& sink) {
  alignas(64) Key keys[kSampleBlock];
  for (int64_t j = j0; j < std::min(j1, j0 + kSamplePrefetch); ++j) {
    sample_block_prefetch(ts, sample_block(chunks, n, blocks, j), k);
  }
  for (int64_t j = j0; j < j1; ++j) {
    if (j + kSamplePrefetch < j1) sample_block_prefetch(ts, sample_block(chunks, n, blocks, j + kSamplePrefetch), k);
    const SampleBlock blk = sample_block(chunks, n, blocks, j);
    const TaskTensor& t = ts[size_t(blk.tensor)];
    with_storage_type(t.dtype, [&](auto tag) {
      using T = decltype(tag);
      const T* base = static_cast<const T*>(t.base);
      const T* mk = model_ptr<T>(t, k);
      for (int64_t i = blk.i0; i < blk.i1; ++i) keys[i - blk.i0] = key_of<Key>(to_compute(mk[i]) - to_compute(base[i]));
    });
    sink(0, keys, blk.i1 - blk.i0);
  }
}

// The sample's layout: its blocks, cut into kSamplePieces pieces of consecutive
// blocks (read in parallel), and where each piece's keys start in the sample.
constexpr int64_t kSamplePieces = 64;

struct SampleLayout {
  int64_t blocks = 0;
  std::vector<int64_t> piece_at;  // kSamplePieces + 1: piece i's keys are [piece_at[i], piece_at[i + 1])

  int64_t keys() const { return piece_at.back(); }
  int64_t first_block(int64_t piece) const { return blocks * piece / kSamplePieces; }
};

inline SampleLayout sample_layout(const std::vector<Chunk>& chunks, int64_t n) {
  SampleLayout s;
  s.blocks = sample_block_count(n);
  s.piece_at.assign(size_t(kSamplePieces + 1), 0);
  for (int64_t i = 0; i < kSamplePieces; ++i) {
    int64_t keys = 0;
    for (int64_t j = s.first_block(i); j < s.first_block(i + 1); ++j) {
      const SampleBlock blk = sample_block(chunks, n, s.blocks, j);
      keys += blk.i1 - blk.i0;
    }
    s.piece_at[size_t(i + 1)] = s.piece_at[size_t(i)] + keys;
  }
  return s;
}

// Model k's window from its sample: the keys of ranks lo_i and hi_i (0 and ~0 where
// the rank lies outside it) and how many keys lie strictly between them, by radix
// selection over the sample in pieces (in parallel). The sample is stored where it
// takes at most half the budget (bytes), its selection then in the rest; else its
// keys are recomputed from the inputs in each pass of the selection (no storage: a
// few more reads of its blocks). The same multiset either way, so the same window.
// A stored sample lives on the heap, not in a PageArray: it is stored only in large
// calls (2 MiB per model at 2^19 keys), where a fresh mapping per model and unit
// faulted its pages in every time (Model Breadcrumbs ~5% slower on the 7B block);
// the heap hands the same pages on, and the budget has room for them.
template <class Key>
void sample_window(const std::vector<TaskTensor>& ts, const std::vector<Chunk>& chunks, int64_t n,
                   const SampleLayout& layout, int k, int64_t lo_i, int64_t hi_i, uint64_t budget, Key& lo, Key& hi,
                   int64_t& inside) {
  const int64_t m = layout.keys();
  std::vector<RadixTarget> targets(2);
  targets[0].rank = std::clamp<int64_t>(lo_i, 0, m - 1);
  targets[1].rank = std::clamp<int64_t>(hi_i, 0, m - 1);
  const auto piece_keys = [&](int64_t i, auto&& sink) {
    sample_block_keys<Key>(ts, chunks, n, layout.blocks, k, layout.first_block(i), layout.first_block(i + 1), sink);
  };
  const uint64_t sample_bytes = uint64_t(m) * sizeof(Key);
  if (sample_bytes <= budget / 2) {
    std::vector<Key> s(static_cast<size_t>(m));
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < kSamplePieces; ++i) {
      Key* dst = s.data() + layout.piece_at[size_t(i)];
      piece_keys(i, [&](int, const Key* keys, int64_t len) {
        std::memcpy(dst, keys, size_t(len) * sizeof(Key));
        dst += len;
      });
    }
    radix_select<Key, uint32_t>(kSamplePieces, targets, [&](int64_t i, const std::vector<int>&, auto&& sink) {
      const int64_t p0 = layout.piece_at[size_t(i)], p1 = layout.piece_at[size_t(i + 1)];
      if (p1 > p0) sink(0, s.data() + p0, p1 - p0);
    }, nullptr, budget - sample_bytes);
  } else {
    const std::vector<int64_t> sample_size{m};  // a small sample is collected at once, as the candidates
    radix_select<Key, uint32_t>(kSamplePieces, targets, [&](int64_t i, const std::vector<int>&, auto&& sink) {
      piece_keys(i, sink);
    }, &sample_size, budget);
  }
  const RadixTarget &l = targets[0], &h = targets[1];
  lo = lo_i >= 0 ? Key(l.key) : Key(0);
  hi = hi_i < m ? Key(h.key) : ~Key(0);
  // #(key < hi) - #(key <= lo); at the sample's ends the extreme target counts the
  // keys equal to 0 or to ~0.
  const int64_t below_hi = hi_i < m ? h.below : m - (Key(h.key) == hi ? h.equal : 0);
  const int64_t upto_lo = lo_i >= 0 ? l.below + l.equal : (Key(l.key) == lo ? l.equal : 0);
  inside = std::max<int64_t>(0, below_hi - upto_lo);
}

// The shared cap is taken in reservations of this many keys (or what a tile needs, if
// more) rather than tile by tile: one atomic count updated by both threads for each
// tile that stores keys made its cache line bounce between the cores (it was 45% of
// the pass's own time, outside the tile loop).
constexpr int64_t kWindowReserve = 4096;

// The window pass over chunk c, for every window. The thread's state (`used`,
// `overflow`: per window; `allowance`: keys of the cap reserved and not yet stored) is
// read at the start and written back at the end: counters of different threads may
// share cache lines, and a tile's updates must not make them bounce.
template <class T, class Key>
void window_chunk(const TaskTensor& t, const Chunk& c, std::vector<ModelWindow<Key>>& wins, int thread,
                  int64_t budget, std::atomic<int64_t>& total_reserved, int64_t* used_out, char* overflow_out,
                  int64_t* allowance_out, WindowCounts* counts_out) {
  const T* base = static_cast<const T*>(t.base);
  alignas(64) compute_t<T> b_buf[kTile];
  alignas(64) Key inside[kTile];
  const size_t A = wins.size();
  std::vector<WindowCounts> counts(A);
  std::vector<int64_t> used(used_out, used_out + A);
  std::vector<char> overflow(overflow_out, overflow_out + A);
  int64_t allowance = *allowance_out;
  for (size_t a = 0; a < A; ++a) {
    counts[a].start = used[a];
    counts[a].thread = thread;
  }
  // Reserves room for md more keys; false where the cap has none left.
  const auto reserve = [&](int64_t md) {
    if (allowance >= md) return true;
    for (const int64_t want : {std::max(md, kWindowReserve), md}) {
      if (total_reserved.fetch_add(want, std::memory_order_relaxed) + want <= budget) {
        allowance += want;
        return true;
      }
      total_reserved.fetch_sub(want, std::memory_order_relaxed);  // leave the room to others
    }
    return false;
  };
  for (int64_t t0 = c.begin; t0 < c.end; t0 += kTile) {
    const int64_t len = std::min(kTile, c.end - t0);
    const compute_t<T>* b = base_tile<T>(base + t0, len, b_buf);
    for (size_t a = 0; a < A; ++a) {
      ModelWindow<Key>& w = wins[a];
      WindowTileCounts tc;
      const int md = window_tile<T, Key>(model_ptr<T>(t, w.model) + t0, b, len, w.lo, w.hi, inside, &tc);
      WindowCounts& wc = counts[a];
      wc.gt_hi += tc.gt_hi;
      wc.eq_hi += tc.eq_hi;
      wc.eq_lo += tc.eq_lo;
      wc.mid += md;
      if (md == 0 || overflow[a]) continue;
      if (used[a] + md > w.cap_per_thread || !reserve(md)) {
        overflow[a] = 1;  // this model falls back to radix; its counts are then unused
        continue;
      }
      allowance -= md;
      std::memcpy(w.buf.get() + int64_t(thread) * w.cap_per_thread + used[a], inside, size_t(md) * sizeof(Key));
      used[a] += md;
    }
  }
  std::copy(counts.begin(), counts.end(), counts_out);
  std::copy(used.begin(), used.end(), used_out);
  std::copy(overflow.begin(), overflow.end(), overflow_out);
  *allowance_out = allowance;
}

// Selects the thresholds of the partly keeping models by candidate windows where it
// can; marks them in `selected` (the rest go to radix). Fills tie_start where a
// model keeps part of its ties.
template <class Key>
void select_thresholds_window(const std::vector<TaskTensor>& ts, const std::vector<Chunk>& chunks,
                              std::vector<ModelPlan>& plans, const std::vector<int64_t>& keep, int64_t n,
                              uint64_t memory_budget, std::vector<char>& selected) {
  if (n < kWindowMinN) return;
  const int threads = omp_get_max_threads();
  const int64_t nchunks = int64_t(chunks.size());
  // The cap on the candidates of all models and threads together (one atomic count of
  // reservations, so that a thread whose chunks hold more of the window than others
  // may use the room they leave): kWindowBudgetShare of the call's budget. Each model's buffer is
  // reserved per thread for twice its expected candidates, mapped (page_array.h): only
  // the pages written count, and this cap bounds them.
  const int64_t budget = int64_t(std::min(kWindowBudgetShare * double(memory_budget), 0x1p60)) / int64_t(sizeof(Key));

  const SampleLayout layout = sample_layout(chunks, n);
  const int64_t m = layout.keys();  // keys per model's sample
  int64_t budget_left = budget;
  std::vector<ModelWindow<Key>> wins;
  for (int k = 0; k < int(plans.size()); ++k) {
    const ModelPlan& p = plans[k];
    if (!p.selects()) continue;
    const double q = double(n - keep[k]) / double(n);  // ascending rank of the k-th largest, as a fraction
    const double margin = kSampleSigmas * std::sqrt(double(m) * q * (1.0 - q)) + 2.0;
    const int64_t lo_i = int64_t(std::floor(q * double(m) - margin));
    const int64_t hi_i = int64_t(std::ceil(q * double(m) + margin));
    ModelWindow<Key> w;
    w.model = k;
    // The sample's share strictly inside (lo, hi): what the pass will store (keys equal
    // to lo or hi are only counted, which matters where 2-byte deltas tie heavily).
    int64_t inside = 0;
    sample_window<Key>(ts, chunks, n, layout, k, lo_i, hi_i, memory_budget, w.lo, w.hi, inside);
    const double expect = double(inside) / double(m);
    // Expected candidates beyond what is left of the cap: this model's window would
    // likely overflow and waste its share of the pass; radix selects it instead.
    const int64_t expected = int64_t(1.1 * expect * double(n));
    if (expected > budget_left) continue;
    budget_left -= expected;
    w.cap_per_thread = std::min(budget, int64_t(2.0 * expect * double(n))) + 2 * kTile;
    w.buf.reset(size_t(w.cap_per_thread * threads));
    wins.push_back(std::move(w));
  }
  if (wins.empty()) return;
  const size_t A = wins.size();

  std::vector<WindowCounts> counts(size_t(nchunks) * A);
  std::vector<int64_t> used(size_t(threads) * A, 0);
  std::atomic<int64_t> total_reserved{0};
  std::vector<char> overflow(size_t(threads) * A, 0);
  std::vector<int64_t> allowance(size_t(threads), 0);
#pragma omp parallel for schedule(dynamic) if (nchunks > 1)
  for (int64_t i = 0; i < nchunks; ++i) {
    const int th = omp_get_thread_num();
    const Chunk& c = chunks[size_t(i)];
    const TaskTensor& t = ts[size_t(c.tensor)];
    with_storage_type(t.dtype, [&](auto tag) {
      window_chunk<decltype(tag), Key>(t, c, wins, th, budget, total_reserved, used.data() + size_t(th) * A,
                                       overflow.data() + size_t(th) * A, allowance.data() + th,
                                       counts.data() + size_t(i) * A);
    });
  }

  // Where each model's kk-th largest key lies: above the window (missed), at hi,
  // strictly inside, at lo, or below it (missed).
  enum Where : int { kMiss, kHi, kMid, kLo };
  std::vector<Where> where(A, kMiss);
  std::vector<int64_t> above_window(A, 0);  // keys > hi, plus those == hi when inside
  std::vector<RadixTarget> targets;          // source: index into wins
  for (size_t a = 0; a < A; ++a) {
    const ModelWindow<Key>& w = wins[a];
    ModelPlan& p = plans[size_t(w.model)];
    bool over = false;
    for (int th = 0; th < threads; ++th) over |= overflow[size_t(th) * A + a] != 0;
    if (over) continue;
    int64_t gt = 0, eh = 0, el = 0, md = 0;
    for (int64_t i = 0; i < nchunks; ++i) {
      const WindowCounts& wc = counts[size_t(i) * A + a];
      gt += wc.gt_hi;
      eh += wc.eq_hi;
      el += wc.eq_lo;
      md += wc.mid;
    }
    if (w.lo == w.hi) el = 0;  // the same keys as eq_hi
    const int64_t kk = keep[size_t(w.model)];
    if (kk <= gt) continue;
    if (kk <= gt + eh) {
      where[a] = kHi;
      p.threshold = w.hi;
      p.need = kk - gt;
      p.partial_ties = p.need < eh;
    } else if (kk <= gt + eh + md) {
      where[a] = kMid;
      above_window[a] = gt + eh;
      RadixTarget target;
      target.source = int(a);
      target.rank = md - (kk - gt - eh);  // ascending, among the candidates
      targets.push_back(target);
    } else if (kk <= gt + eh + md + el) {
      where[a] = kLo;
      p.threshold = w.lo;
      p.need = kk - (gt + eh + md);
      p.partial_ties = p.need < el;
    }
  }
  // The candidates' exact order statistics: radix selection over the candidates only
  // (~1% of the keys), each chunk's segment in place (their chunk order is kept for
  // the ties below), in what the candidates leave of the budget.
  if (!targets.empty()) {
    int64_t stored_keys = 0;
    for (const int64_t u : used) stored_keys += u;
    const uint64_t stored = uint64_t(stored_keys) * sizeof(Key);
    std::vector<int64_t> candidates(A, 0);  // per window: its keys, so that few are collected, not histogrammed
    for (int64_t i = 0; i < nchunks; ++i) {
      for (size_t a = 0; a < A; ++a) candidates[a] += counts[size_t(i) * A + a].mid;
    }
    radix_select<Key, uint32_t>(
        nchunks, targets,
        [&](int64_t i, const std::vector<int>& sources, auto&& sink) {
          for (size_t s = 0; s < sources.size(); ++s) {
            const size_t a = size_t(sources[s]);
            const WindowCounts& wc = counts[size_t(i) * A + a];
            if (wc.mid > 0) {
              sink(int(s), wins[a].buf.get() + int64_t(wc.thread) * wins[a].cap_per_thread + wc.start, wc.mid);
            }
          }
        },
        &candidates, memory_budget - std::min(memory_budget, stored));
    for (const RadixTarget& target : targets) {
      const size_t a = size_t(target.source);
      ModelPlan& p = plans[size_t(wins[a].model)];
      int64_t md = 0;
      for (int64_t i = 0; i < nchunks; ++i) md += counts[size_t(i) * A + a].mid;
      p.threshold = target.key;
      p.need = keep[size_t(wins[a].model)] - (above_window[a] + md - target.below - target.equal);
      p.partial_ties = p.need < target.equal;
    }
  }
  for (size_t a = 0; a < A; ++a) {
    if (where[a] == kMiss) continue;
    const ModelWindow<Key>& w = wins[a];
    ModelPlan& p = plans[size_t(w.model)];
    selected[size_t(w.model)] = 1;
    if (!p.partial_ties) continue;
    // The ties at the threshold before each chunk, in chunk order: what the statistics
    // pass would count.
    p.tie_start.resize(size_t(nchunks));
    int64_t ties = 0;
    for (int64_t i = 0; i < nchunks; ++i) {
      const WindowCounts& wc = counts[size_t(i) * A + a];
      p.tie_start[size_t(i)] = ties;
      if (where[a] == kHi) {
        ties += wc.eq_hi;
      } else if (where[a] == kLo) {
        ties += wc.eq_lo;
      } else {
        const Key* from = w.buf.get() + int64_t(wc.thread) * w.cap_per_thread + wc.start;
        const Key t = Key(p.threshold);
        for (int64_t j = 0; j < wc.mid; ++j) ties += from[j] == t ? 1 : 0;
      }
    }
    p.ties_known = true;
  }
}

// ---- statistics: l1 sums and tie counts per chunk ---------------------------------

// magnitude_outliers: the bounds of model k's band statistics from its two plans (p:
// the end largest, q: the start largest): keys in [lo, hi) lie strictly between the
// two thresholds; te, ts: the thresholds whose ties to count (~0 where not selected).
template <class Key>
struct BandBounds {
  bool selected;  // some threshold was selected: the band is neither empty nor the whole unit
  Key lo, hi, te, ts;
};

template <class Key>
BandBounds<Key> band_bounds(const ModelPlan& p, const ModelPlan& q) {
  const bool p_sel = p.selects(), q_sel = q.selects();
  constexpr Key kNever = ~Key(0);                     // above every key (keys clear the top bit)
  constexpr Key kAboveAll = Key(1) << (8 * sizeof(Key) - 1);
  BandBounds<Key> bb;
  bb.selected = p_sel || q_sel;
  bb.lo = p.keep_all ? Key(0) : Key(p.threshold + 1);
  bb.hi = q.keep_none ? kAboveAll : Key(q.threshold);
  bb.te = p_sel ? Key(p.threshold) : kNever;
  bb.ts = q_sel ? Key(q.threshold) : kNever;
  return bb;
}

struct ChunkStats {
  std::vector<double> abs_sum;   // per model: sum |d|
  std::vector<double> kept_sum;  // per model: sum |d| over the kept (magnitude: key > threshold)
  std::vector<int64_t> ties;     // per model: elements with key == threshold
};

template <class T, class Key>
void stats_chunk(const TaskTensor& t, const Chunk& c, const std::vector<ModelPlan>& plans, const TaskMergeConfig& cfg,
                 bool l1, ChunkStats& out) {
  const T* base = static_cast<const T*>(t.base);
  const int K = int(plans.size());
  const Sparsify sparsify = cfg.sparsify;
  const bool magnitude = sparsify == Sparsify::kMagnitude;  // (outliers: their own branch)
  const std::vector<uint32_t> della = della_chunk_keeps<T, Key>(t, c, plans, cfg);
  const int64_t clen = c.end - c.begin;
  alignas(64) compute_t<T> b_buf[kTile];
  alignas(64) uint32_t draws[kTile];
  alignas(64) Key keys[kTile];
  for (int64_t t0 = c.begin; t0 < c.end; t0 += kTile) {
    const int64_t len = std::min(kTile, c.end - t0);
    const compute_t<T>* b = base_tile<T>(base + t0, len, b_buf);
    if (sparsify == Sparsify::kOutliers) {
      // Per model, both thresholds at once (plans[k]: the end largest, plans[M + k]:
      // the start largest): the band's sum directly, not as a difference of two sums
      // (which loses the bits of a narrow band).
      const int M = K / 2;  // the models (half the plans)
      for (int k = 0; k < M; ++k) {
        const BandBounds<Key> bb = band_bounds<Key>(plans[size_t(k)], plans[size_t(M + k)]);
        if (!bb.selected) continue;
        band_stats_tile_k(model_ptr<T>(t, k) + t0, b, len, bb.lo, bb.hi, bb.te, bb.ts, &out.abs_sum[k],
                          &out.kept_sum[k], &out.ties[k], &out.ties[M + k]);
      }
      continue;
    }
    for (int k = 0; k < K; ++k) {
      const ModelPlan& p = plans[k];
      if (!p.selects() || !(l1 || (p.partial_ties && !p.ties_known))) continue;
      if (!l1) {  // only the ties at the threshold: integer keys, no fp64 sums
        keys_tile_k(model_ptr<T>(t, k) + t0, b, len, keys);
        int64_t ties = 0;
        for (int64_t j = 0; j < len; ++j) ties += keys[j] == Key(p.threshold) ? 1 : 0;
        out.ties[k] += ties;
        continue;
      }
      const uint32_t* kdraws = draws;
      if (!magnitude) {
        kdraws = model_draws_tile(cfg, p, k, uint64_t(c.flat + (t0 - c.begin)), len,
                                  della.empty() ? nullptr : della.data() + k * clen + (t0 - c.begin), draws);
      }
      stats_tile_k(model_ptr<T>(t, k) + t0, b, len, magnitude, sizeof(Key) == 8, p.threshold, kdraws,
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

// The tile of a unit where every model is kept whole and there is no consensus (task
// arithmetic), for a number of models known when compiling: the factors, their sum,
// the normalisation and the write in one loop along the tile, in registers, where
// the general path stores the factors and reloads them in five more loops. The same
// operations in the same order as factors_tile (kAll), combine_tile
// (Consensus::kNone) and store_tile, so the same bits.
constexpr int kPlainMaxModels = 8;

template <class T, int K>
M2N2_HD void plain_tile(const T* const* m, const compute_t<T>* b, int64_t len, const compute_t<T>* s,
                        const compute_t<T>* w, bool normalize, compute_t<T> divisor, compute_t<T> lam, T* out) {
  using C = compute_t<T>;
  const T* mk[K];
  C sk[K], wk[K];
  for (int k = 0; k < K; ++k) {
    mk[k] = m[k];
    sk[k] = s[k];
    wk[k] = w[k];
  }
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) {
    C x = C(0);
    for (int k = 0; k < K; ++k) x = x + ((to_compute(mk[k][j]) - b[j]) * sk[k]) * wk[k];
    const C v = normalize ? x / divisor : x;
    out[j] = from_compute<T>(b[j] + v * lam);
  }
}

// combine_tile then store_tile for a number of models known when compiling: one loop
// along the tile that reads the K factors (twice for an election) and writes the
// storage type. The same operations in the same order, so the same bits.
template <class T, int K>
M2N2_HD void combine_store_tile(const compute_t<T>* e, const compute_t<T>* w, Consensus consensus, bool normalize,
                                compute_t<T> lam, compute_t<T> plain_divisor, const compute_t<T>* b, int64_t len,
                                T* out) {
  using C = compute_t<T>;
  C wk[K];
  for (int k = 0; k < K; ++k) wk[k] = w[k];
  if (consensus == Consensus::kNone) {
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) {
      C x = C(0);
      for (int k = 0; k < K; ++k) x = x + e[k * kTile + j];
      const C v = normalize ? x / plain_divisor : x;
      out[j] = from_compute<T>(b[j] + v * lam);
    }
    return;
  }
  const bool by_sum = consensus == Consensus::kSum;
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) {
    C vote = C(0);
    for (int k = 0; k < K; ++k) vote = vote + (by_sum ? e[k * kTile + j] : sign_of(e[k * kTile + j]));
    const C sigma = vote >= C(0) ? C(1) : C(-1);
    C x = C(0), dsum = C(0);
    for (int k = 0; k < K; ++k) {
      const C ek = e[k * kTile + j];
      const bool agree = sign_of(ek) == sigma;
      x = x + (agree ? ek : C(0));
      dsum = dsum + (agree ? wk[k] : C(0));
    }
    const C divisor = dsum == C(0) ? C(1) : dsum;
    const C v = normalize ? x / divisor : x;
    out[j] = from_compute<T>(b[j] + v * lam);
  }
}

// factors_tile, combine_store_tile and store for a number of models known when
// compiling, in one loop along the tile with the K factors in registers (the general
// path stores them and reads them back in two more loops): for fp32 compute with
// 32-bit keys, every model keeping key(d) >= thr[k] and, with Draws, draws[k][j] <
// dare_thr[k]. Each keep rule of factors_tile is one of these: kAll is thr 0, kNone
// thr ~0 (above every key: keys clear the sign bit), kAtLeast its threshold, kDraw thr
// 0 with its draws (a model without draws in a Draws tile reads zeros against 1). The
// same operations in the same order, so the same bits.
template <class T, int K, bool Draws>
M2N2_HD void masked_tile(const T* const* m, const float* b, int64_t len, const uint32_t* thr,
                         const uint32_t* const* draws, const uint32_t* dare_thr, const float* s, const float* w,
                         Consensus consensus, bool normalize, float lam, float plain_divisor, T* out) {
  static_assert(std::is_same_v<compute_t<T>, float>, "fp32 compute");
  const T* mk[K];
  const uint32_t* dk[K];
  uint32_t tk[K], dt[K];
  float sk[K], wk[K];
  for (int k = 0; k < K; ++k) {
    mk[k] = m[k];
    dk[k] = Draws ? draws[k] : nullptr;
    tk[k] = thr[k];
    dt[k] = Draws ? dare_thr[k] : 0u;
    sk[k] = s[k];
    wk[k] = w[k];
  }
  const auto factor = [&](int k, int64_t j) {
    const float d = to_compute(mk[k][j]) - b[j];
    // Bitwise rather than &&: a branch-free mask for the vectoriser.
    const uint32_t keep = uint32_t(magnitude_key(d) >= tk[k]) & (Draws ? uint32_t(dk[k][j] < dt[k]) : 1u);
    return keep != 0u ? (d * sk[k]) * wk[k] : 0.0f;
  };
  if (consensus == Consensus::kNone) {
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) {
      float x = 0.0f;
      for (int k = 0; k < K; ++k) x = x + factor(k, j);
      const float v = normalize ? x / plain_divisor : x;
      out[j] = from_compute<T>(b[j] + v * lam);
    }
    return;
  }
  const bool by_sum = consensus == Consensus::kSum;
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) {
    float e[K];
    float vote = 0.0f;
    for (int k = 0; k < K; ++k) {
      e[k] = factor(k, j);
      vote = vote + (by_sum ? e[k] : sign_of(e[k]));
    }
    const float sigma = vote >= 0.0f ? 1.0f : -1.0f;
    float x = 0.0f, dsum = 0.0f;
    for (int k = 0; k < K; ++k) {
      const bool agree = sign_of(e[k]) == sigma;
      x = x + (agree ? e[k] : 0.0f);
      dsum = dsum + (agree ? wk[k] : 0.0f);
    }
    const float divisor = dsum == 0.0f ? 1.0f : dsum;
    const float v = normalize ? x / divisor : x;
    out[j] = from_compute<T>(b[j] + v * lam);
  }
}

// The call for a model count K <= kPlainMaxModels, with K as a template argument: a
// switch written out (a lambda would lose the clone's instruction set).
#define M2N2_BY_MODEL_COUNT(T, K, CALL) \
  switch (K) {                         \
    case 1: CALL(T, 1); break;        \
    case 2: CALL(T, 2); break;        \
    case 3: CALL(T, 3); break;        \
    case 4: CALL(T, 4); break;        \
    case 5: CALL(T, 5); break;        \
    case 6: CALL(T, 6); break;        \
    case 7: CALL(T, 7); break;        \
    default: CALL(T, 8); break;       \
  }
#define M2N2_COMBINE_STORE_TILE(T, N) \
  combine_store_tile<T, N>(e, w, consensus, normalize, lam, plain_divisor, b, len, out)
#define M2N2_PLAIN_TILE(T, N) plain_tile<T, N>(m, b, len, s, w, normalize, divisor, lam, out)
static_assert(kPlainMaxModels == 8, "M2N2_BY_MODEL_COUNT spells out the counts 1 to 8");

// One clone set per storage type (target_clones does not apply to templates).
#define M2N2_DEFINE_TILE_KERNELS(T)                                                                        \
  M2N2_CLONES void combine_store_tile_k(const compute_t<T>* e, const compute_t<T>* w, int K,                \
                                        Consensus consensus, bool normalize, compute_t<T> lam,              \
                                        compute_t<T> plain_divisor, const compute_t<T>* b, int64_t len,     \
                                        T* out) {                                                           \
    M2N2_BY_MODEL_COUNT(T, K, M2N2_COMBINE_STORE_TILE)                                                     \
  }                                                                                                        \
  M2N2_CLONES void plain_tile_k(const T* const* m, const compute_t<T>* b, int64_t len, int K,                \
                                const compute_t<T>* s, const compute_t<T>* w, bool normalize,               \
                                compute_t<T> divisor, compute_t<T> lam, T* out) {                           \
    M2N2_BY_MODEL_COUNT(T, K, M2N2_PLAIN_TILE)                                                             \
  }                                                                                                        \
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
#undef M2N2_COMBINE_STORE_TILE
#undef M2N2_PLAIN_TILE

#define M2N2_MASKED_TILE(T, N)                                                                          \
  if (draws_any) {                                                                                      \
    masked_tile<T, N, true>(m, b, len, thr, draws, dare_thr, s, w, consensus, normalize, lam, plain_divisor, out);  \
  } else {                                                                                              \
    masked_tile<T, N, false>(m, b, len, thr, draws, dare_thr, s, w, consensus, normalize, lam, plain_divisor, out); \
  }
#define M2N2_DEFINE_MASKED_TILE(T)                                                                       \
  M2N2_CLONES void masked_tile_k(const T* const* m, const float* b, int64_t len, int K, const uint32_t* thr, \
                                 bool draws_any, const uint32_t* const* draws, const uint32_t* dare_thr,    \
                                 const float* s, const float* w, Consensus consensus, bool normalize,       \
                                 float lam, float plain_divisor, T* out) {                                  \
    M2N2_BY_MODEL_COUNT(T, K, M2N2_MASKED_TILE)                                                          \
  }
M2N2_DEFINE_MASKED_TILE(float)
M2N2_DEFINE_MASKED_TILE(bf16_t)
M2N2_DEFINE_MASKED_TILE(half_t)
#undef M2N2_DEFINE_MASKED_TILE
#undef M2N2_MASKED_TILE
#undef M2N2_BY_MODEL_COUNT

M2N2_CLONES void combine_tile_k(const float* e, const float* w, int K, Consensus consensus, bool normalize, float lam,
                                float plain_divisor, const float* b, int64_t len, float* out) {
  combine_tile<float>(e, w, K, consensus, normalize, lam, plain_divisor, b, len, out);
}
M2N2_CLONES void combine_tile_k(const double* e, const double* w, int K, Consensus consensus, bool normalize,
                                double lam, double plain_divisor, const double* b, int64_t len, double* out) {
  combine_tile<double>(e, w, K, consensus, normalize, lam, plain_divisor, b, len, out);
}

// e[j] = 0 where keys[j] >= lowest, per ISA (compiled for baseline x86-64, which has
// no unsigned 32-bit compare, it was a third of the fused pass's own time in bf16
// breadcrumbs).
template <class Key, class C>
M2N2_HD void zero_from_key(const Key* keys, int64_t len, Key lowest, C* e) {
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) e[j] = keys[j] >= lowest ? C(0) : e[j];
}
#define M2N2_DEFINE_ZERO_FROM_KEY(Key, C)                                             \
  M2N2_CLONES void zero_from_key_k(const Key* keys, int64_t len, Key lowest, C* e) { \
    zero_from_key(keys, len, lowest, e);                                             \
  }
M2N2_DEFINE_ZERO_FROM_KEY(uint32_t, float)
M2N2_DEFINE_ZERO_FROM_KEY(uint64_t, float)
M2N2_DEFINE_ZERO_FROM_KEY(uint32_t, double)
M2N2_DEFINE_ZERO_FROM_KEY(uint64_t, double)
#undef M2N2_DEFINE_ZERO_FROM_KEY

// magnitude_outliers: zeroes the factors of the elements among the model's `start`
// largest (plan q: its threshold, and its ties kept lowest index first by the running
// count `rank`, as fused_chunk keeps a threshold's ties).
template <class T, class Key>
void drop_largest_tile(const T* m, const compute_t<T>* b, int64_t len, const ModelPlan& q, int64_t& rank, Key* keys,
                       compute_t<T>* e) {
  using C = compute_t<T>;
  if (q.keep_none) return;
  if (q.keep_all) {
    std::fill(e, e + len, C(0));
    return;
  }
  keys_tile_k(m, b, len, keys);
  const Key thr = Key(q.threshold);
  const TieRun run = q.partial_ties ? tie_run(keys, len, thr, rank, q.need) : TieRun::kAll;
  if (run == TieRun::kSplit) {
    for (int64_t j = 0; j < len; ++j) {
      if (in_top(keys[j], thr, rank, q.need)) e[j] = C(0);
    }
    return;
  }
  zero_from_key_k(keys, len, run == TieRun::kAll ? thr : Key(thr + 1), e);  // from the smallest key among the largest
}

template <class T, class Key>
void fused_chunk(const TaskTensor& t, const Chunk& c, int64_t chunk_index, const std::vector<ModelPlan>& plans,
                 const TaskMergeConfig& cfg) {
  using C = compute_t<T>;
  const T* base = static_cast<const T*>(t.base);
  T* out = static_cast<T*>(t.out);
  // magnitude_outliers: plans[K + k] is model k's `start` largest, dropped from what
  // plans[k] (its `end` largest) keeps.
  const int K = int(cfg.weights.size());
  const bool outliers = cfg.sparsify == Sparsify::kOutliers;
  const bool wide = sizeof(Key) == 8;
  C w[kMaxModels], s[kMaxModels];
  int64_t rank[kMaxModels], drop_rank[kMaxModels];
  KeepMode mode[kMaxModels];
  C wsum = C(0);
  for (int k = 0; k < K; ++k) {
    const ModelPlan& p = plans[k];
    w[k] = C(cfg.weights[k]);
    s[k] = C(p.scale);
    rank[k] = p.partial_ties ? p.tie_start[chunk_index] : 0;
    mode[k] = p.keep_all ? KeepMode::kAll
              : p.keep_none ? KeepMode::kNone
              : cfg.sparsify == Sparsify::kRandom || cfg.sparsify == Sparsify::kDella ? KeepMode::kDraw
                                                                                       : KeepMode::kAtLeast;
    if (outliers) {
      const ModelPlan& q = plans[size_t(K + k)];
      drop_rank[k] = q.partial_ties ? q.tie_start[chunk_index] : 0;
    }
    wsum = wsum + w[k];
  }
  const C plain_divisor = (wsum < C(0) ? -wsum : wsum) < C(kDivisorMin) ? C(1) : wsum;
  const C lam = C(cfg.lam);
  std::vector<C> e(size_t(K) * kTile);
  alignas(64) C b_buf[kTile];
  alignas(64) C merged[kTile];
  alignas(64) uint32_t draws[kTile];
  alignas(64) Key keys[kTile];
  const bool plain = !outliers && cfg.consensus == Consensus::kNone && K <= kPlainMaxModels &&
                     std::all_of(mode, mode + K, [](KeepMode md) { return md == KeepMode::kAll; });
  // The tiles of fp32 compute with 32-bit keys and at most 8 models take masked_tile
  // (factors in registers) unless a model's running tie count passes `need` inside
  // the tile. For 16-bit storage only without an election: with one, GCC's
  // vectorisation of the single loop was slower than the general path's (scale 4,
  // bf16 TIES at density 1: 20 ms against 14; fp32: 14 against 18).
  const bool masked = !outliers && K <= kPlainMaxModels && std::is_same_v<C, float> && !wide &&
                      (std::is_same_v<T, float> || cfg.consensus == Consensus::kNone);
  const T* tile_models[kPlainMaxModels];
  const bool any_partial = std::any_of(mode, mode + K, [&](KeepMode md) { return md == KeepMode::kAtLeast; }) &&
                           std::any_of(plans.begin(), plans.begin() + K, [](const ModelPlan& p) { return p.partial_ties; });
  std::vector<Key> tie_keys(any_partial ? size_t(K) * kTile : 0);  // model k's keys of a tile with partial ties
  std::vector<TieRun> run(size_t(K), TieRun::kAll);
  alignas(64) uint32_t tile_draws[kPlainMaxModels][kTile];
  alignas(64) uint32_t no_draws[kTile] = {};  // a model without draws in a tile of draws: 0 < 1 keeps
  const std::vector<uint32_t> della = della_chunk_keeps<T, Key>(t, c, plans, cfg);
  const int64_t clen = c.end - c.begin;
  for (int64_t t0 = c.begin; t0 < c.end; t0 += kTile) {
    const int64_t len = std::min(kTile, c.end - t0);
    const compute_t<T>* b = base_tile<T>(base + t0, len, b_buf);
    if (plain) {
      for (int k = 0; k < K; ++k) tile_models[k] = model_ptr<T>(t, k) + t0;
      plain_tile_k(tile_models, b, len, K, s, w, cfg.normalize, plain_divisor, lam, out + t0);
      continue;
    }
    // Ties at a threshold are kept lowest index first, by a running count. Only the
    // tile where the count passes `need` takes it element by element (kSplit); before
    // it every tie is kept (key >= threshold), after it none (key > threshold).
    bool split = false;
    for (int k = 0; k < K; ++k) {
      run[k] = TieRun::kAll;
      if (mode[k] == KeepMode::kAtLeast && plans[k].partial_ties) {
        Key* kk = tie_keys.data() + size_t(k) * kTile;
        keys_tile_k(model_ptr<T>(t, k) + t0, b, len, kk);
        run[k] = tie_run(kk, len, Key(plans[k].threshold), rank[k], plans[k].need);
        split = split || run[k] == TieRun::kSplit;
      }
    }
    const auto threshold_of = [&](int k) {  // keys are integers: > threshold is >= threshold + 1
      return run[k] == TieRun::kNone ? plans[k].threshold + 1 : plans[k].threshold;
    };
    const auto draws_of = [&](int k, uint32_t* buf) {
      return model_draws_tile(cfg, plans[k], k, uint64_t(c.flat + (t0 - c.begin)), len,
                              della.empty() ? nullptr : della.data() + k * clen + (t0 - c.begin), buf);
    };
    if constexpr (std::is_same_v<C, float>) {
      if (masked && !split) {
        uint32_t thr[kPlainMaxModels], dare_thr[kPlainMaxModels];
        const uint32_t* kdraws[kPlainMaxModels];
        bool draws_any = false;
        for (int k = 0; k < K; ++k) {
          tile_models[k] = model_ptr<T>(t, k) + t0;
          thr[k] = mode[k] == KeepMode::kNone ? ~uint32_t(0)
                   : mode[k] == KeepMode::kAtLeast ? uint32_t(threshold_of(k))
                                                   : 0u;
          kdraws[k] = no_draws;
          dare_thr[k] = 1u;
          if (mode[k] == KeepMode::kDraw) {
            kdraws[k] = draws_of(k, tile_draws[k]);
            dare_thr[k] = plans[k].dare_threshold;
            draws_any = true;
          }
        }
        masked_tile_k(tile_models, b, len, K, thr, draws_any, kdraws, dare_thr, s, w, cfg.consensus, cfg.normalize,
                      lam, plain_divisor, out + t0);
        continue;
      }
    }
    for (int k = 0; k < K; ++k) {
      const ModelPlan& p = plans[k];
      const T* m = model_ptr<T>(t, k) + t0;
      C* ek = e.data() + size_t(k) * kTile;
      if (run[k] == TieRun::kSplit) {
        const Key* kk = tie_keys.data() + size_t(k) * kTile;
        for (int64_t j = 0; j < len; ++j) {
          const C d = to_compute(m[j]) - b[j];
          ek[j] = in_top(kk[j], Key(p.threshold), rank[k], p.need) ? (d * s[k]) * w[k] : C(0);
        }
      } else {
        const uint32_t* kdraws = mode[k] == KeepMode::kDraw ? draws_of(k, draws) : draws;
        factors_tile_k(m, b, len, mode[k], wide, threshold_of(k), kdraws, p.dare_threshold, s[k], w[k], ek);
      }
      if (outliers && mode[k] != KeepMode::kNone) {
        drop_largest_tile<T, Key>(m, b, len, plans[size_t(K + k)], drop_rank[k], keys, ek);
      }
    }
    if (K <= kPlainMaxModels) {
      combine_store_tile_k(e.data(), w, K, cfg.consensus, cfg.normalize, lam, plain_divisor, b, len, out + t0);
    } else {
      combine_tile_k(e.data(), w, K, cfg.consensus, cfg.normalize, lam, plain_divisor, b, len, merged);
      store_tile_k(merged, len, out + t0);
    }
  }
}

// ---- one unit -----------------------------------------------------------------------

int64_t keep_count(double rho, int64_t n) {
  if (n == 0 || rho <= 0.0) return 0;
  if (rho >= 1.0) return n;
  return std::max<int64_t>(1, int64_t(rho * double(n)));
}

template <class Key>
void merge_unit(const std::vector<TaskTensor>& given, const TaskMergeConfig& cfg, SelectMode mode) {
  const uint64_t budget = cfg.memory_budget;
  const int K = int(cfg.weights.size());
  const bool outliers = cfg.sparsify == Sparsify::kOutliers;
  const bool magnitude = cfg.sparsify == Sparsify::kMagnitude || outliers;
  // magnitude_outliers selects 2K virtual models, each model twice: plans[k] its `end`
  // largest, plans[K + k] its `start` largest (dropped from the former). The passes
  // below then read each model twice where they read every plan's keys.
  std::vector<TaskTensor> twice;
  if (outliers) {
    twice = given;
    for (TaskTensor& t : twice) {
      const std::vector<const void*> models = t.models;
      t.models.insert(t.models.end(), models.begin(), models.end());
    }
  }
  const std::vector<TaskTensor>& ts = outliers ? twice : given;
  const int V = outliers ? 2 * K : K;  // plans
  std::vector<Chunk> chunks;
  const int64_t long_fiber = cfg.sparsify == Sparsify::kDella ? della_long_fiber() : 0;
  std::vector<char> streams(ts.size(), 0);  // della: the positions whose fibers are streamed
  int64_t n = 0;
  for (int64_t p = 0; p < int64_t(ts.size()); ++p) {
    // della ranks whole fibers: its chunks are whole slabs (fiber x fiber_stride), about
    // a quarter of the others, since each thread holds K + 1 words per element of its
    // chunk (the draws and decisions, della_chunk_keeps).
    int64_t step = kChunk;
    if (cfg.sparsify == Sparsify::kDella && ts[p].numel > 0 &&
        della_streams(ts[p], long_fiber, K, omp_get_max_threads())) {
      // A streamed fiber is cut like any buffer, each chunk within one fiber.
      streams[size_t(p)] = 1;
      const int64_t B = ts[p].fiber;
      for (int64_t row = 0; row < ts[p].numel; row += B) {
        for (int64_t j = 0; j < B; j += kDellaChunk) {
          chunks.push_back({p, row + j, row + std::min(B, j + kDellaChunk), n + row + j});
        }
      }
      n += ts[p].numel;
      continue;
    }
    if (cfg.sparsify == Sparsify::kDella && ts[p].numel > 0) {
      const int64_t slab = ts[p].fiber * ts[p].fiber_stride;
      step = slab * std::max<int64_t>(1, kDellaChunk / slab);
    }
    for (int64_t begin = 0; begin < ts[p].numel; begin += step) {
      chunks.push_back({p, begin, std::min(ts[p].numel, begin + step), n + begin});
    }
    n += ts[p].numel;
  }
  if (n == 0) return;
  const int64_t nchunks = int64_t(chunks.size());
  std::vector<ModelPlan> plans(static_cast<size_t>(V));
  std::vector<int64_t> keep(size_t(V), n);
  std::vector<char> band_partial(size_t(K), 0);  // outliers: keeps some of the unit but not all
  for (int k = 0; k < K; ++k) {
    ModelPlan& p = plans[k];
    const double rho = cfg.density[k];
    if (outliers) {
      int64_t start = 0, end = 0;
      outlier_band(rho, cfg.gamma[size_t(k)], n, start, end);
      band_partial[size_t(k)] = end > start && end - start < n;
      ModelPlan& q = plans[size_t(K + k)];
      keep[size_t(k)] = end;
      keep[size_t(K + k)] = start;
      // An empty band selects nothing; else the end largest (all where end = n)
      // minus the start largest (none where start = 0).
      p.keep_none = end == start;
      p.keep_all = !p.keep_none && end == n;
      q.keep_none = p.keep_none || start == 0;
      q.keep_all = false;  // start < n wherever the band is not empty
      if (cfg.rescale == Rescale::kDensity && band_partial[size_t(k)]) p.scale = 1.0 / rho;
      continue;
    }
    if (cfg.sparsify == Sparsify::kMagnitude) {
      keep[k] = keep_count(rho, n);
      p.keep_all = keep[k] == n;
      p.keep_none = keep[k] == 0;
    } else if (cfg.sparsify == Sparsify::kRandom) {
      p.dare_threshold = dare_threshold(rho);
      p.keep_all = rho >= 1.0;
      p.keep_none = p.dare_threshold == 0;
    } else if (cfg.sparsify == Sparsify::kDella) {
      p.dare_threshold = 1;  // della_keeps' decisions: 0 where kept
      p.keep_all = rho >= 1.0;
      p.keep_none = rho <= 0.0;
      for (size_t q = 0; p.selects() && q < ts.size(); ++q) {
        const int64_t B = streams[q] ? 0 : ts[q].fiber;  // streamed: thresholds computed where needed
        std::vector<uint32_t> by_rank(static_cast<size_t>(B));
        for (int64_t r = 0; r < B; ++r) {
          by_rank[size_t(r)] = dare_threshold(della_probability(rho, cfg.epsilon[size_t(k)], B, r));
        }
        p.della_by_rank.push_back(std::move(by_rank));
      }
    }
    if (cfg.rescale == Rescale::kDensity && p.selects()) p.scale = 1.0 / rho;
  }
  if (cfg.sparsify == Sparsify::kDella) della_long_build<Key>(ts, chunks, streams, plans, cfg);
  if (magnitude) {
    std::vector<char> selected(size_t(V), 0);
    if (mode != SelectMode::kRadix) select_thresholds_window<Key>(ts, chunks, plans, keep, n, budget, selected);
    for (int k = 0; k < V; ++k) {
      if (mode == SelectMode::kWindowStrict && !selected[size_t(k)] && plans[k].selects()) {
        throw std::runtime_error("M2N2_TIES_SELECT=window: a TIES threshold needed the radix passes");
      }
    }
    if (n < (int64_t(1) << 32)) {
      select_thresholds<Key, uint32_t>(ts, chunks, plans, keep, n, selected, budget);
    } else {
      select_thresholds<Key, uint64_t>(ts, chunks, plans, keep, n, selected, budget);
    }
  }

  const bool l1 = cfg.rescale == Rescale::kL1;
  bool need_stats = false;
  for (const ModelPlan& p : plans) {
    need_stats |= p.selects() && (l1 || (p.partial_ties && !p.ties_known));
  }
  if (need_stats) {
    std::vector<ChunkStats> stats(static_cast<size_t>(nchunks));
#pragma omp parallel for schedule(dynamic) if (nchunks > 1)
    for (int64_t i = 0; i < nchunks; ++i) {
      const Chunk& c = chunks[i];
      ChunkStats& st = stats[i];
      st.abs_sum.assign(size_t(V), 0.0);
      st.kept_sum.assign(size_t(V), 0.0);
      st.ties.assign(size_t(V), 0);
      const TaskTensor& t = ts[c.tensor];
      with_storage_type(t.dtype, [&](auto tag) {
        stats_chunk<decltype(tag), Key>(t, c, plans, cfg, l1, st);
      });
    }
    for (int k = 0; k < V; ++k) {
      ModelPlan& p = plans[k];
      if (!p.selects()) continue;
      double abs_sum = 0.0, kept_sum = 0.0;
      int64_t ties = 0;
      const bool fill_ties = p.partial_ties && !p.ties_known;
      if (fill_ties) p.tie_start.resize(static_cast<size_t>(nchunks));
      for (int64_t i = 0; i < nchunks; ++i) {  // chunk order: independent of the threads
        abs_sum += stats[i].abs_sum[k];
        kept_sum += stats[i].kept_sum[k];
        if (fill_ties) p.tie_start[i] = ties;
        ties += stats[i].ties[k];
      }
      if (magnitude) {
        // The kept ties all have |d| = the threshold's value.
        kept_sum += double(p.need) * key_value<Key>(p.threshold);
      }
      if (!outliers && l1 && abs_sum >= kRescaleMin && kept_sum >= kRescaleMin) p.scale = abs_sum / kept_sum;
    }
    for (int k = 0; outliers && l1 && k < K; ++k) {
      // The band's sum: |d| strictly between the thresholds, then the kept ties at
      // each (all ties at the start threshold but the `need` among the start largest;
      // `need` at the end one), or need_end - need_start where the two are one key.
      const ModelPlan &p = plans[size_t(k)], &q = plans[size_t(K + k)];
      if (!band_bounds<Key>(p, q).selected) continue;
      const bool p_sel = p.selects(), q_sel = q.selects();
      double abs_sum = 0.0, kept_sum = 0.0;
      int64_t ties_s = 0;
      for (int64_t i = 0; i < nchunks; ++i) {  // chunk order: independent of the threads
        abs_sum += stats[size_t(i)].abs_sum[size_t(k)];
        kept_sum += stats[size_t(i)].kept_sum[size_t(k)];
        ties_s += stats[size_t(i)].ties[size_t(K + k)];
      }
      if (p_sel && q_sel && p.threshold == q.threshold) {
        kept_sum += double(p.need - q.need) * key_value<Key>(p.threshold);
      } else {
        if (q_sel) kept_sum += double(ties_s - q.need) * key_value<Key>(q.threshold);
        if (p_sel) kept_sum += double(p.need) * key_value<Key>(p.threshold);
      }
      if (abs_sum >= kRescaleMin && kept_sum >= kRescaleMin) plans[size_t(k)].scale = abs_sum / kept_sum;
    }
  }

#pragma omp parallel for schedule(dynamic) if (nchunks > 1)
  for (int64_t i = 0; i < nchunks; ++i) {
    const Chunk& c = chunks[i];
    const TaskTensor& t = ts[c.tensor];
    with_storage_type(t.dtype, [&](auto tag) { fused_chunk<decltype(tag), Key>(t, c, i, plans, cfg); });
  }
}

void merge_unit_any(const std::vector<TaskTensor>& ts, const TaskMergeConfig& cfg, SelectMode mode) {
  const bool wide = std::any_of(ts.begin(), ts.end(), [](const TaskTensor& t) { return t.dtype == Dtype::kDouble; });
  if (wide) {
    merge_unit<uint64_t>(ts, cfg, mode);
  } else {
    merge_unit<uint32_t>(ts, cfg, mode);
  }
}

}  // namespace

SelectMode select_mode(const char* env) {
  const char* v = std::getenv(env);
  if (v == nullptr || std::strcmp(v, "") == 0 || std::strcmp(v, "auto") == 0) return SelectMode::kAuto;
  if (std::strcmp(v, "radix") == 0) return SelectMode::kRadix;
  if (std::strcmp(v, "window") == 0) return SelectMode::kWindowStrict;
  throw std::invalid_argument(std::string(env) + " must be auto, radix or window");
}

uint64_t selection_memory_budget(const std::vector<TaskTensor>& tensors, int models) {
  const char* v = std::getenv("M2N2_SELECTION_MEMORY");
  if (v != nullptr && *v != '\0') {
    char* end = nullptr;
    const unsigned long long bytes = std::strtoull(v, &end, 10);
    if (*end != '\0' || *v == '-') throw std::invalid_argument("M2N2_SELECTION_MEMORY must be a number of bytes");
    return uint64_t(bytes);
  }
  double input_bytes = 0.0;
  for (const TaskTensor& t : tensors) {
    input_bytes += double(models + 1) * double(t.numel) * double(dtype_bytes(t.dtype));
  }
  return std::max(kSelectionMemoryMin, uint64_t(kSelectionMemory * input_bytes));
}

void task_merge(const std::vector<TaskTensor>& tensors, const TaskMergeConfig& config) {
  const SelectMode mode = select_mode("M2N2_TIES_SELECT");
  if (config.global_scope) {
    merge_unit_any(tensors, config, mode);
    return;
  }
  for (const TaskTensor& t : tensors) merge_unit_any({t}, config, mode);
}

}  // namespace m2n2::cpu
