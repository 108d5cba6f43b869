"""The benchmark scripts run (smoke sizes) and write the CSV rows they promise, with sane values.

Each script is run once (--quick --reps 1, as before); the checks read its CSV:
- the shared schema (benchmarks/_common.py KERNEL_FIELDS) and, per row, the identifying
  columns (op, impl, backend, device, dtype, shape) well formed and non-empty;
- the numbers finite and in range: 0 < ms_min <= ms, 1 <= reps <= --reps, gbps > 0,
  0 <= extra_mib below a generous multiple of the inputs' size, ratios > 0;
- the numbers consistent with each other, up to the rounding of the CSV's decimals:
  gbps = the bytes the op must move (from shape and dtype) / ms, speedup_vs_torch =
  the ms of a torch row of the same case / ms, time_vs_ceiling = ms / the ceiling row's ms;
- every op and impl a script claims (its docstring) present in every case it covers,
  our kernels once per backend (cpp on CPU); an optional impl (mergekit's methods in
  bench_merge_methods.py) present exactly where the environment has it.
bench_engine.py, bench_merge.py (whole-file merges), bench_mergekit_yaml.py
(mergekit-yaml end to end, where mergekit is installed) and bench_distributed.py (the
sharded archive on gloo processes) have their own columns, checked
the same way: values in range and consistent with each other, the rows they claim
present; at smoke sizes no speed target is asserted, only the memory promise (the
merge's peak within its budget, on inputs over ten times the budget).
"""
import csv
import glob
import importlib.util
import math
import os
import re
import subprocess
import sys

import pytest
import torch

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
REPS = 1
OURS = "m2n2_kernels"
OURS_IMPLS = {OURS, OURS + " out="}  # our kernels, returning new tensors or into preallocated ones
OUR_BACKENDS = {"cpp"}  # on CPU tensors (the Triton interpreter is never timed)
EVERY = None  # an impl claimed for every dtype of its script

# What each script must report, beyond the shared columns: its dtypes (the default of
# --dtypes), the bytes an op must move per byte of its input (gbps), and per op the impls
# it claims, each for every dtype or for some only, and its optional impls (present exactly
# where the environment has them). A script not listed here (a new op family) is still
# run and checked against the shared schema and value ranges.
MERGE_METHOD_OPS = ("task_arithmetic", "ties", "dare_linear", "dare_ties")  # bench_merge_methods.py
CLAIMS = {
    "bench_crossover.py": dict(
        dtypes={"float32", "bfloat16"},
        traffic=3,  # read a and b, write the child; shape = elements per buffer
        inputs=2,  # a and b
        ops={
            "lerp_": {"torch lerp_ (in place)": EVERY},
            "lerp(out=)": {"torch.lerp(out=)": EVERY},
            "lerp_split": {"best torch": EVERY, OURS: EVERY},
            "slerp_split": {"best torch": EVERY, OURS: EVERY},
            "slerp_mutate": {"best torch": EVERY, OURS: EVERY},
        },
    ),
    "bench_scores.py": dict(
        dtypes={"float32", "bfloat16"},
        traffic=1,  # the logits, read once
        inputs=1,
        ops={
            "logprob": {"torch": EVERY, OURS: EVERY},
            "argmax": {"torch argmax alone": EVERY},
            "correct": {"torch": EVERY, OURS: EVERY},
        },
    ),
    "bench_niches.py": dict(
        dtypes={"bool", "float32"},
        traffic=1,  # S, read once
        inputs=1,
        ops={
            "sum0": {"torch S.sum(0)": EVERY},
            "stats_row": {"torch chunked (reference.py)": EVERY, OURS: EVERY},
            "fitness": {"torch chunked (reference.py)": EVERY, OURS: EVERY},
            "matrix": {"torch chunked (reference.py)": EVERY, "torch GEMM identity": {"bool"}, OURS: EVERY},
        },
    ),
    # One case per dtype, K = 3 (--models); the torch reference is timed with --quick (as
    # here) only, mergekit's methods where it is importable with merge_tensors.
    "bench_merge_methods.py": dict(
        dtypes={"float32", "bfloat16"},
        traffic=3 + 2,  # read base and K = 3 models, write the output; shape = elements per model
        inputs=3 + 1,  # base and the K models
        ops={
            "lerp_": {"torch lerp_ (in place)": EVERY},
            **{op: {"best torch": EVERY, "torch reference": EVERY, OURS: EVERY, OURS + " out=": EVERY}
               for op in MERGE_METHOD_OPS + ("pcb",)},
        },
        # impl -> (whether this environment has it, the ops it then covers)
        optional={"mergekit": (lambda: _mergekit_has_merge_tensors(), MERGE_METHOD_OPS)},
    ),
}
SCRIPTS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(BENCH, "bench_*.py")))
KERNEL_FIELDS = [
    "op", "impl", "backend", "device", "dtype", "shape", "ms", "ms_min", "reps", "gbps",
    "speedup_vs_torch", "ceiling", "time_vs_ceiling", "extra_mib",
]
# Half a unit of the last decimal the CSV writes (benchmarks/_common.py KernelRows).
MS_HALF = 0.0005  # ms, ms_min: 3 decimals
RATIO_HALF = 0.005  # gbps, speedup_vs_torch, time_vs_ceiling: 2 decimals
MAX_EXTRA_MIB = 64 * 1024


