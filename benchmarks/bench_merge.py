"""Merging two checkpoints on disk: `merge_checkpoints` against plain file I/O and
against loading everything, on generated Llama-shaped checkpoints of a few GB.

Two models A and B (B = A + noise: an angle of about 25 degrees) are generated into
the work folder, in the Hugging Face layout (shards of --shard-size and
model.safetensors.index.json, bf16 matrices, fp32 norms), and then merged with the
global-angle slerp of the flat parameter vector (split at 40% of the elements,
w = 0.3). Every row writes a model-sized output folder and fsyncs it:

  plain-io               the ceiling: every tensor of A and B read, and an output of
                         the output's size written, with the merge's own reader,
                         chunks, pipeline and writer (stream_merge._Pipeline,
                         plan_chunks, safetensors_io.Reader / ShardWriter) and a
                         compute that does nothing
  m2n2 slerp             merge_checkpoints(..., memory_budget=--budget): two passes
                         over the inputs (the angle's sums, then the merge)
  m2n2 lerp              the same with method="lerp": one pass
  load-everything slerp  what one writes today: safetensors.torch.load_file of every
                         shard of both, the same slerp in plain torch (sums in fp64
                         over all tensors, then per tensor fp32 ca*a + cb*b on each
                         side of the split, cast back), save_file in shards, fsync;
                         checked (on a small pair, before timing) to equal
                         merge_checkpoints' output within bf16 rounding
  mergekit slerp         only where `import mergekit` works (optional): its slerp
                         (one angle per tensor, one t: not quite the same job)

Each row runs in a fresh subprocess of this script, warmed up on a tiny pair first,
so that its peak memory is its own: peak_extra = VmHWM - VmRSS before the row (the
peak reset through /proc/self/clear_refs). The repetitions alternate between the
rows (round robin); the median is reported. The inputs are read from the page cache
(they were just generated, and dropping the caches needs root), by every row alike;
the outputs go through the page cache to disk (fsync), so the disk's write speed
is part of every row, the ceiling included.

On a virtual machine whose host takes back the guest's free memory (virtio-balloon
free page reporting), the first touch of memory freed more than a few seconds
before costs a host page fault: about 110 MB/s on the 2-core development VM, where
touching the output's page cache and the buffers then dominates every row and the
times vary 2-5x between repetitions. Compare medians there, with more --reps.

Columns (one row per implementation; sizes in GB = 10^9 bytes, MB = 10^6):
  row, method          the implementation, and slerp / lerp / none
  model_gb             bytes of one model; inputs_gb = A + B; output_gb = the output
  budget_mb            --budget; inputs_vs_budget = inputs / budget (the merge of
                       issue 10 must work when this exceeds 10)
  reps                 repetitions; seconds = their median, seconds_min the fastest
  gbps                 (inputs + output bytes) / seconds: the job's minimal traffic,
                       the same for every row (m2n2 slerp reads the inputs twice)
  vs_plain_io          plain-io's seconds / the row's: 1.00 is the ceiling, higher
                       is faster (target for m2n2 rows: >= 0.7)
  peak_extra_mb        peak resident memory of the row beyond the process before it
                       (the largest of the repetitions); peak_vs_budget and
                       peak_vs_model = peak_extra / budget, / one model's bytes
  within_budget        yes / no, for the rows that take the budget (plain-io, m2n2)

    python benchmarks/bench_merge.py --csv merge.csv          # 2 GB per model, 3 reps
    python benchmarks/bench_merge.py --budget 256MB --size-gb 1.5 --reps 1   # inputs > 10x the budget
    python benchmarks/bench_merge.py --work-dir /tmp/m2n2-bench   # models kept there, reused by reruns
    python benchmarks/bench_merge.py --quick                  # a smoke run: 50 MB per model
"""
import csv
import ctypes
import gc
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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "python"))
from _common import _fixed, _rss_bytes, parser  # noqa: E402

from m2n2 import safetensors_io as sio  # noqa: E402
from m2n2 import stream_merge as sm  # noqa: E402
from m2n2.merge import canonical_order  # noqa: E402

