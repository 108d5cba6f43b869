// The exp and tanh of csrc/include/m2n2/pcb.h, fp32 and fp64, against long double (x87,
// 64-bit significand) over the ranges PCB uses: prints the worst errors in ulp and exits
// 1 past the bounds that docs/semantics.md states. Built and run by tests/test_pcb.py.
#include <cmath>
#include <cstdio>
#include <random>

#include "m2n2/pcb.h"

namespace {

template <class C>
double ulps(C got, long double truth) {
  const C spacing = std::fabs(std::nextafter(got, C(INFINITY)) - got);
  return double(fabsl((long double)got - truth) / (long double)spacing);
}

struct Worst {
  double exp = 0.0, tanh = 0.0;
};

// The worst errors of C's exp over [0, 64] (exp(K s): K <= 64, s in [0, 1]) and tanh
// over every scale from 1e-12 to 1e3 (tanh(d S)), both signs, plus the exact cases.
template <class C>
Worst check(std::mt19937_64& gen, bool& exact) {
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  Worst w;
  for (int i = 0; i < 1000000; ++i) {
    const C x = C(64.0 * unit(gen));
    w.exp = std::fmax(w.exp, ulps(m2n2::pcb_exp(x), expl((long double)x)));
    const C y = C((unit(gen) < 0.5 ? -1.0 : 1.0) * std::pow(10.0, 15.0 * unit(gen) - 12.0));
    w.tanh = std::fmax(w.tanh, ulps(m2n2::pcb_tanh(y), tanhl((long double)y)));
  }
  exact = exact && std::signbit(m2n2::pcb_tanh(C(-0.0))) && !std::signbit(m2n2::pcb_tanh(C(0.0))) &&
          m2n2::pcb_exp(C(0)) == C(1) && std::isnan(m2n2::pcb_tanh(C(NAN))) && std::isnan(m2n2::pcb_exp(C(NAN))) &&
          m2n2::pcb_tanh(C(30)) == C(1) && m2n2::pcb_tanh(C(-30)) == C(-1);
  return w;
}

}  // namespace

int main() {
  std::mt19937_64 gen(1);
  bool exact = true;
  const Worst f = check<float>(gen, exact);
  const Worst d = check<double>(gen, exact);
  std::printf("fp32: exp %.3f ulp, tanh %.3f ulp; fp64: exp %.3f ulp, tanh %.3f ulp; zeros, ones and nan %s\n", f.exp,
              f.tanh, d.exp, d.tanh, exact ? "ok" : "WRONG");
  return f.exp <= 2.0 && f.tanh <= 3.0 && d.exp <= 1.5 && d.tanh <= 3.0 && exact ? 0 : 1;
}
