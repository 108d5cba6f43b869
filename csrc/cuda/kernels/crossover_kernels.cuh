// Split-point crossover on the GPU, the kernels and their per-thread bodies (part 1
// of 2; crossover.cuh has the design, the launch shapes and the launchers).
// Torch-free; the per-thread bodies are __host__ __device__ so that
// tests/native/crossover_cuda_host_check.cu runs them on the CPU.
#pragma once

#include <cuda_runtime.h>

#include <cub/block/block_reduce.cuh>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "common.cuh"
#include "m2n2/dtypes.h"
#include "m2n2/interp.h"
#include "m2n2/philox.h"

namespace m2n2::cuda {

using m2n2::Dtype;
using m2n2::Segment;

constexpr int kMaxSegments = 32;  // segments per launch: the table stays under 2 KB

// ---------------------------------------------------------------------------
// 16-byte vector access. The element maths is done on "units": whole 16-byte
// vectors and at least one whole Philox group (4 elements), so that a unit's
// normals come from whole Philox calls: 4 fp32 (1 vector, 1 group), 4 fp64
// (2 vectors, 1 group), 8 fp16/bf16 (1 vector, 2 groups).
// ---------------------------------------------------------------------------

template <class T>
struct Vec;

template <>
struct Vec<float> {
  static constexpr int kSize = 4;
  static M2N2_HD void load(const float* p, float* v) {
    const float4 r = *reinterpret_cast<const float4*>(p);
    v[0] = r.x;
    v[1] = r.y;
    v[2] = r.z;
    v[3] = r.w;
  }
  static M2N2_HD void store(float* p, const float* v) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
  }
};

template <>
struct Vec<double> {
  static constexpr int kSize = 2;
  static M2N2_HD void load(const double* p, double* v) {
    const double2 r = *reinterpret_cast<const double2*>(p);
    v[0] = r.x;
    v[1] = r.y;
  }
  static M2N2_HD void store(double* p, const double* v) {
    *reinterpret_cast<double2*>(p) = make_double2(v[0], v[1]);
  }
};

// fp16 and bf16: eight 16-bit patterns in four 32-bit words, element 2j in the low
// half of word j (little-endian: the lower address).
template <class T>
struct Vec16 {
  static constexpr int kSize = 8;
  static M2N2_HD void load(const T* p, float* v) {
    const uint4 r = *reinterpret_cast<const uint4*>(p);
    const uint32_t words[4] = {r.x, r.y, r.z, r.w};
    M2N2_UNROLL
    for (int j = 0; j < 4; ++j) {
      v[2 * j] = to_compute(T{uint16_t(words[j] & 0xFFFFu)});
      v[2 * j + 1] = to_compute(T{uint16_t(words[j] >> 16)});
    }
  }
  static M2N2_HD void store(T* p, const float* v) {
    uint32_t words[4];
    M2N2_UNROLL
    for (int j = 0; j < 4; ++j) {
      words[j] = uint32_t(from_compute<T>(v[2 * j]).bits) |
                 (uint32_t(from_compute<T>(v[2 * j + 1]).bits) << 16);
    }
    *reinterpret_cast<uint4*>(p) = make_uint4(words[0], words[1], words[2], words[3]);
  }
};

template <>
struct Vec<bf16_t> : Vec16<bf16_t> {};
template <>
struct Vec<half_t> : Vec16<half_t> {};

template <class T>
struct Unit {
  static constexpr int kSize = Vec<T>::kSize < 4 ? 4 : Vec<T>::kSize;
};

// The unit of a storage type, for host code that knows it only at run time.
inline constexpr int unit_elems(Dtype dtype) {
  return dtype == Dtype::kFloat ? Unit<float>::kSize
         : dtype == Dtype::kDouble ? Unit<double>::kSize
                                   : Unit<bf16_t>::kSize;
}

template <class T>
M2N2_HD void load_unit(const T* p, compute_t<T>* v) {
  M2N2_UNROLL
  for (int k = 0; k < Unit<T>::kSize; k += Vec<T>::kSize) Vec<T>::load(p + k, v + k);
}

template <class T>
M2N2_HD void store_unit(T* p, const compute_t<T>* v) {
  M2N2_UNROLL
  for (int k = 0; k < Unit<T>::kSize; k += Vec<T>::kSize) Vec<T>::store(p + k, v + k);
}

M2N2_HD bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Local index of the first side-1 element of a buffer whose element 0 has global
// index `first` (side 0: global index < split).
M2N2_HD int64_t local_cut(int64_t split, int64_t first, int64_t n) {
  const int64_t cut = split - first;
  return cut < 0 ? 0 : (cut > n ? n : cut);
}

