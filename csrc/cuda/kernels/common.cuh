// What every CUDA kernel header shares (torch-free): one namespace, the launch
// contract, the block size and the small helpers.
//
// The launch contract: a launcher takes raw pointers, sizes and a cudaStream_t,
// enqueues its kernels on that stream, never waits for the device, and returns the
// cudaError_t of the launches (cudaGetLastError()); the torch glue in csrc/cuda/*.cu
// wraps every call in C10_CUDA_CHECK. Workspaces are allocated by the caller, sized
// by the header's plan functions.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "m2n2/common.h"
#include "m2n2/dtypes.h"

#if defined(__CUDA_ARCH__)
#define M2N2_UNROLL _Pragma("unroll")
#else
#define M2N2_UNROLL
#endif

namespace m2n2::cuda {

constexpr int kThreads = 256;         // threads per block, every kernel
constexpr int kWarp = 32;
constexpr int64_t kMaxGrid = 65535;   // blocks per launch in y and z (and grid-stride caps in x)
// "No bad element found": all bits set, what an atomicMin over unsigned indices leaves
// untouched (the kernels that look for the first bad value).
constexpr int64_t kNoIndex = -1;

M2N2_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
M2N2_HD int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
M2N2_HD int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

}  // namespace m2n2::cuda
