"""The `m2n2` command line.

    m2n2 evolve --task digits                   # the paper's experiment, one seed
    m2n2 evolve --task digits --compare --seeds 10
    m2n2 evolve --task digits --pretrained
    m2n2 evolve --resume runs/digits-20261203-101500
    m2n2 merge A B -o OUT --split 0.5 --w 0.3   # two checkpoints, streamed within a memory budget
"""
import argparse
import dataclasses
import json
import os
import sys
import time

import torch

from . import report, runner
from .checkpoint import read_metadata
from .evolve import EvolveConfig

# Variants of --compare: M2N2 and the ablations of the paper's figure, as changes
# to the configuration ("ga" is the reference code's GA: alpha 0 and no attraction),
# then the baselines (python/m2n2/baselines), which are other algorithms.
VARIANTS = {
    "m2n2": {},
    "no-crossover": {"crossover": False},
    "no-splitpoint": {"split_point": False},
    "no-attraction": {"attraction": False},
    "ga": {"alpha": 0.0, "attraction": False},
    "ga-no-crossover": {"alpha": 0.0, "attraction": False, "crossover": False},
}
ABLATIONS = ("m2n2", "no-crossover", "no-splitpoint", "no-attraction", "ga")
# baseline -> the starts it applies to (the reference code's rules)
BASELINE_STARTS = {"cma-es": ("scratch",), "map-elites": ("scratch", "pretrained"), "brute-force": ("pretrained",)}
INTERPOLATIONS = ("slerp", "lerp")


def _algorithm(variant):
    """The algorithm behind a variant name: "m2n2", or a baseline."""
    return "cma-es" if variant == "cma-es-diagonal" else (variant if variant in BASELINE_STARTS else "m2n2")


