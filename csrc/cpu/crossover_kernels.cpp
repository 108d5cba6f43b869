// CPU split-point crossover: OpenMP over fixed chunks, SIMD inside each chunk.
//
// Distributable builds cannot use -march=native, so the two hot loops are compiled
// once per instruction set with GCC's target_clones; the dynamic loader picks the
// best clone for the CPU at hand (AVX-512, AVX2+FMA, or baseline x86-64). The
// element maths comes from the shared torch-free headers, inlined into every clone.
#include "crossover_kernels.h"

#include <algorithm>

#include "isa_clones.h"
#include "m2n2/philox.h"

namespace m2n2::cpu {
namespace {

// Chunk of work handed to one thread at a time; large enough to amortise the
// scheduling, small enough to balance two to a hundred threads.
constexpr int64_t kChunk = int64_t(1) << 16;
// Partial sums run over blocks of this many elements before being added to the
// running totals (a blocked sum: never one long sequential accumulation).
constexpr int64_t kSumBlock = 1024;
// Elements whose noise is generated together in a stack buffer.
constexpr int64_t kNoiseTile = 512;

// Products are taken in fp64, where the product of two fp32 (or fp16/bf16) values
// is exact: the angle of a short or nearly (anti)parallel segment then comes out as
// the exact maths says (cos = +-1 exactly for one element, hence the lerp fallback)
// instead of a spurious small angle that the slerp formula would amplify. The pass
// is bound by memory bandwidth, so the wider arithmetic costs nothing measurable.
template <class T>
M2N2_HD void range_sums_body(const T* a, const T* b, int64_t n, double out[3]) {
  double dot = 0.0, aa = 0.0, bb = 0.0;
  for (int64_t start = 0; start < n; start += kSumBlock) {
    const int64_t len = std::min(kSumBlock, n - start);
    double bdot = 0.0, baa = 0.0, bbb = 0.0;
#pragma omp simd reduction(+ : bdot, baa, bbb)
    for (int64_t i = 0; i < len; ++i) {
      const double x = double(to_compute(a[start + i]));
      const double y = double(to_compute(b[start + i]));
      bdot += x * y;
      baa += x * x;
      bbb += y * y;
    }
    dot += bdot;
    aa += baa;
    bb += bbb;
  }
  out[0] = dot;
  out[1] = aa;
  out[2] = bb;
}

template <class T>
M2N2_HD void interp_body(const T* a, const T* b, T* out, int64_t n, compute_t<T> ca, compute_t<T> cb,
                         compute_t<T> sigma, uint64_t seed, uint64_t stream, uint64_t first_index) {
  using C = compute_t<T>;
  if (sigma == C(0)) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const C y = cb * to_compute(b[i]);
      out[i] = from_compute<T>(mul_add_nofma(ca, to_compute(a[i]), y));
    }
    return;
  }
  // Lane-major noise of the tile's counter groups, then interleaved into element order:
  // two simple loops that both vectorise.
  constexpr int64_t kGroups = kNoiseTile / 4 + 2;
  alignas(64) float zl[4][kGroups];
  alignas(64) float z[4 * kGroups];
  for (int64_t t0 = 0; t0 < n; t0 += kNoiseTile) {
    const int64_t len = std::min(kNoiseTile, n - t0);
    const uint64_t i0 = first_index + uint64_t(t0);
    const uint64_t g0 = i0 >> 2;
    const int64_t groups = int64_t(((i0 + uint64_t(len) + 3) >> 2) - g0);
#pragma omp simd
    for (int64_t g = 0; g < groups; ++g) {
      normals4(seed, stream, g0 + uint64_t(g), zl[0][g], zl[1][g], zl[2][g], zl[3][g]);
    }
#pragma omp simd
    for (int64_t g = 0; g < groups; ++g) {
      z[4 * g] = zl[0][g];
      z[4 * g + 1] = zl[1][g];
      z[4 * g + 2] = zl[2][g];
      z[4 * g + 3] = zl[3][g];
    }
    const float* zt = z + (i0 - 4 * g0);
    const T* at = a + t0;
    const T* bt = b + t0;
    T* ot = out + t0;
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) {
      const C child = mul_add_nofma(ca, to_compute(at[i]), cb * to_compute(bt[i]));
      ot[i] = from_compute<T>(mul_add_nofma(sigma, C(zt[i]), child));
    }
  }
}

// One clone set per storage type: target_clones does not apply to templates.
#define M2N2_DEFINE_RANGE_KERNELS(T)                                                              \
  M2N2_CLONES void range_sums(const T* a, const T* b, int64_t n, double out[3]) {                 \
    range_sums_body<T>(a, b, n, out);                                                             \
  }                                                                                               \
  M2N2_CLONES void interp_range(const T* a, const T* b, T* out, int64_t n, compute_t<T> ca,       \
                                compute_t<T> cb, compute_t<T> sigma, uint64_t seed, uint64_t stream, \
                                uint64_t first_index) {                                           \
    interp_body<T>(a, b, out, n, ca, cb, sigma, seed, stream, first_index);                       \
  }

