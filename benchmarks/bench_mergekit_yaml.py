"""End to end: mergekit-yaml merging generated Llama-shaped checkpoints, with and
without the fused methods (m2n2_kernels.mergekit.install()).

The checkpoints: a base and K = 3 (--models) fine-tunes of it in bf16, each one
safetensors file of about --size-gb (default 2 GB; hidden 2048, MLP 5504, vocab 32000,
as many layers as the size allows); base ~ N(0, 0.02^2), each fine-tune = base +
N(0, 0.001^2) rounded to bf16. They are written once into --work-dir and reused by
later runs of the same size (delete the folder to regenerate).

Rows (one per command, each run --reps times as a child process; seconds is the median
wall time, peak_rss_mb the largest resident set of the child, its VmHWM as it exits):
  imports only               python importing mergekit and m2n2_kernels.mergekit: the
                             floor under both merges' time and memory
  mergekit-yaml              mergekit's own command and methods
  m2n2_kernels.mergekit      `python -m m2n2_kernels.mergekit`: the same command with
                             the fused methods installed
both with --no-write-model-card --no-copy-tokenizer (HF_HUB_OFFLINE=1), CONFIG: the
method (--method, default ties) with density 0.2 and weights 0.3, 0.4, 0.5, ...,
dtype bfloat16 (as mergekit computes it: in bf16; ours in fp32, rounded once).
vs_mergekit = mergekit-yaml's seconds / the row's seconds. agree: the fraction of the
output's elements within one bf16 rounding of mergekit-yaml's output (rtol 2^-7);
TIES differs where a model's magnitudes tie with its threshold (mergekit breaks ties
by its sort's order, we keep the lowest index) and by mergekit's bf16 arithmetic.

CSV columns: row, method, models, params_per_model, model_gb, inputs_gb, reps,
seconds, seconds_min, vs_mergekit, peak_rss_mb, agree.

    python benchmarks/bench_mergekit_yaml.py                  # 2 GB per model, K = 3
    python benchmarks/bench_mergekit_yaml.py --size-gb 0.5 --reps 3 --csv yaml.csv
    python benchmarks/bench_mergekit_yaml.py --quick          # tiny checkpoints: a smoke run
"""
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import CsvOut, parser  # noqa: E402

FIELDS = ["row", "method", "models", "params_per_model", "model_gb", "inputs_gb", "reps", "seconds", "seconds_min",
          "vs_mergekit", "peak_rss_mb", "agree"]
IMPORTS, THEIRS, OURS = "imports only", "mergekit-yaml", "m2n2_kernels.mergekit"
DENSITY = 0.2
MATRICES = [("self_attn.q_proj", "h", "h"), ("self_attn.k_proj", "h", "h"), ("self_attn.v_proj", "h", "h"),
            ("self_attn.o_proj", "h", "h"), ("mlp.gate_proj", "f", "h"), ("mlp.up_proj", "f", "h"),
            ("mlp.down_proj", "h", "f")]


def model_shape(size_gb):
    """(hidden, mlp, vocab, layers) of a Llama-shaped bf16 model of about size_gb."""
    if size_gb >= 1:
        h, f, v = 2048, 5504, 32000
    elif size_gb >= 0.05:
        h, f, v = 512, 1376, 32000
    else:
        h, f, v = 128, 344, 1000
    per_layer = 4 * h * h + 3 * h * f + 2 * h
    layers = max(1, round((size_gb * 1e9 / 2 - 2 * v * h - h) / per_layer))
    return h, f, v, layers


def tensor_shapes(h, f, v, layers):
    side = {"h": h, "f": f}
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for name, a, b in MATRICES:
            shapes[p + name + ".weight"] = (side[a], side[b])
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
    return shapes


