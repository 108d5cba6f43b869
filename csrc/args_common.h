// Argument-check vocabulary shared by every op's checks (torch side), so that a
// direct torch.ops.m2n2 caller reads the same words as a user of the Python API
// (m2n2_kernels/_checks.py): dtypes as `torch.float32`, shapes as `(3, 5)`, choices
// as `one of ('a', 'b')`. TORCH_CHECK_TYPE -> TypeError, TORCH_CHECK_INDEX ->
// IndexError (an index outside its range), TORCH_CHECK_VALUE -> ValueError.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <sstream>
#include <string_view>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "m2n2/dtypes.h"

namespace m2n2 {

// "torch.float32", as Python prints a dtype.
inline std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kBool: return "torch.bool";
    case at::kByte: return "torch.uint8";
    case at::kChar: return "torch.int8";
    case at::kShort: return "torch.int16";
    case at::kInt: return "torch.int32";
    case at::kLong: return "torch.int64";
    case at::kComplexFloat: return "torch.complex64";
    case at::kComplexDouble: return "torch.complex128";
    default: return c10::str("torch.", t);
  }
}

// "(3, 5)", "(5,)" or "()", as Python prints a shape tuple.
inline std::string shape_str(at::IntArrayRef shape) {
  std::ostringstream s;
  s << "(";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << (shape.size() == 1 ? ",)" : ")");
  return s.str();
}

// The library's Dtype of a torch dtype; `allowed` lists the ones this argument takes
// (their names, in the order given, make the message: built only on failure).
inline Dtype dtype_of(const at::Tensor& t, std::string_view name, std::initializer_list<at::ScalarType> allowed) {
  const at::ScalarType st = t.scalar_type();
  for (at::ScalarType a : allowed) {
    if (a != st) continue;
    switch (a) {
      case at::kFloat: return Dtype::kFloat;
      case at::kDouble: return Dtype::kDouble;
      case at::kBFloat16: return Dtype::kBFloat16;
      case at::kHalf: return Dtype::kHalf;
      case at::kBool: return Dtype::kBool;
      case at::kByte: return Dtype::kUInt8;
      default: break;
    }
  }
  std::ostringstream names;
  size_t i = 0;
  for (at::ScalarType a : allowed) {
    names << (i == 0 ? "" : (i + 1 == allowed.size() ? " or " : ", ")) << dtype_name(a).substr(6);
    ++i;
  }
  TORCH_CHECK_TYPE(false, name, " must be ", names.str(), ", got ", dtype_name(st));
}

// The value of a string argument among `choices` (pairs of name and value).
template <class E>
E parse_choice(const std::string& value, std::string_view name, std::initializer_list<std::pair<const char*, E>> choices) {
  for (const auto& c : choices) {
    if (value == c.first) return c.second;
  }
  std::ostringstream names;
  bool first = true;
  for (const auto& c : choices) {
    names << (first ? "'" : ", '") << c.first << "'";
    first = false;
  }
  TORCH_CHECK_VALUE(false, name, " must be one of (", names.str(), "), got '", value, "'");
}

// t has the given dtype, shape and device and is contiguous; `of` says where the
// expectation comes from (" (as a[1])").
inline void check_like(const at::Tensor& t, std::string_view name, at::ScalarType dtype, at::IntArrayRef shape,
                       const at::Device& device, std::string_view of = "") {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, name, " must be ", dtype_name(dtype), of, ", got ",
                   dtype_name(t.scalar_type()));
  TORCH_CHECK_VALUE(t.sizes() == shape, name, " must have shape ", shape_str(shape), of, ", got ",
                    shape_str(t.sizes()));
  TORCH_CHECK_VALUE(t.device() == device, name, " must be on ", device, of, ", got ", t.device());
  TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous");
}

// A double as Python's repr prints it: the shortest digits that read back exactly,
// "-1.0" rather than "-1", "nan", "inf".
inline std::string py_float(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[32];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  std::string s = buf;
  if (s.find_first_of(".eni") == std::string::npos) s += ".0";
  return s;
}

// A tensor of a call, named as the Python API names it: `arg` alone, or arg[index]
// for an entry of a list argument (index >= 0). The name is built only for a message.
struct NamedTensor {
  const at::Tensor* tensor;
  const char* arg;
  int64_t index = -1;
};

