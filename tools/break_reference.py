"""Do the tests notice when a semantic rule breaks? Break each rule on purpose in
m2n2_kernels/reference.py (the executable semantics), run the tests, and report the
first test that fails: a rule whose break no test catches is a hole in the suite.

    .venv/bin/python tools/break_reference.py            # every rule (~10 minutes)
    .venv/bin/python tools/break_reference.py alpha eps  # some rules

reference.py is restored after each run, also on Ctrl-C or an error. Writes
bench_results/break_reference.csv (rule, break, caught_by, seconds).
"""
import argparse
import csv
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "m2n2_kernels" / "reference.py"
# The tests that pin the semantics, fastest first; CUDA cases skip without a GPU.
TESTS = ["tests/test_semantics.py", "tests/test_noise.py", "tests/test_crossover.py", "tests/test_niches.py",
         "tests/test_engine.py"]

# rule -> (what the break does, text of reference.py, its replacement)
BREAKS = {
    "split side": (
        "element `split` takes w instead of 1 - w",
        "cut = min(max(local_split - start, 0), x.numel())",
        "cut = min(max(local_split - start + 1, 0), x.numel())",
    ),
    "angle scope": (
        "the global angle from the first side of the split only",
        "total = [sums[0][k] + sums[1][k] for k in range(3)]",
        "total = [sums[0][k] for k in range(3)]",
    ),
    "angle precision": (
        "the angle's sums in plain sequential fp32",
        "            x, y = a[lo:hi].double(), b[lo:hi].double()\n"
        "            sums[side][0] += float(torch.dot(x, y))\n"
        "            sums[side][1] += float(torch.dot(x, x))\n"
        "            sums[side][2] += float(torch.dot(y, y))",
        "            x, y = a[lo:hi].float(), b[lo:hi].float()\n"
        "            sums[side][0] += float((x * y).cumsum(0)[-1])\n"
        "            sums[side][1] += float((x * x).cumsum(0)[-1])\n"
        "            sums[side][2] += float((y * y).cumsum(0)[-1])",
    ),
    "fallback": (
        "lerp below sin(omega) = 1e-3 instead of 1e-6",
        "SLERP_MIN_SIN = 1e-6",
        "SLERP_MIN_SIN = 1e-3",
    ),
    "z with the child": (
        "the child left out of z when replacing",
        "    if child is not None:\n        z += child.to(cdt)\n",
        "",
    ),
    "zero guard": (
        "z = 0 not replaced by 1 before the power",
        "zhat = torch.where(z != 0, z, torch.ones_like(z)).pow(alpha) + eps",
        "zhat = z.pow(alpha) + eps",
    ),
    "alpha": (
        "alpha ignored (always 1)",
        "zhat = torch.where(z != 0, z, torch.ones_like(z)).pow(alpha) + eps",
        "zhat = torch.where(z != 0, z, torch.ones_like(z)) + eps",
    ),
    "capacity": (
        "capacity ignored",
        "c = 1.0 if capacity is None else capacity.to(z.dtype)",
        "c = 1.0",
    ),
    "eps": (
        "eps ignored",
        "zhat = torch.where(z != 0, z, torch.ones_like(z)).pow(alpha) + eps",
        "zhat = torch.where(z != 0, z, torch.ones_like(z)).pow(alpha)",
    ),
    "ties": (
        "replacement ties to the highest index",
        "worst = int(torch.argmin(fit))",
        "worst = fit.numel() - 1 - int(torch.argmin(fit.flip(0)))",
    ),
    "noise keying": (
        "noise keyed by the piece's own index, not the global one (index_offset ignored)",
        "+ (index_offset + start)",
        "+ start",
    ),
    "noise stream": (
        "every child of a batch on stream 0",
        "            stream=k,\n",
        "            stream=0,\n",
    ),
}


def run_break(rule, original):
    what, old, new = BREAKS[rule]
    if original.count(old) != 1:
        raise SystemExit(f"{rule}: the text to break is not in reference.py exactly once: {old!r}")
    REFERENCE.write_text(original.replace(old, new))
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-k", "not cuda", *TESTS],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    seconds = time.perf_counter() - start
    failed = [line.split(" ")[1] for line in proc.stdout.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    return what, (failed[0] if failed else ""), seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rules", nargs="*", help=f"rules to break, of {list(BREAKS)} (default: all)")
    p.add_argument("--csv", default=str(ROOT / "bench_results" / "break_reference.csv"))
    args = p.parse_args(argv)
    unknown = [r for r in args.rules if r not in BREAKS]
    if unknown:
        p.error(f"unknown rules {unknown}: choose from {list(BREAKS)}")
    original = REFERENCE.read_text()
    rows = []
    try:
        for rule in args.rules or list(BREAKS):
            what, caught_by, seconds = run_break(rule, original)
            REFERENCE.write_text(original)
            rows.append(dict(rule=rule, broken=what, caught_by=caught_by or "NOT CAUGHT", seconds=round(seconds, 1)))
            print(f"{rule:18} {rows[-1]['caught_by']}  ({seconds:.0f} s)", flush=True)
    finally:
        REFERENCE.write_text(original)
        if rows:
            pathlib.Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
            with open(args.csv, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
    return 0 if all(r["caught_by"] != "NOT CAUGHT" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
