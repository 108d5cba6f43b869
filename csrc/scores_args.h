// Argument checks shared by the CPU and CUDA sample_scores kernels (torch side), and
// the translation of the tensors into the torch-free ScoresProblem.
//
// The words of the Python API's checks (m2n2_kernels/scores.py, check_op_args), which
// run first and hand the op its canonical form ([B, T, V] logits, int64 targets, bool mask, an out tensor);
// these checks guard direct torch.ops.m2n2 callers. Value checks (targets, out_index)
// are done by each backend, before anything is written.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string>

#include "args_common.h"
#include "m2n2/scores.h"

namespace m2n2 {

inline ScoreKind parse_score_kind(const std::string& kind) {
  return parse_choice<ScoreKind>(
      kind, "kind", {{"correct", ScoreKind::kCorrect}, {"logprob", ScoreKind::kLogprob}, {"prob", ScoreKind::kProb}});
}

inline ScoreReduce parse_score_reduce(const std::string& reduce) {
  return parse_choice<ScoreReduce>(
      reduce, "reduce", {{"mean", ScoreReduce::kMean}, {"sum", ScoreReduce::kSum}, {"all", ScoreReduce::kAll}});
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
  p.dtype = dtype_of(logits, "logits", {at::kFloat, at::kHalf, at::kBFloat16});
  TORCH_CHECK_VALUE(logits.dim() == 3, "logits must be 3-D [B, T, V], got shape ", shape_str(logits.sizes()));
  TORCH_CHECK_VALUE(logits.device().type() == device_type, "logits must be on ",
                    c10::DeviceTypeName(device_type, true), ", got ", logits.device());
  p.batch = logits.size(0);
  p.tokens = logits.size(1);
  p.vocab = logits.size(2);
  TORCH_CHECK_VALUE(p.vocab >= 1 && p.vocab < (int64_t(1) << 31),
                    "logits' last dimension (V, the number of classes) must lie in [1, 2**31), got ", p.vocab);
  TORCH_CHECK_VALUE(logits.stride(2) == 1 || p.vocab == 1, "logits' last dimension must be contiguous");
  p.logits = logits.data_ptr();
  p.stride_b = logits.stride(0);
  p.stride_t = logits.stride(1);

  check_like(target, "target", at::kLong, {p.batch, p.tokens}, logits.device());
  p.target = target.data_ptr<int64_t>();
  p.ignore_index = ignore_index;
  if (mask.has_value()) {
    check_like(*mask, "mask", at::kBool, {p.batch, p.tokens}, logits.device(), " (as target)");
    p.mask = reinterpret_cast<const uint8_t*>(mask->data_ptr<bool>());
  }

  p.out_type = dtype_of(out, "out", {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16, at::kBool, at::kByte});
  const bool zero_one = p.kind == ScoreKind::kCorrect && (p.reduce == ScoreReduce::kAll || p.tokens == 1);
  TORCH_CHECK_TYPE(zero_one || (p.out_type != Dtype::kBool && p.out_type != Dtype::kUInt8), "out may be ",
                   dtype_name(out.scalar_type()),
                   " only for 0/1 scores (kind='correct' with one token per sample or reduce='all'); kind='", kind,
                   "', reduce='", reduce, "' needs a float out");
  TORCH_CHECK_VALUE(out.dim() == 1, "out must be 1-D (e.g. a row S[i] of a score matrix), got shape ",
                    shape_str(out.sizes()));
  TORCH_CHECK_VALUE(out.device() == logits.device(), "out must be on ", logits.device(), ", got ", out.device());
  TORCH_CHECK_VALUE(out.stride(0) != 0 || out.size(0) <= 1,
                    "out's elements must not overlap (an expanded tensor cannot be written)");
  p.out = out.data_ptr();
  p.out_stride = out.stride(0);
  p.out_size = out.size(0);
  if (out_index.has_value()) {
    check_like(*out_index, "out_index", at::kLong, {p.batch}, logits.device(), " (one index per sample)");
    p.out_index = out_index->data_ptr<int64_t>();
  } else {
    TORCH_CHECK_VALUE(p.out_size == p.batch, "out must have ", p.batch,
                      " elements (one per sample) without out_index, got ", p.out_size);
  }
  check_disjoint({{&out, "out"}}, {{&logits, "logits"}, {&target, "target"}, {mask ? &*mask : nullptr, "mask"},
                                   {out_index ? &*out_index : nullptr, "out_index"}});
  return p;
}

// Errors for the values found bad by a backend's check (row: flat token index, or -1).
inline void raise_bad_target(const ScoresProblem& p, int64_t row, int64_t value) {
  TORCH_CHECK_INDEX(row < 0, "target[", row / p.tokens, ", ", row % p.tokens, "] = ", value,
                    " lies outside [0, ", p.vocab, ") and is not ignore_index (", p.ignore_index, ")");
}

inline void raise_bad_out_index(const ScoresProblem& p, int64_t b, int64_t value) {
  TORCH_CHECK_INDEX(b < 0, "out_index[", b, "] = ", value, " lies outside [0, ", p.out_size,
                    ") (the elements of out)");
}

}  // namespace m2n2
