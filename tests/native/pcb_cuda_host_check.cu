// Host-side check of the CUDA PCB merge kernels, for machines without a GPU.
//
// The per-thread bodies of csrc/cuda/kernels/pcb_kernels.cuh are __host__ __device__,
// so this program runs every block and thread of the planned launches of each unit
// one after another on the CPU (shared-memory histograms and block scans as
// whole-block phases, in thread order) and compares the merged tensors with the CPU
// kernel (csrc/cpu/pcb_kernels.cpp, torch-free) byte for byte. It covers every storage
// dtype and lists mixing them (fp64 among others: a wide unit), sizes 0, 1, odd and
// not a multiple of the vector, K in {1, 2, 5}, ratio {tiny, 0.5, 1}, clamp {0, 1e-4,
// 0.1}, scopes "tensor" and "global", ties (deltas from a few values, models equal to
// base), unaligned buffers (the scalar path), launch budgets from one block to many,
// and in-place outputs. Build and run: `make cuda-host-check`.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu/pcb_kernels.h"
#include "cuda/kernels/pcb.cuh"
#include "task_unit_host_check.h"

using namespace m2n2;
namespace kernels = m2n2::cuda;  // (plain `cuda::` would be ambiguous with libcu++'s ::cuda)
using kernels::kBins;
using kernels::kBinsPerThread;
using kernels::kThreads;
using kernels::ModelState;
using kernels::PcbModel;
using kernels::PcbParams;
using kernels::TaskSegment;

