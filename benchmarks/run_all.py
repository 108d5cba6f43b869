"""Every benchmark script, one after another, each writing its CSV into bench_results/.

    python benchmarks/run_all.py            # full sizes (several minutes on 2 cores)
    python benchmarks/run_all.py --quick    # small sizes: a smoke run of every script
"""
import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = {
    "crossover": "bench_crossover.py",
    "scores": "bench_scores.py",
    "niches": "bench_niches.py",
    "engine": "bench_engine.py",
}
QUICK = {"crossover": ["--mib", "16"], "scores": ["--quick"], "niches": ["--quick"], "engine": ["--quick"]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "bench_results"))
    args, extra = p.parse_known_args()
    os.makedirs(args.out, exist_ok=True)
    failed = []
    for name, script in SCRIPTS.items():
        csv = os.path.join(args.out, f"{name}.csv")
        cmd = [sys.executable, os.path.join(HERE, script), "--csv", csv] + (QUICK[name] if args.quick else []) + extra
        print(f"# {' '.join(cmd)}", file=sys.stderr, flush=True)
        if subprocess.call(cmd) != 0:
            failed.append(name)
    if failed:
        sys.exit(f"benchmarks failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
