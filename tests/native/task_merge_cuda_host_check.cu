// Host-side check of the CUDA task-vector merge kernels, for machines without a GPU.
//
// The per-thread bodies of csrc/cuda/kernels/task_merge_kernels.cuh are
// __host__ __device__, so this program runs every block and thread of the planned
// launches of each unit one after another on the CPU (shared-memory histograms and
// block scans as whole-block phases, in thread order) and compares the merged tensors
// with the CPU kernel (csrc/cpu/task_merge_kernels.cpp, torch-free) byte for byte. It
// covers every storage dtype and lists mixing them, sparsify none / magnitude / random /
// magnitude_outliers, consensus none / sum / count, rescale none / l1 / density,
// normalize, densities {0, 1/n, 0.1, 0.5, 1}, gammas {0, 0.01, 0.3, 1}, scopes "tensor"
// and "global", K in {1, 2, 5, 9} (9: the path for more than 8 models) and 32 (the most
// magnitude_outliers takes), ties at the thresholds (deltas from a few values), deltas
// all zero, sizes 0, 1, odd and not a multiple of the vector, unaligned buffers (the
// scalar path), launch budgets from one block to many, in-place outputs, and DARE draws
// at unit indices past 2^36 (where the Philox counters' low word wraps). Build and
// run: `make cuda-host-check`.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cpu/task_merge_kernels.h"
#include "cuda/kernels/task_merge.cuh"
#include "task_unit_host_check.h"

using namespace m2n2;
namespace kernels = m2n2::cuda;  // (plain `cuda::` would be ambiguous with libcu++'s ::cuda)
using kernels::FusedModel;
using kernels::kBins;
using kernels::kBinsPerThread;
using kernels::kThreads;
using kernels::ModelState;
using kernels::StatsAcc;
using kernels::TaskMode;
using kernels::TaskParams;
using kernels::TaskSegment;