// ---------------------------------------------------------------------------
// Per-thread work on one buffer, grid-stride: thread `tid` of `stride` threads.
// __host__ __device__ so that a host program can check the index logic by running
// every (tid, stride) in turn.
// ---------------------------------------------------------------------------

// dot(a, b), |a|^2, |b|^2 on side 0 (before the split) and on side 1.
struct SideSums {
  double dot0 = 0.0, aa0 = 0.0, bb0 = 0.0;
  double dot1 = 0.0, aa1 = 0.0, bb1 = 0.0;
};

// Products in fp64 are exact for fp32/fp16/bf16 inputs, as in the CPU kernels: a
// one-element side then has cos = +-1 exactly and takes the lerp fallback, as the
// maths says, rather than a spurious small angle that slerp would amplify. (fma of an
// exact product is the same as multiply then add.)
template <class C>
M2N2_HD void add_products(C x, C y, bool side0, SideSums& s) {
  const double dx = double(x);
  const double dy = double(y);
  if (side0) {
    s.dot0 = fma(dx, dy, s.dot0);
    s.aa0 = fma(dx, dx, s.aa0);
    s.bb0 = fma(dy, dy, s.bb0);
  } else {
    s.dot1 = fma(dx, dy, s.dot1);
    s.aa1 = fma(dx, dx, s.aa1);
    s.bb1 = fma(dy, dy, s.bb1);
  }
}

// Adds this thread's share of a[0, n) and b[0, n) to s; elements [0, cut) are side 0.
template <class T>
M2N2_HD void accumulate_sums(const T* a, const T* b, int64_t n, int64_t cut, int64_t tid,
                             int64_t stride, SideSums& s) {
  using C = compute_t<T>;
  constexpr int U = Unit<T>::kSize;
  int64_t done = 0;
  if (aligned16(a) && aligned16(b)) {
    const int64_t units = n / U;
    for (int64_t u = tid; u < units; u += stride) {
      C x[U], y[U];
      load_unit(a + u * U, x);
      load_unit(b + u * U, y);
      M2N2_UNROLL
      for (int j = 0; j < U; ++j) add_products(x[j], y[j], u * U + j < cut, s);
    }
    done = units * U;
  }
  // Unaligned buffers, or the last n % U elements.
  for (int64_t i = done + tid; i < n; i += stride) {
    add_products(to_compute(a[i]), to_compute(b[i]), i < cut, s);
  }
}

// Coefficients of the element pass in the compute type (rounded once from fp64,
// as the CPU kernels do).
template <class C>
struct InterpCoefs {
  C ca0, cb0, ca1, cb1, sigma;
};

template <class C>
M2N2_HD InterpCoefs<C> interp_coefs(const double c4[4], double noise_std) {
  return {C(c4[0]), C(c4[1]), C(c4[2]), C(c4[3]), C(noise_std)};
}

// fl(ca x) + fl(cb y): two roundings, as torch computes x * ca + y * cb; never an FMA.
template <class C>
M2N2_HD C child_value(C x, C y, bool side0, const InterpCoefs<C>& c) {
  const C ca = side0 ? c.ca0 : c.ca1;
  const C cb = side0 ? c.cb0 : c.cb1;
  return mul_add_nofma(ca, x, cb * y);
}

// This thread's share of out[0, n) = child of a and b; element i has global index
// first + i, which picks its side (i < cut) and its noise z(seed, stream, first + i).
// out may be a or b (each element is read before it is written, by the same thread).
template <class T, bool kNoise>
M2N2_HD void interp_range(const T* a, const T* b, T* out, int64_t n, int64_t first, int64_t cut,
                          const InterpCoefs<compute_t<T>>& c, uint64_t seed, uint64_t stream,
                          int64_t tid, int64_t stride) {
  using C = compute_t<T>;
  constexpr int U = Unit<T>::kSize;
  int64_t done = 0;
  // Vector path: aligned buffers, and (with noise) units that start on a Philox group.
  if (aligned16(a) && aligned16(b) && aligned16(out) && (!kNoise || first % 4 == 0)) {
    const int64_t units = n / U;
    for (int64_t u = tid; u < units; u += stride) {
      const int64_t i0 = u * U;
      C x[U], y[U], r[U];
      float z[U] = {};
      load_unit(a + i0, x);
      load_unit(b + i0, y);
      if constexpr (kNoise) {
        const uint64_t g0 = uint64_t(first + i0) >> 2;
        M2N2_UNROLL
        for (int q = 0; q < U / 4; ++q) {
          normals4(seed, stream, g0 + uint64_t(q), z[4 * q], z[4 * q + 1], z[4 * q + 2], z[4 * q + 3]);
        }
      }
      M2N2_UNROLL
      for (int j = 0; j < U; ++j) {
        r[j] = child_value(x[j], y[j], i0 + j < cut, c);
        if constexpr (kNoise) r[j] = mul_add_nofma(c.sigma, C(z[j]), r[j]);
      }
      store_unit(out + i0, r);
    }
    done = units * U;
  }
  // Scalar path (unaligned buffers, or the last n % U elements): one Philox group of
  // global indices per step, so each group's normals are still drawn once.
  const int64_t g_begin = (first + done) >> 2;
  const int64_t g_end = (first + n + 3) >> 2;
  for (int64_t g = g_begin + tid; g < g_end; g += stride) {
    float z[4] = {};
    if constexpr (kNoise) normals4(seed, stream, uint64_t(g), z[0], z[1], z[2], z[3]);
    M2N2_UNROLL
    for (int lane = 0; lane < 4; ++lane) {
      const int64_t i = 4 * g + lane - first;  // local index of this lane's element
      if (i < done || i >= n) continue;
      C v = child_value(to_compute(a[i]), to_compute(b[i]), i < cut, c);
      if constexpr (kNoise) v = mul_add_nofma(c.sigma, C(z[lane]), v);
      out[i] = from_compute<T>(v);
    }
  }
}

