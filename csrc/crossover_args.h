// Every check of the crossover ops on the torch side, shared by the CPU and CUDA
// kernels (csrc/cpu/crossover.cpp, csrc/cuda/crossover.cu), in the words of the
// Python API's checks (m2n2_kernels/crossover.py, check_op_*): the Python API raises
// them first; these guard direct torch.ops.m2n2 callers, before anything is written.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "args_common.h"
#include "m2n2/dtypes.h"
#include "m2n2/interp.h"

namespace m2n2 {

inline Method parse_method(const std::string& method) {
  return parse_choice<Method>(method, "method", {{"lerp", Method::kLerp}, {"slerp", Method::kSlerp}});
}

inline OmegaMode parse_omega(const std::string& omega) {
  return parse_choice<OmegaMode>(omega, "omega", {{"global", OmegaMode::kGlobal}, {"segment", OmegaMode::kSegment}});
}

inline Dtype float_dtype(const at::Tensor& t, std::string_view name) {
  return dtype_of(t, name, {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16});
}

inline bool is_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// The checks of list position i, in order, each with its message (run only when the
// fast test in crossover_segments failed, so the names are built on failure alone).
[[noreturn]] inline void explain_bad_entry(at::TensorList a, at::TensorList b, at::TensorList out, size_t i,
                                           const at::Device& device) {
  const std::string at = where(i, true);
  float_dtype(a[i], c10::str("a", at));
  float_dtype(b[i], c10::str("b", at));
  TORCH_CHECK_VALUE(a[i].device() == device, "a", at, " must be on ", device, " (the device of a[0]), got ",
                    a[i].device());
  check_like(b[i], c10::str("b", at), a[i].scalar_type(), a[i].sizes(), device, c10::str(" (as a", at, ")"));
  check_like(out[i], c10::str("out", at), a[i].scalar_type(), a[i].sizes(), device, c10::str(" (as a", at, ")"));
  TORCH_CHECK_VALUE(a[i].is_contiguous(), "a", at, " must be contiguous");
  TORCH_CHECK(false, "crossover_segments: list position ", i, " failed a check that explain_bad_entry missed");
}

// a, b (and out, when not empty) hold as many tensors; at each position a[i], b[i]
// (and out[i]) share a floating dtype and a shape, all on one device of
// `device_type`, contiguous. Returns the tensors as segments of one vector whose
// element 0 has global index index_offset (empty tensors left out), and the total
// element count in `numel`. Given index_offsets of the right length, segment i starts
// at global index index_offsets[i] instead; check_offsets checks them (a wrong
// length too), before anything reads the segments.
inline std::vector<Segment> crossover_segments(at::TensorList a, at::TensorList b, at::TensorList out,
                                               c10::DeviceType device_type, int64_t index_offset,
                                               at::OptionalIntArrayRef index_offsets, int64_t* numel) {
  TORCH_CHECK_VALUE(!a.empty(), "a must hold at least one tensor");
  TORCH_CHECK_VALUE(a.size() == b.size(), "a and b must hold as many tensors, got ", a.size(), " and ", b.size());
  TORCH_CHECK_VALUE(out.size() == a.size(), "out must hold as many tensors as a, got ", out.size(), " and ",
                    a.size());
  float_dtype(a[0], "a[0]");
  const at::Device device = a[0].device();
  TORCH_CHECK_VALUE(device.type() == device_type, "a[0] must be on ", c10::DeviceTypeName(device_type, true),
                    ", got ", device);
  std::vector<Segment> segments;
  segments.reserve(a.size());
  const bool given = index_offsets.has_value() && index_offsets->size() == a.size();
  int64_t first = index_offset;
  int64_t total = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const at::Tensor &x = a[i], &y = b[i], &o = out[i];
    const at::ScalarType st = x.scalar_type();
    const bool ok = is_float(st) && y.scalar_type() == st && o.scalar_type() == st && x.device() == device &&
                    y.device() == device && o.device() == device && y.sizes() == x.sizes() &&
                    o.sizes() == x.sizes() && x.is_contiguous() && y.is_contiguous() && o.is_contiguous();
    if (!ok) explain_bad_entry(a, b, out, i, device);
    if (x.numel() > 0) {
      segments.push_back({x.data_ptr(), y.data_ptr(), o.data_ptr(), x.numel(),
                          given ? (*index_offsets)[i] : first, float_dtype(x, "a")});
    }
    first += x.numel();
    total += x.numel();
  }
  *numel = total;
  return segments;
}

