// What the host checks of the CUDA task-vector kernels share (task_merge and pcb
// _cuda_host_check.cu): the failure count, buffers at a chosen misalignment, the
// inputs handed to the CPU kernel and to the emulated launches unit by unit, and the
// byte-for-byte comparison of their outputs. Included by one .cu each: the state
// lives in an unnamed namespace.
#pragma once

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/task_merge_kernels.h"
#include "cuda/kernels/task_merge_common.cuh"

namespace {

using m2n2::Dtype;

int failures = 0;
int checks = 0;

void expect(bool ok, const std::string& what) {
  ++checks;
  if (!ok && failures < 40) std::printf("FAIL: %s\n", what.c_str());
  if (!ok) ++failures;
}

// Storage whose first element sits `shift` elements past a 64-byte boundary.
struct Buffer {
  std::vector<unsigned char> store;
  void* data = nullptr;
  Buffer(int64_t n, Dtype dtype, int shift) : store(size_t(n + 8) * 8 + 64, 0) {
    const uintptr_t p = (reinterpret_cast<uintptr_t>(store.data()) + 63) & ~uintptr_t(63);
    data = reinterpret_cast<void*>(p + uintptr_t(shift) * uintptr_t(m2n2::dtype_bytes(dtype)));
  }
};

void put(Dtype dtype, void* data, int64_t i, double x) {
  switch (dtype) {
    case Dtype::kFloat: static_cast<float*>(data)[i] = float(x); break;
    case Dtype::kDouble: static_cast<double*>(data)[i] = x; break;
    case Dtype::kBFloat16: static_cast<m2n2::bf16_t*>(data)[i] = m2n2::from_compute<m2n2::bf16_t>(float(x)); break;
    case Dtype::kHalf: static_cast<m2n2::half_t*>(data)[i] = m2n2::from_compute<m2n2::half_t>(float(x)); break;
    default: break;
  }
}

const char* dtype_name(Dtype d) {
  switch (d) {
    case Dtype::kFloat: return "fp32";
    case Dtype::kDouble: return "fp64";
    case Dtype::kBFloat16: return "bf16";
    case Dtype::kHalf: return "fp16";
    default: return "?";
  }
}

// One list position: its dtype and size.
struct Position {
  Dtype dtype;
  int64_t numel;
};

std::string list_text(const std::vector<Position>& list) {
  std::string s = "list [";
  for (const Position& q : list) s += std::string(dtype_name(q.dtype)) + ":" + std::to_string(q.numel) + " ";
  return s + "]";
}

// The buffers of one case: base, K models and the two outputs (each starts as base:
// an in-place call reads it as the base).
struct CaseBuffers {
  std::vector<Buffer> base, out_cpu, out_gpu;
  std::vector<std::vector<Buffer>> models;  // [K][position]

  CaseBuffers(const std::vector<Position>& list, int K, int shift) : models(size_t(K)) {
    for (const Position& q : list) {
      base.emplace_back(q.numel, q.dtype, shift);
      out_cpu.emplace_back(q.numel, q.dtype, shift);
      out_gpu.emplace_back(q.numel, q.dtype, shift);
      for (auto& m : models) m.emplace_back(q.numel, q.dtype, shift);
    }
  }

  // After the inputs are written: both outputs start as base.
  void start_outputs(const std::vector<Position>& list) {
    for (size_t i = 0; i < list.size(); ++i) {
      const size_t bytes = size_t(list[i].numel) * size_t(m2n2::dtype_bytes(list[i].dtype));
      std::memcpy(out_cpu[i].data, base[i].data, bytes);
      std::memcpy(out_gpu[i].data, base[i].data, bytes);
    }
  }

  // The CPU kernel's view of the inputs.
  std::vector<m2n2::cpu::TaskTensor> cpu_tensors(const std::vector<Position>& list, bool in_place) {
    std::vector<m2n2::cpu::TaskTensor> tensors;
    for (size_t i = 0; i < list.size(); ++i) {
      m2n2::cpu::TaskTensor t{list[i].dtype, in_place ? out_cpu[i].data : base[i].data, {}, out_cpu[i].data,
                              list[i].numel};
      for (auto& m : models) t.models.push_back(m[i].data);
      tensors.push_back(t);
    }
    return tensors;
  }

  // launch(segments, n, wide) for each unit as the CUDA launchers cut them: the whole
  // list (global scope) or each position; units of no elements are skipped.
  template <class Launch>
  void for_each_unit(const std::vector<Position>& list, bool global, bool in_place, Launch&& launch) {
    auto unit = [&](size_t first, size_t last) {
      std::vector<m2n2::cuda::TaskSegment> segs;
      int64_t n = 0;
      bool wide = false;
      for (size_t i = first; i < last; ++i) {
        m2n2::cuda::TaskSegment s{};
        s.base = in_place ? out_gpu[i].data : base[i].data;
        s.out = out_gpu[i].data;
        for (size_t k = 0; k < models.size(); ++k) s.models[k] = models[k][i].data;
        s.numel = list[i].numel;
        s.flat = n;
        s.dtype = list[i].dtype;
        n += s.numel;
        wide = wide || s.dtype == Dtype::kDouble;
        segs.push_back(s);
      }
      if (n > 0) launch(segs, n, wide);
    };
    if (global) {
      unit(0, list.size());
    } else {
      for (size_t i = 0; i < list.size(); ++i) unit(i, i + 1);
    }
  }

  // The first element where the two outputs of position i differ, or -1.
  int64_t first_difference(const std::vector<Position>& list, size_t i) const {
    const size_t w = size_t(m2n2::dtype_bytes(list[i].dtype));
    for (int64_t j = 0; j < list[i].numel; ++j) {
      if (std::memcmp(static_cast<const char*>(out_cpu[i].data) + j * w,
                      static_cast<const char*>(out_gpu[i].data) + j * w, w)) {
        return j;
      }
    }
    return -1;
  }
};

}  // namespace
