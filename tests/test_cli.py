"""`m2n2 evolve` end to end on tiny budgets: every output file, Ctrl-C and resume,
and the errors for bad input."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from m2n2 import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "python")]), TRITON_INTERPRET="0")


def m2n2(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "m2n2", *args], env=ENV, capture_output=True, text=True, timeout=600, **kwargs
    )


def m2n2_here(capsys, *args):
    """The command in this process (no interpreter start-up): (exit status, stdout, stderr)."""
    try:
        code = cli.main(list(args))
    except SystemExit as e:  # argparse's own errors
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def load(out):
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    with open(os.path.join(out, "lineage.csv")) as f:
        lineage = list(csv.DictReader(f))
    return results, lineage


def test_evolve_writes_every_output(tmp_path):
    out = str(tmp_path / "run")
    r = m2n2("evolve", "--task", "digits", "--forward-passes", "150", "--seeds", "2", "--log-every", "50",
             "--compare", "m2n2,no-crossover", "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    assert "| m2n2 | 2 |" in r.stdout and "| no-crossover | 2 |" in r.stdout
    for name in ("results.json", "lineage.csv", "accuracy.png", "config.json"):
        assert name in r.stdout or name == "config.json"
        assert os.path.getsize(os.path.join(out, name)) > 0
    assert open(os.path.join(out, "accuracy.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    results, lineage = load(out)
    assert results["task"] == {"task": "digits", "pretrained": False}
    assert results["config"]["mutation_std"] == 0.01 and results["config"]["archive_size"] == 20
    assert [(x["variant"], x["seed"]) for x in results["runs"]] == [
        ("m2n2", 0), ("m2n2", 1), ("no-crossover", 0), ("no-crossover", 1)
    ]
    for run in results["runs"]:
        assert run["forward_passes"] == 150 and 0 < run["test_accuracy"] <= 1 and run["seconds"] > 0
        assert run["curve"]["forward_passes"] == [0, 50, 100, 150]
        assert len(run["curve"]["test_accuracy"]) == 4
    assert len(lineage) == 4 * 150
    assert set(lineage[0]) == {"variant", "seed", "pass", "step", "child", "first", "second", "split", "w",
                               "child_train", "replaced"}
    no_x = [row for row in lineage if row["variant"] == "no-crossover"]
    assert all(row["second"] == "-1" and row["split"] == "" for row in no_x)


def test_same_command_same_results(capsys, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for out in (a, b):
        assert m2n2_here(capsys, "evolve", "--forward-passes", "80", "--out", out, "--quiet", "--no-plot")[0] == 0
    ra, la = load(a)
    rb, lb = load(b)
    assert la == lb
    assert [r["curve"] for r in ra["runs"]] == [r["curve"] for r in rb["runs"]]


def test_ctrl_c_keeps_the_work_and_resume_finishes_it_exactly(capsys, tmp_path):
    whole, cut = str(tmp_path / "whole"), str(tmp_path / "cut")
    args = ["evolve", "--forward-passes", "2000", "--seeds", "2", "--checkpoint-every", "100", "--no-plot"]
    assert m2n2_here(capsys, *args, "--out", whole, "--quiet")[0] == 0
    proc = subprocess.Popen([sys.executable, "-m", "m2n2", *args, "--out", cut, "--quiet"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = os.path.join(cut, "checkpoints", "m2n2-seed0.safetensors")
    deadline = time.time() + 300
    while not os.path.exists(first) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    if proc.returncode == 0:
        pytest.skip("the run finished before the interrupt arrived (a very fast machine)")
    assert proc.returncode == 130, err
    assert f"resume with: m2n2 evolve --resume {cut}" in err
    assert os.path.exists(first)
    code, _, err = m2n2_here(capsys, "evolve", "--resume", cut, "--quiet", "--no-plot")
    assert code == 0, err
    rw, lw = load(whole)
    rc, lc = load(cut)
    assert lw == lc
    for x, y in zip(rw["runs"], rc["runs"]):
        assert (x["variant"], x["seed"], x["test_accuracy"], x["curve"]) == (
            y["variant"], y["seed"], y["test_accuracy"], y["curve"])


def test_compare_all_runs_the_baselines_that_apply(capsys, tmp_path):
    out = str(tmp_path / "scratch")
    code, stdout, err = m2n2_here(capsys, "evolve", "--compare", "all", "--cma-diagonal", "--forward-passes", "40",
                                  "--log-every", "20", "--out", out, "--quiet", "--no-plot")
    assert code == 0, err
    results, _ = load(out)
    assert [r["variant"] for r in results["runs"]] == [
        "m2n2", "no-crossover", "no-splitpoint", "no-attraction", "ga", "ga-no-crossover", "cma-es-diagonal",
        "map-elites"]
    assert results["variants"]["cma-es-diagonal"] == {"algorithm": "cma-es"}
    for r in results["runs"]:
        assert r["forward_passes"] == 40 and 0 < r["test_accuracy"] <= 1
    out = str(tmp_path / "pretrained")
    code, stdout, err = m2n2_here(capsys, "evolve", "--pretrained", "--compare", "map-elites,brute-force",
                                  "--forward-passes", "30", "--out", out, "--quiet", "--no-plot")
    assert code == 0, err
    assert "| brute-force | 1 |" in stdout and "lineage:" not in stdout  # baselines keep no lineage


@pytest.mark.parametrize(
    "args,message",
    [
        (["--task", "mnist"], "unknown task 'mnist'"),
        (["--compare", "m2n2,best"], "unknown variant(s) ['best']"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--archive-size", "1"], "--archive-size must be >= 2"),
        (["--forward-passes", "-5"], "--forward-passes must be >= 0"),
        (["--alpha", "nan"], "--alpha must be finite"),
        (["--resume", "/nonexistent/run"], "no such folder"),
        (["--method", "brute-force"], "brute-force does not run from scratch"),
        (["--pretrained", "--compare", "cma-es"], "cma-es does not run from the specialists"),
        (["--method", "map-elites", "--no-crossover"], "--no-crossover apply to M2N2 only"),
        (["--method", "cma-es", "--compare", "m2n2"], "list it in --compare instead"),
    ],
)
def test_bad_input_is_named(capsys, args, message):
    code, _, err = m2n2_here(capsys, "evolve", "--forward-passes", "10", "--quiet", "--no-plot", *args)
    assert code == 2
    assert message in err


def test_resume_refuses_corrupt_and_other_configurations(capsys, tmp_path):
    out = str(tmp_path / "run")
    assert m2n2_here(capsys, "evolve", "--forward-passes", "30", "--out", out, "--quiet", "--no-plot")[0] == 0
    code, _, err = m2n2_here(capsys, "evolve", "--resume", out, "--alpha", "0.5", "--quiet")
    assert code == 2 and "from another configuration (--alpha: folder 1.0, now 0.5)" in err
    code, _, err = m2n2_here(capsys, "evolve", "--out", out, "--forward-passes", "30", "--quiet")
    assert code == 2 and "already holds a run" in err
    # an unfinished run whose checkpoint is damaged
    os.remove(os.path.join(out, "results.json"))
    with open(os.path.join(out, "checkpoints", "m2n2-seed0.safetensors"), "r+b") as f:
        f.truncate(64)
    code, _, err = m2n2_here(capsys, "evolve", "--resume", out, "--quiet")
    assert code == 2 and "corrupt" in err
    with open(os.path.join(out, "config.json"), "w") as f:
        f.write("{not json")
    code, _, err = m2n2_here(capsys, "evolve", "--resume", out, "--quiet")
    assert code == 2 and "config.json is corrupt" in err
    os.remove(os.path.join(out, "config.json"))
    code, _, err = m2n2_here(capsys, "evolve", "--resume", out, "--quiet")
    assert code == 2 and "no config.json there" in err