namespace {

int changed = 0;  // outputs that differ from base (the comparison is not of two untouched copies)

// ---- emulation of the launches of one unit ----

struct Workspace {
  std::vector<ModelState> state = std::vector<ModelState>(4 * kMaxModels);
  std::vector<unsigned long long> hist;
};

template <class T, class U, int V, int PHASE>
void emulate_histogram(const TaskSegment& s, const PcbParams& p, Workspace& ws, int pass) {
  const int bits = kernels::pcb_key_bits(p.wide, PHASE);
  const int hi = kernels::pcb_digit_hi(bits, pass), lo = kernels::pcb_digit_lo(bits, pass);
  for (int k = 0; k < p.K; ++k) {
    const uint64_t prefix0 = ws.state[kernels::pcb_target(p.K, PHASE, k, 0)].prefix;
    const uint64_t prefix1 = ws.state[kernels::pcb_target(p.K, PHASE, k, 1)].prefix;
    const U mlo = kernels::pcb_magnitude_value<U>(ws.state[kernels::pcb_target(p.K, 0, k, 0)].prefix);
    const U mhi = kernels::pcb_magnitude_value<U>(ws.state[kernels::pcb_target(p.K, 0, k, 1)].prefix);
    const PcbRange r = pcb_range(mlo, mhi);
    for (int64_t bx = 0; bx < s.blocks; ++bx) {
      std::vector<uint32_t> h(2 * kBins, 0);
      const int64_t begin = bx * s.chunk, end = std::min(s.numel, begin + s.chunk);
      for (int tid = 0; tid < kThreads; ++tid) {
        for (int64_t j0 = begin + int64_t(tid) * V; j0 < end; j0 += int64_t(kThreads) * V) {
          if constexpr (PHASE == 0) {
            kernels::pcb_magnitude_thread<T, U, V>(s, k, j0, end, prefix0, prefix1, lo, hi, h.data(),
                                                   h.data() + kBins);
          } else {
            kernels::pcb_score_thread<T, U, V>(s, p.K, k, mlo, mhi, r, j0, end, prefix0, prefix1, lo, hi, h.data(),
                                               h.data() + kBins);
          }
        }
      }
      for (int i = 0; i < 2 * kBins; ++i) ws.hist[size_t(2 * k) * kBins + i] += h[i];
    }
  }
}

template <class T, class F>
void with_unit(bool wide, F&& f) {
  kernels::with_unit_type<T>(wide, f);
}

template <class T>
void histogram_any(const TaskSegment& s, const PcbParams& p, Workspace& ws, int phase, int pass) {
  with_unit<T>(p.wide, [&](auto tag) {
    using U = decltype(tag);
    constexpr int VV = kernels::vector_elems<T>();
    if (phase == 0) {
      if (s.vec > 1) emulate_histogram<T, U, VV, 0>(s, p, ws, pass);
      else emulate_histogram<T, U, 1, 0>(s, p, ws, pass);
    } else {
      if (s.vec > 1) emulate_histogram<T, U, VV, 1>(s, p, ws, pass);
      else emulate_histogram<T, U, 1, 1>(s, p, ws, pass);
    }
  });
}

// pcb_select_kernel over the 2K targets of a phase (state from `first`).
void emulate_select(const PcbParams& p, Workspace& ws, int first, int width, bool last) {
  for (int t = 0; t < 2 * p.K; ++t) {
    unsigned long long* h = ws.hist.data() + size_t(t) * kBins;
    std::vector<uint64_t> counts(size_t(kThreads) * kBinsPerThread);
    std::vector<int64_t> sums(kThreads);
    for (int tid = 0; tid < kThreads; ++tid) sums[tid] = kernels::select_thread_sum(h, tid, &counts[tid * kBinsPerThread]);
    ModelState* st = &ws.state[size_t(first + t)];
    const int64_t remaining = st->remaining;
    for (int i = 0; i < kBins; ++i) h[i] = 0;
    int64_t above = 0;
    for (int tid = 0; tid < kThreads; ++tid) {
      kernels::select_thread_find(&counts[tid * kBinsPerThread], tid, above, remaining, width, last, st);
      above += sums[tid];
    }
  }
}

template <class T, class U, int V>
void emulate_fused(const TaskSegment& s, const PcbParams& p, const Workspace& ws) {
  std::vector<PcbModel<U>> models(kMaxModels);
  for (int k = 0; k < p.K; ++k) models[k] = kernels::pcb_model<U>(ws.state.data(), p.K, k);
  for (int64_t bx = 0; bx < s.blocks; ++bx) {
    const int64_t begin = bx * s.chunk, end = std::min(s.numel, begin + s.chunk);
    for (int tid = 0; tid < kThreads; ++tid) {
      for (int64_t j0 = begin + int64_t(tid) * V; j0 < end; j0 += int64_t(kThreads) * V) {
        kernels::pcb_fused_thread<T, U, V>(s, p, models.data(), j0, end);
      }
    }
  }
}

template <class T>
void fused_any(const TaskSegment& s, const PcbParams& p, Workspace& ws) {
  with_unit<T>(p.wide, [&](auto tag) {
    using U = decltype(tag);
    if (s.vec > 1) {
      emulate_fused<T, U, kernels::vector_elems<T>()>(s, p, ws);
    } else {
      emulate_fused<T, U, 1>(s, p, ws);
    }
  });
}

// launch_pcb_unit, launch by launch.
void emulate_unit(const std::vector<TaskSegment>& segs, const PcbParams& p) {
  Workspace ws;
  ws.hist.assign(size_t(2 * p.K) * kBins, 0);
  for (int t = 0; t < 4 * p.K; ++t) kernels::pcb_init_target(p, t, ws.state.data());
  for (int phase = 0; phase < 2; ++phase) {
    const int bits = kernels::pcb_key_bits(p.wide, phase);
    for (int pass = 0; pass < kernels::pcb_passes(bits); ++pass) {
      for (const TaskSegment& s : segs) {
        if (s.blocks > 0) M2N2_DISPATCH_FLOAT(s.dtype, histogram_any, s, p, ws, phase, pass)
      }
      const int width = kernels::pcb_digit_hi(bits, pass) - kernels::pcb_digit_lo(bits, pass);
      emulate_select(p, ws, kernels::pcb_target(p.K, phase, 0, 0), width, pass + 1 == kernels::pcb_passes(bits));
    }
  }
  for (const TaskSegment& s : segs) {
    if (s.blocks > 0) M2N2_DISPATCH_FLOAT(s.dtype, fused_any, s, p, ws)
  }
}

// ---- data ----

struct Settings {
  int K;
  double ratio, lam, clamp;
  bool global;
};

// Data: 0 normal deltas, 1 ties (deltas from a few values, many zeros), 2 every model
// equal to base (no spread: scales all 0), 3 one model equal to base, the others normal.
std::string describe(const std::vector<Position>& list, const Settings& st, int shift, int64_t budget, int data,
                     bool in_place) {
  return list_text(list) + " K " + std::to_string(st.K) + " ratio " + std::to_string(st.ratio) + " clamp " +
         std::to_string(st.clamp) + " lam " + std::to_string(st.lam) + " global " + std::to_string(st.global) +
         " shift " + std::to_string(shift) + " budget " + std::to_string(budget) + " data " + std::to_string(data) +
         " in_place " + std::to_string(in_place);
}

// Runs the CPU kernel and the emulated launches on the same inputs and compares the
// outputs byte for byte.
void check_case(const std::vector<Position>& list, const Settings& st, int shift, int64_t budget, int data,
                bool in_place, std::mt19937_64& rng) {
  const int K = st.K;
  const size_t L = list.size();
  CaseBuffers bufs(list, K, shift);
  std::vector<Buffer>& base = bufs.base;
  std::vector<std::vector<Buffer>>& models = bufs.models;
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_int_distribution<int> few(-3, 3);
  for (size_t i = 0; i < L; ++i) {
    const Position& q = list[i];
    std::vector<double> b(size_t(q.numel));
    for (int64_t j = 0; j < q.numel; ++j) {
      b[size_t(j)] = data == 1 ? 0.25 * few(rng) : normal(rng);
      put(q.dtype, base[i].data, j, b[size_t(j)]);
    }
    for (int k = 0; k < K; ++k) {
      const bool same = data == 2 || (data == 3 && k == K / 2);
      for (int64_t j = 0; j < q.numel; ++j) {
        double x = b[size_t(j)];
        if (data == 1) x += 0.125 * double(few(rng));
        if (data == 0 || (data == 3 && !same)) x += 0.01 * normal(rng) * (1.0 + 0.5 * k);
        put(q.dtype, models[size_t(k)][i].data, j, same ? b[size_t(j)] : x);
      }
      if (same) std::memcpy(models[size_t(k)][i].data, base[i].data, size_t(q.numel) * size_t(dtype_bytes(q.dtype)));
    }
  }
  bufs.start_outputs(list);

  // The CPU kernel.
  cpu::pcb_merge(bufs.cpu_tensors(list, in_place), {st.ratio, st.lam, st.clamp, st.global, K});

  // The emulated launches, unit by unit (as csrc/cuda/pcb.cu).
  bufs.for_each_unit(list, st.global, in_place, [&](std::vector<TaskSegment>& segs, int64_t n, bool wide) {
    PcbParams p = kernels::make_pcb_params(K, st.ratio, st.lam, st.clamp, wide, n);
    p.total_blocks = kernels::plan_task_unit(segs, K, budget, 1);
    for (const TaskSegment& s : segs) {
      expect(s.vec == (shift == 0 ? kernels::task_vector_elems(s.dtype) : 1) || s.numel == 0, "plan: vector width");
    }
    emulate_unit(segs, p);
  });

  for (size_t i = 0; i < L; ++i) {
    const size_t bytes = size_t(list[i].numel) * size_t(dtype_bytes(list[i].dtype));
    const bool same = std::memcmp(bufs.out_cpu[i].data, bufs.out_gpu[i].data, bytes) == 0;
    if (std::memcmp(bufs.out_cpu[i].data, base[i].data, bytes) != 0) ++changed;
    expect(same, describe(list, st, shift, budget, data, in_place) + ": position " + std::to_string(i) +
                     " differs first at " + std::to_string(same ? -1 : bufs.first_difference(list, i)));
  }
}

// The radix passes cover the key bits exactly, for both phases and widths.
void check_digits() {
  for (bool wide : {false, true}) {
    for (int phase = 0; phase < 2; ++phase) {
      const int key = kernels::pcb_key_bits(wide, phase);
      int bits = 0;
      for (int pass = 0; pass < kernels::pcb_passes(key); ++pass) {
        const int hi = kernels::pcb_digit_hi(key, pass), lo = kernels::pcb_digit_lo(key, pass);
        expect(hi - lo >= 1 && hi - lo <= kernels::kDigitBits && lo >= 0, "radix: digit width");
        bits += hi - lo;
      }
      expect(bits == key && kernels::pcb_digit_lo(key, kernels::pcb_passes(key) - 1) == 0, "radix: key bits");
    }
  }
  expect(kernels::pcb_high(~uint64_t(0), 64) == 0 && kernels::pcb_high(uint64_t(1) << 40, 32) == 256, "pcb_high");
}

}  // namespace

