"""The M2N2 engine on the digits experiment (from scratch: slerp, split point,
mutation 0.01, archive 20): forward passes per second, in one run, against

  jax reference loop   the public reference loop transcribed to JAX, structured as
                       it is (eager parent sampling, jitted crossover / mutation /
                       forward / update, the test accuracy after every pass)
  jax fused step       the same algorithm as one jitted function per pass
  torch engine         this engine on the pure-torch reference ops (reference.py:
                       niche statistics, crossover and Philox noise in torch)
  plain-torch engine   this engine with the crossover a good engineer would write in
                       torch (dot and norms, scaled adds, torch.randn noise)

and our engine with K = 16 children per step. Each implementation is built and
warmed up first; then the rounds alternate between them (A B C ... A B C ...), so
that a slow spell of a shared machine hits them alike, and the median round is
reported. `phase` rows split a step of our engine into sampling, crossover, forward,
scoring, replacement and bookkeeping (timed in a separate run).

    python benchmarks/bench_engine.py                 # 2,000 passes per round, 5 rounds
    python benchmarks/bench_engine.py --quick         # smoke run
JAX rows need `pip install jax` (the `bench` extra); they are left out without it.
"""
import math
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "python"))
from _common import CsvOut, _rss_bytes, parser  # noqa: E402

import m2n2  # noqa: E402
from m2n2.tasks import get_task  # noqa: E402

FIELDS = [
    "op", "impl", "phase", "device", "children_per_step", "ms_per_pass", "passes_per_s", "reps",
    "speedup_vs_jax_reference", "speedup_vs_jax_fused", "speedup_vs_torch_engine", "speedup_vs_k1", "share",
    "extra_mib",
]


class PlainTorchEvolution(m2n2.Evolution):
    """The engine with the crossover written in plain torch: the angle from one dot and
    two norms, the child as scaled adds per side, mutation from torch.randn."""

    def _crossover(self, first, second, split, w, k):
        a = self.archive
        noise = torch.Generator(device=self.device).manual_seed(m2n2.step_seed(self.config.seed, self.step_count) >> 1)
        for j, (p1, p2, s, wj) in enumerate(zip(first.tolist(), second.tolist(), split.tolist(), w.tolist())):
            x, y, out = a.params[p1], a.params[p2], a.children[j]
            cos = float(torch.dot(x.double(), y.double()) / (x.double().norm() * y.double().norm()))
            omega = math.acos(max(-1.0, min(1.0, cos)))
            so = math.sin(omega)
            for lo, hi, t in ((0, s, wj), (s, self.n, 1 - wj)):
                ca, cb = (math.sin((1 - t) * omega) / so, math.sin(t * omega) / so) if so > 1e-6 else (1 - t, t)
                torch.mul(x[lo:hi], ca, out=out[lo:hi])
                out[lo:hi].add_(y[lo:hi], alpha=cb)
            if self.config.mutation_std > 0:
                out.add_(torch.randn(self.n, generator=noise, device=self.device), alpha=self.config.mutation_std)


class TimedScorer:
    """The task's scorer, timing its forward pass (the two layers) apart from the
    scoring (argmax == label) for the phase rows."""

    def __init__(self, scorer, timings):
        self.scorer, self.timings = scorer, timings

    def __call__(self, params):
        t0 = time.perf_counter()
        logits = self.scorer.logits(params)
        self.timings["forward"] = self.timings.get("forward", 0.0) + time.perf_counter() - t0
        return torch.eq(logits.argmax(-1), self.scorer.y, out=self.scorer._scores[: params.shape[0]])


def engine(task, k, backend=None, cls=m2n2.Evolution, passes=10**9, evaluate=None):
    cfg = m2n2.EvolveConfig(forward_passes=passes, mutation_std=0.01, seed=0, children_per_step=k)
    return cls(evaluate or task.evaluate, task.init, cfg, test=task.test, backend=backend, device=task.device)