def _mergekit_has_merge_tensors():
    """Where this holds, bench_merge_methods.py times mergekit's methods (its merge_tensors)."""
    try:
        from mergekit.merge_methods import api
    except Exception:  # noqa: BLE001 (not installed, or broken: the script leaves it out too)
        return False
    return hasattr(api, "merge_tensors")


def run_script(tmp_path, script):
    out = tmp_path / "out.csv"
    env = dict(os.environ, TRITON_INTERPRET="0")  # the scripts time compiled kernels only
    subprocess.run(
        [sys.executable, os.path.join(BENCH, script), "--device", "cpu", "--csv", str(out), "--quick", "--reps",
         str(REPS)],
        check=True, env=env, stdout=subprocess.DEVNULL, timeout=600,
    )
    with out.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return reader.fieldnames, rows


def number(r, col, *, required=True):
    """The finite float in column `col` of row r (None when empty and not required)."""
    v = r[col]
    if v == "":
        assert not required, f"{col} is empty: {r}"
        return None
    x = float(v)
    assert math.isfinite(x), f"{col} = {v!r} is not finite: {r}"
    return x


def quotient_range(num, den, half_num, half_den):
    """The values num/den can take when num and den were each rounded by at most half_*."""
    lo = max(num - half_num, 0.0) / (den + half_den)
    hi = (num + half_num) / max(den - half_den, 1e-12)
    return lo, hi


def assert_rounded_in(value, lo, hi, half, what, r):
    assert lo - half - 1e-9 <= value <= hi + half + 1e-9, f"{what} = {value}, expected in [{lo:.6g}, {hi:.6g}]: {r}"


def itemsize(dtype_name):
    return torch.empty((), dtype=getattr(torch, dtype_name)).element_size()


def check_kernel_row(r, claim):
    for col in ("op", "impl", "backend", "device", "dtype", "shape"):
        assert r[col].strip(), f"{col} is empty: {r}"
    assert r["device"] == "cpu", r
    assert r["backend"] in ("torch", "cpp", "triton"), r
    assert isinstance(getattr(torch, r["dtype"], None), torch.dtype), f"dtype {r['dtype']!r} is no torch dtype: {r}"
    assert re.fullmatch(r"[1-9][0-9]*(x[1-9][0-9]*)*", r["shape"]), f"shape {r['shape']!r}: {r}"
    assert (r["backend"] == "torch") == (r["impl"] not in OURS_IMPLS), f"our kernels run on our backends only: {r}"

    ms, ms_min = number(r, "ms"), number(r, "ms_min")
    assert 0 < ms < 1e5 and 0 < ms_min <= ms, r
    reps = number(r, "reps")
    assert reps == int(reps) and 1 <= reps <= REPS, f"reps must lie in [1, --reps = {REPS}]: {r}"
    if reps == 1:
        assert ms_min == ms, f"the median of one repetition is its minimum: {r}"

    elements = math.prod(int(s) for s in r["shape"].split("x"))
    input_bytes = elements * itemsize(r["dtype"]) * (claim["inputs"] if claim else 1)
    extra = number(r, "extra_mib")
    # The torch baselines may materialise a few wider copies (bool S.sum(0) accumulates in
    # int64: 8x), and reference.py's chunked loops work in chunks of 2^22 elements.
    assert 0 <= extra < min(MAX_EXTRA_MIB, 16 * input_bytes / 2**20 + 64), f"extra_mib: {r}"

    gbps = number(r, "gbps", required=claim is not None)
    if gbps is not None:
        assert gbps > 0, f"gbps must be > 0 (the CSV holds 2 decimals: a rate under 0.005 GB/s reads 0.00): {r}"
        if claim is not None:
            nbytes = claim["traffic"] * elements * itemsize(r["dtype"])
            lo, hi = quotient_range(nbytes / 1e6, ms, 0.0, MS_HALF)
            assert_rounded_in(gbps, lo, hi, RATIO_HALF, "gbps (bytes moved / ms)", r)
    for ratio in ("speedup_vs_torch", "time_vs_ceiling"):
        x = number(r, ratio, required=False)
        if x is not None:
            assert 0 < x < 1e4, f"{ratio}: {r}"
    assert bool(r["ceiling"]) == bool(r["time_vs_ceiling"]), f"a ceiling comes with its ratio: {r}"