namespace {

int approx_fp64 = 0;  // fp64 outputs with an l1 rescale compared to a tolerance (not bit for bit)

// ---- emulation of the launches of one unit ----

struct Workspace {
  std::vector<ModelState> state = std::vector<ModelState>(kMaxModels);
  std::vector<unsigned long long> hist;
  std::vector<double> abs_part, kept_part;
  std::vector<int64_t> tie_part;
};

template <class T, int V>
void emulate_histogram(const TaskSegment& s, const TaskParams& p, Workspace& ws, int pass) {
  for (int k = 0; k < p.KV; ++k) {
    if (p.mode[k] != TaskMode::kSelect) continue;
    for (int64_t bx = 0; bx < s.blocks; ++bx) {
      std::vector<uint32_t> h(kBins, 0);
      const uint64_t prefix = ws.state[k].prefix;
      const int hi = kernels::digit_hi(p.wide, pass), lo = kernels::digit_lo(p.wide, pass);
      const int64_t begin = bx * s.chunk, end = std::min(s.numel, begin + s.chunk);
      for (int tid = 0; tid < kThreads; ++tid) {
        for (int64_t j0 = begin + int64_t(tid) * V; j0 < end; j0 += int64_t(kThreads) * V) {
          kernels::histogram_thread<T, V>(s, k, p.wide, j0, end, prefix, lo, hi, h.data());
        }
      }
      for (int i = 0; i < kBins; ++i) ws.hist[size_t(k) * kBins + i] += h[i];
    }
  }
}

template <class T>
void histogram_any(const TaskSegment& s, const TaskParams& p, Workspace& ws, int pass) {
  if (s.vec > 1) {
    emulate_histogram<T, kernels::vector_elems<T>()>(s, p, ws, pass);
  } else {
    emulate_histogram<T, 1>(s, p, ws, pass);
  }
}

void emulate_select(const TaskParams& p, Workspace& ws, int pass) {
  for (int k = 0; k < p.KV; ++k) {
    if (p.mode[k] != TaskMode::kSelect) continue;
    unsigned long long* h = ws.hist.data() + size_t(k) * kBins;
    std::vector<uint64_t> counts(size_t(kThreads) * kBinsPerThread);
    std::vector<int64_t> sums(kThreads);
    for (int tid = 0; tid < kThreads; ++tid) sums[tid] = kernels::select_thread_sum(h, tid, &counts[tid * kBinsPerThread]);
    const int64_t remaining = ws.state[k].remaining;
    for (int i = 0; i < kBins; ++i) h[i] = 0;
    const int width = kernels::digit_hi(p.wide, pass) - kernels::digit_lo(p.wide, pass);
    int64_t above = 0;
    for (int tid = 0; tid < kThreads; ++tid) {
      kernels::select_thread_find(&counts[tid * kBinsPerThread], tid, above, remaining, width,
                                  pass + 1 == kernels::radix_passes(p.wide), &ws.state[k]);
      above += sums[tid];
    }
  }
}

template <class T, int V>
void emulate_stats(const TaskSegment& s, const TaskParams& p, Workspace& ws) {
  for (int k = 0; k < p.KV; ++k) {
    if (!kernels::needs_stats(p, ws.state[k], k)) continue;
    const kernels::StatsKeys keys = kernels::stats_keys(p, ws.state.data(), k);
    for (int64_t bx = 0; bx < s.blocks; ++bx) {
      const int64_t begin = bx * s.chunk, end = std::min(s.numel, begin + s.chunk);
      StatsAcc total{0.0, 0.0, 0};
      for (int tid = 0; tid < kThreads; ++tid) {
        StatsAcc acc{0.0, 0.0, 0};
        for (int64_t j0 = begin + int64_t(tid) * V; j0 < end; j0 += int64_t(kThreads) * V) {
          kernels::stats_thread<T, V>(s, p, k, keys, j0, end, acc);
        }
        total = kernels::StatsAdd()(total, acc);  // (CUB adds in a tree: fp64 sums may differ in the last bits)
      }
      const size_t i = size_t(k * p.total_blocks + s.block0 + bx);
      ws.abs_part[i] = total.abs_sum;
      ws.kept_part[i] = total.kept_sum;
      ws.tie_part[i] = total.ties;
    }
  }
}

template <class T>
void stats_any(const TaskSegment& s, const TaskParams& p, Workspace& ws) {
  if (s.vec > 1) {
    emulate_stats<T, kernels::vector_elems<T>()>(s, p, ws);
  } else {
    emulate_stats<T, 1>(s, p, ws);
  }
}

void emulate_finish(const TaskParams& p, Workspace& ws) {
  for (int k = 0; k < p.KV; ++k) {
    if (!kernels::needs_stats(p, ws.state[k], k)) continue;
    const size_t row = size_t(k * p.total_blocks);
    std::vector<StatsAcc> mine(kThreads);
    StatsAcc total{0.0, 0.0, 0};
    for (int tid = 0; tid < kThreads; ++tid) {
      mine[tid] = kernels::finish_thread_sum(&ws.abs_part[row], &ws.kept_part[row], &ws.tie_part[row],
                                             p.total_blocks, tid);
      total = kernels::StatsAdd()(total, mine[tid]);
    }
    int64_t before = 0;
    for (int tid = 0; tid < kThreads; ++tid) {
      if (ws.state[k].partial != 0) kernels::finish_thread_ties(&ws.tie_part[row], p.total_blocks, tid, before);
      before += mine[tid].ties;
    }
    kernels::finish_scale(p, k, total, ws.state.data());
  }
}

template <class T, int V, int KMAX>
void emulate_fused(const TaskSegment& s, const TaskParams& p, const Workspace& ws) {
  using C = compute_t<T>;
  constexpr int R = kernels::kFusedRows<KMAX>;
  std::vector<FusedModel> models(kMaxModels);
  bool any_partial = false;
  for (int k = 0; k < p.KV; ++k) {
    models[k] = kernels::fused_model(p, ws.state[k], k);
    any_partial |= models[k].partial;
  }
  C w[KMAX];
  const C plain_divisor = kernels::fused_weights<C, KMAX>(p, w);
  for (int64_t bx = 0; bx < s.blocks; ++bx) {
    const int64_t begin = bx * s.chunk, end = std::min(s.numel, begin + s.chunk);
    std::vector<int64_t> running(R, 0);
    for (int k = 0; k < p.KV; ++k) {
      if (models[k].partial) running[k] = ws.tie_part[size_t(k * p.total_blocks + s.block0 + bx)];
    }
    std::vector<int64_t> rank(size_t(kThreads) * R, 0);
    for (int64_t t0 = begin; t0 < end; t0 += int64_t(kThreads) * V) {
      if (any_partial) {
        for (int k = 0; k < p.KV; ++k) {
          if (!models[k].partial) continue;
          int64_t before = 0;
          for (int tid = 0; tid < kThreads; ++tid) {
            const int64_t j0 = t0 + int64_t(tid) * V;
            rank[size_t(tid) * R + k] = running[k] + before;
            before += kernels::count_ties_thread<T, V>(s, p.wide, k, models[k].threshold, j0, end);
          }
          running[k] += before;
        }
      }
      for (int tid = 0; tid < kThreads; ++tid) {
        const int64_t j0 = t0 + int64_t(tid) * V;
        if (j0 < end) {
          kernels::fused_thread<T, V, KMAX>(s, p, models.data(), w, plain_divisor, j0, end,
                                            &rank[size_t(tid) * R]);
        }
      }
    }
  }
}

template <class T>
void fused_any(const TaskSegment& s, const TaskParams& p, Workspace& ws) {
  if (s.vec > 1 && p.K <= kernels::kSmallModels) {
    emulate_fused<T, kernels::vector_elems<T>(), kernels::kSmallModels>(s, p, ws);
  } else {
    emulate_fused<T, 1, kMaxModels>(s, p, ws);
  }
}

// launch_task_unit, launch by launch.
void emulate_unit(const std::vector<TaskSegment>& segs, const TaskParams& p) {
  Workspace ws;
  ws.hist.assign(size_t(kernels::task_hist_bins(p)), 0);
  const size_t parts = size_t(kernels::task_partials(p));
  ws.abs_part.assign(parts, std::nan(""));
  ws.kept_part.assign(parts, std::nan(""));
  ws.tie_part.assign(parts, -1);
  for (int k = 0; k < p.KV; ++k) kernels::init_model(p, k, ws.state.data());
  if (kernels::task_any_select(p)) {
    for (int pass = 0; pass < kernels::radix_passes(p.wide); ++pass) {
      for (const TaskSegment& s : segs) {
        if (s.blocks > 0) M2N2_DISPATCH_FLOAT(s.dtype, histogram_any, s, p, ws, pass)
      }
      emulate_select(p, ws, pass);
    }
  }
  if (kernels::task_may_need_stats(p)) {
    for (const TaskSegment& s : segs) {
      if (s.blocks > 0) M2N2_DISPATCH_FLOAT(s.dtype, stats_any, s, p, ws)
    }
    emulate_finish(p, ws);
  }
  for (const TaskSegment& s : segs) {
    if (s.blocks > 0) M2N2_DISPATCH_FLOAT(s.dtype, fused_any, s, p, ws)
  }
}

// ---- data ----

struct Settings {
  Sparsify sparsify;
  Consensus consensus;
  Rescale rescale;
  bool normalize;
  double lam;
  bool global;
  uint64_t seed;
  std::vector<double> weights, density;
  std::vector<double> gamma;  // magnitude_outliers (zeros where empty)
};

// The deltas of a case: normal draws, a few exact values (many ties at every
// threshold), or all zero (the models equal the base).
enum class Data { kNormal, kTies, kZero };

std::string describe(const std::vector<Position>& list, const Settings& st, int shift, int64_t budget, Data data,
                     bool in_place) {
  std::string s = list_text(list) + " sparsify " + std::to_string(int(st.sparsify)) + " consensus " + std::to_string(int(st.consensus)) +
       " rescale " + std::to_string(int(st.rescale)) + " normalize " + std::to_string(st.normalize) + " global " +
       std::to_string(st.global) + " K " + std::to_string(st.weights.size()) + " density";
  for (double d : st.density) s += " " + std::to_string(d);
  if (!st.gamma.empty()) s += " gamma";
  for (double g : st.gamma) s += " " + std::to_string(g);
  s += " shift " + std::to_string(shift) + " budget " + std::to_string(budget) + " data " + std::to_string(int(data)) +
       " in_place " + std::to_string(in_place);
  return s;
}

// Runs the CPU kernel and the emulated launches on the same inputs and compares the
// outputs byte for byte.
void check_case(const std::vector<Position>& list, const Settings& st_in, int shift, int64_t budget, Data data,
                bool in_place, std::mt19937_64& rng) {
  Settings st = st_in;
  if (st.gamma.empty()) st.gamma.assign(st.weights.size(), 0.0);
  const bool ties = data == Data::kTies;
  const int K = int(st.weights.size());
  const size_t L = list.size();
  CaseBuffers bufs(list, K, shift);
  std::vector<Buffer>& base = bufs.base;
  std::vector<std::vector<Buffer>>& models = bufs.models;
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_int_distribution<int> few(-3, 3);
  for (size_t i = 0; i < L; ++i) {
    const Position& q = list[i];
    for (int64_t j = 0; j < q.numel; ++j) put(q.dtype, base[i].data, j, ties ? 0.25 * few(rng) : normal(rng));
    for (int k = 0; k < K; ++k) {
      for (int64_t j = 0; j < q.numel; ++j) {
        // ties: deltas from a few exact values (and many zeros)
        const double b = ties ? 0.25 * double(few(rng)) : 0.0;
        const double x = ties ? b + 0.125 * double(few(rng)) : normal(rng) * (1.0 + 0.5 * k);
        put(q.dtype, models[size_t(k)][i].data, j, x);
      }
    }
    if (ties) {  // the models were drawn around their own bases: use the last as the base
      std::memcpy(base[i].data, models[size_t(K - 1)][i].data, size_t(q.numel) * size_t(dtype_bytes(q.dtype)));
      for (int64_t j = 0; j < q.numel; j += 3) put(q.dtype, base[i].data, j, 0.25 * few(rng));
    }
    if (data == Data::kZero) {
      for (int k = 0; k < K; ++k) {
        std::memcpy(models[size_t(k)][i].data, base[i].data, size_t(q.numel) * size_t(dtype_bytes(q.dtype)));
      }
    }
  }
  bufs.start_outputs(list);

  // The CPU kernel.
  cpu::TaskMergeConfig cfg{st.sparsify, st.consensus, st.rescale, st.normalize, st.lam, st.global, st.seed,
                           st.weights, st.density, st.gamma};
  cpu::task_merge(bufs.cpu_tensors(list, in_place), cfg);

  // The emulated launches, unit by unit (as csrc/cuda/task_merge.cu).
  bufs.for_each_unit(list, st.global, in_place, [&](std::vector<TaskSegment>& segs, int64_t n, bool wide) {
    TaskParams p = kernels::make_task_params(K, st.sparsify, st.consensus, st.rescale, st.normalize, st.lam, st.seed,
                                             st.weights.data(), st.density.data(), st.gamma.data(), wide, n);
    p.total_blocks = kernels::plan_task_unit(segs, K, budget, 1);
    kernels::task_virtual_models(segs, p);
    for (const TaskSegment& s : segs) {
      const bool aligned = shift == 0;
      expect(s.vec == (aligned ? kernels::task_vector_elems(s.dtype) : 1) || s.numel == 0, "plan: vector width");
      expect(s.chunk % kernels::kTileElems == 0 && s.blocks * s.chunk >= s.numel &&
                 (s.blocks == 0 || (s.blocks - 1) * s.chunk < s.numel),
             "plan: chunks cover the segment");
    }
    emulate_unit(segs, p);
  });

  for (size_t i = 0; i < L; ++i) {
    const size_t bytes = size_t(list[i].numel) * size_t(dtype_bytes(list[i].dtype));
    bool same = std::memcmp(bufs.out_cpu[i].data, bufs.out_gpu[i].data, bytes) == 0;
    if (!same && list[i].dtype == Dtype::kDouble && st.rescale == Rescale::kL1 && st.sparsify != Sparsify::kNone) {
      // The l1 ratio of fp64 storage is an fp64 ratio of fp64 sums, which the CPU and
      // the GPU add in different orders: equal to within a few ulps, not bit for bit.
      same = true;
      const double* a = static_cast<const double*>(bufs.out_cpu[i].data);
      const double* b = static_cast<const double*>(bufs.out_gpu[i].data);
      for (int64_t j = 0; j < list[i].numel; ++j) same = same && std::fabs(a[j] - b[j]) <= 1e-13 * (1.0 + std::fabs(a[j]));
      ++approx_fp64;
    }
    expect(same, describe(list, st, shift, budget, data, in_place) + ": position " + std::to_string(i) +
                     " differs first at " + std::to_string(same ? -1 : bufs.first_difference(list, i)));
  }
}

// u24 of element i drawn in full from its definition (task_merge.h), for the check
// below: spelt out from the Philox words by array indexing (check_draws compares it
// with task_merge.h's dare_high16 and dare_low8 too).
uint32_t full_u24(uint64_t seed, uint64_t stream, uint64_t i) {
  uint32_t w[4], l[4];
  dare_words(seed, stream, i >> 3, w[0], w[1], w[2], w[3]);
  dare_words(seed, stream ^ kDareLowFlip, i >> 4, l[0], l[1], l[2], l[3]);
  return ((w[(i >> 1) & 3] >> (16 * (i & 1)) & 0xFFFFu) << 8) | (l[(i >> 2) & 3] >> (8 * (i & 3)) & 0xFFu);
}

// DARE draws of a run of V elements against dare_draw_at and the full u24, at every
// offset in the 8-element groups (runs that cross into the next group: f0 % 8 in
// 5 .. 7), at counters whose low word wraps (high-half groups past 2^35 elements, low-
// byte ones past 2^36). Thresholds: ones that keep all or none, 0.2's, 0xFFFFFF (these
// almost never tie: one element in 65,536), and, for each element j of the run, its
// own u24 and u24 + 1, so that its high half ties with the threshold's and the low
// byte decides (dropped at u24, kept at u24 + 1).
void check_draws() {
  const uint64_t bases[] = {0, (uint64_t(1) << 32) - 40, (uint64_t(1) << 35) - 40, (uint64_t(1) << 36) - 40,
                            (uint64_t(1) << 40) + 3};
  const uint64_t seed = 0x9E3779B97F4A7C15ull, stream = kDareStream + 2;
  int64_t tie_dropped = 0, tie_kept = 0, tie_low_decides = 0, tie_next_group = 0;
  auto check = [](bool ok, const char* what, int j, uint64_t f0, uint32_t thr) {
    expect(ok, ok ? std::string() : std::string(what) + ", element " + std::to_string(j) + " of the run at " +
                                        std::to_string(f0) + ", threshold " + std::to_string(thr));
  };
  for (uint64_t base : bases) {
    for (uint64_t f0 = base; f0 < base + 4096; ++f0) {
      uint32_t u[4];
      for (int j = 0; j < 4; ++j) {
        const uint64_t i = f0 + uint64_t(j);
        u[j] = full_u24(seed, stream, i);
        uint32_t w0, w1, w2, w3;
        dare_words(seed, stream, i >> 3, w0, w1, w2, w3);
        check(u[j] == ((dare_high16(i, w0, w1, w2, w3) << 8) | dare_low8(seed, stream, i)),
              "dare_high16 / dare_low8 draw the u24 of the definition", j, f0, 0);
      }
      const uint32_t thresholds[] = {1u << 24,    0u,       dare_threshold(0.2), 0xFFFFFFu, u[0], u[0] + 1,
                                     u[1],        u[1] + 1, u[2],                u[2] + 1,  u[3], u[3] + 1};
      for (uint32_t thr : thresholds) {
        uint32_t d4[4], d2[2], d1[1];
        kernels::dare_draws<4>(seed, stream, f0, thr, d4);
        kernels::dare_draws<2>(seed, stream, f0, thr, d2);
        kernels::dare_draws<1>(seed, stream, f0, thr, d1);
        for (int j = 0; j < 4; ++j) {
          const uint64_t i = f0 + uint64_t(j);
          const uint32_t want = dare_draw_at(seed, stream, i, thr);
          const bool tie = (u[j] >> 8) == (thr >> 8);
          check(want == (tie ? u[j] : u[j] & 0xFFFF00u), "dare_draw_at: u24 on a tie, hi16 << 8 elsewhere", j, f0,
                thr);
          check((want < thr) == (u[j] < thr), "dare_draw_at keeps as u24", j, f0, thr);
          check(d4[j] == want, "dare_draws<4>", j, f0, thr);
          if (j < 2) check(d2[j] == want, "dare_draws<2>", j, f0, thr);
          if (j < 1) check(d1[j] == want, "dare_draws<1>", j, f0, thr);
          if (tie) {
            ++(u[j] < thr ? tie_kept : tie_dropped);
            tie_low_decides += ((u[j] & 0xFFFF00u) < thr) != (u[j] < thr);
            tie_next_group += int(f0 & 7u) + j >= 8;
          }
        }
      }
    }
  }
  // About 82,000 kept, as many dropped and decided by the low byte, 30,000 in the second
  // group (the fixed thresholds add a handful); at least 100 of each.
  expect(tie_kept >= 100 && tie_dropped >= 100 && tie_low_decides >= 100 && tie_next_group >= 100,
         "ties of the high half with the threshold (low byte drawn): " + std::to_string(tie_kept) + " kept, " +
             std::to_string(tie_dropped) + " dropped, " + std::to_string(tie_low_decides) +
             " decided by the low byte, " + std::to_string(tie_next_group) + " in the run's second group");
  std::printf("check_draws: ties %lld kept, %lld dropped, %lld decided by the low byte, %lld in the second group\n",
              (long long)tie_kept, (long long)tie_dropped, (long long)tie_low_decides, (long long)tie_next_group);
}

void check_plan() {
  std::vector<TaskSegment> segs;
  std::mt19937_64 rng(5);
  std::uniform_int_distribution<int64_t> size(0, 1 << 22);
  int64_t n = 0;
  for (int j = 0; j < 300; ++j) {
    TaskSegment s{};
    s.dtype = Dtype::kFloat;
    s.numel = j == 7 ? (int64_t(1) << 34) + 3 : size(rng);  // one segment past 2^32 elements
    s.flat = n;
    n += s.numel;
    segs.push_back(s);
  }
  const int64_t blocks = kernels::plan_task_unit(segs, 1, 1056);
  int64_t next = 0;
  for (const TaskSegment& s : segs) {
    expect(s.block0 == next, "plan: block numbering");
    expect(s.chunk <= kernels::kMaxChunk && s.chunk % kernels::kTileElems == 0, "plan: chunk");
    expect(s.blocks * s.chunk >= s.numel && (s.blocks == 0 || (s.blocks - 1) * s.chunk < s.numel), "plan: cover");
    expect(s.numel == 0 || s.chunk >= kernels::kMinChunkTiles * kernels::kTileElems, "plan: chunk at least");
    next += s.blocks;
  }
  expect(next == blocks && blocks <= 1056 + 2 * 300, "plan: total blocks");
  // The radix passes cover the key bits exactly.
  for (bool wide : {false, true}) {
    int bits = 0;
    for (int pass = 0; pass < kernels::radix_passes(wide); ++pass) {
      const int hi = kernels::digit_hi(wide, pass), lo = kernels::digit_lo(wide, pass);
      expect(hi - lo >= 1 && hi - lo <= kernels::kDigitBits && lo >= 0, "radix: digit width");
      bits += hi - lo;
    }
    expect(bits == kernels::key_bits(wide) && kernels::digit_lo(wide, kernels::radix_passes(wide) - 1) == 0,
           "radix: key bits");
  }
}

std::vector<double> densities(int K, int64_t n, std::mt19937_64& rng) {
  const double choices[5] = {0.0, n > 0 ? 1.0 / double(n) : 0.0, 0.1, 0.5, 1.0};
  std::uniform_int_distribution<int> pick(0, 4);
  std::vector<double> d(static_cast<size_t>(K));
  for (int k = 0; k < K; ++k) d[size_t(k)] = choices[pick(rng)];
  return d;
}

std::vector<double> gammas(int K, std::mt19937_64& rng) {
  const double choices[4] = {0.0, 0.01, 0.3, 1.0};
  std::uniform_int_distribution<int> pick(0, 3);
  std::vector<double> g(static_cast<size_t>(K));
  for (int k = 0; k < K; ++k) g[size_t(k)] = choices[pick(rng)];
  return g;
}

// A case's settings with the rest drawn: normalize, lam, scope, seed, weights, each
// model's density from the set (n: the elements of the unit the scope makes) and,
// for magnitude_outliers, its gamma.
Settings draw_settings(Sparsify sp, Consensus co, Rescale re, int K, int64_t total, int64_t last,
                       std::mt19937_64& rng) {
  std::uniform_int_distribution<int> coin(0, 1);
  std::uniform_real_distribution<double> uni(-0.5, 1.5);
  Settings st;
  st.sparsify = sp;
  st.consensus = co;
  st.rescale = re;
  st.normalize = coin(rng) == 1;
  st.lam = coin(rng) == 1 ? 1.0 : 0.7;
  st.global = coin(rng) == 1;
  st.seed = rng();
  for (int k = 0; k < K; ++k) st.weights.push_back(uni(rng));
  st.density = densities(K, st.global ? total : last, rng);
  if (sp == Sparsify::kOutliers) st.gamma = gammas(K, rng);
  return st;
}

}  // namespace

