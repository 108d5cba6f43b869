// Host-side check of the CUDA crossover kernels' index logic, for machines without a GPU.
//
// The per-thread bodies of csrc/cuda/kernels/crossover.cuh are __host__ __device__, so
// this program runs every (block, thread) of the planned launches one after another on
// the CPU and compares the child with the CPU kernels (csrc/cpu/crossover_kernels.cpp,
// torch-free) byte for byte: the same coefficients must give the same bits. It covers
// the vector and scalar paths (aligned and unaligned buffers), the tails, Philox groups
// that start mid-vector (index offsets not a multiple of 4), multi-tensor tables of many
// small segments, in-place updates, and the batched grid. The sums pass is compared with
// a plain fp64 sum. Build and run: `make cuda-host-check`.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "cpu/crossover_kernels.h"
#include "cuda/kernels/crossover.cuh"

using namespace m2n2;
namespace kernels = m2n2::cuda;  // (plain `cuda::` would be ambiguous with libcu++'s ::cuda)

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  if (!ok) {
    ++failures;
    std::printf("FAIL: %s\n", what);
  }
}

template <class T>
struct Names;
template <>
struct Names<float> {
  static constexpr Dtype cpu = Dtype::kFloat;
  static constexpr const char* name = "fp32";
};
template <>
struct Names<double> {
  static constexpr Dtype cpu = Dtype::kDouble;
  static constexpr const char* name = "fp64";
};
template <>
struct Names<bf16_t> {
  static constexpr Dtype cpu = Dtype::kBFloat16;
  static constexpr const char* name = "bf16";
};
template <>
struct Names<half_t> {
  static constexpr Dtype cpu = Dtype::kHalf;
  static constexpr const char* name = "fp16";
};

// A buffer of n elements whose first element sits `shift` elements past a 64-byte boundary.
template <class T>
struct Buffer {
  std::vector<unsigned char> store;
  T* data;
  Buffer(int64_t n, int shift) : store(size_t(n + 16) * sizeof(T) + 64) {
    const uintptr_t p = (reinterpret_cast<uintptr_t>(store.data()) + 63) & ~uintptr_t(63);
    data = reinterpret_cast<T*>(p) + shift;
  }
};

template <class T>
void fill_random(T* p, int64_t n, std::mt19937_64& rng) {
  std::normal_distribution<double> normal;
  for (int64_t i = 0; i < n; ++i) p[i] = from_compute<T>(compute_t<T>(normal(rng)));
}

// Runs the list kernels' per-thread bodies for every block and thread of the plan.
template <class T>
void emulate_list_interp(const kernels::LaunchPlan& plan, int64_t split, const double c4[4], double sigma,
                         uint64_t seed, uint64_t stream) {
  using C = compute_t<T>;
  const bool noise = C(sigma) != C(0);
  for (const kernels::SegmentTable& table : plan.tables) {
    for (int32_t block = 0; block < table.block_begin[table.count]; ++block) {
      for (int32_t thread = 0; thread < kernels::kThreads; ++thread) {
        const kernels::SegmentWork w = kernels::segment_work(table, block, thread);
        const T* a = static_cast<const T*>(w.seg.a);
        const T* b = static_cast<const T*>(w.seg.b);
        T* out = static_cast<T*>(w.seg.out);
        const int64_t cut = kernels::local_cut(split, w.seg.first_index, w.seg.numel);
        const auto coefs = kernels::interp_coefs<C>(c4, sigma);
        const int64_t n = w.seg.numel, first = w.seg.first_index;
        if (noise) {
          kernels::interp_range<T, true>(a, b, out, n, first, cut, coefs, seed, stream, w.tid, w.stride);
        } else {
          kernels::interp_range<T, false>(a, b, out, n, first, cut, coefs, seed, stream, w.tid, w.stride);
        }
      }
    }
  }
}