def check_cross_row(rows):
    """speedup_vs_torch and time_vs_ceiling against the rows they were computed from."""
    by_case = {}
    for r in rows:
        by_case.setdefault((r["dtype"], r["shape"]), []).append(r)
    for r in rows:
        case = by_case[(r["dtype"], r["shape"])]
        ms = float(r["ms"])
        if r["speedup_vs_torch"]:
            speedup = float(r["speedup_vs_torch"])
            torch_rows = [t for t in case if t["op"] == r["op"] and t["backend"] == "torch"]
            assert torch_rows, f"a speedup with no torch row of the same op and case: {r}"
            ranges = [quotient_range(float(t["ms"]), ms, MS_HALF, MS_HALF) for t in torch_rows]
            assert any(lo - RATIO_HALF - 1e-9 <= speedup <= hi + RATIO_HALF + 1e-9 for lo, hi in ranges), \
                f"speedup_vs_torch {speedup} is no torch row's ms / ms {ms} ({[t['ms'] for t in torch_rows]}): {r}"
        if r["ceiling"]:
            name = r["ceiling"]
            bars = [t for t in case if t["backend"] == "torch" and t["ceiling"] == name
                    and (t["op"] == name or name in t["impl"])]
            assert len(bars) == 1, f"ceiling {name!r} must have one row of its own in the case, got {len(bars)}: {r}"
            bar = bars[0]
            assert float(bar["time_vs_ceiling"]) == 1.0, f"the ceiling's own row reads 1.00: {bar}"
            lo, hi = quotient_range(ms, float(bar["ms"]), MS_HALF, MS_HALF)
            assert_rounded_in(float(r["time_vs_ceiling"]), lo, hi, RATIO_HALF, "time_vs_ceiling (ms / ceiling ms)", r)


def check_claims(script, rows, claim):
    keys = [(r["op"], r["impl"], r["backend"], r["dtype"], r["shape"]) for r in rows]
    assert len(keys) == len(set(keys)), f"{script}: duplicate rows"
    assert {r["dtype"] for r in rows} == claim["dtypes"], f"{script}: dtypes"
    for op, impls in claim["ops"].items():
        cases = sorted({(r["dtype"], r["shape"]) for r in rows if r["op"] == op})
        assert {d for d, _ in cases} == claim["dtypes"], f"{script}: op {op} must run for every dtype, got {cases}"
        for dtype, shape in cases:
            here = [r for r in rows if r["op"] == op and r["dtype"] == dtype and r["shape"] == shape]
            for impl, dtypes in impls.items():
                if dtypes is not EVERY and dtype not in dtypes:
                    continue
                backends = sorted(r["backend"] for r in here if r["impl"] == impl)
                want = sorted(OUR_BACKENDS) if impl in OURS_IMPLS else ["torch"]
                assert backends == want, f"{script}: {op} / {impl} for {dtype} {shape}: rows on {backends}, want {want}"
    for impl, (expected, ops) in claim.get("optional", {}).items():
        present = expected()
        for op in claim["ops"]:
            for dtype, shape in sorted({(r["dtype"], r["shape"]) for r in rows if r["op"] == op}):
                got = [r["backend"] for r in rows
                       if (r["op"], r["impl"], r["dtype"], r["shape"]) == (op, impl, dtype, shape)]
                want = ["torch"] if present and op in ops else []
                assert got == want, f"{script}: {op} / {impl} for {dtype} {shape}: rows on {got}, want {want}"