namespace detail {

inline std::string tensor_name(const NamedTensor& t) {
  return t.index < 0 ? std::string(t.arg) : c10::str(t.arg, "[", t.index, "]");
}

inline bool counts(const at::Tensor* t) { return t != nullptr && t->defined() && t->numel() > 0 && !t->is_meta(); }

// The bytes [first, last) that t's elements span (an interleaved view spans the gaps
// too, as in torch's own overlap checks).
inline std::pair<uintptr_t, uintptr_t> byte_span(const at::Tensor& t) {
  int64_t extent = 1;
  for (int64_t d = 0; d < t.dim(); ++d) extent += (t.size(d) - 1) * std::abs(t.stride(d));
  const uintptr_t first = reinterpret_cast<uintptr_t>(t.data_ptr());
  return {first, first + uintptr_t(extent) * uintptr_t(t.element_size())};
}

inline bool spans_meet(const at::Tensor& x, const at::Tensor& y) {
  if (x.device() != y.device()) return false;
  const auto [x0, x1] = byte_span(x);
  const auto [y0, y1] = byte_span(y);
  return x0 < y1 && y0 < x1;
}

}  // namespace detail

// No written tensor shares memory with any other tensor of the call: ValueError
// "<written> must not overlap <other>" for the first written tensor (in order) that
// meets another, naming the first it meets (the reads in order, then the other
// written tensors). The caller leaves out reads a kernel may alias (the input an
// in-place output exactly is). A sort and a sweep decide; names only on failure.
// m2n2_kernels/_checks.py, check_disjoint, is the same in Python.
inline void check_disjoint(const std::vector<NamedTensor>& written, const std::vector<NamedTensor>& read) {
  struct Span {
    int device_type, device_index;
    uintptr_t lo, hi;
    bool written;
  };
  std::vector<Span> spans;
  spans.reserve(written.size() + read.size());
  bool any_written = false;
  for (const auto* group : {&written, &read}) {
    for (const NamedTensor& t : *group) {
      if (!detail::counts(t.tensor)) continue;
      const auto [lo, hi] = detail::byte_span(*t.tensor);
      const at::Device d = t.tensor->device();
      spans.push_back({int(d.type()), int(d.has_index() ? d.index() : 0), lo, hi, group == &written});
      any_written |= group == &written;
    }
  }
  if (!any_written) return;
  std::sort(spans.begin(), spans.end(), [](const Span& x, const Span& y) {
    return std::tie(x.device_type, x.device_index, x.lo) < std::tie(y.device_type, y.device_index, y.lo);
  });
  bool clash = false;
  uintptr_t end_any = 0, end_written = 0;
  for (size_t k = 0; k < spans.size() && !clash; ++k) {
    const Span& s = spans[k];
    if (k > 0 && (s.device_type != spans[k - 1].device_type || s.device_index != spans[k - 1].device_index)) {
      end_any = end_written = 0;
    }
    clash = s.lo < (s.written ? end_any : end_written);
    end_any = std::max(end_any, s.hi);
    if (s.written) end_written = std::max(end_written, s.hi);
  }
  if (!clash) return;
  for (size_t k = 0; k < written.size(); ++k) {
    if (!detail::counts(written[k].tensor)) continue;
    const at::Tensor& w = *written[k].tensor;
    for (const NamedTensor& t : read) {
      TORCH_CHECK_VALUE(!detail::counts(t.tensor) || !detail::spans_meet(w, *t.tensor), detail::tensor_name(written[k]),
                        " must not overlap ", detail::tensor_name(t));
    }
    for (size_t j = 0; j < written.size(); ++j) {
      TORCH_CHECK_VALUE(j == k || !detail::counts(written[j].tensor) || !detail::spans_meet(w, *written[j].tensor),
                        detail::tensor_name(written[k]), " must not overlap ", detail::tensor_name(written[j]));
    }
  }
  TORCH_CHECK(false, "check_disjoint: a clash that no pair explains");
}

// "[i]" for entry i of a list argument, "" for a plain tensor.
// (c10::str rather than string operator+: GCC 12 at -O3 warns falsely on the latter.)
inline std::string where(size_t i, bool is_list) { return is_list ? c10::str("[", i, "]") : std::string(); }

}  // namespace m2n2
