// Torch-free helpers shared by the CPU (C++/OpenMP) and CUDA code.
//
// Everything under include/m2n2 must compile both with a host compiler and with
// nvcc, and must not include torch: other merge libraries can reuse these headers
// and the CUDA kernels built on them without linking against libtorch.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define M2N2_HD __host__ __device__ __forceinline__
#else
#define M2N2_HD inline __attribute__((always_inline))
#endif

namespace m2n2 {

M2N2_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

M2N2_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

M2N2_HD uint64_t double_bits(double d) {
#if defined(__CUDA_ARCH__)
  return uint64_t(__double_as_longlong(d));
#else
  uint64_t u;
  std::memcpy(&u, &d, sizeof(u));
  return u;
#endif
}

M2N2_HD double bits_double(uint64_t u) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double((long long)u);
#else
  double d;
  std::memcpy(&d, &u, sizeof(d));
  return d;
#endif
}

// a * b + c with two roundings, never contracted into an FMA. The CPU build uses
// -ffp-contract=off; on the device the _rn intrinsics are never fused. Keeping the
// rounding identical on every backend lets the tests compare CPU and CUDA results
// with the torch reference bit for bit where no transcendental function is involved.
M2N2_HD float mul_add_nofma(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(__fmul_rn(a, b), c);
#else
  return a * b + c;
#endif
}

M2N2_HD double mul_add_nofma(double a, double b, double c) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(__dmul_rn(a, b), c);
#else
  return a * b + c;
#endif
}

}  // namespace m2n2
