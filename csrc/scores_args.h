// Argument checks shared by the CPU and CUDA sample_scores kernels (torch side), and
// the translation of the tensors into the torch-free ScoresProblem.
//
// The Python API (m2n2_kernels/scores.py) raises precise errors first and hands the
// op its canonical form ([B, T, V] logits, int64 targets, bool mask, an out tensor);
// these checks guard direct torch.ops.m2n2 callers. Value checks (targets, out_index)
// are done by each backend, before anything is written.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string>

#include "m2n2/scores.h"

namespace m2n2 {

inline ScoreKind parse_score_kind(const std::string& kind) {
  if (kind == "correct") return ScoreKind::kCorrect;
  if (kind == "logprob") return ScoreKind::kLogprob;
  if (kind == "prob") return ScoreKind::kProb;
  TORCH_CHECK_VALUE(false, "kind must be 'correct', 'logprob' or 'prob', got '", kind, "'");
}

inline ScoreReduce parse_score_reduce(const std::string& reduce) {
  if (reduce == "mean") return ScoreReduce::kMean;
  if (reduce == "sum") return ScoreReduce::kSum;
  if (reduce == "all") return ScoreReduce::kAll;
  TORCH_CHECK_VALUE(false, "reduce must be 'mean', 'sum' or 'all', got '", reduce, "'");
}

inline LogitsType logits_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return LogitsType::kFloat;
    case at::kBFloat16: return LogitsType::kBFloat16;
    case at::kHalf: return LogitsType::kHalf;
    default: TORCH_CHECK_TYPE(false, "logits must be float32, float16 or bfloat16, got ", t);
  }
}

inline ScoreOut score_out_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return ScoreOut::kFloat;
    case at::kDouble: return ScoreOut::kDouble;
    case at::kHalf: return ScoreOut::kHalf;
    case at::kBFloat16: return ScoreOut::kBFloat16;
    case at::kBool: return ScoreOut::kBool;
    case at::kByte: return ScoreOut::kUInt8;
    default: TORCH_CHECK_TYPE(false, "out must be float32, float64, float16, bfloat16, bool or uint8, got ", t);
  }
}

// Checks the arguments of sample_scores_out for a backend on `device_type` and
// describes them. Values (targets, out_index) are not read here.
inline ScoresProblem make_scores_problem(const at::Tensor& logits, const at::Tensor& target,
                                         const std::optional<at::Tensor>& mask, int64_t ignore_index,
                                         const std::string& kind, const std::string& reduce,
                                         const at::Tensor& out, const std::optional<at::Tensor>& out_index,
                                         c10::DeviceType device_type) {
  ScoresProblem p{};
  p.kind = parse_score_kind(kind);
  p.reduce = parse_score_reduce(reduce);
  TORCH_CHECK_VALUE(p.reduce != ScoreReduce::kAll || p.kind == ScoreKind::kCorrect,
                    "reduce='all' (exact match) needs kind='correct'");
  TORCH_CHECK_VALUE(logits.dim() == 3, "logits must be 3-D [B, T, V], got shape ", logits.sizes());
  p.dtype = logits_type(logits.scalar_type());
  TORCH_CHECK_VALUE(logits.device().type() == device_type, "logits must be on ", device_type, ", got ",
                    logits.device());
  p.batch = logits.size(0);
  p.tokens = logits.size(1);
  p.vocab = logits.size(2);
  TORCH_CHECK_VALUE(p.vocab >= 1 && p.vocab < (int64_t(1) << 31),
                    "logits' last dimension (V) must lie in [1, 2^31), got ", p.vocab);
  TORCH_CHECK_VALUE(logits.stride(2) == 1 || p.vocab == 1, "logits' last dimension must be contiguous");
  p.logits = logits.data_ptr();
  p.stride_b = logits.stride(0);
  p.stride_t = logits.stride(1);

  TORCH_CHECK_TYPE(target.scalar_type() == at::kLong, "target must be int64, got ", target.scalar_type());
  TORCH_CHECK_VALUE(target.dim() == 2 && target.size(0) == p.batch && target.size(1) == p.tokens,
                    "target must have shape [", p.batch, ", ", p.tokens, "], got ", target.sizes());
  TORCH_CHECK_VALUE(target.is_contiguous(), "target must be contiguous");
  TORCH_CHECK_VALUE(target.device() == logits.device(), "target must be on ", logits.device(), ", got ",
                    target.device());
  p.target = target.data_ptr<int64_t>();
  p.ignore_index = ignore_index;
  if (mask.has_value()) {
    TORCH_CHECK_TYPE(mask->scalar_type() == at::kBool, "mask must be bool, got ", mask->scalar_type());
    TORCH_CHECK_VALUE(mask->sizes() == target.sizes(), "mask must have the shape of target ",
                      target.sizes(), ", got ", mask->sizes());
    TORCH_CHECK_VALUE(mask->is_contiguous(), "mask must be contiguous");
    TORCH_CHECK_VALUE(mask->device() == logits.device(), "mask must be on ", logits.device(), ", got ",
                      mask->device());
    p.mask = reinterpret_cast<const uint8_t*>(mask->data_ptr<bool>());
  }

  p.out_type = score_out_type(out.scalar_type());
  const bool zero_one = p.kind == ScoreKind::kCorrect && (p.reduce == ScoreReduce::kAll || p.tokens == 1);
  TORCH_CHECK_TYPE(zero_one || (p.out_type != ScoreOut::kBool && p.out_type != ScoreOut::kUInt8),
                   "out may be bool or uint8 only for 0/1 scores (kind='correct' with one token or "
                   "reduce='all'), got ", out.scalar_type());
  TORCH_CHECK_VALUE(out.dim() == 1, "out must be 1-D, got shape ", out.sizes());
  TORCH_CHECK_VALUE(out.device() == logits.device(), "out must be on ", logits.device(), ", got ",
                    out.device());
  p.out = out.data_ptr();
  p.out_stride = out.stride(0);
  p.out_size = out.size(0);
  if (out_index.has_value()) {
    TORCH_CHECK_TYPE(out_index->scalar_type() == at::kLong, "out_index must be int64, got ",
                     out_index->scalar_type());
    TORCH_CHECK_VALUE(out_index->dim() == 1 && out_index->size(0) == p.batch,
                      "out_index must have shape [", p.batch, "], got ", out_index->sizes());
    TORCH_CHECK_VALUE(out_index->is_contiguous(), "out_index must be contiguous");
    TORCH_CHECK_VALUE(out_index->device() == logits.device(), "out_index must be on ", logits.device(),
                      ", got ", out_index->device());
    p.out_index = out_index->data_ptr<int64_t>();
  } else {
    TORCH_CHECK_VALUE(p.out_size == p.batch, "out must have ", p.batch,
                      " elements without out_index, got ", p.out_size);
  }
  return p;
}

// Errors for the values found bad by a backend's check (row: flat token index, or -1).
inline void raise_bad_target(const ScoresProblem& p, int64_t row, int64_t value) {
  TORCH_CHECK_VALUE(row < 0, "target[", row / p.tokens, ", ", row % p.tokens, "] = ", value,
                    " lies outside [0, ", p.vocab, ") and is not ignore_index (", p.ignore_index, ")");
}

inline void raise_bad_out_index(const ScoresProblem& p, int64_t b, int64_t value) {
  TORCH_CHECK_VALUE(b < 0, "out_index[", b, "] = ", value, " lies outside [0, ", p.out_size,
                    ") (the elements of out)");
}

}  // namespace m2n2