// ---------------------------------------------------------------------------
// Multi-tensor form: a table of segments per launch.
// ---------------------------------------------------------------------------

// Blocks [block_begin[s], block_begin[s + 1]) of a launch work on seg[s].
struct SegmentTable {
  Segment seg[kMaxSegments];
  int32_t block_begin[kMaxSegments + 1];
  int32_t count;
};

// This block's segment and its threads' place in that segment's grid-stride loop.
struct SegmentWork {
  Segment seg;
  int64_t tid;
  int64_t stride;
};

M2N2_HD SegmentWork segment_work(const SegmentTable& table, int32_t block, int32_t thread) {
  int s = 0;
  while (s + 1 < table.count && block >= table.block_begin[s + 1]) ++s;
  const int64_t rank = block - table.block_begin[s];
  const int64_t blocks = table.block_begin[s + 1] - table.block_begin[s];
  return {table.seg[s], rank * kThreads + thread, blocks * kThreads};
}

// The 4 coefficients (ca0, cb0, ca1, cb1) of the element pass: written on the device
// by the coefficient kernel (slerp), or known on the host (lerp) and passed by value.
struct CoefSource {
  const double* device;  // null: use host
  double host[4];
};

// Block-wide sum of each of the six sums; thread 0 writes them to dst[0..5] in the
// order dot0, aa0, bb0, dot1, aa1, bb1. Every thread of the block must call it.
__device__ __forceinline__ void store_block_sums(const SideSums& s, double* dst) {
  using Reduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename Reduce::TempStorage temp;
  const double v[6] = {s.dot0, s.aa0, s.bb0, s.dot1, s.aa1, s.bb1};
  M2N2_UNROLL
  for (int q = 0; q < 6; ++q) {
    const double total = Reduce(temp).Sum(v[q]);
    if (threadIdx.x == 0) dst[q] = total;
    __syncthreads();  // temp is reused by the next reduction
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    list_sums_kernel(const __grid_constant__ SegmentTable table, int64_t split, double* partials) {
  const SegmentWork w = segment_work(table, int32_t(blockIdx.x), int32_t(threadIdx.x));
  SideSums s;
  accumulate_sums(static_cast<const T*>(w.seg.a), static_cast<const T*>(w.seg.b), w.seg.numel,
                  local_cut(split, w.seg.first_index, w.seg.numel), w.tid, w.stride, s);
  store_block_sums(s, partials + 6 * int64_t(blockIdx.x));
}

template <class T, bool kNoise>
__global__ void __launch_bounds__(kThreads)
    list_interp_kernel(const __grid_constant__ SegmentTable table, int64_t split, CoefSource coefs,
                       double noise_std, uint64_t seed, uint64_t stream) {
  const SegmentWork w = segment_work(table, int32_t(blockIdx.x), int32_t(threadIdx.x));
  double c4[4];
  M2N2_UNROLL
  for (int q = 0; q < 4; ++q) c4[q] = coefs.device != nullptr ? coefs.device[q] : coefs.host[q];
  interp_range<T, kNoise>(static_cast<const T*>(w.seg.a), static_cast<const T*>(w.seg.b),
                          static_cast<T*>(w.seg.out), w.seg.numel, w.seg.first_index,
                          local_cut(split, w.seg.first_index, w.seg.numel),
                          interp_coefs<compute_t<T>>(c4, noise_std), seed, stream, w.tid, w.stride);
}

// ---------------------------------------------------------------------------
// Coefficients on the device: one block per child.
// ---------------------------------------------------------------------------

// Child k's partials are partials[6 (k blocks_per_child + r) + q], r < blocks_per_child
// (none for lerp); its ratio is w_per_child[k], or w when w_per_child is null.
// Writes coefs[4k .. 4k + 3] = ca0, cb0, ca1, cb1. (A template only so that the
// header can be included by several translation units.)
template <int kBlock>
__global__ void __launch_bounds__(kBlock)
    coefs_kernel(const double* partials, int64_t blocks_per_child, Method method, OmegaMode mode,
                 const double* w_per_child, double w, double* coefs) {
  const int64_t k = blockIdx.x;
  double v[6] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
  // Fixed order: thread t adds rows t, t + kBlock, ...; then a fixed tree.
  for (int64_t r = threadIdx.x; r < blocks_per_child; r += kBlock) {
    const double* row = partials + 6 * (k * blocks_per_child + r);
    M2N2_UNROLL
    for (int q = 0; q < 6; ++q) v[q] += row[q];
  }
  using Reduce = cub::BlockReduce<double, kBlock>;
  __shared__ typename Reduce::TempStorage temp;
  double total[6];
  M2N2_UNROLL
  for (int q = 0; q < 6; ++q) {
    total[q] = Reduce(temp).Sum(v[q]);  // valid in thread 0 only
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    SplitSums sums;
    sums.dot[0] = total[0];
    sums.aa[0] = total[1];
    sums.bb[0] = total[2];
    sums.dot[1] = total[3];
    sums.aa[1] = total[4];
    sums.bb[1] = total[5];
    const SplitCoefs c = split_coefs(method, mode, sums, w_per_child != nullptr ? w_per_child[k] : w);
    coefs[4 * k] = c.ca[0];
    coefs[4 * k + 1] = c.cb[0];
    coefs[4 * k + 2] = c.ca[1];
    coefs[4 * k + 3] = c.cb[1];
  }
}

// ---------------------------------------------------------------------------
// Batched form: K children of a P x n archive, blockIdx.y (grid-stride) = child.
// ---------------------------------------------------------------------------

struct BatchArgs {
  const void* archive;  // P x n, contiguous
  void* out;            // K x n, contiguous
  int64_t rows;         // P
  int64_t n;
  int64_t children;     // K
  const int64_t* ia;    // device arrays of length K
  const int64_t* ib;
  const int64_t* split;
};

// Whether child k's rows and split are in range. The Python API rejects bad values
// before launching; this keeps direct callers memory-safe (such a child is NaN).
M2N2_HD bool child_valid(const BatchArgs& args, int64_t ra, int64_t rb, int64_t s) {
  return ra >= 0 && ra < args.rows && rb >= 0 && rb < args.rows && s >= 0 && s <= args.n;
}

template <class T>
__global__ void __launch_bounds__(kThreads) batch_sums_kernel(const BatchArgs args, double* partials) {
  const T* archive = static_cast<const T*>(args.archive);
  const int64_t n = args.n;
  const int64_t tid = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t k = blockIdx.y; k < args.children; k += gridDim.y) {
    const int64_t ra = args.ia[k], rb = args.ib[k], s = args.split[k];
    SideSums sums;
    if (child_valid(args, ra, rb, s)) {
      accumulate_sums(archive + ra * n, archive + rb * n, n, s, tid, stride, sums);
    }
    store_block_sums(sums, partials + 6 * (k * gridDim.x + blockIdx.x));
  }
}

template <class T, bool kNoise>
__global__ void __launch_bounds__(kThreads)
    batch_interp_kernel(const BatchArgs args, const double* coefs, double noise_std, uint64_t seed) {
  using C = compute_t<T>;
  const T* archive = static_cast<const T*>(args.archive);
  const int64_t n = args.n;
  const int64_t tid = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t k = blockIdx.y; k < args.children; k += gridDim.y) {
    const int64_t ra = args.ia[k], rb = args.ib[k], s = args.split[k];
    T* out = static_cast<T*>(args.out) + k * n;
    if (!child_valid(args, ra, rb, s)) {
      for (int64_t i = tid; i < n; i += stride) out[i] = from_compute<T>(C(NAN));
      continue;
    }
    double c4[4];
    M2N2_UNROLL
    for (int q = 0; q < 4; ++q) c4[q] = coefs[4 * k + q];
    interp_range<T, kNoise>(archive + ra * n, archive + rb * n, out, n, 0, s,
                            interp_coefs<C>(c4, noise_std), seed, uint64_t(k), tid, stride);
  }
}

}  // namespace m2n2::cuda
