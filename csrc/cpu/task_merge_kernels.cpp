// CPU task-vector merges: radix selection, statistics and the fused pass.
#include "task_merge_kernels.h"

#include <omp.h>

#include <algorithm>
#include <cmath>


namespace m2n2::cpu {
namespace {

constexpr int64_t kChunk = int64_t(1) << 16;
constexpr int kDigitBits = 16;
constexpr int64_t kBins = int64_t(1) << kDigitBits;

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

// ---- radix selection --------------------------------------------------------------

// One histogram pass: for every model still selecting, count the digit at `shift`
// of the keys whose higher digits equal the model's prefix.
template <class T, class Key>
void histogram_chunk(const TaskTensor& t, const Chunk& c, const std::vector<int>& active,
                     const std::vector<uint64_t>& prefix, int shift, uint64_t* hist) {
  const T* base = static_cast<const T*>(t.base);
  const int high = shift + kDigitBits;
  for (size_t a = 0; a < active.size(); ++a) {
    const T* m = model_ptr<T>(t, active[a]);
    uint64_t* h = hist + a * kBins;
    const uint64_t want = prefix[a];
    for (int64_t j = c.begin; j < c.end; ++j) {
      const Key key = key_of<Key>(to_compute(m[j]) - to_compute(base[j]));
      const bool match = high >= int(8 * sizeof(Key)) || uint64_t(key >> high) == want;
      if (match) ++h[(key >> shift) & (kBins - 1)];
    }
  }
}

template <class Key>
void select_thresholds(const std::vector<TaskTensor>& ts, const std::vector<Chunk>& chunks,
                       std::vector<ModelPlan>& plans, const std::vector<int64_t>& keep) {
  std::vector<int> active;
  for (int k = 0; k < int(plans.size()); ++k) {
    if (!plans[k].keep_all && !plans[k].keep_none) active.push_back(k);
  }
  if (active.empty()) return;
  const int nact = int(active.size());
  const int threads = omp_get_max_threads();
  std::vector<uint64_t> prefix(size_t(nact), 0);
  std::vector<int64_t> remaining(static_cast<size_t>(nact));
  for (int a = 0; a < nact; ++a) remaining[a] = keep[active[a]];
  std::vector<uint64_t> hist(size_t(threads) * nact * kBins);
  std::vector<uint64_t> last_count(size_t(nact), 0);
  const int64_t nchunks = int64_t(chunks.size());
  for (int shift = int(8 * sizeof(Key)) - kDigitBits; shift >= 0; shift -= kDigitBits) {
    std::fill(hist.begin(), hist.end(), 0);
#pragma omp parallel for schedule(static) if (nchunks > 1)
    for (int64_t i = 0; i < nchunks; ++i) {
      const Chunk& c = chunks[i];
      const TaskTensor& t = ts[c.tensor];
      uint64_t* h = hist.data() + size_t(omp_get_thread_num()) * nact * kBins;
      switch (t.dtype) {
        case Dtype::kFloat: histogram_chunk<float, Key>(t, c, active, prefix, shift, h); break;
        case Dtype::kDouble: histogram_chunk<double, Key>(t, c, active, prefix, shift, h); break;
        case Dtype::kBFloat16: histogram_chunk<bf16_t, Key>(t, c, active, prefix, shift, h); break;
        case Dtype::kHalf: histogram_chunk<half_t, Key>(t, c, active, prefix, shift, h); break;
        default: break;
      }
    }
    for (int a = 0; a < nact; ++a) {
      // Counts are integers: their sum does not depend on the threads' order.
      int64_t above = 0;
      for (int64_t bin = kBins - 1; bin >= 0; --bin) {
        uint64_t count = 0;
        for (int th = 0; th < threads; ++th) count += hist[(size_t(th) * nact + a) * kBins + bin];
        if (above + int64_t(count) >= remaining[a]) {
          remaining[a] -= above;
          prefix[a] = (prefix[a] << kDigitBits) | uint64_t(bin);
          last_count[a] = count;
          break;
        }
        above += int64_t(count);
      }
    }
  }
  for (int a = 0; a < nact; ++a) {
    ModelPlan& p = plans[active[a]];
    p.threshold = prefix[a];
    p.need = remaining[a];
    p.partial_ties = p.need < int64_t(last_count[a]);
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
                 uint64_t seed, ChunkStats& out) {
  const T* base = static_cast<const T*>(t.base);
  const int K = int(plans.size());
  for (int k = 0; k < K; ++k) {
    const ModelPlan& p = plans[k];
    if (p.keep_all || p.keep_none) continue;
    const T* m = model_ptr<T>(t, k);
    double abs_sum = 0.0, kept_sum = 0.0;
    int64_t ties = 0;
    uint32_t draws[4] = {0, 0, 0, 0};
    uint64_t group = ~uint64_t(0);
    for (int64_t j = c.begin; j < c.end; ++j) {
      const auto d = to_compute(m[j]) - to_compute(base[j]);
      const double ad = std::fabs(double(d));
      abs_sum += ad;
      if (sparsify == Sparsify::kMagnitude) {
        const Key key = key_of<Key>(d);
        if (uint64_t(key) > p.threshold) kept_sum += ad;
        ties += uint64_t(key) == p.threshold;
      } else {
        const uint64_t i = uint64_t(c.flat + (j - c.begin));
        if ((i >> 2) != group) {
          group = i >> 2;
          dare_draws4(seed, kDareStream + uint64_t(k), group, draws);
        }
        if (draws[i & 3] < p.dare_threshold) kept_sum += ad;
      }
    }
    out.abs_sum[k] = abs_sum;
    out.kept_sum[k] = kept_sum;
    out.ties[k] = ties;
  }
}

// ---- the fused pass ---------------------------------------------------------------

template <class T, class Key>
void fused_chunk(const TaskTensor& t, const Chunk& c, int64_t chunk_index, const std::vector<ModelPlan>& plans,
                 const TaskMergeConfig& cfg) {
  using C = compute_t<T>;
  const T* base = static_cast<const T*>(t.base);
  T* out = static_cast<T*>(t.out);
  const int K = int(plans.size());
  C w[kMaxModels], s[kMaxModels];
  int64_t rank[kMaxModels];
  uint32_t draws[kMaxModels][4];
  uint64_t group[kMaxModels];
  C wsum = C(0);
  for (int k = 0; k < K; ++k) {
    w[k] = C(cfg.weights[k]);
    s[k] = C(plans[k].scale);
    rank[k] = plans[k].partial_ties ? plans[k].tie_start[chunk_index] : 0;
    group[k] = ~uint64_t(0);
    wsum = wsum + w[k];
  }
  const C plain_divisor = (wsum < C(0) ? -wsum : wsum) < C(kDivisorMin) ? C(1) : wsum;
  const C lam = C(cfg.lam);
  C e[kMaxModels];
  for (int64_t j = c.begin; j < c.end; ++j) {
    const C b = to_compute(base[j]);
    for (int k = 0; k < K; ++k) {
      const ModelPlan& p = plans[k];
      const C d = to_compute(model_ptr<T>(t, k)[j]) - b;
      bool keep = p.keep_all;
      if (!keep && !p.keep_none) {
        if (cfg.sparsify == Sparsify::kMagnitude) {
          const uint64_t key = uint64_t(key_of<Key>(d));
          keep = key > p.threshold || (key == p.threshold && (!p.partial_ties || rank[k]++ < p.need));
        } else {
          const uint64_t i = uint64_t(c.flat + (j - c.begin));
          if ((i >> 2) != group[k]) {
            group[k] = i >> 2;
            dare_draws4(cfg.seed, kDareStream + uint64_t(k), group[k], draws[k]);
          }
          keep = draws[k][i & 3] < p.dare_threshold;
        }
      }
      e[k] = keep ? (d * s[k]) * w[k] : C(0);
    }
    out[j] = from_compute<T>(combine_factors<C>(e, w, K, cfg.consensus, cfg.normalize, lam, b, plain_divisor));
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
  if (cfg.sparsify == Sparsify::kMagnitude) select_thresholds<Key>(ts, chunks, plans, keep);

  bool need_stats = false;
  for (const ModelPlan& p : plans) {
    need_stats |= !p.keep_all && !p.keep_none && (cfg.rescale == Rescale::kL1 || p.partial_ties);
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
      switch (t.dtype) {
        case Dtype::kFloat: stats_chunk<float, Key>(t, c, plans, cfg.sparsify, cfg.seed, st); break;
        case Dtype::kDouble: stats_chunk<double, Key>(t, c, plans, cfg.sparsify, cfg.seed, st); break;
        case Dtype::kBFloat16: stats_chunk<bf16_t, Key>(t, c, plans, cfg.sparsify, cfg.seed, st); break;
        case Dtype::kHalf: stats_chunk<half_t, Key>(t, c, plans, cfg.sparsify, cfg.seed, st); break;
        default: break;
      }
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
    switch (t.dtype) {
      case Dtype::kFloat: fused_chunk<float, Key>(t, c, i, plans, cfg); break;
      case Dtype::kDouble: fused_chunk<double, Key>(t, c, i, plans, cfg); break;
      case Dtype::kBFloat16: fused_chunk<bf16_t, Key>(t, c, i, plans, cfg); break;
      case Dtype::kHalf: fused_chunk<half_t, Key>(t, c, i, plans, cfg); break;
      default: break;
    }
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