// Which input the output of a split_interpolate call is: none (out is written, a and
// b are read), a or b (in place: out is exactly that list).
enum class Written { kOut, kA, kB };

inline bool same_tensor(const at::Tensor& x, const at::Tensor& y) {
  return x.data_ptr() == y.data_ptr() && x.sizes() == y.sizes() && x.strides() == y.strides() &&
         x.scalar_type() == y.scalar_type() && x.device() == y.device();
}

// The written tensors share memory with no other tensor of the call, except that
// out[i] may be exactly a[i] or b[i] (the kernels read both before writing element by
// element). `written` says which list out is, for the messages.
// (crossover.py, check_op_aliasing.)
inline void check_crossover_aliasing(at::TensorList a, at::TensorList b, at::TensorList out, Written written) {
  std::vector<NamedTensor> w, r;
  w.reserve(out.size());
  r.reserve(a.size() + b.size());
  const char* out_name = written == Written::kOut ? "out" : (written == Written::kA ? "a" : "b");
  for (size_t i = 0; i < out.size(); ++i) w.push_back({&out[i], out_name, int64_t(i)});
  const at::TensorList lists[2] = {a, b};
  const Written roles[2] = {Written::kA, Written::kB};
  const char* names[2] = {"a", "b"};
  for (int k = 0; k < 2; ++k) {
    if (written == roles[k]) continue;  // in place: out is this list
    for (size_t i = 0; i < lists[k].size(); ++i) {
      if (same_tensor(lists[k][i], out[i])) continue;
      r.push_back({&lists[k][i], names[k], int64_t(i)});
    }
  }
  check_disjoint(w, r);
}

// sums (when given): the slerp angle's totals, float64 [2, 3] on the tensors' device.
inline void check_sums(const std::optional<at::Tensor>& sums, const at::Device& device) {
  if (sums.has_value()) check_like(*sums, "sums", at::kDouble, {2, 3}, device, " (as interp_sums returns)");
}

// The sums of a [2, 3] float64 host tensor (row s: dot, |a|^2, |b|^2 of side s).
inline SplitSums sums_from_host(const at::Tensor& sums) {
  const double* p = sums.data_ptr<double>();
  return SplitSums{{p[0], p[3]}, {p[1], p[4]}, {p[2], p[5]}};
}

// index_offsets (when given, instead of a non-zero index_offset): one global offset
// per entry of a, each entry's global range inside int64, the ranges of non-empty
// entries disjoint, in any order. (crossover.py, check_op_offsets.)
inline void check_offsets(at::TensorList a, int64_t index_offset, at::OptionalIntArrayRef index_offsets) {
  if (!index_offsets.has_value()) return;
  TORCH_CHECK_VALUE(index_offset == 0, "index_offset must be 0 when index_offsets is given, got ", index_offset);
  const at::IntArrayRef offsets = *index_offsets;
  TORCH_CHECK_VALUE(offsets.size() == a.size(), "index_offsets must hold one offset per tensor of a (", a.size(),
                    "), got ", offsets.size());
  std::vector<std::pair<int64_t, size_t>> ranges;  // (offset, entry) of the non-empty entries
  for (size_t i = 0; i < offsets.size(); ++i) {
    const int64_t o = offsets[i];
    const int64_t m = a[i].numel();
    TORCH_CHECK_VALUE(o >= 0, "index_offsets[", i, "] must be >= 0, got ", o);
    // The noise is keyed by global indices, int64 everywhere (an empty entry's offset
    // is an int64 as it is: max(m, 1) only keeps the Python API's words).
    const int64_t last = std::max<int64_t>(m, 1);
    TORCH_CHECK_VALUE(uint64_t(o) + uint64_t(last) <= (uint64_t(1) << 63), "index_offsets[", i,
                      "] must be <= 2**63 - ", last, " (global indices must fit in int64), got ", o);
    if (m > 0) ranges.emplace_back(o, i);
  }
  // Sorted by offset (ties by position), each range must end before the next begins.
  std::sort(ranges.begin(), ranges.end());
  for (size_t k = 1; k < ranges.size(); ++k) {
    const auto [o0, i0] = ranges[k - 1];
    const auto [o1, i1] = ranges[k];
    const uint64_t end0 = uint64_t(o0) + uint64_t(a[i0].numel());  // may be 2**63
    TORCH_CHECK_VALUE(end0 <= uint64_t(o1), "index_offsets must give disjoint global ranges: a[", i0, "] covers [", o0,
                      ", ", end0, ") and a[", i1, "] covers [", o1, ", ", uint64_t(o1) + uint64_t(a[i1].numel()), ")");
  }
}

