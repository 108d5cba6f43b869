// Per-instruction-set compilation of the CPU hot loops (torch-free).
//
// Distributable builds cannot use -march=native, so a hot function is compiled once per
// instruction set with GCC's target_clones and the dynamic loader picks the clone for
// the CPU at hand: AVX-512 (x86-64-v4), AVX2+FMA (x86-64-v3) or baseline x86-64.
// target_clones applies neither to templates nor to the loops OpenMP outlines: put it
// on a plain function that holds the loop, with the templated body inlined into it.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define M2N2_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
// Bit counting adds Ice Lake, whose vector popcount (AVX512-VPOPCNTDQ) counts eight
// 64-bit words per instruction.
#define M2N2_POPCOUNT_CLONES \
  __attribute__((target_clones("arch=icelake-server", "arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define M2N2_CLONES
#define M2N2_POPCOUNT_CLONES
#endif

namespace m2n2::cpu {

// The instruction set the loader's dispatch picks on this CPU, e.g. "x86-64-v4 (AVX-512)".
const char* isa_in_use();

}  // namespace m2n2::cpu
