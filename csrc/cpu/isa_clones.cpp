// Which clone of M2N2_CLONES the dynamic loader picks on this CPU (build_info).
#include "isa_clones.h"

namespace m2n2::cpu {

const char* isa_in_use() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return "x86-64-v4 (AVX-512)";
  if (__builtin_cpu_supports("x86-64-v3")) return "x86-64-v3 (AVX2+FMA)";
  return "x86-64 (SSE2)";
#else
  return "generic";
#endif
}

}  // namespace m2n2::cpu