int main() {
  std::mt19937_64 rng(1);
  check_draws();
  check_plan();
  const std::vector<std::vector<Position>> lists = {
      {{Dtype::kFloat, 5001}},
      {{Dtype::kDouble, 3001}},
      {{Dtype::kBFloat16, 4099}},
      {{Dtype::kHalf, 2050}},
      {{Dtype::kFloat, 0}, {Dtype::kFloat, 1}, {Dtype::kFloat, 7}, {Dtype::kFloat, 1023}},
      {{Dtype::kBFloat16, 1029}, {Dtype::kFloat, 0}, {Dtype::kHalf, 3}, {Dtype::kFloat, 2051}},
      {{Dtype::kFloat, 999}, {Dtype::kDouble, 5}, {Dtype::kBFloat16, 1500}, {Dtype::kHalf, 1}},
  };
  const Sparsify sparsifies[3] = {Sparsify::kNone, Sparsify::kMagnitude, Sparsify::kRandom};
  const Consensus consensuses[3] = {Consensus::kNone, Consensus::kSum, Consensus::kCount};
  const Rescale rescales[3] = {Rescale::kNone, Rescale::kL1, Rescale::kDensity};
  std::uniform_int_distribution<int> coin(0, 1);
  std::uniform_real_distribution<double> uni(-0.5, 1.5);
  int cases = 0;
  for (const auto& list : lists) {
    int64_t total = 0;
    for (const Position& q : list) total += q.numel;
    for (Sparsify sp : sparsifies) {
      for (Consensus co : consensuses) {
        for (Rescale re : rescales) {
          for (int K : {1, 2, 5, 9}) {
            if (K == 9 && co == Consensus::kCount) continue;  // (keeps the run short)
            const Settings st = draw_settings(sp, co, re, K, total, list.back().numel, rng);
            const int shift = (cases % 5 == 3) ? 1 : 0;
            const int64_t budget = cases % 3 == 0 ? 1 : (cases % 3 == 1 ? 5 : 1000);
            const bool ties = sp == Sparsify::kMagnitude && coin(rng) == 1;
            const bool in_place = cases % 7 == 2;
            check_case(list, st, shift, budget, ties ? Data::kTies : Data::kNormal, in_place, rng);
            ++cases;
          }
        }
      }
    }
  }
  // Every density of the set for one model, both scopes, with and without ties.
  for (double d : {0.0, 1.0 / 5001.0, 0.1, 0.5, 1.0}) {
    for (bool ties : {false, true}) {
      for (bool global : {false, true}) {
        Settings st{Sparsify::kMagnitude, Consensus::kSum, Rescale::kL1, true, 1.0, global, 11, {0.8, 0.3}, {d, d}};
        check_case({{Dtype::kFloat, 5001}, {Dtype::kBFloat16, 77}}, st, 0, 3, ties ? Data::kTies : Data::kNormal,
                   false, rng);
        ++cases;
      }
    }
  }
  // magnitude_outliers: every list, consensus, rescale and K as above, each model's
  // density and gamma drawn from the sets, deltas normal, tied or zero.
  for (const auto& list : lists) {
    int64_t total = 0;
    for (const Position& q : list) total += q.numel;
    for (Consensus co : consensuses) {
      for (Rescale re : rescales) {
        for (int K : {1, 2, 5, 9}) {
          const Settings st = draw_settings(Sparsify::kOutliers, co, re, K, total, list.back().numel, rng);
          const int shift = (cases % 5 == 3) ? 1 : 0;
          const int64_t budget = cases % 3 == 0 ? 1 : (cases % 3 == 1 ? 5 : 1000);
          const Data data = cases % 11 == 4 ? Data::kZero : coin(rng) == 1 ? Data::kTies : Data::kNormal;
          check_case(list, st, shift, budget, data, cases % 7 == 2, rng);
          ++cases;
        }
      }
    }
  }
  // Every (density, gamma) pair for model 0 (model 1 another pair), both scopes,
  // bf16 with many ties at both thresholds of a band, and normal deltas.
  {
    const double rhos[5] = {0.0, 1.0 / 4099.0, 0.1, 0.5, 1.0};
    const double gams[4] = {0.0, 0.01, 0.3, 1.0};
    const Rescale sweep_rescales[3] = {Rescale::kL1, Rescale::kDensity, Rescale::kNone};
    int i = 0;
    for (double d : rhos) {
      for (double g : gams) {
        for (Data data : {Data::kTies, Data::kNormal}) {
          for (bool global : {false, true}) {
            Settings st{Sparsify::kOutliers, consensuses[i % 3], sweep_rescales[(i / 3) % 3], i % 2 == 0, 1.0, global,
                        uint64_t(i), {0.8, 0.3}, {d, rhos[(i + 2) % 5]}, {g, gams[(i + 1) % 4]}};
            check_case({{Dtype::kBFloat16, 4099}, {Dtype::kFloat, 77}}, st, 0, 3, data, false, rng);
            ++cases;
            ++i;
          }
        }
      }
    }
  }
  // The most models magnitude_outliers takes (64 virtual ones).
  for (Data data : {Data::kTies, Data::kNormal}) {
    Settings st;
    st.sparsify = Sparsify::kOutliers;
    st.consensus = Consensus::kSum;
    st.rescale = Rescale::kL1;
    st.normalize = true;
    st.lam = 1.0;
    st.global = true;
    st.seed = 3;
    const int K = kMaxModels / 2;
    for (int k = 0; k < K; ++k) st.weights.push_back(uni(rng));
    st.density = densities(K, 3001 + 700, rng);
    st.gamma = gammas(K, rng);
    check_case({{Dtype::kFloat, 3001}, {Dtype::kBFloat16, 700}}, st, 0, 4, data, false, rng);
    ++cases;
  }
  if (failures == 0) {
    std::printf("task_merge CUDA host check: all passed (%d cases, %d checks; %d fp64 l1 outputs within 1e-13, the "
                "others bit for bit)\n", cases, checks, approx_fp64);
  }
  return failures == 0 ? 0 : 1;
}