def check_engine(rows):
    jax = importlib.util.find_spec("jax") is not None
    engine = {r["impl"]: r for r in rows if r["op"] == "engine"}
    assert len(engine) == sum(r["op"] == "engine" for r in rows), "one engine row per impl"
    want = {"m2n2", "m2n2 K=16", "torch engine (reference.py ops)", "plain-torch engine"}
    if jax:  # the script leaves the JAX rows out only where jax is missing
        want |= {"jax reference loop", "jax fused step"}
    assert want <= set(engine), f"engine rows {sorted(engine)}, want {sorted(want)}"
    assert {r["op"] for r in rows} == {"engine", "phase"}
    ratios = {"speedup_vs_jax_reference": "jax reference loop", "speedup_vs_jax_fused": "jax fused step",
              "speedup_vs_torch_engine": "torch engine (reference.py ops)"}
    for name, r in engine.items():
        assert r["device"] == "cpu" and r["phase"] == "", r
        k = int(r["children_per_step"])
        assert k == (16 if name == "m2n2 K=16" else 1), r
        ms = number(r, "ms_per_pass")
        assert 0 < ms < 1e3, r
        per_s = number(r, "passes_per_s")
        assert abs(per_s - 1e3 / ms) <= 0.5 + 1e3 / ms * (0.00005 / ms) + 1e-6, f"passes_per_s = 1000 / ms_per_pass: {r}"
        assert number(r, "reps") >= 1
        assert 0 <= number(r, "extra_mib") < MAX_EXTRA_MIB, r
        for col, ref in ratios.items():
            if ref == name or ref not in engine:
                assert r[col] == "", f"{col}: {r}"
                continue
            lo, hi = quotient_range(float(engine[ref]["ms_per_pass"]), ms, 0.00005, 0.00005)
            assert_rounded_in(number(r, col), lo, hi, RATIO_HALF, col, r)
        if name == "m2n2 K=16":
            lo, hi = quotient_range(float(engine["m2n2"]["ms_per_pass"]), ms, 0.00005, 0.00005)
            assert_rounded_in(number(r, "speedup_vs_k1"), lo, hi, RATIO_HALF, "speedup_vs_k1", r)
        else:
            assert r["speedup_vs_k1"] == "", r
    assert float(engine["m2n2"]["speedup_vs_torch_engine"]) > 0
    phases = ("sampling", "crossover", "forward", "scoring", "replacement", "bookkeeping")
    for impl, k in (("m2n2", 1), ("m2n2 K=16", 16)):
        got = [r for r in rows if r["op"] == "phase" and r["impl"] == impl]
        assert [r["phase"] for r in got] == list(phases), f"{impl} phases"
        for r in got:
            assert int(r["children_per_step"]) == k and number(r, "ms_per_pass") >= 0 and number(r, "reps") >= 1, r
            assert 0 <= number(r, "share") <= 1, r
        shares = [float(r["share"]) for r in got]
        assert abs(sum(shares) - 1) < 0.01, f"{impl} phase shares sum to {sum(shares)}"
        total = sum(float(r["ms_per_pass"]) for r in got)
        for r in got:  # share = the phase's time / the step's
            assert abs(float(r["share"]) - float(r["ms_per_pass"]) / total) <= 0.0005 + 6 * 0.00005 / total + 1e-9, r


MERGE_FIELDS = [
    "row", "method", "model_gb", "inputs_gb", "output_gb", "budget_mb", "inputs_vs_budget", "reps", "seconds",
    "seconds_min", "gbps", "vs_plain_io", "peak_extra_mb", "peak_vs_budget", "peak_vs_model", "within_budget",
]
MERGE_ROWS = {"plain-io": "none", "m2n2 slerp": "slerp", "m2n2 lerp": "lerp", "load-everything slerp": "slerp"}
MERGE_BUDGETED = {"plain-io", "m2n2 slerp", "m2n2 lerp"}


def near(value, want, what, r, *, rel=0.0, half=0.0):
    """value (written rounded: within `half` and a relative `rel`) equals want."""
    tol = half + rel * abs(want) + 1e-9
    assert abs(value - want) <= tol, f"{what} = {value}, expected {want:.6g}: {r}"


def ratio_written(x):
    """Half a unit of the last decimal of a ratio written by _common._fixed."""
    return 0.005 if abs(x) >= 0.1 else 0.0005 * abs(x) + 1e-12