SPLIT = 0.4  # fraction of the flat vector's elements before the split point
W = 0.3
SEED = 0
GB, MB = 1e9, 1e6
# --quick: inputs of 100 MB, over 10x the budget; the budget not so small that the few
# hundred KB around the slots (which take 90% of it) come near its edge.
QUICK = dict(size_gb=0.05, shard_size="10MB", budget="8MiB")
TINY = dict(size_gb=0.002, shard_size="500KB")  # the warm-up pair, also the correctness check's
ROWS = ["plain-io", "m2n2 slerp", "m2n2 lerp", "load-everything slerp", "mergekit slerp"]
BUDGETED = {"plain-io", "m2n2 slerp", "m2n2 lerp"}
FIELDS = [
    "row", "method", "model_gb", "inputs_gb", "output_gb", "budget_mb", "inputs_vs_budget", "reps", "seconds",
    "seconds_min", "gbps", "vs_plain_io", "peak_extra_mb", "peak_vs_budget", "peak_vs_model", "within_budget",
]

# Llama-family widths (hidden, intermediate, vocab, heads), narrowest first: the first
# that reaches the asked size with at most MAX_LAYERS layers is used.
WIDTHS = [(128, 344, 2048, 2), (256, 688, 4096, 4), (512, 1376, 8192, 8), (2048, 5632, 32000, 16),
          (4096, 11008, 32000, 32)]
MAX_LAYERS = 32


# ---------------------------------------------------------------- the models


def llama_dims(model_bytes):
    """Dimensions of a Llama-shaped model of about model_bytes (bf16 matrices, fp32 norms)."""
    for hidden, inter, vocab, heads in WIDTHS:
        fixed = 2 * vocab * hidden * 2 + hidden * 4  # embeddings, lm_head, final norm
        per_layer = (4 * hidden * hidden + 3 * hidden * inter) * 2 + 2 * hidden * 4
        layers = max(1, round((model_bytes - fixed) / per_layer))
        if layers <= MAX_LAYERS:
            break
    return dict(hidden=hidden, intermediate=inter, vocab=vocab, heads=heads, layers=layers)


def tensor_specs(d):
    """(name, dtype, shape) of every tensor, in the order of a Hugging Face Llama."""
    h, i, bf16, fp32 = d["hidden"], d["intermediate"], torch.bfloat16, torch.float32
    specs = [("model.embed_tokens.weight", bf16, (d["vocab"], h))]
    for n in range(d["layers"]):
        p = f"model.layers.{n}."
        specs += [(p + f"self_attn.{x}_proj.weight", bf16, (h, h)) for x in "qkvo"]
        specs += [(p + "mlp.gate_proj.weight", bf16, (i, h)), (p + "mlp.up_proj.weight", bf16, (i, h)),
                  (p + "mlp.down_proj.weight", bf16, (h, i))]
        specs += [(p + "input_layernorm.weight", fp32, (h,)), (p + "post_attention_layernorm.weight", fp32, (h,))]
    return specs + [("model.norm.weight", fp32, (h,)), ("lm_head.weight", bf16, (d["vocab"], h))]


def shard_name(k, total):
    return f"model-{k + 1:05d}-of-{total:05d}.safetensors"


def spec_bytes(specs):
    return sum(math.prod(shape) * dtype.itemsize for _, dtype, shape in specs)


def llama_config(d):
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": d["hidden"],
        "intermediate_size": d["intermediate"], "num_hidden_layers": d["layers"], "num_attention_heads": d["heads"],
        "num_key_value_heads": d["heads"], "vocab_size": d["vocab"], "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5, "hidden_act": "silu", "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    }


def parent_pair(g, dtype, shape):
    """A tensor of A and of B = A + noise (norms near 1, weights of std 0.02)."""
    if len(shape) == 1:
        a = 1 + 0.02 * torch.randn(shape, generator=g)
        b = a + 0.01 * torch.randn(shape, generator=g)
    else:
        a = 0.02 * torch.randn(shape, generator=g)
        b = a.add(torch.randn(shape, generator=g), alpha=0.01)
    return a.to(dtype), b.to(dtype)


