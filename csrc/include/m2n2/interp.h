// Split-point interpolation coefficients (torch-free).
//
// child_i = ca[side] * a_i + cb[side] * b_i, side = 0 where i < split, else 1.
// t = w on side 0 and 1 - w on side 1. lerp: ca = 1 - t, cb = t. slerp: the angle
// omega between a and b (over the whole vectors, or per side for "segment"),
// ca = sin((1 - t) omega) / sin(omega), cb = sin(t omega) / sin(omega), falling back
// to lerp where sin(omega) <= 1e-6 or a norm is 0. Coefficients are computed in
// fp64 once per call; the element pass then needs one multiply-add per input.
#pragma once

#include <math.h>

#include "m2n2/common.h"
#include "m2n2/dtypes.h"

namespace m2n2 {

enum class Method : int { kLerp = 0, kSlerp = 1 };
enum class OmegaMode : int { kGlobal = 0, kSegment = 1 };

// Sums the slerp angle needs, for each side of the split.
struct SplitSums {
  double dot[2];
  double aa[2];
  double bb[2];
};

struct SplitCoefs {
  double ca[2];
  double cb[2];
};

// One contiguous buffer of a child: a model given as a list of tensors is a list of
// segments forming one long vector (one split, one angle over all of them). a, b and
// out of a segment share its dtype; segments may differ (bf16 weights, fp32 norms).
struct Segment {
  const void* a;
  const void* b;
  void* out;
  int64_t numel;
  int64_t first_index;  // global index (index_offset included) of element 0
  Dtype dtype;          // kFloat, kDouble, kBFloat16 or kHalf
};

constexpr double kSlerpMinSin = 1e-6;

M2N2_HD void slerp_coefs(double dot, double aa, double bb, double t, double* ca, double* cb) {
  const double na = sqrt(aa);
  const double nb = sqrt(bb);
  if (na > 0.0 && nb > 0.0) {
    double cosine = dot / (na * nb);
    cosine = cosine < -1.0 ? -1.0 : (cosine > 1.0 ? 1.0 : cosine);
    const double omega = acos(cosine);
    const double so = sin(omega);
    if (so > kSlerpMinSin) {
      *ca = sin((1.0 - t) * omega) / so;
      *cb = sin(t * omega) / so;
      return;
    }
  }
  *ca = 1.0 - t;
  *cb = t;
}

M2N2_HD SplitCoefs split_coefs(Method method, OmegaMode mode, const SplitSums& s, double w) {
  SplitCoefs c;
  const double t[2] = {w, 1.0 - w};
  for (int side = 0; side < 2; ++side) {
    if (method == Method::kLerp) {
      c.ca[side] = 1.0 - t[side];
      c.cb[side] = t[side];
    } else if (mode == OmegaMode::kGlobal) {
      slerp_coefs(s.dot[0] + s.dot[1], s.aa[0] + s.aa[1], s.bb[0] + s.bb[1], t[side], &c.ca[side],
                  &c.cb[side]);
    } else {
      slerp_coefs(s.dot[side], s.aa[side], s.bb[side], t[side], &c.ca[side], &c.cb[side]);
    }
  }
  return c;
}

}  // namespace m2n2