def check_merge(fields, rows):
    assert fields == MERGE_FIELDS, "bench_merge.py's CSV columns (its docstring)"
    by_row = {r["row"]: r for r in rows}
    assert len(by_row) == len(rows), "one row per implementation"
    assert set(MERGE_ROWS) <= set(by_row) <= set(MERGE_ROWS) | {"mergekit slerp"}, sorted(by_row)
    plain = float(by_row["plain-io"]["seconds"])
    for name, r in by_row.items():
        assert r["method"] == MERGE_ROWS.get(name, "slerp"), r
        model, inputs, output = (number(r, c) for c in ("model_gb", "inputs_gb", "output_gb"))
        budget_mb = number(r, "budget_mb")
        assert 0 < model and 0 < budget_mb, r
        near(inputs, 2 * model, "inputs_gb (A + B)", r, rel=1e-3)
        near(output, model, "output_gb", r, rel=1e-3)
        # --quick: the inputs exceed ten times the budget (issue 10's promise is measured).
        near(number(r, "inputs_vs_budget"), inputs * 1e3 / budget_mb, "inputs_vs_budget", r, rel=2e-3, half=0.005)
        assert number(r, "inputs_vs_budget") > 10, r
        assert 1 <= number(r, "reps") <= REPS, r
        seconds, fastest = number(r, "seconds"), number(r, "seconds_min")
        assert 0 < fastest <= seconds < 600, r
        if number(r, "reps") == 1:
            assert fastest == seconds, r
        gbps = number(r, "gbps")
        near(gbps, (inputs + output) / seconds, "gbps ((inputs + output) / seconds)", r, rel=2e-3,
             half=ratio_written(gbps))
        vs = number(r, "vs_plain_io")
        near(vs, plain / seconds, "vs_plain_io (plain-io's seconds / seconds)", r, rel=2e-3, half=ratio_written(vs))
        peak = number(r, "peak_extra_mb")
        assert 0 <= peak < 64 * 1024, r
        # peak_extra_mb is written with one decimal: half of 0.1 MB over the divisor, then the ratio's own rounding.
        for col, den in (("peak_vs_budget", budget_mb), ("peak_vs_model", model * 1e3)):
            x = number(r, col)
            near(x, peak / den, col, r, rel=2e-3, half=0.05 / den + ratio_written(x))
        if name in MERGE_BUDGETED:
            assert r["within_budget"] == ("yes" if peak <= budget_mb else "no"), r
            assert peak <= budget_mb, f"peak memory past the budget: {r}"
        else:
            assert r["within_budget"] == "", r
    assert float(by_row["plain-io"]["vs_plain_io"]) == 1.0, "the ceiling's own row reads 1.00"
    # Loading everything holds both inputs at least: far more than the budget.
    assert number(by_row["load-everything slerp"], "peak_vs_model") >= 1, by_row["load-everything slerp"]


YAML_FIELDS = ["row", "method", "models", "params_per_model", "model_gb", "inputs_gb", "reps", "seconds",
               "seconds_min", "vs_mergekit", "peak_rss_mb", "agree"]
YAML_ROWS = ("imports only", "mergekit-yaml", "m2n2_kernels.mergekit")


def check_mergekit_yaml(fields, rows):
    assert fields == YAML_FIELDS, "bench_mergekit_yaml.py's CSV columns (its docstring)"
    by_row = {r["row"]: r for r in rows}
    assert tuple(by_row) == YAML_ROWS, sorted(by_row)
    theirs = number(by_row["mergekit-yaml"], "seconds")
    for name, r in by_row.items():
        assert r["method"] == "ties" and r["models"] == "3", r
        n, model, inputs = number(r, "params_per_model"), number(r, "model_gb"), number(r, "inputs_gb")
        near(model, 2 * n / 1e9, "model_gb (bf16)", r, half=0.0005)
        near(inputs, 4 * model, "inputs_gb (base + 3 models)", r, half=0.002)
        assert 1 <= number(r, "reps") <= REPS, r
        seconds, fastest = number(r, "seconds"), number(r, "seconds_min")
        assert 0 < fastest <= seconds < 600, r
        assert 0 < number(r, "peak_rss_mb") < 64 * 1024, r
        if name == "imports only":
            assert r["vs_mergekit"] == "" and r["agree"] == "", r
            continue
        vs = number(r, "vs_mergekit")
        near(vs, theirs / seconds, "vs_mergekit (mergekit-yaml's seconds / seconds)", r, rel=0.01, half=0.005)
        # TIES in bf16: mergekit's own arithmetic rounds to bf16 at every step and breaks
        # threshold ties otherwise, so most but not all elements agree.
        assert 0.95 <= number(r, "agree") <= 1, r
    assert by_row["mergekit-yaml"]["agree"] == "1.0000"


