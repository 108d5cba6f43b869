"""The benchmark scripts run (smoke sizes) and write the CSV rows they promise."""
import csv
import glob
import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


# What each script must report, beyond the shared columns; a script not listed here
# (a new op family) is still run and checked against the shared schema.
OPS = {
    "bench_crossover.py": {"lerp_", "lerp_split", "slerp_split", "slerp_mutate"},
    "bench_scores.py": {"logprob", "correct", "argmax"},
    "bench_niches.py": {"sum0", "stats_row", "fitness", "matrix"},
}
SCRIPTS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(BENCH, "bench_*.py")))
KERNEL_FIELDS = [
    "op", "impl", "backend", "device", "dtype", "shape", "ms", "ms_min", "reps", "gbps",
    "speedup_vs_torch", "ceiling", "time_vs_ceiling", "extra_mib",
]


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_script_writes_csv(tmp_path, script):
    out = tmp_path / "out.csv"
    env = dict(os.environ, TRITON_INTERPRET="0")  # the scripts time compiled kernels only
    subprocess.run(
        [sys.executable, os.path.join(BENCH, script), "--device", "cpu", "--csv", str(out), "--quick", "--reps", "1"],
        check=True, env=env, stdout=subprocess.DEVNULL, timeout=600,
    )
    rows = list(csv.DictReader(out.open()))
    assert rows, f"{script} wrote no rows"
    if script == "bench_engine.py":
        engine = {r["impl"]: r for r in rows if r["op"] == "engine"}
        assert {"m2n2", "m2n2 K=16", "torch engine (reference.py ops)", "plain-torch engine"} <= set(engine)
        for r in engine.values():
            assert 0 < float(r["ms_per_pass"]) < 1e3 and float(r["passes_per_s"]) > 0
        assert float(engine["m2n2"]["speedup_vs_torch_engine"]) > 0
        shares = [float(r["share"]) for r in rows if r["op"] == "phase" and r["impl"] == "m2n2"]
        assert len(shares) == 6 and abs(sum(shares) - 1) < 0.01
        return
    assert list(rows[0]) == KERNEL_FIELDS, "the shared CSV schema (benchmarks/_common.py)"
    assert any(r["backend"] == "cpp" and r["impl"] == "m2n2_kernels" for r in rows), "no row for the C++ kernels"
    assert OPS.get(script, set()) <= {r["op"] for r in rows}
    for r in rows:
        assert 0 < float(r["ms"]) < 1e5 and float(r["ms_min"]) <= float(r["ms"])
        assert 0 <= float(r["extra_mib"]) < 4096, r
        assert float(r["gbps"]) > 0, r
        for ratio in ("speedup_vs_torch", "time_vs_ceiling"):
            if r[ratio]:
                assert 0 < float(r[ratio]) < 1e4, r
