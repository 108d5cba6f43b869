// PCB's score bound (csrc/cpu/pcb_skip.h): every element it skips has an exact score
// (pcb_score, both tanh forms) below the floor, over spread and adversarial inputs
// (magnitudes on the bound table's steps and just off them, scores just under the
// floor, outside [lo, hi], zeros, subnormals, inf, NaN); the AVX-512 filter keeps
// exactly the elements pcb_skippable keeps, in index order, with their d and S (and
// each step's mask, where asked), pads to whole steps with zeros, and pcb_expand_add
// puts terms back in the survivors' places. Exits 1 on any failure, or if the bound skips too
// little of realistic deltas to be worth its cost. Built and run by tests/test_pcb.py.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "cpu/pcb_skip.h"
#include "m2n2/pcb.h"

namespace {

using m2n2::cpu::PcbSkip;

int failures = 0;

void fail(const char* what, float d, float S, const PcbSkip& p) {
  if (++failures <= 10) {
    std::printf("FAIL %s: d %.9g S %.9g lo %.9g floor %.9g\n", what, double(d), double(S), double(p.lo),
                double(p.floor));
  }
}

struct Case {
  float lo, hi;
  int K;
};

// The exact score of (d, S), as the kernel's loops compute it (Series where they may).
float exact_score(float d, float S, const Case& c, bool series) {
  const m2n2::PcbRange<float> r = m2n2::pcb_range(c.lo, c.hi);
  if (series) return m2n2::pcb_score<float, true>(d, S, c.lo, c.hi, r, float(c.K));
  return m2n2::pcb_score<float, false>(d, S, c.lo, c.hi, r, float(c.K));
}

struct Tally {
  long tried = 0, skipped = 0;
  double worst = 0.0;  // the largest exact score / floor among the skipped
};

void check_one(float d, float S, const Case& c, const PcbSkip& p, Tally& t) {
  ++t.tried;
  if (!m2n2::cpu::pcb_skippable(d, S, p)) return;
  ++t.skipped;
  const float g = exact_score(d, S, c, false);
  if (!(m2n2::score_key(g) < m2n2::score_key(p.floor))) fail("skipped a score at or above the floor", d, S, p);
  if (m2n2::pcb_inter_in_series(d, S) && exact_score(d, S, c, true) != g) fail("series form differs", d, S, p);
  if (g > 0.0f) t.worst = std::fmax(t.worst, double(g) / double(p.floor));
}

// Deltas whose clamped magnitude puts 31 u^2 on the table's step i and a few ulp either
// side, with S making the bound fall just under the floor (the tightest skips).
void check_steps(const Case& c, const PcbSkip& p, Tally& t) {
  if (!(c.hi > c.lo)) return;
  for (int i = 0; i <= PcbSkip::kSteps; ++i) {
    const double u = std::sqrt(double(i) / PcbSkip::kSteps);
    float m = float(double(c.lo) + u * (double(c.hi) - double(c.lo)));
    for (int k = 0; k < 6; ++k) m = std::nextafter(m, 0.0f);
    for (int k = 0; k < 12; ++k, m = std::nextafter(m, std::numeric_limits<float>::infinity())) {
      for (float sign : {1.0f, -1.0f}) {
        const float d = sign * m;
        for (int j = 0; j <= PcbSkip::kSteps; ++j) {
          // S with E[j] d S a little under the floor, and the float on either side
          float S = float(double(p.floor) / (double(p.E[j]) * double(d)));
          for (int s = 0; s < 4; ++s, S = std::nextafter(S, 0.0f)) check_one(d, S, c, p, t);
        }
      }
    }
  }
}

void check_random(std::mt19937_64& gen, const Case& c, const PcbSkip& p, Tally& t, double scale) {
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  for (int i = 0; i < 200000; ++i) {
    const float d = float(scale * normal(gen) * (unit(gen) < 0.05 ? 30.0 : 1.0));
    const float S = float(d * (1.0 + 0.5 * normal(gen)) + scale * normal(gen));
    check_one(d, S, c, p, t);
  }
}

void check_specials(const Case& c, const PcbSkip& p, Tally& t) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const float values[] = {0.0f,  -0.0f, 1e-45f, -1e-45f, 1e-38f, c.lo, -c.lo, c.hi, -c.hi,
                          1e-3f, -2e-3f, 1e30f, -1e30f, 3e38f, inf,  -inf,  nan};
  for (float d : values) {
    for (float S : values) check_one(d, S, c, p, t);
  }
  // huge d with a tiny S: u = 1 (clamped), however small the product
  for (float S : {1e-40f, 1e-35f, 1e-30f, 1e-20f}) check_one(1e30f, S, c, p, t);
}