class EngineRunner:
    def __init__(self, evo):
        self.evo = evo

    def run(self, passes):
        target = self.evo.passes + passes
        while self.evo.passes < target:
            self.evo.step(min(self.evo.config.children_per_step, target - self.evo.passes))


def build(args, device):
    task = get_task("digits", device=device)
    impls = {}
    try:
        import jax_reference

        impls["jax reference loop"] = (1, jax_reference.ReferenceLoop(seed=0))
        impls["jax fused step"] = (1, jax_reference.FusedLoop(seed=0))
    except ImportError as e:
        print(f"# jax rows left out: {e}", file=sys.stderr)
    impls["torch engine (reference.py ops)"] = (1, EngineRunner(engine(task, 1, backend="torch")))
    impls["plain-torch engine"] = (1, EngineRunner(engine(task, 1, cls=PlainTorchEvolution)))
    impls["m2n2"] = (1, EngineRunner(engine(task, 1)))
    impls["m2n2 K=16"] = (16, EngineRunner(engine(task, 16)))
    return task, impls


def main():
    p = parser(__doc__)  # --reps: rounds; --quick: 64 passes, 1 round
    p.set_defaults(device="cpu")
    p.add_argument("--passes", type=int, default=2000, help="forward passes per round")
    args = p.parse_args()
    if args.quick:
        args.passes, args.reps = 64, 1
    device = torch.device(args.device)
    task, impls = build(args, device)
    slow = {"torch engine (reference.py ops)", "jax reference loop"}
    for name, (_, runner) in impls.items():  # compile, warm caches
        runner.run(20)
    times = {name: [] for name in impls}
    extra = {}
    for _ in range(args.reps):
        for name, (_, runner) in impls.items():
            passes = max(32, args.passes // 8) if name in slow else args.passes
            if device.type == "cuda":
                torch.cuda.synchronize()
            base = _rss_bytes("VmRSS")
            t0 = time.perf_counter()
            runner.run(passes)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - t0) / passes * 1e3)
            extra[name] = max(extra.get(name, 0), _rss_bytes("VmRSS") - base)
    ms = {name: statistics.median(v) for name, v in times.items()}

    out = CsvOut(FIELDS, args.csv)
    for name, (k, _) in impls.items():
        ratio = lambda ref: f"{ms[ref] / ms[name]:.2f}" if ref in ms and ref != name else ""  # noqa: E731
        out.row(
            op="engine", impl=name, device=device.type, children_per_step=k, ms_per_pass=f"{ms[name]:.4f}",
            passes_per_s=f"{1e3 / ms[name]:.0f}", reps=args.reps,
            speedup_vs_jax_reference=ratio("jax reference loop"), speedup_vs_jax_fused=ratio("jax fused step"),
            speedup_vs_torch_engine=ratio("torch engine (reference.py ops)"),
            speedup_vs_k1=ratio("m2n2") if name.startswith("m2n2 K=") else "",
            extra_mib=f"{extra[name] / 2**20:.1f}",
        )

    # Where a step's time goes (timed apart: the timers synchronise at each phase).
    for k in (1, 16):
        timings = {}
        evo = engine(task, k, evaluate=TimedScorer(task.evaluate, timings))
        EngineRunner(evo).run(20)
        evo.timings = {}
        timings.clear()
        EngineRunner(evo).run(args.passes)
        phases = dict(evo.timings)
        phases["forward"] = timings["forward"]
        phases["scoring"] = phases.pop("evaluation") - timings["forward"]
        total = sum(phases.values())
        for phase in ("sampling", "crossover", "forward", "scoring", "replacement", "bookkeeping"):
            out.row(op="phase", impl="m2n2" if k == 1 else f"m2n2 K={k}", phase=phase, device=device.type,
                    children_per_step=k, ms_per_pass=f"{phases[phase] / args.passes * 1e3:.4f}",
                    share=f"{phases[phase] / total:.3f}", reps=1)
    out.close()


if __name__ == "__main__":
    main()