// The sums pass: per-thread sums, per-block totals (in thread order; the device uses a
// tree), then the partials in order.
template <class T>
SplitSums emulate_list_sums(const kernels::LaunchPlan& plan, int64_t split) {
  std::vector<double> partials(size_t(6 * plan.total_blocks), 0.0);
  for (size_t i = 0; i < plan.tables.size(); ++i) {
    const kernels::SegmentTable& table = plan.tables[i];
    for (int32_t block = 0; block < table.block_begin[table.count]; ++block) {
      double* row = &partials[size_t(6 * (plan.first_block[i] + block))];
      for (int32_t thread = 0; thread < kernels::kThreads; ++thread) {
        const kernels::SegmentWork w = kernels::segment_work(table, block, thread);
        kernels::SideSums s;
        kernels::accumulate_sums(static_cast<const T*>(w.seg.a), static_cast<const T*>(w.seg.b), w.seg.numel,
                             kernels::local_cut(split, w.seg.first_index, w.seg.numel), w.tid, w.stride, s);
        const double v[6] = {s.dot0, s.aa0, s.bb0, s.dot1, s.aa1, s.bb1};
        for (int q = 0; q < 6; ++q) row[q] += v[q];
      }
    }
  }
  SplitSums sums{};
  for (int64_t r = 0; r < plan.total_blocks; ++r) {
    for (int side = 0; side < 2; ++side) {
      sums.dot[side] += partials[size_t(6 * r + 3 * side)];
      sums.aa[side] += partials[size_t(6 * r + 3 * side + 1)];
      sums.bb[side] += partials[size_t(6 * r + 3 * side + 2)];
    }
  }
  return sums;
}

// Plain fp64 sums over the concatenated segments.
template <class T>
SplitSums direct_sums(const std::vector<kernels::Segment>& segs, int64_t split) {
  SplitSums s{};
  for (const kernels::Segment& g : segs) {
    for (int64_t i = 0; i < g.numel; ++i) {
      const double x = double(to_compute(static_cast<const T*>(g.a)[i]));
      const double y = double(to_compute(static_cast<const T*>(g.b)[i]));
      const int side = g.first_index + i < split ? 0 : 1;
      s.dot[side] += x * y;
      s.aa[side] += x * x;
      s.bb[side] += y * y;
    }
  }
  return s;
}

bool close(double x, double y, double scale) { return std::fabs(x - y) <= 1e-12 * (scale + 1e-300); }

// One list configuration: segments of the given sizes and alignment shifts, a split,
// an index offset, noise or not, into fresh buffers or in place (out = a).
template <class T>
void check_list(const std::vector<int64_t>& sizes, const std::vector<int>& shifts, int64_t split,
                int64_t index_offset, double sigma, bool in_place, int budget, std::mt19937_64& rng) {
  std::vector<Buffer<T>> a, b, out_cpu, out_gpu;
  std::vector<kernels::Segment> gpu_segs;
  std::vector<cpu::Segment> cpu_segs;
  int64_t first = index_offset;
  for (size_t j = 0; j < sizes.size(); ++j) {
    const int64_t n = sizes[j];
    const int shift = shifts[j % shifts.size()];
    a.emplace_back(n, shift);
    b.emplace_back(n, (shift * 3) % 5);
    out_cpu.emplace_back(n, 0);
    out_gpu.emplace_back(n, shift);
  }
  for (size_t j = 0; j < sizes.size(); ++j) {
    const int64_t n = sizes[j];
    fill_random(a[j].data, n, rng);
    fill_random(b[j].data, n, rng);
    if (in_place) {
      std::memcpy(out_gpu[j].data, a[j].data, size_t(n) * sizeof(T));
    } else {
      std::memset(out_gpu[j].data, 0xFF, size_t(n) * sizeof(T));  // NaN: unwritten elements show
    }
    if (n > 0) {
      gpu_segs.push_back({in_place ? out_gpu[j].data : a[j].data, b[j].data, out_gpu[j].data, n, first, Names<T>::cpu});
      cpu_segs.push_back({a[j].data, b[j].data, out_cpu[j].data, n, first, Names<T>::cpu});
    }
    first += n;
  }
  const kernels::LaunchPlan plan = kernels::plan_launches(gpu_segs, kernels::Unit<T>::kSize, budget);

  // Sums before the element pass (which may overwrite a).
  const SplitSums emulated = emulate_list_sums<T>(plan, split);
  const SplitSums direct = direct_sums<T>(gpu_segs, split);
  for (int side = 0; side < 2; ++side) {
    const double scale = direct.aa[side] + direct.bb[side];
    expect(close(emulated.dot[side], direct.dot[side], scale) &&
               close(emulated.aa[side], direct.aa[side], scale) &&
               close(emulated.bb[side], direct.bb[side], scale),
           "sums");
  }

  const SplitCoefs coefs = split_coefs(Method::kSlerp, OmegaMode::kSegment, direct, 0.3);
  const double c4[4] = {coefs.ca[0], coefs.cb[0], coefs.ca[1], coefs.cb[1]};
  const uint64_t seed = 0x123456789ABCDEFull, stream = 3;
  cpu::split_interp(cpu_segs, split, coefs, sigma, seed, stream);
  emulate_list_interp<T>(plan, split, c4, sigma, seed, stream);

  for (size_t j = 0; j < sizes.size(); ++j) {
    const int64_t n = sizes[j];
    if (std::memcmp(out_gpu[j].data, out_cpu[j].data, size_t(n) * sizeof(T)) != 0) {
      int64_t i = 0;
      while (std::memcmp(out_gpu[j].data + i, out_cpu[j].data + i, sizeof(T)) == 0) ++i;
      std::printf("FAIL: %s segment %zu (n=%lld, shift=%d) differs at %lld: gpu %g cpu %g "
                  "(split=%lld offset=%lld sigma=%g in_place=%d budget=%d)\n",
                  Names<T>::name, j, (long long)n, shifts[j % shifts.size()], (long long)i,
                  double(to_compute(out_gpu[j].data[i])), double(to_compute(out_cpu[j].data[i])),
                  (long long)split, (long long)index_offset, sigma, int(in_place), budget);
      ++failures;
      return;
    }
  }
}

