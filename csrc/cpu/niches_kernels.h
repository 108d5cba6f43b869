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

// Where a non-finite score was found: row == -1 when every score is finite; row == N
// is the child.
struct NonFiniteScore {
  int64_t row;
  int64_t col;
  double value;
};

// Computes every output of p, or, when S or the child holds a NaN or an infinity,
// writes nothing and returns its position.
NonFiniteScore niche_stats(const NichesProblem& p);

}  // namespace m2n2::cpu