def write_checkpoints(work, shapes, K, config):
    """base/ and m1/ .. mK/ under work (each model.safetensors + config.json), unless
    a previous run left them there complete (a marker file is written last)."""
    from safetensors.torch import save_file

    marker = os.path.join(work, "checkpoints.json")
    want = {"shapes": {k: list(s) for k, s in shapes.items()}, "models": K}
    if os.path.exists(marker):
        with open(marker) as f:
            if json.load(f) == want:
                print(f"# reusing the checkpoints in {work}", file=sys.stderr)
                return
    gen = torch.Generator().manual_seed(0)
    names = ["base"] + [f"m{k + 1}" for k in range(K)]
    base32 = {k: torch.randn(s, generator=gen).mul_(0.02) for k, s in shapes.items()}
    for name in names:
        t0 = time.perf_counter()
        if name == "base":
            sd = {k: b.to(torch.bfloat16) for k, b in base32.items()}
        else:
            sd = {k: torch.randn(b.shape, generator=gen).mul_(0.001).add_(b).to(torch.bfloat16)
                  for k, b in base32.items()}
        folder = os.path.join(work, name)
        os.makedirs(folder, exist_ok=True)
        save_file(sd, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(config, f)
        del sd
        print(f"# wrote {folder} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    with open(marker, "w") as f:
        json.dump(want, f)


def llama_config(h, f, v, layers):
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h,
            "intermediate_size": f, "num_hidden_layers": layers, "num_attention_heads": max(1, h // 128),
            "num_key_value_heads": max(1, h // 128), "vocab_size": v, "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}


def write_config(work, method, K):
    lines = [f"merge_method: {method}", "base_model: base", "models:"]
    for k in range(K):
        lines += [f"  - model: m{k + 1}", f"    parameters: {{weight: {0.3 + 0.1 * (k % 3):.1f}, density: {DENSITY}}}"]
    lines += ["dtype: bfloat16", ""]
    path = os.path.join(work, f"{method}.yml")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def run_child(cmd, cwd):
    """(wall seconds, peak resident MB) of one child process; raises on failure.

    The peak is the child's own VmHWM, read by the child as it exits (see
    child_main): getrusage's ru_maxrss would also count the parent's peak, which a
    forked child inherits and keeps across exec."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    fd, peak_file = tempfile.mkstemp(prefix="peak_", suffix=".txt")
    os.close(fd)
    try:
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, os.path.abspath(__file__), CHILD_FLAG, peak_file] + cmd, cwd=cwd,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        seconds = time.perf_counter() - t0
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr.decode()[-3000:]}")
        with open(peak_file) as f:
            return seconds, int(f.read()) / 1024  # kB
    finally:
        os.unlink(peak_file)


CHILD_FLAG = "--run-child"


def child_main(peak_file, argv):
    """Runs one row's command in this process (`-c CODE`, `-m MODULE args` or a
    console script's name and args) and writes this process's VmHWM (kB) to
    peak_file when it exits, however it exits."""
    import atexit
    import runpy

    def write_peak():
        with open("/proc/self/status") as f:
            kb = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
        with open(peak_file, "w") as f:
            f.write(kb)
    atexit.register(write_peak)
    if argv[0] == "-c":
        exec(compile(argv[1], "<imports>", "exec"), {"__name__": "__main__"})
    elif argv[0] == "-m":
        sys.argv = [argv[1]] + argv[2:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        from importlib.metadata import entry_points

        (script,) = [e for e in entry_points(group="console_scripts") if e.name == argv[0]]
        sys.argv = argv
        sys.exit(script.load()())


def agreement(ours_dir, theirs_dir):
    """The fraction of elements of ours within one bf16 rounding of theirs."""
    from safetensors import safe_open

    same = total = 0
    with safe_open(os.path.join(ours_dir, "model.safetensors"), "pt") as a, \
            safe_open(os.path.join(theirs_dir, "model.safetensors"), "pt") as b:
        if set(a.keys()) != set(b.keys()):
            raise RuntimeError("the two merges wrote different tensors")
        for k in a.keys():
            x, y = a.get_tensor(k).float(), b.get_tensor(k).float()
            same += int(torch.isclose(x, y, rtol=2.0 ** -7, atol=1e-12).sum())
            total += x.numel()
    return same / max(total, 1)


def commands(config_path, outs):
    """The command of every row (for child_main); outs: the output folder of each merge."""
    def opts(name):
        return [config_path, outs[name], "--no-write-model-card", "--no-copy-tokenizer"]
    return {
        IMPORTS: ["-c", "import mergekit.merge, mergekit.scripts.run_yaml, m2n2_kernels.mergekit"],
        THEIRS: ["mergekit-yaml"] + opts(THEIRS),
        OURS: ["-m", "m2n2_kernels.mergekit"] + opts(OURS),
    }


def run(args):
    try:
        import mergekit  # noqa: F401
    except ImportError:
        raise SystemExit("bench_mergekit_yaml.py needs mergekit: pip install 'm2n2-kernels[mergekit]'")
    size = args.size_gb if args.size_gb is not None else (0.002 if args.quick else 2.0)
    h, f, v, layers = model_shape(size)
    shapes = tensor_shapes(h, f, v, layers)
    n = sum(math.prod(s) for s in shapes.values())
    model_gb = 2 * n / 1e9
    print(f"# {layers} layers, hidden {h}, MLP {f}, vocab {v}: {n:,} parameters, {model_gb:.3f} GB per model, "
          f"K = {args.models}", file=sys.stderr)
    work = args.work_dir or tempfile.mkdtemp(prefix="bench_mergekit_yaml_")
    os.makedirs(work, exist_ok=True)
    rows = CsvOut(FIELDS, args.csv)
    try:
        write_checkpoints(work, shapes, args.models, llama_config(h, f, v, layers))
        config = write_config(work, args.method, args.models)
        outs = {name: os.path.join(work, "out-" + name) for name in (THEIRS, OURS)}
        cmds = commands(config, outs)
        results = {}
        for rep in range(args.reps):
            for name, cmd in cmds.items():
                if name in outs:
                    shutil.rmtree(outs[name], ignore_errors=True)
                seconds, peak = run_child(cmd, work)
                results.setdefault(name, []).append((seconds, peak))
                print(f"# round {rep + 1}/{args.reps}: {name}: {seconds:.1f} s, peak {peak:.0f} MB", file=sys.stderr)
        agree = agreement(outs[OURS], outs[THEIRS])
        theirs_s = statistics.median(s for s, _ in results[THEIRS])
        for name, got in results.items():
            seconds = statistics.median(s for s, _ in got)
            rows.row(row=name, method=args.method, models=args.models, params_per_model=n,
                     model_gb=f"{model_gb:.3f}", inputs_gb=f"{(args.models + 1) * model_gb:.3f}", reps=len(got),
                     seconds=f"{seconds:.2f}", seconds_min=f"{min(s for s, _ in got):.2f}",
                     vs_mergekit="" if name == IMPORTS else f"{theirs_s / seconds:.2f}",
                     peak_rss_mb=f"{max(p for _, p in got):.0f}",
                     agree={THEIRS: "1.0000", OURS: f"{agree:.4f}"}.get(name, ""))
    finally:
        rows.close()
        if not args.work_dir and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:  # keep the checkpoints for the next run, not the merges
            for name in (THEIRS, OURS):
                shutil.rmtree(os.path.join(work, "out-" + name), ignore_errors=True)


def main():
    if len(sys.argv) > 2 and sys.argv[1] == CHILD_FLAG:
        return child_main(sys.argv[2], sys.argv[3:])
    p = parser(__doc__)
    p.set_defaults(device="cpu", reps=1)
    p.add_argument("--size-gb", type=float, default=None, help="GB per checkpoint (default 2, 0.002 with --quick)")
    p.add_argument("--models", type=int, default=3, help="K, the fine-tunes merged onto the base (default 3)")
    p.add_argument("--method", default="ties", choices=("ties", "task_arithmetic", "dare_ties", "dare_linear"))
    p.add_argument("--work-dir", default=None,
                   help="where the checkpoints are written and kept for later runs (default: a temporary folder, "
                   "removed at the end)")
    p.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    args = p.parse_args()
    if args.device != "cpu":
        p.error("mergekit-yaml runs on CPU here: use --device cpu")
    if args.models < 1 or args.reps < 1:
        p.error("--models and --reps must be >= 1")
    run(args)


if __name__ == "__main__":
    main()
