// CPU split-point crossover on raw pointers (torch-free).
//
// Segments (interp.h) are the buffers of one long vector. Work is cut into fixed chunks whose
// boundaries do not depend on the thread count: partial sums are combined in chunk
// order, so results are the same with 1 thread or 64.
#pragma once

#include <cstdint>
#include <vector>

#include "m2n2/dtypes.h"
#include "m2n2/interp.h"

namespace m2n2::cpu {

using m2n2::Dtype;
using m2n2::Segment;

// dot, |a|^2, |b|^2 on each side of the split (fp64 partials of blocked sums).
SplitSums split_sums(const std::vector<Segment>& segments, int64_t split);

// out = ca[side] a + cb[side] b (+ noise_std * z(seed, stream, index)), each segment
// in the compute type of its own dtype.
void split_interp(const std::vector<Segment>& segments, int64_t split, const SplitCoefs& coefs,
                  double noise_std, uint64_t seed, uint64_t stream);

}  // namespace m2n2::cpu