// The AVX-512 filter against pcb_skippable, over every length to 300 at odd offsets.
void check_filter(std::mt19937_64& gen, const Case& c, const PcbSkip& p) {
#if M2N2_AVX512_LOOPS
  if (!m2n2::cpu::cpu_has_avx512_loops()) return;
  std::normal_distribution<double> normal(0.0, 1e-3);
  std::vector<float> d(320), S(320), dc(320), Sc(320);
  std::vector<uint16_t> masks(20);
  const float inf = std::numeric_limits<float>::infinity();
  for (int len = 0; len <= 300; ++len) {
    const int off = len % 5;
    for (int j = 0; j < 320; ++j) {
      d[size_t(j)] = float(normal(gen));
      S[size_t(j)] = float(d[size_t(j)] * 2.0 + normal(gen));
    }
    if (len > 3) d[size_t(off + 3)] = std::numeric_limits<float>::quiet_NaN(), d[size_t(off + 1)] = -inf;
    std::fill(dc.begin(), dc.end(), 7.0f);
    std::fill(Sc.begin(), Sc.end(), 7.0f);
    std::fill(masks.begin(), masks.end(), uint16_t(0xABCD));
    const int64_t n = m2n2::cpu::pcb_survivors(d.data() + off, S.data() + off, len, p, masks.data(), dc.data(), Sc.data());
    int64_t want = 0;
    bool same = n >= 0;
    std::vector<float> sums(size_t(len) + 16), expected(size_t(len) + 16);
    std::vector<float> sums2(size_t(len) + 16), expected2(size_t(len) + 16);
    for (int j = 0; j < len && same; ++j) {
      sums[size_t(j)] = expected[size_t(j)] = float(j);
      sums2[size_t(j)] = expected2[size_t(j)] = -float(j + 1);  // no -0: +0 added to it is +0
      const bool kept = (masks[size_t(j / 16)] >> (j % 16)) & 1;
      const float dj = d[size_t(off + j)], sj = S[size_t(off + j)];
      same = kept == !m2n2::cpu::pcb_skippable(dj, sj, p);
      if (!kept) continue;
      same = same && want < n && std::memcmp(&dc[size_t(want)], &dj, 4) == 0 &&
             std::memcmp(&Sc[size_t(want)], &sj, 4) == 0;
      expected[size_t(j)] += float(want + 1) * 0.5f;  // survivor `want`'s terms
      expected2[size_t(j)] += float(want + 1) * 0.25f;
      ++want;
    }
    same = same && want == n;
    for (int64_t j = n; same && j < m2n2::cpu::pcb_padded(n); ++j) same = dc[size_t(j)] == 0.0f && Sc[size_t(j)] == 0.0f;
    // the survivors' terms spread back to their places, +0 elsewhere
    std::vector<float> terms(size_t(n) + 16, -1.0f), terms2(size_t(n) + 16, -1.0f);
    for (int64_t i = 0; i < n; ++i) terms[size_t(i)] = float(i + 1) * 0.5f, terms2[size_t(i)] = float(i + 1) * 0.25f;
    if (same) m2n2::cpu::pcb_expand_add(masks.data(), len, terms.data(), terms2.data(), sums.data(), sums2.data());
    same = same && std::memcmp(sums.data(), expected.data(), 4 * size_t(len)) == 0 &&
           std::memcmp(sums2.data(), expected2.data(), 4 * size_t(len)) == 0;
    // without the masks: the same survivors
    std::vector<float> dc2(320, 7.0f), Sc2(320, 7.0f);
    const int64_t n2 = m2n2::cpu::pcb_survivors(d.data() + off, S.data() + off, len, p, nullptr, dc2.data(), Sc2.data());
    same = same && n2 == n && std::memcmp(dc2.data(), dc.data(), 4 * size_t(m2n2::cpu::pcb_padded(n))) == 0 &&
           std::memcmp(Sc2.data(), Sc.data(), 4 * size_t(m2n2::cpu::pcb_padded(n))) == 0;
    if (!same) {
      fail("AVX-512 filter or its expand differs from pcb_skippable", float(len), float(n), p);
      return;
    }
  }
#else
  (void)gen, (void)c, (void)p;
#endif
}

}  // namespace

