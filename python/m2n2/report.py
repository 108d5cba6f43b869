"""Run outputs: results.json, lineage.csv, the summary table and accuracy.png."""
import csv
import json
import math
import os
import statistics

from .evolve import LINEAGE_FIELDS


def write_json_atomic(path, obj):
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def append_lineage(path, variant, seed, rows):
    """Append one run's lineage rows (variant, seed, LINEAGE_FIELDS) to a CSV file
    (nothing for a run without lineage: the baselines)."""
    if not rows:
        return
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(("variant", "seed") + LINEAGE_FIELDS)
        for r in rows:
            # no crossover: no second parent, split or ratio (stored as -1 / NaN)
            r = list(r)
            r[6], r[7] = f"{r[6]:.8g}", f"{r[7]:.8g}"  # w, child_train: plenty of digits, a third of the bytes
            if r[4] == -1:
                r[5], r[6] = "", ""
            w.writerow([variant, seed] + r)


def mean_se(values):
    """(mean, standard error of the mean); the error is 0 for a single value."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    if len(values) == 1:
        return values[0], 0.0
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def summary(runs):
    """Rows {variant, seeds, test, test_se, train, train_se, seconds, seconds_se} in
    the order the variants first appear."""
    order = []
    for r in runs:
        if r["variant"] not in order:
            order.append(r["variant"])
    rows = []
    for v in order:
        mine = [r for r in runs if r["variant"] == v]
        row = {"variant": v, "seeds": len(mine)}
        for key, field in (("test", "test_accuracy"), ("train", "train_accuracy"), ("seconds", "seconds")):
            row[key], row[key + "_se"] = mean_se([r[field] for r in mine])
        rows.append(row)
    return rows


def format_table(runs):
    lines = [
        "| variant | seeds | test accuracy | train accuracy | seconds per run |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in summary(runs):
        lines.append(
            f"| {r['variant']} | {r['seeds']} | {100 * r['test']:.2f} ± {100 * r['test_se']:.2f}% "
            f"| {100 * r['train']:.2f} ± {100 * r['train_se']:.2f}% | {r['seconds']:.1f} ± {r['seconds_se']:.1f} |"
        )
    return "\n".join(lines)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plots need matplotlib: pip install 'm2n2-kernels[plot]'") from e
    return plt


def plot_accuracy(runs, path, title=None):
    """Test accuracy of the best-train member against forward passes: the mean over
    seeds per variant, with a band of one standard error."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    order = [r["variant"] for r in summary(runs)]
    for v in order:
        curves = [r["curve"] for r in runs if r["variant"] == v]
        xs = curves[0]["forward_passes"]
        length = min(len(c["test_accuracy"]) for c in curves)
        xs = xs[:length]
        mean, lo, hi = [], [], []
        for i in range(length):
            m, se = mean_se([c["test_accuracy"][i] for c in curves])
            mean.append(100 * m)
            lo.append(100 * (m - se))
            hi.append(100 * (m + se))
        (line,) = ax.plot(xs, mean, label=f"{v} ({len(curves)} seed{'s' if len(curves) > 1 else ''})", lw=1.4)
        if len(curves) > 1:
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xlabel("forward passes")
    ax.set_ylabel("test accuracy (%)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    tmp = f"{path}.tmp-{os.getpid()}.png"
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
