"""M2N2 with the archive sharded over R torch.distributed ranks (m2n2.distributed), on R
local gloo CPU processes (one torch thread each), against the naive design:

  sharded   ShardedEvolution: every rank holds its FSDP2 shard of every model;
            selection replicated (no communication); slerp from one all-reduce of
            K x 6 fp64 sums (interp_sums + split_interpolate(sums=, index_offsets=));
            each rank writes its shard of the child
  naive     the same engine, but the crossover gathers the two parents' full rows to
            rank 0, merges them there (split_interpolate on the whole vector) and
            broadcasts the child; every rank keeps its shard of it

on a synthetic model (a stack of square bias-free Linear layers with ReLU; about 100M
fp32 parameters in full mode), archive_size 4 (two starting models), K = 1 child per
step, slerp with mutation. Two evaluation settings:

  cheap     a score row of D = 64 bools read off the child's shard and all-gathered
            (data-parallel, no forward pass): what remains is the engine's own cost
            (sampling, crossover, collectives)
  forward   FSDPEvaluator: the fully_shard'ed model runs a forward pass over each
            rank's slice of D datapoints (D = 4096 in full mode, where the forward
            pass is about 94% of a step's CPU time at R = 1), FSDP2 gathering one
            layer at a time; the scores are all-gathered
  forward-gather  (sharded design only) GatherEvaluator: the child gathered whole
            on every rank once per step (the option for models that fit one
            device), then a plain module's forward pass over the rank's slice

One row per (design, setting, model size, R): steps/s (the median of --reps timed
steps after one warm-up step, each between two barriers), `cpu_ms_per_step` (the
busiest rank's median CPU time in a step, its threads included: on a machine shared
with other work, or with R > cores, it tells the work a rank did from the wait), `speedup_vs_r1` (steps/s
over the same design and setting at R = 1), the bytes the engine communicates per
step by purpose as m2n2.distributed.Comm counts them (the size of each collective's
result on a rank, the busiest rank's total; the naive design's gather and broadcast
are counted the same way, purpose "crossover"), the evaluation's own parameter
traffic (FSDP2's all-gathers, which Comm does not see: *computed* from the layout as
n x 4 bytes per child forward when R > 1, column eval_param_bytes_source), and the
peak resident memory of the busiest rank (VmHWM, reset before each configuration).
At R = 1 there is no collective: every byte column is 0.

On a machine with fewer cores than R the processes share cores (`oversubscribed`).

    python benchmarks/bench_distributed.py                 # ~100M parameters, R = 1, 2, 4
    python benchmarks/bench_distributed.py --quick         # two tiny models, R = 1, 2 (CI)
    python benchmarks/bench_distributed.py --csv out.csv --json out.json
"""
import gc
import json
import os
import statistics
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "python"))
from _common import CsvOut, _rss_bytes, parser  # noqa: E402

import m2n2_kernels as mk  # noqa: E402

FIELDS = [
    "design", "setting", "ranks", "n_params", "datapoints", "children_per_step", "steps_per_s", "ms_per_step",
    "ms_min", "cpu_ms_per_step", "reps", "speedup_vs_r1", "sums_bytes_per_step", "scores_bytes_per_step",
    "control_bytes_per_step", "crossover_bytes_per_step", "engine_bytes_per_step", "eval_param_bytes_per_step",
    "eval_param_bytes_source", "peak_rss_mib", "cores", "oversubscribed",
]
DESIGNS = ("sharded", "naive")
SETTINGS = ("cheap", "forward", "forward-gather")  # forward-gather: the sharded design only
CHEAP_D = 64
ARCHIVE_SIZE = 4
START_MODELS = 2
K = 1


class Stack(torch.nn.Module):
    """`layers` square bias-free Linear layers of width `width`, ReLU between them; the
    last layer's outputs are the logits of `width` classes."""

    def __init__(self, width, layers, device="cpu"):
        super().__init__()
        self.layers = torch.nn.ModuleList(
            torch.nn.Linear(width, width, bias=False, device=device) for _ in range(layers))
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i + 1 < len(self.layers):
                x = x.relu()
        return x


