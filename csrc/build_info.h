// What this binary was compiled with, as a JSON object for m2n2_kernels.build_info().
#pragma once

#include <string>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "cpu/isa_clones.h"

// Set by setup.py when the CUDA kernels are compiled.
#ifndef M2N2_CUDA_ARCHS
#define M2N2_CUDA_ARCHS ""
#endif
#ifndef M2N2_CUDA_VERSION
#define M2N2_CUDA_VERSION ""
#endif

namespace m2n2::build_info {

inline std::string json() {
  std::string s = "{";
#if defined(_OPENMP)
  s += "\"openmp\": true, \"omp_max_threads\": " + std::to_string(omp_get_max_threads());
#else
  s += "\"openmp\": false, \"omp_max_threads\": 1";
#endif
  s += ", \"cpu_isa\": \"" + std::string(cpu::isa_in_use()) + "\"";
#if defined(M2N2_WITH_CUDA)
  s += ", \"cuda\": true, \"cuda_archs\": \"" + std::string(M2N2_CUDA_ARCHS) + "\"";
  s += ", \"cuda_version\": \"" + std::string(M2N2_CUDA_VERSION) + "\"";
#else
  s += ", \"cuda\": false, \"cuda_archs\": \"\", \"cuda_version\": null";
#endif
  s += "}";
  return s;
}

}  // namespace m2n2::build_info