# The options a run folder's configuration is made of: --resume refuses to change them.
RUN_OPTIONS = (
    "task", "pretrained", "seeds", "first_seed", "forward_passes", "archive_size", "alpha", "no_crossover",
    "no_splitpoint", "no_attraction", "method", "omega", "children_per_step", "mutation_std", "compare",
    "device", "log_every", "cma_diagonal",
)


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit status 2."""


def _positive(name, low=1):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"{name} must be >= {low}, got {v}")
        return v

    return parse


def _number(name, low=None):
    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if v != v or v in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"{name} must be finite, got {text!r}")
        if low is not None and v < low:
            raise argparse.ArgumentTypeError(f"{name} must be >= {low}, got {v}")
        return v

    return parse


def build_parser():
    parser = argparse.ArgumentParser(prog="m2n2", description="Evolutionary model merging with M2N2.")
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser(
        "evolve",
        help="evolve models with M2N2 (the paper's digits experiment by default)",
        description="Run M2N2 (and with --compare its ablations) on a task; writes results.json, "
        "lineage.csv and accuracy.png into --out.",
    )
    S = argparse.SUPPRESS  # unset options stay unset, so --resume can tell what was asked
    ev.add_argument("--task", default=S, help="task to evolve (default: digits)")
    ev.add_argument("--pretrained", action="store_true", default=S,
                    help="start from two pre-trained specialists (digits 0-4 and 5-9) instead of from scratch")
    ev.add_argument("--seeds", type=_positive("--seeds"), default=S, help="number of seeds per variant (default 1)")
    ev.add_argument("--first-seed", type=_positive("--first-seed", 0), default=S, help="first seed (default 0)")
    ev.add_argument("--forward-passes", type=_positive("--forward-passes", 0), default=S,
                    help="children evaluated per run (default: 50,000 from scratch, 10,000 pre-trained)")
    ev.add_argument("--archive-size", type=_positive("--archive-size", 2), default=S, help="archive size N (default 20)")
    ev.add_argument("--alpha", type=_number("--alpha"), default=S, help="competition exponent (default 1; 0 = GA)")
    ev.add_argument("--no-crossover", action="store_true", default=S, help="child = first parent + mutation")
    ev.add_argument("--no-splitpoint", action="store_true", default=S, help="interpolate with w alone (no split point)")
    ev.add_argument("--no-attraction", action="store_true", default=S,
                    help="draw the second parent by fitness, like the first")
    ev.add_argument("--method", choices=INTERPOLATIONS + tuple(BASELINE_STARTS), default=S,
                    help="M2N2's interpolation (slerp, the default, or lerp), or a baseline to run instead: "
                    "cma-es (from scratch), map-elites, brute-force (pre-trained)")
    ev.add_argument("--cma-diagonal", action="store_true", default=S,
                    help="CMA-ES with a diagonal covariance (separable CMA-ES, O(n)): the fast variant")
    ev.add_argument("--omega", choices=("global", "segment"), default=S,
                    help="slerp angle over the whole vectors or per side of the split (default global)")
    ev.add_argument("--children-per-step", type=_positive("--children-per-step"), default=S,
                    help="children made and scored per step, in one batch (default 1, the reference algorithm)")
    ev.add_argument("--mutation-std", type=_number("--mutation-std", 0.0), default=S,
                    help="Gaussian mutation sigma (default: 0.01 from scratch, 0 pre-trained)")
    ev.add_argument("--compare", nargs="?", const="ablations", default=S, metavar="VARIANTS",
                    help="run several variants: 'ablations' (the default: " + ", ".join(ABLATIONS) + "), 'all' (the "
                    "ablations, ga-no-crossover and the baselines that apply to the start), or a comma list of "
                    + ", ".join(list(VARIANTS) + list(BASELINE_STARTS)))
    ev.add_argument("--device", default=S, help="cpu, cuda or cuda:N (default cpu)")
    ev.add_argument("--log-every", type=_positive("--log-every"), default=S,
                    help="forward passes between two points of the curves (default 100)")
    ev.add_argument("--out", default=None, help="output folder (default runs/<task>-<time>)")
    ev.add_argument("--checkpoint-every", type=_positive("--checkpoint-every", 0), default=10_000,
                    help="forward passes between checkpoints (default 10,000; 0: only at the end and on Ctrl-C)")
    ev.add_argument("--resume", default=None, metavar="DIR", help="continue the runs of an earlier output folder")
    ev.add_argument("--jobs", type=_positive("--jobs"), default=1,
                    help="runs at a time, in worker processes of one thread each (default 1); results do not "
                    "depend on it")
    ev.add_argument("--distributed", action="store_true",
                    help="run as one rank of a torch.distributed group (start it with `torchrun --nproc-per-node R -m "
                    "m2n2 evolve ... --distributed`): the archive is sharded over the ranks, the data split between "
                    "them (docs/scaling.md); NCCL with --device cuda, gloo on the CPU")
    ev.add_argument("--nproc", type=_positive("--nproc"), default=None, metavar="R",
                    help="start R local processes (gloo, CPU) that run sharded, as --distributed under torchrun")
    ev.add_argument("--eval-mode", choices=("gather", "fsdp"), default="gather",
                    help="sharded evaluation: gather each step's children whole on every rank (default), or run a "
                    "fully_shard'ed (FSDP2) model on the shards")
    ev.add_argument("--timeout", type=_number("--timeout", 1.0), default=600.0, metavar="SECONDS",
                    help="sharded: how long a rank waits for the others in a collective before the run stops with an "
                    "error (default 600)")
    ev.add_argument("--check-every", type=_positive("--check-every", 0), default=0, metavar="STEPS",
                    help="sharded, a debug mode: compare a digest of the replicated state between ranks every so many "
                    "steps (default 0: never)")
    ev.add_argument("--no-plot", action="store_true", help="do not draw accuracy.png")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_merge_parser(sub)
    return parser


def _split_arg(text):
    """--split: an element index (digits), a fraction (a number with a point or an
    exponent) or a tensor name (anything else)."""
    if text.isdigit():
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def _add_merge_parser(sub):
    mg = sub.add_parser(
        "merge",
        help="merge two checkpoints (safetensors) by split-point interpolation, streamed within a memory budget",
        description="Merge checkpoints A and B (a .safetensors file each, or Hugging Face model folders) into OUT: "
        "the split-point interpolation of their flat parameter vectors (floating-point tensors in canonical "
        "order: names sorted with numbers compared as numbers), bit for bit the in-memory merge, never holding "
        "more than --memory-budget. OUT has A's layout; it is written under a temporary name and renamed at "
        "the end.",
    )
    mg.add_argument("a", metavar="A", help="first parent: a .safetensors file or a model folder")
    mg.add_argument("b", metavar="B", help="second parent, with the same tensors as A")
    mg.add_argument("-o", "--out", required=True, help="the merged checkpoint (a file or folder, as A)")
    mg.add_argument("--split", required=True, type=_split_arg,
                    help="where t changes from w to 1 - w: an element index (1000), a fraction of the elements "
                    "(0.5) or a tensor name (its first element)")
    mg.add_argument("--w", required=True, type=_number("--w"), help="interpolation weight before the split")
    mg.add_argument("--method", choices=INTERPOLATIONS, default="slerp", help="slerp (default) or lerp")
    mg.add_argument("--omega", choices=("global", "segment"), default="global",
                    help="slerp angle over the whole vectors (default) or per side of the split")
    mg.add_argument("--noise-std", type=_number("--noise-std", 0.0), default=0.0,
                    help="Gaussian mutation sigma, keyed by (--seed, element index) (default 0)")
    mg.add_argument("--seed", type=_positive("--seed", 0), default=0, help="the mutation's seed (default 0)")
    mg.add_argument("--out-dtype", choices=("float32", "bfloat16", "float16", "float64"), default=None,
                    help="cast the merged tensors (default: each keeps its dtype)")
    mg.add_argument("--order", metavar="FILE", default=None,
                    help="the flat vector's order instead of the canonical one: every floating-point tensor's "
                    "name, one per line")
    mg.add_argument("--max-shard-size", default="5GB", help="largest output shard for a folder (default 5GB)")
    mg.add_argument("--memory-budget", default="1GB", help="most memory the merge's buffers hold (default 1GB)")
    mg.add_argument("--force", action="store_true", help="replace OUT if it exists")
    mg.add_argument("--summary", metavar="JSON", default=None, help="also write the summary to this JSON file")
    mg.add_argument("--quiet", action="store_true", help="no progress bars")


DEFAULTS = {
    "task": "digits", "pretrained": False, "seeds": 1, "first_seed": 0, "forward_passes": None,
    "archive_size": 20, "alpha": 1.0, "no_crossover": False, "no_splitpoint": False, "no_attraction": False,
    "method": "slerp", "omega": "global", "children_per_step": 1, "mutation_std": None, "compare": None,
    "device": "cpu", "log_every": 100, "cma_diagonal": False,
}


def _resolve_device(name):
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {name!r}: use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"unknown device {name!r}: use cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: no CUDA GPU is visible here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


def _options(args):
    """The run folder's options: saved ones under --resume (checked against any
    given now), else the given ones over DEFAULTS."""
    given = {k: getattr(args, k) for k in RUN_OPTIONS if hasattr(args, k)}
    if args.resume is None:
        return {**DEFAULTS, **given}
    path = os.path.join(args.resume, "config.json")
    if not os.path.isdir(args.resume):
        raise UsageError(f"--resume {args.resume}: no such folder")
    try:
        with open(path) as f:
            saved = json.load(f)["options"]
    except FileNotFoundError:
        raise UsageError(f"--resume {args.resume}: no config.json there (not an m2n2 evolve folder)") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UsageError(f"--resume {args.resume}: config.json is corrupt ({e})") from None
    differ = [k for k, v in given.items() if saved.get(k) != v]
    if differ:
        detail = ", ".join(f"--{k.replace('_', '-')}: folder {saved.get(k)!r}, now {given[k]!r}" for k in differ)
        raise UsageError(f"--resume {args.resume} is from another configuration ({detail})")
    unknown = set(saved) - set(DEFAULTS)
    if unknown:
        raise UsageError(f"--resume {args.resume}: config.json has unknown options {sorted(unknown)}")
    return {**DEFAULTS, **saved}


def _variants(opts):
    start = "pretrained" if opts["pretrained"] else "scratch"
    cma = "cma-es-diagonal" if opts["cma_diagonal"] else "cma-es"
    if opts["method"] in BASELINE_STARTS:
        if opts["compare"]:
            raise UsageError(f"--method {opts['method']} runs one baseline; list it in --compare instead")
        names = [opts["method"]]
    elif opts["compare"] == "ablations":
        names = list(ABLATIONS)
    elif opts["compare"] == "all":
        names = list(VARIANTS) + [b for b, starts in BASELINE_STARTS.items() if start in starts]
    elif opts["compare"]:
        names = [v.strip() for v in opts["compare"].split(",") if v.strip()]
        known = list(VARIANTS) + list(BASELINE_STARTS)
        unknown = [v for v in names if v not in known]
        if unknown or not names:
            raise UsageError(f"--compare: unknown variant(s) {unknown or [opts['compare']]}; known: "
                             f"ablations, all, {', '.join(known)}")
    else:
        parts = [name for flag, name in (("no_crossover", "no-crossover"), ("no_splitpoint", "no-splitpoint"),
                                         ("no_attraction", "no-attraction")) if opts[flag]]
        base = "ga" if opts["alpha"] == 0 and opts["no_attraction"] else "m2n2"
        if base == "ga":
            parts.remove("no-attraction")
        return ["-".join([base] + parts)]
    for b in names:
        if b in BASELINE_STARTS and start not in BASELINE_STARTS[b]:
            other = "without --pretrained" if start == "pretrained" else "with --pretrained"
            raise UsageError(f"{b} does not run from {'the specialists' if start == 'pretrained' else 'scratch'}: "
                             f"run it {other}")
        if b in BASELINE_STARTS:
            flags = [f"--{f.replace('_', '-')}" for f in ("no_crossover", "no_splitpoint", "no_attraction") if opts[f]]
            if flags:
                raise UsageError(f"{', '.join(flags)} apply to M2N2 only, not to the {b} baseline")
    return list(dict.fromkeys(cma if v == "cma-es" else v for v in names))


def _config(opts, task, variant, seed):
    d = task.defaults
    base = EvolveConfig(
        archive_size=opts["archive_size"],
        forward_passes=opts["forward_passes"] if opts["forward_passes"] is not None else d["forward_passes"],
        children_per_step=opts["children_per_step"],
        method=opts["method"] if opts["method"] in INTERPOLATIONS else "slerp",
        omega=opts["omega"],
        split_point=not opts["no_splitpoint"],
        crossover=not opts["no_crossover"],
        attraction=not opts["no_attraction"],
        alpha=opts["alpha"],
        mutation_std=opts["mutation_std"] if opts["mutation_std"] is not None else d["mutation_std"],
        seed=seed,
        log_every=opts["log_every"],
    )
    return dataclasses.replace(base, **VARIANTS.get(variant, {})).validate()  # a baseline uses the base


def _progress(total, initial, desc, quiet):
    if quiet:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit="pass", dynamic_ncols=True, leave=True)


class _Ranks:
    """This process's place in a sharded run: every rank runs the same runs; rank 0
    alone writes the output folder and prints."""

    def __init__(self, comm=None):
        self.comm = comm
        self.main = comm is None or comm.rank == 0


_RANKS = _Ranks()


def _start_sharded(args, opts):
    from .distributed import Comm, launch

    if args.jobs != 1:
        raise UsageError("--jobs runs whole runs side by side; a sharded run (--distributed, --nproc) uses every "
                         "rank for each run")
    device = _resolve_device(opts["device"])
    try:
        device = launch.init_from_env(device, args.timeout)
    except RuntimeError as e:
        raise UsageError(str(e)) from None
    global _RANKS
    _RANKS = _Ranks(Comm())
    return device


def evolve_command(args):
    from .tasks import get_task

    opts = _options(args)
    device = _start_sharded(args, opts) if args.distributed else _resolve_device(opts["device"])
    ranks = _RANKS
    try:
        task = get_task(opts["task"], device=device, pretrained=opts["pretrained"])
    except ValueError as e:
        raise UsageError(str(e)) from None
    runner.cache_task(opts["task"], device, opts["pretrained"], task)
    variants = _variants(opts)
    seeds = list(range(opts["first_seed"], opts["first_seed"] + opts["seeds"]))
    configs = {(v, s): _config(opts, task, v, s) for v in variants for s in seeds}  # validates every run first

    if args.distributed:
        baselines = [v for v in variants if _algorithm(v) != "m2n2"]
        if baselines:
            raise UsageError(f"{', '.join(baselines)} cannot run sharded (--distributed, --nproc): M2N2's variants only")
    out = args.resume or args.out or os.path.join("runs", f"{opts['task']}-{time.strftime('%Y%m%d-%H%M%S')}")
    if ranks.comm is not None:
        out = ranks.comm.broadcast_object(out)  # rank 0's clock names the folder
    ckpt_dir = os.path.join(out, "checkpoints")
    os.makedirs(ckpt_dir, exist_ok=True)
    results_path = os.path.join(out, "results.json")
    lineage_path = os.path.join(out, "lineage.csv")
    header = {
        "task": task.describe(),
        "options": opts,
        "config": _config(opts, task, variants[0], seeds[0]).to_dict() | {"seed": seeds},
        "variants": {v: VARIANTS.get(v, {"algorithm": _algorithm(v)}) for v in variants},
    }
    if args.resume is None:
        if os.path.exists(results_path):
            raise UsageError(f"--out {out} already holds a run (results.json); use --resume {out} or another --out")
        if ranks.main:
            report.write_json_atomic(os.path.join(out, "config.json"), {"options": opts})
        runs = []
    else:
        try:
            with open(results_path) as f:
                runs = json.load(f)["runs"]
        except FileNotFoundError:
            runs = []
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UsageError(f"--resume {out}: results.json is corrupt ({e})") from None
    done = {(r["variant"], r["seed"]) for r in runs}
    order = {key: i for i, key in enumerate(configs)}

    def save_results():
        runs.sort(key=lambda r: order.get((r["variant"], r["seed"]), len(order)))
        if ranks.main:
            report.write_json_atomic(results_path, {**header, "runs": runs})

    def record(outcome):
        if outcome["status"] == "done" and ranks.main:
            runs.append(outcome["run"])
            report.append_lineage(lineage_path, outcome["variant"], outcome["seed"], outcome["lineage"])
            save_results()

    specs = [
        runner.RunSpec(
            variant=v, seed=s, config=cfg.to_dict(),
            checkpoint=os.path.join(ckpt_dir, f"{v}-seed{s}" + (".sharded" if args.distributed else ".safetensors")),
            checkpoint_every=args.checkpoint_every, task=opts["task"], pretrained=opts["pretrained"], device=str(device),
            algorithm=_algorithm(v), eval_mode=args.eval_mode if args.distributed else "", check_every=args.check_every,
        )
        for (v, s), cfg in configs.items()
        if (v, s) not in done
    ]
    for spec in specs:  # refuse a damaged or foreign checkpoint before any work
        if os.path.isfile(spec.checkpoint):
            try:
                read_metadata(spec.checkpoint)
            except (ValueError, FileNotFoundError) as e:
                raise UsageError(str(e)) from None
    jobs = min(args.jobs, len(specs)) if specs else 1
    interrupted = None
    if ranks.comm is not None:
        ranks.comm.barrier()  # every rank has made its checks before any run starts
    if jobs <= 1:
        for spec in specs:
            bar = _progress(spec.config["forward_passes"], 0, f"{spec.variant} seed {spec.seed}",
                            args.quiet or not ranks.main)
            try:
                outcome = runner.execute(spec, progress=bar, comm=ranks.comm)
            except ValueError as e:
                raise UsageError(str(e)) from None
            finally:
                if bar is not None:
                    bar.close()
            record(outcome)
            if outcome["status"] != "done":
                interrupted = outcome
                break
    else:
        total = sum(s.config["forward_passes"] for s in specs)
        bar = _progress(total, 0, f"{len(specs)} runs, {jobs} at a time", args.quiet)
        try:
            finished = runner.run_parallel(specs, jobs, record, bar)
        finally:
            if bar is not None:
                bar.close()
        if not finished:
            interrupted = {"variant": "", "seed": "", "passes": None}
    if interrupted is not None:
        save_results()
        if not ranks.main:
            return 130
        where = (f"{interrupted['variant']} seed {interrupted['seed']} stopped at {interrupted['passes']} forward passes; "
                 if interrupted["passes"] is not None else "")
        print(f"\ninterrupted: {where}{len(runs)} run(s) complete, the others checkpointed in {ckpt_dir}.",
              file=sys.stderr)
        print(f"resume with: m2n2 evolve --resume {out}", file=sys.stderr)
        return 130
    save_results()
    if not ranks.main:
        return 0

    print()
    print(report.format_table(runs))
    print(f"\nresults: {results_path}")
    if os.path.exists(lineage_path):
        print(f"lineage: {lineage_path}")
    if not args.no_plot:
        plot_path = os.path.join(out, "accuracy.png")
        start = "pre-trained specialists" if opts["pretrained"] else "from scratch"
        report.plot_accuracy(runs, plot_path, title=f"{opts['task']} ({start})")
        print(f"plot:    {plot_path}")
    return 0


def _bytes(n):
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{n} B"
        n /= 1000


def merge_command(args):
    from .safetensors_io import CheckpointError
    from .stream_merge import merge_checkpoints

    try:
        s = merge_checkpoints(
            args.a, args.b, args.out, split=args.split, w=args.w, method=args.method, omega=args.omega,
            noise_std=args.noise_std, seed=args.seed, out_dtype=args.out_dtype, order=args.order,
            max_shard_size=args.max_shard_size, memory_budget=args.memory_budget, force=args.force,
            progress=not args.quiet,
        )
    except (CheckpointError, ValueError, TypeError, FileExistsError, FileNotFoundError) as e:
        raise UsageError(str(e)) from None
    angle = ""
    if s["angle_degrees"] is not None:
        angle = ", angle " + " | ".join(f"{a:.2f} deg" for a in s["angle_degrees"])
    rate = (s["read_bytes"] + s["written_bytes"]) / max(s["seconds"], 1e-9)
    print(f"merged {s['elements']:,} elements ({s['tensors']} tensors, {s['copied_tensors']} copied) with "
          f"{s['method']} (omega {s['omega']}{angle}) in {s['seconds']:.1f} s ({_bytes(rate)}/s)")
    print(f"read {_bytes(s['read_bytes'])}, wrote {_bytes(s['written_bytes'])}; peak memory {_bytes(s['peak_rss_bytes'])} "
          f"(buffers {_bytes(s['buffer_bytes'])})")
    print(f"out:     {s['out']} ({', '.join(s['files'])})")
    if args.summary:
        report.write_json_atomic(args.summary, s)
        print(f"summary: {args.summary}")
    return 0


def _rank_main(argv):
    """One of --nproc's processes: `m2n2 evolve ... --distributed`, its exit status kept."""
    code = main(argv)
    if code:
        sys.exit(code)


