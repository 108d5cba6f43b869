"""Every benchmark script, one after another, each writing its CSV into bench_results/.

    python benchmarks/run_all.py            # full sizes (several minutes on 2 cores)
    python benchmarks/run_all.py --quick    # small sizes: a smoke run of every script
"""
import argparse
import glob
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# Every bench_<name>.py, found by name: a new op family's script joins by existing.
SCRIPTS = {os.path.basename(p)[len("bench_"):-len(".py")]: p for p in sorted(glob.glob(os.path.join(HERE, "bench_*.py")))}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "bench_results"))
    args, extra = p.parse_known_args()
    os.makedirs(args.out, exist_ok=True)
    failed = []
    for name, script in SCRIPTS.items():
        csv = os.path.join(args.out, f"{name}.csv")
        cmd = [sys.executable, script, "--csv", csv] + (["--quick"] if args.quick else []) + extra
        print(f"# {' '.join(cmd)}", file=sys.stderr, flush=True)
        if subprocess.call(cmd) != 0:
            failed.append(name)
    if failed:
        sys.exit(f"benchmarks failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