// The batched grid: child k from rows ia[k], ib[k], noise stream k, index offset 0.
template <class T>
void check_batch(int64_t p, int64_t n, int budget, double sigma, std::mt19937_64& rng) {
  using C = compute_t<T>;
  Buffer<T> archive(p * n, 0);
  fill_random(archive.data, p * n, rng);
  const std::vector<int64_t> ia = {0, 1, 2, 3, 4, 0}, ib = {1, 2, 3, 4, 0, 0};
  const std::vector<int64_t> split = {0, 1, n / 3, n - 1, n, 5};
  const int64_t k_count = int64_t(ia.size());
  Buffer<T> out_gpu(k_count * n, 0), out_cpu(k_count * n, 0);
  std::memset(out_gpu.data, 0xFF, size_t(k_count * n) * sizeof(T));
  const kernels::BatchShape shape = kernels::batch_shape(n, k_count, kernels::Unit<T>::kSize, budget);
  const uint64_t seed = 99;
  for (int64_t k = 0; k < k_count; ++k) {
    const T* a = archive.data + ia[k] * n;
    const T* b = archive.data + ib[k] * n;
    const kernels::Segment seg{a, b, nullptr, n, 0, Names<T>::cpu};
    const SplitSums sums = direct_sums<T>({seg}, split[k]);
    const SplitCoefs coefs = split_coefs(Method::kSlerp, OmegaMode::kGlobal, sums, 0.1 * double(k + 1));
    const double c4[4] = {coefs.ca[0], coefs.cb[0], coefs.ca[1], coefs.cb[1]};
    cpu::split_interp({{a, b, out_cpu.data + k * n, n, 0, Names<T>::cpu}}, split[k], coefs, sigma, seed,
                      uint64_t(k));
    // The body of batch_interp_kernel for every (blockIdx.x, threadIdx.x) of child k.
    for (int bx = 0; bx < shape.blocks_x; ++bx) {
      for (int t = 0; t < kernels::kThreads; ++t) {
        const int64_t tid = int64_t(bx) * kernels::kThreads + t;
        const int64_t stride = int64_t(shape.blocks_x) * kernels::kThreads;
        const auto c = kernels::interp_coefs<C>(c4, sigma);
        T* out = out_gpu.data + k * n;
        if (C(sigma) != C(0)) {
          kernels::interp_range<T, true>(a, b, out, n, 0, split[k], c, seed, uint64_t(k), tid, stride);
        } else {
          kernels::interp_range<T, false>(a, b, out, n, 0, split[k], c, seed, uint64_t(k), tid, stride);
        }
      }
    }
  }
  char what[128];
  std::snprintf(what, sizeof(what), "%s batch p=%lld n=%lld budget=%d sigma=%g", Names<T>::name, (long long)p,
                (long long)n, budget, sigma);
  expect(std::memcmp(out_gpu.data, out_cpu.data, size_t(k_count * n) * sizeof(T)) == 0, what);
}