DISTRIBUTED_FIELDS = [
    "design", "setting", "ranks", "n_params", "datapoints", "children_per_step", "steps_per_s", "ms_per_step",
    "ms_min", "cpu_ms_per_step", "reps", "speedup_vs_r1", "sums_bytes_per_step", "scores_bytes_per_step",
    "control_bytes_per_step", "crossover_bytes_per_step", "engine_bytes_per_step", "eval_param_bytes_per_step",
    "eval_param_bytes_source", "peak_rss_mib", "cores", "oversubscribed",
]
DISTRIBUTED_BYTES = ("sums", "scores", "control", "crossover")


def check_distributed(fields, rows):
    """bench_distributed.py --quick: two model sizes, R = 1 and 2, both designs and both
    evaluation settings. The engine's bytes per step of the sharded design are K x 6
    fp64 sums plus the D bool scores, the same for both sizes; the naive design's grow
    with n (two parents gathered and the child broadcast, fp32: 12 n bytes per child)."""
    assert fields == DISTRIBUTED_FIELDS, "bench_distributed.py's CSV columns (its docstring)"
    sizes = sorted({int(r["n_params"]) for r in rows})
    assert len(sizes) == 2, f"--quick times two model sizes, got {sizes}"
    keys = {(r["design"], r["setting"], int(r["ranks"]), int(r["n_params"])) for r in rows}
    want = {(d, s, rk, n) for d in ("sharded", "naive") for s in ("cheap", "forward", "forward-gather")
            for rk in (1, 2) for n in sizes if not (d == "naive" and s == "forward-gather")}
    assert keys == want and len(rows) == len(want), f"rows {sorted(keys)}"
    by = {(r["design"], r["setting"], int(r["ranks"]), int(r["n_params"])): r for r in rows}
    for (design, setting, ranks, n), r in by.items():
        k, d = int(r["children_per_step"]), int(r["datapoints"])
        assert k >= 1 and d >= 1, r
        per_s, ms = number(r, "steps_per_s"), number(r, "ms_per_step")
        assert per_s > 0 and 0 < number(r, "ms_min") <= ms, r
        lo, hi = quotient_range(1e3, ms, 0.0, MS_HALF)
        assert_rounded_in(per_s, lo, hi, MS_HALF, "steps_per_s = 1000 / ms_per_step", r)
        assert 1 <= number(r, "reps") <= REPS and number(r, "cpu_ms_per_step") > 0, r
        assert 0 < number(r, "peak_rss_mib") < MAX_EXTRA_MIB, r
        assert r["oversubscribed"] == ("yes" if ranks > int(r["cores"]) else "no"), r
        got = {p: int(r[f"{p}_bytes_per_step"]) for p in DISTRIBUTED_BYTES}
        engine = int(r["engine_bytes_per_step"])
        assert engine == sum(got.values()), f"engine bytes = the sum of the purposes: {r}"
        eval_bytes = int(r["eval_param_bytes_per_step"])
        if ranks == 1:
            assert engine == 0 and eval_bytes == 0 and r["speedup_vs_r1"] == "", r
            continue
        ref = float(by[(design, setting, 1, n)]["ms_per_step"])
        lo, hi = quotient_range(ref, ms, MS_HALF, MS_HALF)
        assert_rounded_in(number(r, "speedup_vs_r1"), lo, hi, RATIO_HALF, "speedup_vs_r1", r)
        assert got["scores"] == k * d, f"the K x D bool score rows, gathered: {r}"
        assert got["control"] == 0, r
        if design == "sharded":
            assert got["sums"] == k * 6 * 8, f"one all-reduce of K x 6 fp64 sums per step: {r}"
            assert got["crossover"] == 0 and engine == k * (6 * 8 + d), r
        else:
            assert got["sums"] == 0, r
            assert got["crossover"] == k * 12 * n, f"naive: 2 parents gathered + the child broadcast, fp32: {r}"
        if setting == "forward":
            assert eval_bytes == k * 4 * n and r["eval_param_bytes_source"].startswith("computed"), r
        elif setting == "forward-gather":  # every rank receives the K whole children (its own part included)
            assert eval_bytes == k * 4 * n and r["eval_param_bytes_source"].startswith("measured"), r
        else:
            assert eval_bytes == 0 and r["eval_param_bytes_source"] == "none", r
    for setting in ("cheap", "forward"):
        small, large = (by[(design, setting, 2, n)] for design in ("sharded",) for n in sizes)
        assert int(small["engine_bytes_per_step"]) == int(large["engine_bytes_per_step"]), \
            "the sharded design's engine bytes per step do not grow with n"
        small, large = (int(by[("naive", setting, 2, n)]["engine_bytes_per_step"]) for n in sizes)
        assert large - small == 12 * (sizes[1] - sizes[0]), "the naive design's grow with n (12 bytes per element)"
        assert large > 1000 * int(by[("sharded", setting, 2, sizes[1])]["engine_bytes_per_step"])


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_script_writes_csv(tmp_path, script):
    if script == "bench_mergekit_yaml.py" and not _mergekit_has_merge_tensors():
        pytest.skip("mergekit is not installed (pip install '.[mergekit]')")
    fields, rows = run_script(tmp_path, script)
    assert rows, f"{script} wrote no rows"
    if script == "bench_mergekit_yaml.py":
        check_mergekit_yaml(fields, rows)
        return
    if script == "bench_engine.py":
        check_engine(rows)
        return
    if script == "bench_merge.py":
        check_merge(fields, rows)
        return
    if script == "bench_distributed.py":
        check_distributed(fields, rows)
        return
    sys.path.insert(0, BENCH)
    try:
        from _common import KERNEL_FIELDS as shared
    finally:
        sys.path.remove(BENCH)
    assert fields == KERNEL_FIELDS == shared, "the shared CSV schema (benchmarks/_common.py)"
    assert any(r["backend"] == "cpp" and r["impl"] == OURS for r in rows), "no row for the C++ kernels"
    claim = CLAIMS.get(script)
    for r in rows:
        check_kernel_row(r, claim)
    check_cross_row(rows)
    if claim is not None:
        check_claims(script, rows, claim)


