// The fp64 exp and tanh of csrc/include/m2n2/pcb.h against long double (x87, 64-bit
// significand) over the ranges PCB uses: prints the worst errors in ulp and exits 1
// past the bounds that docs/semantics.md states. Built and run by tests/test_pcb.py.
#include <cmath>
#include <cstdio>
#include <random>

#include "m2n2/pcb.h"

namespace {

double ulps(double got, long double truth) {
  const double spacing = std::fabs(std::nextafter(got, INFINITY) - got);
  return double(fabsl((long double)got - truth)) / spacing;
}

}  // namespace

int main() {
  std::mt19937_64 gen(1);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  double worst_exp = 0.0, worst_tanh = 0.0;
  for (int i = 0; i < 1000000; ++i) {
    const double x = 64.0 * unit(gen);  // exp(K s): K <= 64, s in [0, 1]
    worst_exp = std::fmax(worst_exp, ulps(m2n2::pcb_exp(x), expl((long double)x)));
    // tanh(d S): every scale from 1e-12 to 1e3, both signs
    const double y = (unit(gen) < 0.5 ? -1.0 : 1.0) * std::pow(10.0, 15.0 * unit(gen) - 12.0);
    worst_tanh = std::fmax(worst_tanh, ulps(m2n2::pcb_tanh(y), tanhl((long double)y)));
  }
  const bool zeros = std::signbit(m2n2::pcb_tanh(-0.0)) && !std::signbit(m2n2::pcb_tanh(0.0)) &&
                     m2n2::pcb_exp(0.0) == 1.0 && std::isnan(m2n2::pcb_tanh(NAN));
  std::printf("exp %.3f ulp, tanh %.3f ulp, zeros and nan %s\n", worst_exp, worst_tanh, zeros ? "ok" : "WRONG");
  return worst_exp <= 1.5 && worst_tanh <= 3.0 && zeros ? 0 : 1;
}
