// Storage types and their conversion to the compute type (torch-free).
//
// fp16 and bf16 are stored as 16-bit patterns and widened to fp32 for every
// element operation; results are rounded back to nearest-even, as torch does.
// The conversions are branch-free so that the CPU loops vectorise.
#pragma once

#include "m2n2/common.h"

namespace m2n2 {

// Every storage dtype of every op, for code that knows the dtype at run time (one
// enum for the whole library; csrc/args_common.h maps torch's dtypes onto it). 0/1
// scores stored in bytes (bool or uint8) are kUInt8 to the niche kernels; kBool is
// kept apart where a value is written (a bool holds exactly 0 or 1).
enum class Dtype : int { kFloat, kDouble, kBFloat16, kHalf, kBool, kUInt8 };

// Bytes of one element.
M2N2_HD int64_t dtype_bytes(Dtype t) {
  switch (t) {
    case Dtype::kDouble: return 8;
    case Dtype::kFloat: return 4;
    case Dtype::kBFloat16:
    case Dtype::kHalf: return 2;
    case Dtype::kBool:
    case Dtype::kUInt8: return 1;
  }
  return 1;
}

// The one dispatch on the floating storage types: fn<T>(args...) with T = float,
// double, bf16_t or half_t for `dtype`; any other dtype does nothing (the argument
// checks refuse it first). Usable in host and device code.
#define M2N2_DISPATCH_FLOAT(dtype, fn, ...)                         \
  switch (dtype) {                                                  \
    case ::m2n2::Dtype::kFloat: fn<float>(__VA_ARGS__); break;       \
    case ::m2n2::Dtype::kDouble: fn<double>(__VA_ARGS__); break;     \
    case ::m2n2::Dtype::kBFloat16: fn<::m2n2::bf16_t>(__VA_ARGS__); break; \
    case ::m2n2::Dtype::kHalf: fn<::m2n2::half_t>(__VA_ARGS__); break;     \
    default: break;                                                 \
  }

struct bf16_t {
  uint16_t bits;
};
struct half_t {
  uint16_t bits;
};

// The type in which element maths is done for a storage type: fp32, except fp64.
template <class T>
struct compute_type {
  using type = float;
};
template <>
struct compute_type<double> {
  using type = double;
};
template <class T>
using compute_t = typename compute_type<T>::type;

M2N2_HD float to_compute(float x) { return x; }
M2N2_HD double to_compute(double x) { return x; }
M2N2_HD float to_compute(bf16_t x) { return bits_float(uint32_t(x.bits) << 16); }

M2N2_HD float to_compute(half_t x) {
  // Exact widening: normal numbers by an exponent re-bias, subnormals through a
  // magic-number subtraction, selected without a branch.
  const uint32_t w = uint32_t(x.bits) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normal = bits_float((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float subnormal = bits_float((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t mag = two_w < (1u << 27) ? float_bits(subnormal) : float_bits(normal);
  return bits_float(sign | mag);
}

template <class T>
M2N2_HD T from_compute(compute_t<T> x);

template <>
M2N2_HD float from_compute<float>(float x) {
  return x;
}
template <>
M2N2_HD double from_compute<double>(double x) {
  return x;
}

template <>
M2N2_HD bf16_t from_compute<bf16_t>(float x) {
  const uint32_t u = float_bits(x);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (u >> 16) | 0x40u;
  const bool is_nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
  return bf16_t{uint16_t(is_nan ? quiet_nan : rounded)};
}

template <>
M2N2_HD half_t from_compute<half_t>(float x) {
  // Round-to-nearest-even narrowing: scaling by 2^112 then 2^-110 lets the FPU do
  // the rounding of the mantissa (and overflow to inf) for us; the bias term
  // aligns the rounding point for subnormal results.
  const uint32_t w = float_bits(x);
  float base = (bits_float(w & 0x7FFFFFFFu) * 0x1.0p+112f) * 0x1.0p-110f;
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  bias = bias < 0x71000000u ? 0x71000000u : bias;
  base = bits_float((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = float_bits(base);
  const uint32_t nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
  const uint32_t result = (sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign);
  return half_t{uint16_t(result)};
}

}  // namespace m2n2