M2N2_DEFINE_RANGE_KERNELS(float)
M2N2_DEFINE_RANGE_KERNELS(double)
M2N2_DEFINE_RANGE_KERNELS(bf16_t)
M2N2_DEFINE_RANGE_KERNELS(half_t)
#undef M2N2_DEFINE_RANGE_KERNELS

// A chunk of one segment: elements [begin, end) of segments[segment].
struct Chunk {
  int64_t segment;
  int64_t begin;
  int64_t end;
};

std::vector<Chunk> make_chunks(const std::vector<Segment>& segments) {
  std::vector<Chunk> chunks;
  for (int64_t s = 0; s < int64_t(segments.size()); ++s) {
    for (int64_t begin = 0; begin < segments[s].numel; begin += kChunk) {
      chunks.push_back({s, begin, std::min(segments[s].numel, begin + kChunk)});
    }
  }
  return chunks;
}

// Elements of the chunk on side 0 (global index < split): [begin, cut), side 1: [cut, end).
int64_t side_cut(const Segment& seg, const Chunk& c, int64_t split) {
  const int64_t local = split - seg.first_index;
  return std::max(c.begin, std::min(c.end, local));
}

// dot, |a|^2, |b|^2 of each side of the cut, for one chunk (6 doubles).
template <class T>
void chunk_sums(const Segment& seg, const Chunk& c, int64_t cut, double* partial) {
  const T* a = static_cast<const T*>(seg.a);
  const T* b = static_cast<const T*>(seg.b);
  range_sums(a + c.begin, b + c.begin, cut - c.begin, partial);
  range_sums(a + cut, b + cut, c.end - cut, partial + 3);
}

// The child of one chunk, in the compute type of its segment's storage type.
template <class T>
void chunk_interp(const Segment& seg, const Chunk& c, int64_t cut, const SplitCoefs& coefs, double noise_std,
                  uint64_t seed, uint64_t stream) {
  using C = compute_t<T>;
  const T* a = static_cast<const T*>(seg.a);
  const T* b = static_cast<const T*>(seg.b);
  T* out = static_cast<T*>(seg.out);
  const uint64_t first = uint64_t(seg.first_index);
  if (cut > c.begin) {
    interp_range(a + c.begin, b + c.begin, out + c.begin, cut - c.begin, C(coefs.ca[0]), C(coefs.cb[0]),
                 C(noise_std), seed, stream, first + uint64_t(c.begin));
  }
  if (c.end > cut) {
    interp_range(a + cut, b + cut, out + cut, c.end - cut, C(coefs.ca[1]), C(coefs.cb[1]), C(noise_std), seed,
                 stream, first + uint64_t(cut));
  }
}

}  // namespace

SplitSums split_sums(const std::vector<Segment>& segments, int64_t split) {
  const std::vector<Chunk> chunks = make_chunks(segments);
  const int64_t nchunks = int64_t(chunks.size());
  std::vector<double> partial(size_t(nchunks) * 6, 0.0);
#pragma omp parallel for schedule(static) if (nchunks > 1)
  for (int64_t k = 0; k < nchunks; ++k) {
    const Chunk& c = chunks[k];
    const Segment& seg = segments[c.segment];
    M2N2_DISPATCH_FLOAT(seg.dtype, chunk_sums, seg, c, side_cut(seg, c, split), &partial[6 * k])
  }
  SplitSums sums{};
  for (int64_t k = 0; k < nchunks; ++k) {  // fixed order: independent of threads
    for (int side = 0; side < 2; ++side) {
      sums.dot[side] += partial[6 * k + 3 * side];
      sums.aa[side] += partial[6 * k + 3 * side + 1];
      sums.bb[side] += partial[6 * k + 3 * side + 2];
    }
  }
  return sums;
}

void split_interp(const std::vector<Segment>& segments, int64_t split, const SplitCoefs& coefs,
                  double noise_std, uint64_t seed, uint64_t stream) {
  const std::vector<Chunk> chunks = make_chunks(segments);
  const int64_t nchunks = int64_t(chunks.size());
#pragma omp parallel for schedule(static) if (nchunks > 1)
  for (int64_t k = 0; k < nchunks; ++k) {
    const Chunk& c = chunks[k];
    const Segment& seg = segments[c.segment];
    M2N2_DISPATCH_FLOAT(seg.dtype, chunk_interp, seg, c, side_cut(seg, c, split), coefs, noise_std, seed,
                        stream)
  }
}

}  // namespace m2n2::cpu
