// Counter-based Gaussian noise for the fused mutation (torch-free).
//
// Element i of a mutated child gets noise z(seed, stream, i): Philox4x32-10 (the
// Random123 generator, same rounds and constants as Triton's tl.philox) on
// counter (g_lo, g_hi, stream_lo, stream_hi) with g = i / 4 and key
// (seed_lo, seed_hi) gives four 32-bit words; Box-Muller turns words (0, 1) into
// the normals of lanes 0 and 1 (cos, sin) and words (2, 3) into lanes 2 and 3.
// Element i takes lane i % 4. Because the value depends only on (seed, stream, i),
// the same seed gives the same child whatever the thread count, chunking or launch
// shape. m2n2_kernels/reference.py holds the same definition in torch.
#pragma once

#include <math.h>

#include "m2n2/common.h"

namespace m2n2 {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

M2N2_HD void philox4x32_10(uint32_t c[4], uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = uint64_t(kPhiloxM0) * c[0];
    const uint64_t p1 = uint64_t(kPhiloxM1) * c[2];
    const uint32_t n0 = uint32_t(p1 >> 32) ^ c[1] ^ k0;
    const uint32_t n2 = uint32_t(p0 >> 32) ^ c[3] ^ k1;
    c[0] = n0;
    c[1] = uint32_t(p1);
    c[2] = n2;
    c[3] = uint32_t(p0);
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
}

// ln(x) for x in (0, 1] (the Box-Muller radius), accurate to a few ulp: x = m 2^e
// with m in [sqrt(1/2), sqrt(2)), ln(m) = 2 atanh(s), s = (m - 1) / (m + 1),
// |s| <= 0.172, so five odd terms of the series leave an error below 1e-9.
M2N2_HD float log_unit(float x) {
  uint32_t ix = float_bits(x) + (0x3F800000u - 0x3F3504F3u);
  const int e = int(ix >> 23) - 0x7F;
  ix = (ix & 0x007FFFFFu) + 0x3F3504F3u;
  const float m = bits_float(ix);
  const float s = (m - 1.0f) / (m + 1.0f);
  const float z = s * s;
  const float series = 1.0f + z * (1.0f / 3 + z * (1.0f / 5 + z * (1.0f / 7 + z * (1.0f / 9))));
  return float(e) * 0.693147180559945309f + 2.0f * s * series;
}

// sin and cos of 2 pi u for u in [0, 1): reduce to the nearest quarter turn,
// evaluate the Taylor polynomials on [-pi/4, pi/4], rotate by the quadrant.
M2N2_HD void sincos_2pi(float u, float* s_out, float* c_out) {
  const float v = u * 4.0f;  // exact: u has 24 significant bits
  const float q = float(int(v + 0.5f));
  const float x = (v - q) * 1.57079632679489662f;
  const float x2 = x * x;
  const float s =
      x * (1.0f + x2 * (-1.0f / 6 + x2 * (1.0f / 120 + x2 * (-1.0f / 5040 + x2 * (1.0f / 362880)))));
  const float c =
      1.0f + x2 * (-0.5f + x2 * (1.0f / 24 + x2 * (-1.0f / 720 + x2 * (1.0f / 40320 + x2 * (-1.0f / 3628800)))));
  const int quadrant = int(q) & 3;
  const float sq = quadrant == 0 ? s : quadrant == 1 ? c : quadrant == 2 ? -s : -c;
  const float cq = quadrant == 0 ? c : quadrant == 1 ? -s : quadrant == 2 ? -c : s;
  *s_out = sq;
  *c_out = cq;
}

// Box-Muller: two Philox words to two standard normals (r cos, r sin).
M2N2_HD void box_muller(uint32_t w0, uint32_t w1, float& z_cos, float& z_sin) {
  // u1 in (0, 1] keeps the log finite; u2 in [0, 1). 24 bits each, exact in fp32.
  const float u1 = float((w0 >> 8) + 1u) * 0x1.0p-24f;
  const float u2 = float(w1 >> 8) * 0x1.0p-24f;
  const float r = sqrtf(-2.0f * log_unit(u1));
  float s, c;
  sincos_2pi(u2, &s, &c);
  z_cos = r * c;
  z_sin = r * s;
}

// The four standard normals of counter group `group` (elements 4g .. 4g+3).
// Outputs are scalars rather than an array so that loops over groups vectorise.
M2N2_HD void normals4(uint64_t seed, uint64_t stream, uint64_t group, float& z0, float& z1, float& z2,
                      float& z3) {
  uint32_t c[4] = {uint32_t(group), uint32_t(group >> 32), uint32_t(stream), uint32_t(stream >> 32)};
  philox4x32_10(c, uint32_t(seed), uint32_t(seed >> 32));
  box_muller(c[0], c[1], z0, z1);
  box_muller(c[2], c[3], z2, z3);
}

// The normal of one element (used where a kernel handles a single element).
M2N2_HD float normal_at(uint64_t seed, uint64_t stream, uint64_t index) {
  float z0, z1, z2, z3;
  normals4(seed, stream, index >> 2, z0, z1, z2, z3);
  const int lane = int(index & 3u);
  return lane == 0 ? z0 : lane == 1 ? z1 : lane == 2 ? z2 : z3;
}

}  // namespace m2n2