def stack_params(width, layers):
    return [(f"layers.{i}.weight", (width, width)) for i in range(layers)]


class CheapEvaluator:
    """Scores without a forward pass: rank r's datapoints are the signs of its shard's
    first elements; the score rows are all-gathered (the engine's "scores" traffic)."""

    def __init__(self, layout, comm, d):
        from m2n2.distributed import data_slice

        self.comm, self.d = comm, d
        lo, hi = data_slice(d, comm.world, comm.rank)
        if hi - lo > layout.n_local:
            raise ValueError("the cheap evaluator needs at least D / R elements per shard")
        self.d_local = hi - lo

    def __call__(self, shards):
        from m2n2.distributed import gather_rows

        return gather_rows(self.comm, shards[:, : self.d_local] > 0, self.d)


def naive_class():
    import torch.distributed as dist

    from m2n2.distributed import ShardedEvolution
    from m2n2.evolve import step_seed

    class NaiveEvolution(ShardedEvolution):
        """The crossover of the naive design: the parents' full rows gathered to rank 0,
        merged there on the whole vector, the child broadcast whole."""

        def _gather_full(self, row):
            layout, comm = self.layout, self.comm
            if comm.world == 1:
                return row
            sizes = [layout.for_rank(r).n_local for r in range(comm.world)]
            src = torch.zeros(max(sizes), dtype=row.dtype)
            src[: row.shape[0]] = row
            parts = [torch.empty_like(src) for _ in sizes] if comm.rank == 0 else None
            dist.gather(src, parts, dst=0, group=comm.group)
            if comm.rank != 0:
                return None
            full = layout.unshard([p[:s] for p, s in zip(parts, sizes)])
            comm._count("crossover", full)
            return full

        def _crossover(self, first, second, split, w, k):
            cfg, a, layout, comm = self.config, self.archive, self.layout, self.comm
            method = cfg.method if cfg.crossover else "lerp"
            seed = step_seed(cfg.seed, self.step_count)
            first, second, split, w = (t.tolist() for t in (first, second, split, w))
            for j in range(k):
                x, y = self._gather_full(a.params[first[j]]), self._gather_full(a.params[second[j]])
                child = torch.empty(layout.n, dtype=a.params.dtype) if comm.world > 1 or x is None else None
                if comm.rank == 0:
                    child = mk.split_interpolate(x, y, split[j], w[j], method=method, omega=cfg.omega,
                                                 noise_std=cfg.mutation_std, seed=seed, stream=j, out=child,
                                                 backend=self.backend)
                if comm.world > 1:
                    dist.broadcast(child, src=0, group=comm.group)
                    comm._count("crossover", child)
                a.children[j].copy_(layout.shard(child))

    return NaiveEvolution