template <class T>
void check_dtype(std::mt19937_64& rng) {
  const std::vector<std::vector<int64_t>> lists = {
      {1}, {7}, {8}, {9}, {1023}, {100003}, {21, 0, 1, 2112, 5}, {3, 5, 7, 11, 13, 17, 4, 8, 16, 1000},
  };
  const std::vector<std::vector<int>> shifts = {{0}, {1}, {0, 1, 2, 0, 3}};
  for (const auto& sizes : lists) {
    int64_t n = 0;
    for (int64_t s : sizes) n += s;
    for (const auto& sh : shifts) {
      for (int64_t split : {int64_t(0), int64_t(1), n / 2 + 1, n}) {
        for (int64_t offset : {int64_t(0), int64_t(2)}) {
          for (double sigma : {0.0, 0.05}) {
            for (int budget : {1, 5, 1000}) {
              check_list<T>(sizes, sh, split + offset, offset, sigma, false, budget, rng);
            }
          }
        }
      }
      check_list<T>(sizes, sh, n / 3, 1, 0.05, true, 64, rng);
      check_list<T>(sizes, sh, (int64_t(1) << 32) + 3, (int64_t(1) << 32) - 6, 0.1, false, 7, rng);
    }
  }
  // Hundreds of small tensors: several launches of one table each.
  std::vector<int64_t> many;
  std::uniform_int_distribution<int64_t> size(0, 40);
  for (int j = 0; j < 300; ++j) many.push_back(size(rng));
  check_list<T>(many, {0, 1, 3}, 2000, 0, 0.05, false, 1056, rng);
  check_list<T>(many, {0}, 2001, 0, 0.0, true, 3, rng);
  for (int64_t n : {int64_t(1), int64_t(777), int64_t(1024), int64_t(5003)}) {
    for (int budget : {1, 6, 1056}) {
      check_batch<T>(5, n, budget, 0.0, rng);
      check_batch<T>(5, n, budget, 0.02, rng);
    }
  }
}

void check_plan() {
  std::vector<kernels::Segment> segs;
  std::mt19937_64 rng(5);
  std::uniform_int_distribution<int64_t> size(1, 1 << 20);
  for (int j = 0; j < 291; ++j) segs.push_back({nullptr, nullptr, nullptr, size(rng), 0});
  const int budget = 1056;
  const kernels::LaunchPlan plan = kernels::plan_launches(segs, 8, budget);
  expect(plan.tables.size() == (291 + kernels::kMaxSegments - 1) / kernels::kMaxSegments, "plan: launch count");
  int64_t blocks = 0;
  for (size_t i = 0; i < plan.tables.size(); ++i) {
    const kernels::SegmentTable& t = plan.tables[i];
    expect(plan.first_block[i] == blocks, "plan: first_block");
    expect(t.block_begin[0] == 0 && t.block_begin[t.count] <= budget + t.count, "plan: blocks per launch");
    for (int s = 0; s < t.count; ++s) {
      const int64_t nb = t.block_begin[s + 1] - t.block_begin[s];
      expect(nb >= 1 && nb <= kernels::blocks_wanted(t.seg[s].numel, 8), "plan: blocks per segment");
    }
    blocks += t.block_begin[t.count];
  }
  expect(blocks == plan.total_blocks, "plan: total");
  const kernels::BatchShape shape = kernels::batch_shape(1 << 20, 100000, 4, budget);
  expect(shape.blocks_x == 1 && shape.blocks_y == 65535, "batch shape: many children");
  const kernels::BatchShape one = kernels::batch_shape(1 << 30, 1, 4, budget);
  expect(one.blocks_x == budget && one.blocks_y == 1, "batch shape: one large child");
}

}  // namespace

int main() {
  std::mt19937_64 rng(1);
  check_plan();
  check_dtype<float>(rng);
  check_dtype<double>(rng);
  check_dtype<bf16_t>(rng);
  check_dtype<half_t>(rng);
  if (failures == 0) std::printf("crossover CUDA host check: all passed\n");
  return failures == 0 ? 0 : 1;
}
