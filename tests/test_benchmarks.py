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
    assert any("cpp" in (r.get("backend") or r["impl"]) for r in rows), "no row for the C++ kernels"
    if ops is not None:
        assert ops <= {r["op"] for r in rows}
    for r in rows:
        assert float(r["ms"]) > 0
