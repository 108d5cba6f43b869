// Per-sample score gathering: the per-row maths shared by the CPU and CUDA kernels
// (torch-free).
//
// A "row" is the V logits of one token (row = b * T + t). Each kernel reads a row
// once, in pieces, and keeps a small mergeable state per piece:
//   - kind "correct": a flag "some logit beats the target", so that correct = no
//     piece was beaten; the rule reproduces torch.argmax(-1) == target exactly
//     (ties go to the lowest index, a NaN counts as larger than any number and the
//     first NaN wins), without ever computing the argmax index;
//   - kinds "logprob" and "prob": an online (max, sum of exp(x - max)) pair in fp32,
//     merged across pieces, so that no softmax is ever written.
// Then the token scores of a sample are reduced over its valid tokens (mask true
// and target != ignore_index) in fp64 and stored into the output in its dtype.
#pragma once

#include <math.h>

#include "m2n2/common.h"
#include "m2n2/dtypes.h"

namespace m2n2 {

enum class ScoreKind : int { kCorrect = 0, kLogprob = 1, kProb = 2 };
enum class ScoreReduce : int { kMean = 0, kSum = 1, kAll = 2 };

// One call, on raw pointers (host or device memory alike).
struct ScoresProblem {
  const void* logits;  // [B, T, V]: logit (b, t, v) at b * stride_b + t * stride_t + v
  Dtype dtype;  // kFloat, kBFloat16 or kHalf
  int64_t batch;   // B
  int64_t tokens;  // T
  int64_t vocab;   // V >= 1
  int64_t stride_b;  // in elements
  int64_t stride_t;
  const int64_t* target;  // [B, T] contiguous
  const uint8_t* mask;    // [B, T] contiguous 0/1, or null: every token counts
  int64_t ignore_index;
  ScoreKind kind;
  ScoreReduce reduce;
  void* out;  // 1-D: out[k] at k * out_stride elements
  Dtype out_type;  // any: a score is written in out's dtype
  int64_t out_stride;
  int64_t out_size;            // elements of out
  const int64_t* out_index;    // [B] contiguous, or null: sample b goes to out[b]
};

M2N2_HD float neg_inf() { return bits_float(0xFF800000u); }

// exp(x) for the inner loops. On the GPU: the hardware exp2 unit (a few ulp). On the
// CPU: a branch-free polynomial that GCC vectorises (libm's expf does not): x = n ln2
// + r with |r| <= ln2/2 (Cody-Waite split of ln2, n * kLn2Hi exact), exp(r) by its
// degree-7 Taylor polynomial (truncation < 0.1 ulp), 2^n built in the exponent bits.
// Results below exp(-87) ~ 1.6e-38 flush to 0; exp(-inf) = 0; NaN stays NaN. The
// arguments here are always <= 0 (x - max), so overflow cannot occur.
M2N2_HD float exp_approx(float x) {
#if defined(__CUDA_ARCH__)
  return __expf(x);
#else
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;  // 9 significant bits
  constexpr float kLn2Lo = -2.12194440e-4f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);  // NaN passes through
  const float shifted = xc * kLog2e + kRound;
  const float n = shifted - kRound;
  const float r = (xc - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  // The low bits of `shifted` hold n (two's complement); n + 127 lies in [1, 254].
  const float scale = bits_float((float_bits(shifted) - 0x4B400000u + 127u) << 23);
  const float e = p * scale;
  return x < -87.0f ? 0.0f : e;
#endif
}

// ---- kinds "logprob" / "prob": online max and sum of exponentials ----

// s = sum of exp(x_i - softmax_ref(m)) over the logits seen, m their max (NaNs are
// skipped by the max but make s NaN). The reference point is 0 while every logit
// seen is -inf, so that a piece of -inf logits adds exactly 0 instead of NaN.
struct SoftmaxState {
  float m;
  float s;
};

M2N2_HD float softmax_ref(float m) { return m == neg_inf() ? 0.0f : m; }

M2N2_HD SoftmaxState softmax_empty() { return SoftmaxState{neg_inf(), 0.0f}; }

// The state of the union of two disjoint sets of logits.
M2N2_HD SoftmaxState softmax_merge(SoftmaxState a, SoftmaxState b) {
  const float m = b.m > a.m ? b.m : a.m;
  const float ref = softmax_ref(m);
  // exp(0) is exactly 1, so a piece that already holds the max is not rescaled.
  const float sa = a.m == m ? a.s : a.s * exp_approx(a.m - ref);
  const float sb = b.m == m ? b.s : b.s * exp_approx(b.m - ref);
  return SoftmaxState{m, sa + sb};
}

// log_softmax(x)[target] = (x_t - m) - log(s), as torch computes it. NaN when the row
// holds a NaN or +inf, or is all -inf (no distribution); -inf when x_t = -inf alone.
M2N2_HD float softmax_logprob(SoftmaxState st, float x_target) {
  return (x_target - softmax_ref(st.m)) - logf(st.s);
}

// ---- kind "correct": does any logit beat the target? ----

// Logit x at index i beats the target logit xt at index t (i != t) when argmax would
// pick i over t: i < t and x >= xt (an earlier tie wins), i > t and x > xt, or x is a
// NaN and (i < t or xt is not a NaN) -- torch.argmax treats NaN as the maximum and
// returns the first one.
M2N2_HD bool beats_before(float x, float xt) { return x >= xt || x != x; }
M2N2_HD bool beats_after(float x, float xt) { return x > xt || (x != x && xt == xt); }

// ---- tokens and samples ----

M2N2_HD bool token_valid(const uint8_t* mask, int64_t row, int64_t target, int64_t ignore_index) {
  return target != ignore_index && (mask == nullptr || mask[row] != 0);
}

// A target that makes the call an error: its token is not masked out, and it is
// neither ignore_index nor a class index in [0, V).
M2N2_HD bool target_out_of_range(const ScoresProblem& p, int64_t row) {
  const int64_t tgt = p.target[row];
  return token_valid(p.mask, row, tgt, p.ignore_index) && (tgt < 0 || tgt >= p.vocab);
}

// The target of a row whose score counts, else -1 (masked out, ignored, or out of
// range: the kernels never read a logit outside the row).
M2N2_HD int64_t counted_target(const ScoresProblem& p, int64_t row) {
  const int64_t tgt = p.target[row];
  if (!token_valid(p.mask, row, tgt, p.ignore_index) || tgt < 0 || tgt >= p.vocab) return -1;
  return tgt;
}

// Sum over the valid tokens of a sample, then its score: the token scores are 0/1
// ("correct"), log-probabilities or probabilities, accumulated in fp64.
struct SampleSum {
  double sum;
  int64_t count;
};

// "mean": sum / count; "sum": sum; "all" (kind "correct" only): 1 when every valid
// token is correct. A sample without a valid token scores 0 whatever the kind and
// reduction: the empty sum, and for "all" no exact match claimed on nothing. In an
// archive this keeps such a datapoint neutral (every model scores 0 on it).
M2N2_HD double sample_value(ScoreReduce reduce, SampleSum acc) {
  if (acc.count == 0) return 0.0;
  switch (reduce) {
    case ScoreReduce::kMean: return acc.sum / double(acc.count);
    case ScoreReduce::kSum: return acc.sum;
    case ScoreReduce::kAll: return acc.sum == double(acc.count) ? 1.0 : 0.0;
  }
  return 0.0;
}

// Writes one score into out[pos] (pos in elements). Scores go through fp32 on their way
// to a 16-bit type (round to nearest even, as torch's .to()), and are 0 or 1 whenever
// out is bool or uint8 (the Python API only allows those for 0/1 scores).
M2N2_HD void store_score(void* out, int64_t pos, Dtype type, double v) {
  switch (type) {
    case Dtype::kFloat: static_cast<float*>(out)[pos] = float(v); break;
    case Dtype::kDouble: static_cast<double*>(out)[pos] = v; break;
    case Dtype::kHalf: static_cast<half_t*>(out)[pos] = from_compute<half_t>(float(v)); break;
    case Dtype::kBFloat16: static_cast<bf16_t*>(out)[pos] = from_compute<bf16_t>(float(v)); break;
    case Dtype::kBool: static_cast<uint8_t*>(out)[pos] = v != 0.0 ? 1 : 0; break;
    case Dtype::kUInt8: static_cast<uint8_t*>(out)[pos] = uint8_t(v); break;
  }
}

}  // namespace m2n2
