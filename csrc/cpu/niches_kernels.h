// CPU niche statistics on raw pointers (torch-free). The problem description
// (NichesProblem) and the per-element maths are shared with the CUDA kernels, in
// m2n2/niches.h.
//
// Fitness, z and the attraction row come from one read of S: the columns are cut into
// blocks that fit in L2, and each block is summed over its rows (z), weighted (u) and
// summed along its rows (fitness, attraction row) while it is still in cache. The
// attraction matrix then runs a register-tiled pass over (a, b) row tiles, or, for
// 0/1 scores, counts bits: columns of equal weight are packed together, one bit per
// score, and A[a, b] = sum over weight groups of u_g * popcount(~S_a & S_b).
// Every sum runs in an order fixed by the shape alone: the result does not depend on
// the thread count.
#pragma once

#include <cstdint>

#include "m2n2/niches.h"

namespace m2n2::cpu {

// Where a bad score (NaN, infinite or negative) was found: row == N is the child;
// row == kNoBadScore when every score is good; row == kColumnOverflow when the scores
// of column col are good but their sum is not finite.
struct BadScore {
  static constexpr int64_t kNoBadScore = -1;
  static constexpr int64_t kColumnOverflow = -2;
  int64_t row;
  int64_t col;
  double value;
};

// Computes every output of p, or, when S or the child holds a bad score, writes
// nothing and returns the first one (lowest column, then lowest row).
BadScore niche_stats(const NichesProblem& p);

}  // namespace m2n2::cpu
