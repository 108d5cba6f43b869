// CPU per-sample score gathering: OpenMP over (row, piece) units, SIMD over V.
//
// The two hot loops (sum of exponentials, "does a logit beat the target") are
// compiled once per instruction set with GCC's target_clones, like the crossover
// loops; the per-element maths (exp_approx, the argmax rule) comes from the shared
// torch-free header m2n2/scores.h, inlined into every clone.
#include "scores_kernels.h"

#include <algorithm>
#include <vector>

#include "isa_clones.h"

namespace m2n2::cpu {
namespace {

// Logits of a row per work unit: fixed, so the merge order never depends on threads.
constexpr int64_t kPiece = 16384;
// Logits per block of the softmax pass: converted to fp32 and their max taken in a
// first loop, exponentials summed from the L1-resident copy in a second.
constexpr int64_t kBlock = 512;
// "correct": a unit stops reading once some logit beats the target; checked this often.
constexpr int64_t kCheckEvery = 2048;
// Work units handed out together hold about this many logits.
constexpr int64_t kGrainLogits = 32768;

template <class T>
M2N2_HD SoftmaxState softmax_range_body(const T* x, int64_t n) {
  SoftmaxState st = softmax_empty();
  alignas(64) float buf[kBlock];
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t len = std::min(kBlock, n - b0);
    const T* xb = x + b0;
    float bm = neg_inf();
#pragma omp simd reduction(max : bm)
    for (int64_t i = 0; i < len; ++i) {
      const float v = to_compute(xb[i]);
      buf[i] = v;
      bm = v > bm ? v : bm;  // NaNs are skipped here; they make the sum NaN below
    }
    const float m = bm > st.m ? bm : st.m;
    const float ref = softmax_ref(m);
    float bs = 0.0f;
#pragma omp simd reduction(+ : bs)
    for (int64_t i = 0; i < len; ++i) bs += exp_approx(buf[i] - ref);
    st.s = (st.m == m ? st.s : st.s * exp_approx(st.m - ref)) + bs;
    st.m = m;
  }
  return st;
}

// Whether a logit of x[0, n) beats the target logit xt; all of them lie before the
// target (before = true) or all after it.
template <class T>
M2N2_HD bool beaten_range_body(const T* x, int64_t n, float xt, bool before) {
  for (int64_t b0 = 0; b0 < n; b0 += kCheckEvery) {
    const int64_t len = std::min(kCheckEvery, n - b0);
    const T* xb = x + b0;
    int any = 0;
    if (before) {
#pragma omp simd reduction(| : any)
      for (int64_t i = 0; i < len; ++i) any |= int(beats_before(to_compute(xb[i]), xt));
    } else {
#pragma omp simd reduction(| : any)
      for (int64_t i = 0; i < len; ++i) any |= int(beats_after(to_compute(xb[i]), xt));
    }
    if (any) return true;
  }
  return false;
}

// One clone set per storage type: target_clones does not apply to templates.
#define M2N2_DEFINE_SCORE_KERNELS(T)                                                       \
  M2N2_CLONES SoftmaxState softmax_range(const T* x, int64_t n) {                          \
    return softmax_range_body<T>(x, n);                                                    \
  }                                                                                        \
  M2N2_CLONES bool beaten_range(const T* x, int64_t n, float xt, bool before) {            \
    return beaten_range_body<T>(x, n, xt, before);                                         \
  }

M2N2_DEFINE_SCORE_KERNELS(float)
M2N2_DEFINE_SCORE_KERNELS(bf16_t)
M2N2_DEFINE_SCORE_KERNELS(half_t)
#undef M2N2_DEFINE_SCORE_KERNELS

int64_t pieces_per_row(int64_t vocab) { return (vocab + kPiece - 1) / kPiece; }

template <class T>
const T* row_logits(const ScoresProblem& p, int64_t row) {
  const int64_t b = row / p.tokens;
  const int64_t t = row % p.tokens;
  return static_cast<const T*>(p.logits) + b * p.stride_b + t * p.stride_t;
}

// Pass 1: a state per (row, piece) unit of every counted row.
template <class T>
void unit_states(const ScoresProblem& p, std::vector<SoftmaxState>& softmax, std::vector<uint8_t>& beaten) {
  const int64_t pieces = pieces_per_row(p.vocab);
  const int64_t units = p.batch * p.tokens * pieces;
  const int64_t grain = std::max<int64_t>(1, kGrainLogits / std::min(p.vocab, kPiece));
#pragma omp parallel for schedule(dynamic, grain) if (units > grain)
  for (int64_t u = 0; u < units; ++u) {
    const int64_t row = u / pieces;
    const int64_t tgt = counted_target(p, row);
    if (tgt < 0) continue;
    const T* x = row_logits<T>(p, row);
    const int64_t lo = (u % pieces) * kPiece;
    const int64_t hi = std::min(p.vocab, lo + kPiece);
    if (p.kind == ScoreKind::kCorrect) {
      const float xt = to_compute(x[tgt]);
      const int64_t cut = std::clamp(tgt, lo, hi);  // [lo, cut) before the target
      const int64_t after = std::max(lo, tgt + 1);  // [after, hi) after it
      bool hit = beaten_range(x + lo, cut - lo, xt, true);
      if (!hit && hi > after) hit = beaten_range(x + after, hi - after, xt, false);
      beaten[u] = hit ? 1 : 0;
    } else {
      softmax[u] = softmax_range(x + lo, hi - lo);
    }
  }
}

// Pass 2: merge the states of each counted token, reduce the tokens of each sample,
// store the score.
template <class T>
void finish_samples(const ScoresProblem& p, const std::vector<SoftmaxState>& softmax,
                    const std::vector<uint8_t>& beaten) {
  const int64_t pieces = pieces_per_row(p.vocab);
#pragma omp parallel for schedule(static) if (p.batch * p.tokens * pieces > 8192)
  for (int64_t b = 0; b < p.batch; ++b) {
    SampleSum acc{0.0, 0};
    for (int64_t t = 0; t < p.tokens; ++t) {
      const int64_t row = b * p.tokens + t;
      const int64_t tgt = counted_target(p, row);
      if (tgt < 0) continue;
      const int64_t u0 = row * pieces;
      acc.count += 1;
      if (p.kind == ScoreKind::kCorrect) {
        bool hit = false;
        for (int64_t k = 0; k < pieces; ++k) hit = hit || beaten[u0 + k] != 0;
        acc.sum += hit ? 0.0 : 1.0;
      } else {
        SoftmaxState st = softmax[u0];
        for (int64_t k = 1; k < pieces; ++k) st = softmax_merge(st, softmax[u0 + k]);
        const float lp = softmax_logprob(st, to_compute(row_logits<T>(p, row)[tgt]));
        acc.sum += p.kind == ScoreKind::kLogprob ? double(lp) : double(expf(lp));
      }
    }
    const int64_t pos = p.out_index != nullptr ? p.out_index[b] : b;
    store_score(p.out, pos * p.out_stride, p.out_type, sample_value(p.reduce, acc));
  }
}

template <class T>
void sample_scores_typed(const ScoresProblem& p) {
  const size_t units = size_t(p.batch * p.tokens * pieces_per_row(p.vocab));
  std::vector<SoftmaxState> softmax(p.kind == ScoreKind::kCorrect ? 0 : units);
  std::vector<uint8_t> beaten(p.kind == ScoreKind::kCorrect ? units : 0);
  unit_states<T>(p, softmax, beaten);
  finish_samples<T>(p, softmax, beaten);
}

}  // namespace

int64_t first_bad_target(const ScoresProblem& p) {
  const int64_t rows = p.batch * p.tokens;
  for (int64_t row = 0; row < rows; ++row) {
    if (target_out_of_range(p, row)) return row;
  }
  return -1;
}

int64_t first_bad_out_index(const ScoresProblem& p) {
  if (p.out_index == nullptr) return -1;
  for (int64_t b = 0; b < p.batch; ++b) {
    if (p.out_index[b] < 0 || p.out_index[b] >= p.out_size) return b;
  }
  return -1;
}

void sample_scores(const ScoresProblem& p) {
  if (p.batch == 0) return;
  switch (p.dtype) {
    case Dtype::kFloat: return sample_scores_typed<float>(p);
    case Dtype::kBFloat16: return sample_scores_typed<bf16_t>(p);
    case Dtype::kHalf: return sample_scores_typed<half_t>(p);
    default: break;  // refused by the argument checks
  }
}

}  // namespace m2n2::cpu