def run_case(comm, design, setting, width, layers, d, reps):
    """One configuration on this rank: {times: [s], bytes: {purpose: per step}, peak}."""
    from m2n2 import EvolveConfig
    from m2n2 import ModuleEvaluator
    from m2n2.distributed import FSDPEvaluator, GatherEvaluator, ShardedEvolution, ShardLayout, data_slice

    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM back to the current RSS: this configuration's peak only
    except OSError:
        pass
    layout = ShardLayout(stack_params(width, layers), comm.world, comm.rank)
    gen = torch.Generator().manual_seed(1000 + comm.rank)
    init = torch.randn(START_MODELS, layout.n_local, generator=gen).mul_(width**-0.5)
    cheap = CheapEvaluator(layout, comm, CHEAP_D if setting == "cheap" else d)
    evaluate = cheap
    if setting.startswith("forward"):
        lo, hi = data_slice(d, comm.world, comm.rank)
        data = torch.Generator().manual_seed(7)
        x = torch.randn(d, width, generator=data)[lo:hi]
        y = torch.randint(0, width, (d,), generator=data)[lo:hi]
        if setting == "forward":
            evaluate = FSDPEvaluator(Stack(width, layers), x, y, layout, comm, d, kind="correct")
        else:  # the child gathered whole once per step, a plain module on this rank's slice
            local = ModuleEvaluator(Stack(width, layers), x, y, kind="correct", vmap=False)
            evaluate = GatherEvaluator(local, layout, comm, d)
    cfg = EvolveConfig(forward_passes=10**9, archive_size=ARCHIVE_SIZE, children_per_step=K, method="slerp",
                       mutation_std=0.01, seed=0, log_every=10**9)
    cls = ShardedEvolution if design == "sharded" else naive_class()
    # The starting models are scored by the cheap evaluator (same D, same score
    # dtype): the forward setting's start-up would otherwise cost START_MODELS passes.
    evo = cls(cheap, None, cfg, layout=layout, comm=comm, init_shards=init)
    evo.evaluate_fn = evaluate
    del init
    evo.step()  # warm-up
    comm.bytes.clear()
    times, cpu = [], []
    for _ in range(reps):
        comm.barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        evo.step()
        cpu.append(time.process_time() - c0)  # this process's CPU time, its threads included
        comm.barrier()
        times.append(time.perf_counter() - t0)
    per_step = {p: b / reps for p, b in comm.bytes.items()}
    peak = _rss_bytes("VmHWM")
    del evo, evaluate, cheap
    gc.collect()
    return {"times": times, "cpu": cpu, "bytes": per_step, "peak": peak, "n": layout.n}


def worker(cases, reps, out_dir):
    from m2n2.distributed import Comm, init_from_env

    init_from_env("cpu", timeout_s=900)
    comm = Comm()
    results = []
    for design, setting, width, layers, d in cases:
        comm.bytes.clear()
        results.append(dict(design=design, setting=setting, width=width, layers=layers, d=d,
                            **run_case(comm, design, setting, width, layers, d, reps)))
    with open(os.path.join(out_dir, f"rank{comm.rank}.json"), "w") as f:
        json.dump(results, f)


def fmt_int(x):
    return str(int(round(x)))


