"""The benchmark scripts run (smoke sizes) and write the CSV rows they promise."""
import csv
import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.mark.parametrize(
    "script,args,ops",
    [
        ("bench_crossover.py", ["--mib", "2", "--reps", "1"], {"ceiling", "lerp_split", "slerp_split", "slerp_mutate"}),
        ("bench_scores.py", ["--quick", "--reps", "1"], None),
        ("bench_niches.py", ["--quick", "--reps", "1"], {"sum0", "stats_row", "fitness", "matrix"}),
        ("bench_engine.py", ["--quick"], {"engine", "phase"}),
    ],
)
def test_benchmark_script_writes_csv(tmp_path, script, args, ops):
    out = tmp_path / "out.csv"
    env = dict(os.environ, TRITON_INTERPRET="0")  # the scripts time compiled kernels only
    subprocess.run(
        [sys.executable, os.path.join(BENCH, script), "--device", "cpu", "--csv", str(out)] + args,
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
    assert any("cpp" in (r.get("backend") or r["impl"]) for r in rows), "no row for the C++ kernels"
    if ops is not None:
        assert ops <= {r["op"] for r in rows}
    for r in rows:
        assert float(r["ms"]) > 0