// With index_offset > 0, or `piece` (interp_sums, or sums given), the buffer is one
// piece of a longer vector, whose split may lie past this piece's end.
inline void check_split(int64_t split, int64_t index_offset, int64_t numel, bool piece = false) {
  TORCH_CHECK_VALUE(index_offset >= 0, "index_offset must be >= 0, got ", index_offset);
  // The noise is keyed by global indices, int64 everywhere.
  TORCH_CHECK_VALUE(uint64_t(index_offset) + uint64_t(numel) <= (uint64_t(1) << 63), "index_offset must be <= 2**63 - ",
                    numel, " (global indices must fit in int64), got ", index_offset);
  TORCH_CHECK_VALUE(split >= 0 && (index_offset > 0 || piece || split <= numel), "split must lie in [0, ", numel,
                    "] (the number of elements), got ", split);
}

// crossover_batch_out: archive [P, n] and out [K, n] of one floating dtype, ia, ib,
// split int64 [K], w float64 [K], on one device of `device_type`, contiguous. The
// values of ia, ib and split are not read (on a GPU that would wait for it):
// check_batch_values does it where they are on the host.
inline Dtype check_batch(const at::Tensor& archive, const at::Tensor& ia, const at::Tensor& ib,
                         const at::Tensor& split, const at::Tensor& w, const at::Tensor& out,
                         c10::DeviceType device_type) {
  const Dtype dtype = float_dtype(archive, "archive");
  TORCH_CHECK_VALUE(archive.dim() == 2, "archive must be 2-D (P models x n parameters), got shape ",
                    shape_str(archive.sizes()));
  TORCH_CHECK_VALUE(archive.device().type() == device_type, "archive must be on ",
                    c10::DeviceTypeName(device_type, true), ", got ", archive.device());
  const int64_t k = out.dim() == 2 ? out.size(0) : -1;
  check_like(out, "out", archive.scalar_type(), {k, archive.size(1)}, archive.device());
  check_like(ia, "ia", at::kLong, {k}, archive.device(), " (one per child)");
  check_like(ib, "ib", at::kLong, {k}, archive.device(), " (one per child)");
  check_like(split, "split", at::kLong, {k}, archive.device(), " (one per child)");
  check_like(w, "w", at::kDouble, {k}, archive.device(), " (one per child)");
  TORCH_CHECK_VALUE(archive.is_contiguous(), "archive must be contiguous");
  check_disjoint({{&out, "out"}},
                 {{&archive, "archive"}, {&ia, "ia"}, {&ib, "ib"}, {&split, "split"}, {&w, "w"}});
  return dtype;
}

// The values of checked host tensors ia, ib, split: rows of archive, split in [0, n].
inline void check_batch_values(const at::Tensor& archive, const at::Tensor& ia, const at::Tensor& ib,
                               const at::Tensor& split) {
  const int64_t p = archive.size(0);
  const int64_t n = archive.size(1);
  const int64_t* pa = ia.data_ptr<int64_t>();
  const int64_t* pb = ib.data_ptr<int64_t>();
  const int64_t* ps = split.data_ptr<int64_t>();
  for (int64_t c = 0; c < ia.numel(); ++c) {
    TORCH_CHECK_INDEX(pa[c] >= 0 && pa[c] < p, "ia must lie in [0, ", p, ") (rows of archive), got ", pa[c]);
    TORCH_CHECK_INDEX(pb[c] >= 0 && pb[c] < p, "ib must lie in [0, ", p, ") (rows of archive), got ", pb[c]);
    TORCH_CHECK_VALUE(ps[c] >= 0 && ps[c] <= n, "split must lie in [0, ", n, "] (the number of elements), got ",
                      ps[c]);
  }
}

}  // namespace m2n2