def main():
    p = parser(__doc__)
    p.set_defaults(device="cpu", reps=3)
    p.add_argument("--json", default=None, help="also write the rows as JSON to this file")
    p.add_argument("--ranks", default=None, help="comma-separated R (default 1,2,4; --quick: 1,2)")
    p.add_argument("--datapoints", type=int, default=None, help="D of the forward setting (default 4096; --quick: 64)")
    args = p.parse_args()
    if torch.device(args.device).type != "cpu":
        sys.exit("bench_distributed.py runs gloo CPU processes only (--device cpu)")
    from m2n2.distributed import spawn

    if args.quick:
        sizes = [(256, 4), (512, 4)]  # n = 262,144 and 1,048,576
        ranks, d = [1, 2], args.datapoints or 64
    else:
        sizes = [(2048, 24)]  # n = 100,663,296 (403 MB per model in fp32)
        ranks, d = [1, 2, 4], args.datapoints or 4096
    if args.ranks:
        ranks = [int(r) for r in args.ranks.split(",")]
    cores = os.cpu_count() or 1
    cases = [(design, setting, w, nl, d) for w, nl in sizes for setting in SETTINGS for design in DESIGNS
             if not (design == "naive" and setting == "forward-gather")]
    per_rank = {}
    for r in ranks:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            spawn(worker, r, cases, args.reps, tmp, threads=1)
            print(f"# R = {r}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
            per_rank[r] = [json.load(open(os.path.join(tmp, f"rank{i}.json"))) for i in range(r)]

    rows = []
    for i, (design, setting, w, nl, dd) in enumerate(cases):
        for r in ranks:
            res = [per_rank[r][rank][i] for rank in range(r)]
            times = [max(q["times"][j] for q in res) for j in range(len(res[0]["times"]))]
            ms = statistics.median(times) * 1e3
            busiest = max(range(r), key=lambda i_: sum(res[i_]["bytes"].values()))
            b = res[busiest]["bytes"]
            n = res[0]["n"]
            d_row = CHEAP_D if setting == "cheap" else dd
            # fsdp: FSDP2's all-gathers, unseen by Comm, computed; gather: Comm's own count
            eval_bytes = n * 4 * K if (setting == "forward" and r > 1) else b.get("params", 0)
            rows.append(dict(
                design=design, setting=setting, ranks=r, n_params=n, datapoints=d_row, children_per_step=K,
                ms=ms, ms_min=min(times) * 1e3, reps=len(times),
                cpu_ms=max(statistics.median(q["cpu"]) for q in res) * 1e3,
                sums=b.get("sums", 0), scores=b.get("scores", 0), control=b.get("control", 0),
                crossover=b.get("crossover", 0),
                eval_bytes=eval_bytes,
                eval_source=("computed: n x 4 B per child forward (FSDP2 all-gathers)" if setting == "forward" and r > 1
                             else "measured: the children gathered whole (Comm)" if eval_bytes else "none"),
                peak=max(q["peak"] for q in res), oversubscribed=r > cores,
            ))
    base = {(x["design"], x["setting"], x["n_params"]): x["ms"] for x in rows if x["ranks"] == 1}
    out = CsvOut(FIELDS, args.csv)
    tidy = []
    for x in rows:
        engine = x["sums"] + x["scores"] + x["control"] + x["crossover"]
        ref = base.get((x["design"], x["setting"], x["n_params"]))
        row = dict(
            design=x["design"], setting=x["setting"], ranks=x["ranks"], n_params=x["n_params"],
            datapoints=x["datapoints"], children_per_step=x["children_per_step"],
            steps_per_s=f"{1e3 / x['ms']:.3f}", ms_per_step=f"{x['ms']:.3f}", ms_min=f"{x['ms_min']:.3f}",
            cpu_ms_per_step=f"{x['cpu_ms']:.3f}",
            reps=x["reps"], speedup_vs_r1="" if ref is None or x["ranks"] == 1 else f"{ref / x['ms']:.2f}",
            sums_bytes_per_step=fmt_int(x["sums"]), scores_bytes_per_step=fmt_int(x["scores"]),
            control_bytes_per_step=fmt_int(x["control"]), crossover_bytes_per_step=fmt_int(x["crossover"]),
            engine_bytes_per_step=fmt_int(engine), eval_param_bytes_per_step=fmt_int(x["eval_bytes"]),
            eval_param_bytes_source=x["eval_source"], peak_rss_mib=f"{x['peak'] / 2**20:.0f}", cores=cores,
            oversubscribed="yes" if x["oversubscribed"] else "no",
        )
        out.row(**row)
        tidy.append(row)
    out.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cores": cores, "threads_per_rank": 1, "archive_size": ARCHIVE_SIZE, "rows": tidy}, f,
                      indent=1)
    print(f"\n# {cores} cores, one torch thread per rank" +
          ("; R > cores oversubscribes them" if max(ranks) > cores else ""), file=sys.stderr)
    print(f"{'design':8} {'setting':8} {'R':>2} {'n':>11} {'steps/s':>8} {'cpu ms':>8} {'vs R=1':>6} "
          f"{'engine B/step':>14} {'eval params B/step':>19} {'peak MiB':>8}", file=sys.stderr)
    for row in tidy:
        print(f"{row['design']:8} {row['setting']:8} {row['ranks']:>2} {row['n_params']:>11} {row['steps_per_s']:>8} "
              f"{row['cpu_ms_per_step']:>8} {row['speedup_vs_r1']:>6} {row['engine_bytes_per_step']:>14} "
              f"{row['eval_param_bytes_per_step']:>19} {row['peak_rss_mib']:>8}", file=sys.stderr)


if __name__ == "__main__":
    main()
