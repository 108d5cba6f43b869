// CPU per-sample score gathering on raw pointers (torch-free). The problem
// description (ScoresProblem) is shared with the CUDA kernels, in m2n2/scores.h.
//
// Rows (tokens) are cut into pieces of a fixed number of logits, whose
// boundaries depend only on V: OpenMP runs over (row, piece) units, each unit leaves
// a small state, and the states are merged per row in piece order. Results are thus
// the same whatever the thread count, and a few rows with a huge vocabulary still
// keep every thread busy.
#pragma once

#include <cstdint>

#include "m2n2/scores.h"

namespace m2n2::cpu {

// Flat index b * T + t of the first token whose mask is true and whose target lies
// outside [0, V) and is not ignore_index; -1 when every target is valid.
int64_t first_bad_target(const ScoresProblem& p);

// First b with out_index[b] outside [0, out_size); -1 when all are valid (or no index).
int64_t first_bad_out_index(const ScoresProblem& p);

// Writes the B scores into out. The caller checks shapes, targets and out_index
// first (the loops skip out-of-range targets, so logits are never read out of
// bounds, but out_index is trusted).
void sample_scores(const ScoresProblem& p);

}  // namespace m2n2::cpu