def write_pair(dir_a, dir_b, dims, shard_size, seed):
    """Models A and B as sharded folders, one tensor at a time (never a model in memory)."""
    specs = tensor_specs(dims)
    shards = sio.plan_shards(specs, shard_size)
    names = [shard_name(k, len(shards)) for k in range(len(shards))]
    g = torch.Generator().manual_seed(seed)
    for d in (dir_a, dir_b):
        os.makedirs(d)
    for fname, shard in zip(names, shards):
        writers = [sio.ShardWriter({os.path.join(d, fname): shard}, {"format": "pt"}) for d in (dir_a, dir_b)]
        for name, dtype, shape in shard:
            for w, t in zip(writers, parent_pair(g, dtype, shape)):
                w.write(name, 0, t.reshape(-1))
        for w in writers:
            # On disk now, so that no writeback of the inputs runs during the timed rows.
            w.close(sync=True)
    index = {"metadata": {"total_size": spec_bytes(specs)},
             "weight_map": {name: f for f, s in zip(names, shards) for name, _, _ in s}}
    for d in (dir_a, dir_b):
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(llama_config(dims), f, indent=2)


def ensure_pair(root, size_gb, shard_size):
    """(A, B, model bytes) under root, generated unless root already holds this pair."""
    dims = llama_dims(size_gb * GB)
    stamp = {"dims": dims, "shard_size": shard_size, "seed": SEED, "version": 1}
    dir_a, dir_b, stamp_path = (os.path.join(root, x) for x in ("a", "b", "bench_merge.json"))
    try:
        with open(stamp_path) as f:
            if json.load(f) == stamp:
                return dir_a, dir_b, spec_bytes(tensor_specs(dims))
    except (OSError, ValueError):
        pass
    for p in (stamp_path, dir_a, dir_b):  # another pair, or a half-written one
        remove(p)
    os.makedirs(root, exist_ok=True)
    t0 = time.perf_counter()
    write_pair(dir_a, dir_b, dims, shard_size, SEED)
    with open(stamp_path, "w") as f:  # last: a half-written pair is never reused
        json.dump(stamp, f)
    nbytes = spec_bytes(tensor_specs(dims))
    print(f"# generated A and B in {root}: {nbytes / GB:.3f} GB each ({dims}) in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)
    return dir_a, dir_b, nbytes


# ---------------------------------------------------------------- the rows


def row_plain_io(a, b, out, cfg):
    """Read all of A and B and write an output of the output's size, as the merge
    does (same chunks, threads and writer), without computing anything."""
    ca, cb = sio.Checkpoint(a, "A"), sio.Checkpoint(b, "B")
    names = canonical_order(list(ca.tensors))
    slot_bytes = int(sio.parse_size(cfg["budget"], "budget") * sm.BUDGET_SHARE) // sm.SLOTS
    chunks = sm.plan_chunks(ca.tensors, names, slot_bytes, None, True)
    tensors = [(k, ca.tensors[k].dtype, ca.tensors[k].shape) for k in names]
    shards = sio.plan_shards(tensors, sio.parse_size(cfg["shard_size"], "shard_size"))
    os.mkdir(out)
    writer = sio.ShardWriter({os.path.join(out, shard_name(n, len(shards))): ts for n, ts in enumerate(shards)},
                             {"format": "pt"})
    reader = sio.Reader()

    def read(chunk, slot):
        for p in chunk.pieces:
            nb = p.count * p.entry.dtype.itemsize
            reader.read(p.entry, p.start, p.count, slot[p.a_at:p.a_at + nb])
            reader.read(cb.tensors[p.entry.name], p.start, p.count, slot[p.b_at:p.b_at + nb])

    def write(chunk, slot):
        for p in chunk.pieces:
            nb = p.count * p.entry.dtype.itemsize
            writer.write(p.entry.name, p.start, slot[p.a_at:p.a_at + nb].view(p.entry.dtype))

    try:
        sm._Pipeline(slot_bytes).run(chunks, read, lambda chunk, slot: None, write)
        writer.close(sync=True)
    finally:
        reader.close()
    return {}


def row_m2n2(method):
    def run(a, b, out, cfg):
        s = sm.merge_checkpoints(a, b, out, split=SPLIT, w=W, method=method, max_shard_size=cfg["shard_size"],
                                 memory_budget=cfg["budget"], force=True, progress=False)
        return {"angle_degrees": s["angle_degrees"], "read_bytes": s["read_bytes"],
                "written_bytes": s["written_bytes"]}

    return run


def load_folder(path):
    """Every tensor of a Hugging Face folder, with safetensors.torch.load_file."""
    from safetensors.torch import load_file

    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:  # one shard
        files = [f for f in os.listdir(path) if f.endswith(".safetensors")]
    sd = {}
    for f in files:
        sd.update(load_file(os.path.join(path, f)))
    return sd


def slerp_coefs(dot, aa, bb, t):
    """(ca, cb) with child = ca a + cb b: slerp by the angle of (dot, |a|^2, |b|^2), lerp
    where the angle vanishes."""
    na, nb = math.sqrt(aa), math.sqrt(bb)
    if na > 0 and nb > 0:
        omega = math.acos(max(-1.0, min(1.0, dot / (na * nb))))
        so = math.sin(omega)
        if so > 1e-6:
            return math.sin((1 - t) * omega) / so, math.sin(t * omega) / so
    return 1 - t, t


def global_sums(a, b, names, block=1 << 22):
    """dot(a, b), |a|^2 and |b|^2 over all the tensors `names`, in fp64 (in blocks, so
    that the fp64 copies stay small)."""
    dot = aa = bb = 0.0
    for k in names:
        x, y = a[k].reshape(-1), b[k].reshape(-1)
        for s in range(0, x.numel(), block):
            xd, yd = x[s:s + block].double(), y[s:s + block].double()
            dot += float(torch.dot(xd, yd))
            aa += float(torch.dot(xd, xd))
            bb += float(torch.dot(yd, yd))
    return dot, aa, bb


def torch_global_slerp(a, b, split, w):
    """The merge of two state dicts in plain torch: one angle over the flat vector of
    the floating tensors (canonical order), t = w before element `split`, 1 - w after."""
    names = canonical_order([k for k, v in a.items() if v.is_floating_point()])
    at = int(split * sum(a[k].numel() for k in names))
    sums = global_sums(a, b, names)
    sides = [slerp_coefs(*sums, w), slerp_coefs(*sums, 1 - w)]
    out, start = {k: v for k, v in a.items() if not v.is_floating_point()}, 0
    for k in names:
        x, y = a[k].reshape(-1).float(), b[k].reshape(-1).float()  # fp32 copies, updated in place
        cut = min(max(at - start, 0), x.numel())
        for (ca, cb), (lo, hi) in zip(sides, ((0, cut), (cut, x.numel()))):
            x[lo:hi].mul_(ca).add_(y[lo:hi], alpha=cb)
        out[k] = x.to(a[k].dtype).view_as(a[k])
        start += x.numel()
    return out, math.degrees(math.acos(max(-1.0, min(1.0, sums[0] / math.sqrt(sums[1] * sums[2])))))


def save_sharded(sd, out, shard_size):
    """save_file in shards of at most shard_size bytes, the index, and fsync."""
    from safetensors.torch import save_file

    tensors = [(k, sd[k].dtype, tuple(sd[k].shape)) for k in canonical_order(list(sd))]
    shards = sio.plan_shards(tensors, shard_size)
    os.mkdir(out)
    weight_map, paths = {}, []
    for n, shard in enumerate(shards):
        fname = shard_name(n, len(shards))
        paths.append(os.path.join(out, fname))
        save_file({k: sd[k] for k, _, _ in shard}, paths[-1], metadata={"format": "pt"})
        weight_map.update({k: fname for k, _, _ in shard})
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": spec_bytes(tensors)}, "weight_map": weight_map}, f)
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def row_load_everything(a, b, out, cfg):
    sd_a, sd_b = load_folder(a), load_folder(b)
    merged, angle = torch_global_slerp(sd_a, sd_b, SPLIT, W)
    save_sharded(merged, out, sio.parse_size(cfg["shard_size"], "shard_size"))
    return {"angle_degrees": [angle]}


def row_mergekit(a, b, out, cfg):
    """mergekit's slerp of A and B (one t for every tensor), through its Python API."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    with open(os.path.join(a, "config.json")) as f:
        layers = json.load(f)["num_hidden_layers"]
    config = MergeConfiguration.model_validate({
        "merge_method": "slerp", "base_model": a, "parameters": {"t": W}, "dtype": "bfloat16",
        "slices": [{"sources": [{"model": m, "layer_range": [0, layers]} for m in (a, b)]}],
    })
    wanted = dict(lazy_unpickle=True, copy_tokenizer=False, low_cpu_memory=False,
                  out_shard_size=sio.parse_size(cfg["shard_size"], "shard_size"))
    fields = getattr(MergeOptions, "model_fields", wanted)
    run_merge(config, out, options=MergeOptions(**{k: v for k, v in wanted.items() if k in fields}))
    return {}


ROW_FUNCS = {
    "plain-io": row_plain_io, "m2n2 slerp": row_m2n2("slerp"), "m2n2 lerp": row_m2n2("lerp"),
    "load-everything slerp": row_load_everything, "mergekit slerp": row_mergekit,
}


# ---------------------------------------------------------------- one row, in its own process


def reset_peak():
    """Return freed memory to the system, then make VmHWM the current RSS."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # what the warm-up freed must not hide what the row allocates
    except (OSError, AttributeError):
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def remove(path):
    shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else (os.path.lexists(path) and os.remove(path))


def run_row(spec):
    """Warm up on the tiny pair, then time the row once and measure its peak memory:
    one JSON line on stdout."""
    fn = ROW_FUNCS[spec["row"]]
    fn(*spec["warm"], spec)
    remove(spec["warm"][2])
    reset_peak()
    base = _rss_bytes("VmRSS")
    t0 = time.perf_counter()
    info = fn(spec["a"], spec["b"], spec["out"], spec)
    seconds = time.perf_counter() - t0
    info.update(seconds=seconds, peak_extra_bytes=max(0, _rss_bytes("VmHWM") - base))
    print(json.dumps(info), flush=True)


def row_in_subprocess(spec):
    """The row's result dict, or None where the row is optional and failed."""
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--_row", json.dumps(spec)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    remove(spec["out"])
    if proc.returncode != 0:
        if spec["row"] == "mergekit slerp":
            print(f"# mergekit slerp: left out, it failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            return None
        sys.stderr.write(proc.stderr)
        raise RuntimeError(f"row {spec['row']!r} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the run


def check_baseline(a, b, out, cfg):
    """The load-everything baseline computes what merge_checkpoints does: every tensor
    within one bf16 rounding (the two may round fl(ca a) + fl(cb b) differently)."""
    s = sm.merge_checkpoints(a, b, out, split=SPLIT, w=W, max_shard_size=cfg["shard_size"],
                             memory_budget=cfg["budget"], force=True, progress=False)
    want, angle = torch_global_slerp(load_folder(a), load_folder(b), SPLIT, W)
    got = load_folder(out)
    remove(out)
    assert set(got) == set(want), "the baseline and the merge write different tensors"
    assert abs(angle - s["angle_degrees"][0]) < 1e-6, f"angles differ: {angle} vs {s['angle_degrees']}"
    off = 0
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        torch.testing.assert_close(got[k].float(), want[k].float(), rtol=2.0**-7, atol=1e-30, msg=k)
        off += int((got[k] != want[k]).sum())
    n = sum(t.numel() for t in want.values())
    assert off <= 0.01 * n, f"{off} of {n} elements differ by one rounding: not the same maths"
    print(f"# baseline == merge_checkpoints within bf16 rounding ({off} of {n} elements one step apart); "
          f"angle {angle:.4f} degrees", file=sys.stderr)


def mergekit_available():
    try:
        import mergekit  # noqa: F401
    except Exception as e:  # not installed, or broken: the row is optional
        print(f"# mergekit slerp: left out (import mergekit failed: {e})", file=sys.stderr)
        return False
    return True


def measure(rows, spec, reps):
    """{row: [result per repetition]}: the rows alternate (round robin)."""
    results = {r: [] for r in rows}
    for rep in range(reps):
        for r in list(results):
            res = row_in_subprocess(dict(spec, row=r, out=os.path.join(spec["work"], "out-" + r.replace(" ", "-"))))
            if res is None:
                del results[r]
                continue
            results[r].append(res)
            print(f"# rep {rep + 1}/{reps} {r}: {res['seconds']:.2f} s, peak extra "
                  f"{res['peak_extra_bytes'] / MB:.0f} MB", file=sys.stderr)
    return results


def table_rows(results, model_bytes, budget):
    """The CSV rows of FIELDS."""
    seconds = {r: statistics.median(x["seconds"] for x in v) for r, v in results.items()}
    inputs, output = 2 * model_bytes, model_bytes
    out = []
    for r, v in results.items():
        peak = max(x["peak_extra_bytes"] for x in v)
        out.append(dict(
            row=r, method=r.split()[-1] if r != "plain-io" else "none", model_gb=f"{model_bytes / GB:.4g}",
            inputs_gb=f"{inputs / GB:.4g}", output_gb=f"{output / GB:.4g}", budget_mb=f"{budget / MB:.4g}",
            inputs_vs_budget=_fixed(inputs / budget), reps=len(v), seconds=f"{seconds[r]:.4f}",
            seconds_min=f"{min(x['seconds'] for x in v):.4f}", gbps=_fixed((inputs + output) / seconds[r] / GB),
            vs_plain_io=_fixed(seconds["plain-io"] / seconds[r]), peak_extra_mb=f"{peak / MB:.1f}",
            peak_vs_budget=_fixed(peak / budget), peak_vs_model=_fixed(peak / model_bytes),
            within_budget=("yes" if peak <= budget else "no") if r in BUDGETED else "",
        ))
    return out


def print_table(rows):
    """The rows, aligned, on stdout; the columns every row shares in a line above."""
    shared = ["model_gb", "inputs_gb", "output_gb", "budget_mb", "inputs_vs_budget"]
    print("  ".join(f"{k}={rows[0][k]}" for k in shared))
    cols = [c for c in FIELDS if c not in shared]
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths)))


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--_row":  # one row, in its own process (hidden)
        run_row(json.loads(sys.argv[2]))
        return
    p = parser(__doc__)
    p.set_defaults(reps=3, device="cpu")
    p.add_argument("--size-gb", type=float, default=None, help="GB per model (default 2, 0.05 with --quick)")
    p.add_argument("--shard-size", default=None, help="input and output shard size (default 1GB, 10MB with --quick)")
    p.add_argument("--budget", default=None, help="merge_checkpoints' memory_budget (default 1GB, 8MiB with --quick)")
    p.add_argument("--work-dir", default=None,
                   help="where the models are generated (and reused when they match); default a temporary folder")
    p.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    args = p.parse_args()
    if args.device != "cpu":
        p.error("the merge of checkpoints on disk runs on the CPU: --device cpu")
    if args.quick:
        args.reps = 1
    defaults = QUICK if args.quick else dict(size_gb=2.0, shard_size="1GB", budget="1GB")
    size_gb = args.size_gb or defaults["size_gb"]
    shard_size = sio.parse_size(args.shard_size or defaults["shard_size"], "--shard-size")
    budget_text = args.budget or defaults["budget"]
    budget = sio.parse_size(budget_text, "--budget")

    work = args.work_dir or tempfile.mkdtemp(prefix="bench_merge-", dir="/tmp")
    try:
        a, b, model_bytes = ensure_pair(work, size_gb, shard_size)
        tiny = ensure_pair(os.path.join(work, "tiny"), TINY["size_gb"], sio.parse_size(TINY["shard_size"], "tiny"))
        cfg = dict(budget=budget_text, shard_size=shard_size)
        check_baseline(tiny[0], tiny[1], os.path.join(work, "out-check"), cfg)
        rows = ROWS[:-1] + (["mergekit slerp"] if mergekit_available() else [])
        spec = dict(cfg, a=a, b=b, work=work, warm=[tiny[0], tiny[1], os.path.join(work, "out-warm")])
        results = measure(rows, spec, args.reps)
    finally:
        if args.work_dir is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif args.work_dir is None:
            print(f"# kept {work}", file=sys.stderr)
    angle = results["m2n2 slerp"][0].get("angle_degrees")
    print(f"# angle between A and B: {angle[0]:.3f} degrees", file=sys.stderr)
    rows = table_rows(results, model_bytes, budget)
    print_table(rows)
    if args.csv:  # the file only: stdout has the table
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS)
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