def test_merge_methods_on_a_flat_buffer(tmp_path):
    """--flat N: every op on one flat buffer (for DELLA one row of 70,000: its streamed
    kernel), compared with the torch reference as --quick compares (test_della.py
    checks the streamed kernel bit for bit)."""
    out = tmp_path / "flat.csv"
    env = dict(os.environ, TRITON_INTERPRET="0")
    subprocess.run(
        [sys.executable, os.path.join(BENCH, "bench_merge_methods.py"), "--device", "cpu", "--csv", str(out),
         "--quick", "--reps", "1", "--flat", "70000", "--dtypes", "bfloat16"],
        check=True, env=env, stdout=subprocess.DEVNULL, timeout=600,
    )
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    della = {r["impl"]: r for r in rows if r["op"] == "della"}
    assert {OURS, "torch reference"} <= set(della), sorted(della)
    assert all(r["shape"] == "70000" for r in della.values())


def test_merge_methods_on_many_small_tensors(tmp_path):
    """--flat N --tensors T: T buffers of N elements in one call, each its own unit (a
    model's norms and biases): every op's rows cover all T N elements (the script
    checks its baselines against ours as under --quick, and fails where one differs);
    --tensors without --flat is refused."""
    out = tmp_path / "many.csv"
    env = dict(os.environ, TRITON_INTERPRET="0")
    subprocess.run(
        [sys.executable, os.path.join(BENCH, "bench_merge_methods.py"), "--device", "cpu", "--csv", str(out),
         "--quick", "--reps", "1", "--flat", "1500", "--tensors", "3", "--dtypes", "float32"],
        check=True, env=env, stdout=subprocess.DEVNULL, timeout=600,
    )
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    ours = {r["op"]: r for r in rows if r["impl"] == OURS}
    assert {"task_arithmetic", "ties", "dare_ties", "pcb"} <= set(ours), sorted(ours)
    assert all(r["shape"] == "4500" for r in ours.values())
    bad = subprocess.run(
        [sys.executable, os.path.join(BENCH, "bench_merge_methods.py"), "--tensors", "2"],
        capture_output=True, text=True, timeout=120,
    )
    assert bad.returncode != 0 and "--tensors" in bad.stderr