def spawn_ranks(argv, nproc):
    """--nproc R: R local processes (gloo) run the command sharded (each gets argv
    and --distributed, under which --nproc is ignored). Ctrl-C reaches all of them:
    they stop together after a checkpoint (exit status 130)."""
    from torch.multiprocessing import ProcessExitedException, ProcessRaisedException

    from .distributed import launch
    from .evolve import _deferred_sigint

    with _deferred_sigint():  # the parent waits for its ranks to stop
        try:
            launch.spawn(_rank_main, nproc, argv + ["--distributed"])
        except ProcessExitedException as e:
            return e.exit_code if e.exit_code in (2, 130) else 1
        except ProcessRaisedException as e:
            print(f"m2n2: error: a rank failed: {e}", file=sys.stderr)
            return 1
    return 0


def main(argv=None):
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.command == "evolve" and args.nproc and not args.distributed:
        return spawn_ranks(argv, args.nproc)
    try:
        if args.command == "evolve":
            return evolve_command(args)
        if args.command == "merge":
            return merge_command(args)
    except UsageError as e:
        if _RANKS.main:
            print(f"m2n2: error: {e}", file=sys.stderr)
        return 2
    except (RuntimeError, ValueError) as e:
        if _RANKS.comm is None:
            raise
        # A sharded run: a rank died or hung (the collective failed or timed out), or
        # the ranks disagree. Said in one line per rank; the last complete checkpoint
        # stays.
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"m2n2: error: rank {_RANKS.comm.rank}: {type(e).__name__}: {first}", file=sys.stderr)
        # A process group whose peers are gone cannot be shut down cleanly (gloo's
        # threads abort in their destructors): leave at once, with the status.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