int main() {
  std::mt19937_64 rng(1);
  check_digits();
  const std::vector<std::vector<Position>> lists = {
      {{Dtype::kFloat, 3001}},
      {{Dtype::kDouble, 1501}},
      {{Dtype::kBFloat16, 2051}},
      {{Dtype::kHalf, 1030}},
      {{Dtype::kFloat, 0}, {Dtype::kFloat, 1}, {Dtype::kFloat, 7}, {Dtype::kFloat, 1023}},
      {{Dtype::kBFloat16, 1029}, {Dtype::kFloat, 0}, {Dtype::kHalf, 3}, {Dtype::kFloat, 2051}},
      {{Dtype::kFloat, 999}, {Dtype::kDouble, 5}, {Dtype::kBFloat16, 700}, {Dtype::kHalf, 1}},
  };
  std::uniform_int_distribution<int> coin(0, 1);
  int cases = 0;
  for (const auto& list : lists) {
    for (int K : {1, 2, 5}) {
      for (double ratio : {1e-6, 0.5, 1.0}) {
        for (double clamp : {0.0, 1e-4, 0.1}) {
          Settings st{K, ratio, coin(rng) == 1 ? 1.0 : 0.7, clamp, coin(rng) == 1};
          const int shift = (cases % 5 == 3) ? 1 : 0;
          const int64_t budget = cases % 3 == 0 ? 1 : (cases % 3 == 1 ? 5 : 1000);
          const int data = cases % 4;
          const bool in_place = cases % 7 == 2;
          check_case(list, st, shift, budget, data, in_place, rng);
          ++cases;
        }
      }
    }
  }
  // Both scopes on one mixed list, with ties and without.
  for (int data = 0; data < 4; ++data) {
    for (bool global : {false, true}) {
      Settings st{3, 0.3, 1.0, 1e-4, global};
      check_case({{Dtype::kFloat, 2001}, {Dtype::kDouble, 77}, {Dtype::kHalf, 513}}, st, 0, 4, data, false, rng);
      check_case({{Dtype::kFloat, 2001}, {Dtype::kBFloat16, 77}}, st, 0, 1000, data, true, rng);
      cases += 2;
    }
  }
  expect(changed > cases / 2, "outputs differ from base: " + std::to_string(changed) + " of " + std::to_string(cases) + " cases");
  if (failures == 0) {
    std::printf("pcb CUDA host check: all passed (%d cases, %d checks, bit for bit; %d outputs differ from base)\n",
                cases, checks, changed);
  }
  return failures == 0 ? 0 : 1;
}