int main() {
  std::mt19937_64 gen(5);
  const Case cases[] = {
      {0.0f, 4e-3f, 3},     {1e-6f, 4e-3f, 1}, {1e-6f, 4e-3f, 2}, {2e-5f, 3.9e-3f, 5}, {0.0f, 4e-3f, 16},
      {0.0f, 4e-3f, 64},    {1e-3f, 1e-3f, 3}, // no spread: u = 0
      {2.0f, 2.0000005f, 3},                   // a spread of a few ulp
      {0.0f, 1e-30f, 3},                       // tiny magnitudes
  };
  Tally realistic;
  double worst = 0.0;
  long tried = 0, skipped = 0;
  for (const Case& c : cases) {
    const double scale = c.hi > 0.0f ? double(c.hi) / 4.0 : 1e-3;
    // floors: the 80th and 50th percentile of this case's positive scores, roughly, and extremes
    for (double f : {0.3, 3.0, 1e-6, 1e3}) {
      const float floor = float(f * scale * scale * 3.0);
      const PcbSkip p = m2n2::cpu::pcb_skip_plan(c.lo, c.hi, c.K, floor);
      if (!p.on) continue;
      Tally t;
      check_random(gen, c, p, t, scale);
      if (c.lo == 0.0f && c.hi == 4e-3f && c.K == 3 && f == 3.0) realistic = t;
      check_steps(c, p, t);
      check_specials(c, p, t);
      check_filter(gen, c, p);
      worst = std::fmax(worst, t.worst);
      tried += t.tried;
      skipped += t.skipped;
    }
  }
  // a plan is off where it could not prove its bound
  const float inf = std::numeric_limits<float>::infinity();
  const bool offs = !m2n2::cpu::pcb_skip_plan(0.0f, inf, 3, 1e-6f).on && !m2n2::cpu::pcb_skip_plan(0.0f, 1.0f, 3, 0.0f).on &&
                    !m2n2::cpu::pcb_skip_plan(0.0f, 1.0f, 3, -1.0f).on &&
                    !m2n2::cpu::pcb_skip_plan(0.0f, 1.0f, 3, 1e-35f).on &&
                    !m2n2::cpu::pcb_skip_plan(0.0f, 1.0f, 3, std::numeric_limits<float>::quiet_NaN()).on &&
                    !m2n2::cpu::pcb_skip_plan(0.0f, 1e-45f, 3, 1e-6f).on && m2n2::cpu::pcb_skip_plan(0.0f, 1.0f, 3, 1e-6f).on;
  if (!offs) fail("a plan that cannot hold its bound is on", 0.0f, 0.0f, PcbSkip{});
  const double share = double(realistic.skipped) / double(realistic.tried);
  std::printf("%ld elements, %ld skipped; largest skipped score / floor %.6f; realistic deltas: %.1f%% skipped%s; %d failures\n",
              tried, skipped, worst, 100.0 * share,
#if M2N2_AVX512_LOOPS
              m2n2::cpu::cpu_has_avx512_loops() ? " (AVX-512 filter checked)" : " (no AVX-512 here)",
#else
              " (no AVX-512 loops compiled)",
#endif
              failures);
  return failures == 0 && share > 0.5 ? 0 : 1;
}
