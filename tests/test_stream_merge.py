"""merge_checkpoints and `m2n2 merge`: two safetensors checkpoints merged in chunks.

- the streamed merge equals merge_state_dicts and the flat op bit for bit, for every
  method, omega, split form, with noise and out_dtype, over shards of mixed dtypes
  with a tensor larger than the whole memory budget and non-floating buffers;
- the output: layout (file or sharded folder with index), metadata, other files;
- peak memory within the budget, measured in a subprocess on checkpoints that
  together exceed ten times the budget;
- failures (an error mid-write, Ctrl-C, a non-finite value) leave no OUT and no
  temporary files, and an existing OUT untouched;
- every bad input of issue 10, refused before anything is written.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

import m2n2
import m2n2_kernels as mk
from m2n2 import cli
from m2n2.merge import canonical_order
from m2n2.safetensors_io import CheckpointError, read_header
from m2n2.stream_merge import NonFiniteError, merge_checkpoints

BUDGET = "1MiB"  # the smallest allowed: four slots of about 235 KB, so everything is chunked


def make_model(seed, *, scale=1.0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, dtype=torch.float32):
        return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    return {
        "embed.weight": r(1000, 67),  # 268 KB of fp32: larger than a slot, cut into pieces
        "layers.2.attn.weight": r(33, 17, dtype=torch.bfloat16),
        "layers.10.attn.weight": r(41, dtype=torch.float16),
        "layers.1.norm.weight": r(301, dtype=torch.float64),
        "layers.1.scale": r(dtype=torch.float32),  # 0-d
        "layers.3.empty": r(0, 4),
        "head.weight": r(2000, 33, dtype=torch.bfloat16),
        "step": torch.tensor([7], dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
    }


def save_folder(path, model, shards=3, index=True, extra_files=True):
    os.makedirs(path)
    keys = sorted(model)
    groups = [keys[i::shards] for i in range(shards)] if index else [keys]
    weight_map = {}
    for i, group in enumerate(groups):
        name = f"part-{i}.safetensors" if index else "model.safetensors"
        save_file({k: model[k] for k in group}, os.path.join(path, name))
        weight_map.update({k: name for k in group})
    if index:
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
    if extra_files:
        with open(os.path.join(path, "config.json"), "w") as f:
            f.write('{"model_type": "test"}')
        os.makedirs(os.path.join(path, "tokenizer"))
        with open(os.path.join(path, "tokenizer", "vocab.txt"), "w") as f:
            f.write("a\nb\n")
    return path


def load_any(path):
    if os.path.isfile(path):
        return load_file(path)
    out = {}
    for f in os.listdir(path):
        if f.endswith(".safetensors"):
            out.update(load_file(os.path.join(path, f)))
    return out


@pytest.fixture(scope="module")
def models():
    a, b = make_model(1), make_model(2)
    b["step"], b["mask"] = a["step"].clone(), a["mask"].clone()  # non-floating tensors must be equal
    return a, b


@pytest.fixture(scope="module")
def folders(tmp_path_factory, models):
    root = tmp_path_factory.mktemp("ckpt")
    return save_folder(str(root / "A"), models[0]), save_folder(str(root / "B"), models[1])


def assert_same(got, want):
    assert set(got) == set(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        assert torch.equal(got[k], want[k]), k


CASES = [
    ("slerp", "global", 0.0), ("slerp", "segment", 0.0), ("lerp", "global", 0.0),
    ("slerp", "global", 0.05), ("lerp", "global", 0.05), ("slerp", "segment", 0.05),
]


@pytest.mark.parametrize("method,omega,noise", CASES)
@pytest.mark.parametrize("split", [0.37, "head.weight", "layers.10.attn.weight", 0, 1.0, 12345])
def test_streamed_equals_in_memory(tmp_path, models, folders, method, omega, noise, split):
    a, b = models
    out = str(tmp_path / "OUT")
    kw = dict(split=split, w=0.3, method=method, omega=omega, noise_std=noise, seed=11)
    merge_checkpoints(*folders, out, **kw, memory_budget=BUDGET, max_shard_size="200KB", progress=False)
    want = m2n2.merge_state_dicts(a, b, **kw)
    assert_same(load_any(out), want)


@pytest.mark.parametrize("method", ["slerp", "lerp"])
def test_equals_the_flat_op(tmp_path, models, folders, method):
    """The flat vector's op on the floating tensors in canonical order, by hand."""
    a, b = models
    names = canonical_order([k for k in a if a[k].is_floating_point()])
    n = sum(a[k].numel() for k in names)
    split = n // 3
    child = mk.split_interpolate([a[k] for k in names], [b[k] for k in names], split, 0.7, method=method,
                                 noise_std=0.01, seed=3)
    out = str(tmp_path / "OUT")
    merge_checkpoints(*folders, out, split=split, w=0.7, method=method, noise_std=0.01, seed=3, memory_budget=BUDGET,
                      progress=False)
    got = load_any(out)
    for k, t in zip(names, child):
        assert torch.equal(got[k], t), k
    assert torch.equal(got["step"], a["step"]) and torch.equal(got["mask"], a["mask"])


def test_budget_does_not_change_the_result(tmp_path, folders):
    outs = []
    for i, budget in enumerate(["1MiB", "3MB", "1GB"]):
        out = str(tmp_path / f"OUT{i}")
        merge_checkpoints(*folders, out, split=0.5, w=0.2, noise_std=0.1, memory_budget=budget, progress=False)
        outs.append(load_any(out))
    assert_same(outs[0], outs[1])
    assert_same(outs[0], outs[2])


def test_single_files_and_out_dtype(tmp_path, models):
    a, b = models
    save_file(a, str(tmp_path / "a.safetensors"))
    save_file(b, str(tmp_path / "b.safetensors"))
    out = str(tmp_path / "child.safetensors")
    s = merge_checkpoints(str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), out, split=0.5, w=0.4,
                          out_dtype="float32", memory_budget=BUDGET, progress=False)
    assert os.path.isfile(out) and s["files"] == ["child.safetensors"]
    want = m2n2.merge_state_dicts(a, b, split=0.5, w=0.4, out_dtype=torch.float32)
    assert_same(load_file(out), want)
    assert load_file(out)["step"].dtype == torch.int64  # non-floating tensors keep their dtype


def test_order_file(tmp_path, models, folders):
    a, b = models
    names = sorted(k for k in a if a[k].is_floating_point())[::-1]
    order = tmp_path / "order.txt"
    order.write_text("# the flat order\n" + "\n".join(names) + "\n\n")
    out = str(tmp_path / "OUT")
    merge_checkpoints(*folders, out, split=0.5, w=0.1, order=str(order), memory_budget=BUDGET, progress=False)
    assert_same(load_any(out), m2n2.merge_state_dicts(a, b, split=0.5, w=0.1, order=names))


def test_output_layout_metadata_and_files(tmp_path, models, folders):
    out = str(tmp_path / "OUT")
    s = merge_checkpoints(*folders, out, split=100, w=0.25, memory_budget=BUDGET, max_shard_size="100KB",
                          progress=False)
    files = sorted(os.listdir(out))
    shards = [f for f in files if f.endswith(".safetensors")]
    assert len(shards) >= 3 and all(f.startswith("model-") and f"-of-{len(shards):05d}" in f for f in shards)
    assert {"config.json", "tokenizer", "model.safetensors.index.json"} <= set(files)
    assert open(os.path.join(out, "tokenizer", "vocab.txt")).read() == "a\nb\n"
    index = json.load(open(os.path.join(out, "model.safetensors.index.json")))
    assert set(index["weight_map"]) == set(models[0])
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in models[0].values())
    assert index["metadata"]["m2n2_merge"]["split"] == 100 and index["metadata"]["m2n2_merge"]["w"] == 0.25
    for f in shards:
        entries, meta = read_header(os.path.join(out, f))
        assert meta["format"] == "pt" and json.loads(meta["m2n2_merge"])["method"] == "slerp"
        assert all(index["weight_map"][k] == f for k in entries)
        assert os.path.getsize(os.path.join(out, f)) <= 100_000 + 4096 or len(entries) == 1
    assert s["elements"] == sum(t.numel() for t in models[0].values() if t.is_floating_point())
    assert s["copied_tensors"] == 2 and len(s["angle_degrees"]) == 1 and 0 < s["angle_degrees"][0] < 180
    assert not [f for f in os.listdir(tmp_path) if "m2n2-tmp" in f]


def test_force_replaces_and_refuses_without(tmp_path, folders):
    out = tmp_path / "OUT"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(FileExistsError, match="OUT .* exists: pass --force"):
        merge_checkpoints(*folders, str(out), split=0.5, w=0.5, progress=False)
    assert (out / "old.txt").read_text() == "old"
    merge_checkpoints(*folders, str(out), split=0.5, w=0.5, force=True, progress=False)
    assert not (out / "old.txt").exists() and (out / "config.json").exists()
    assert sorted(os.listdir(tmp_path)) == ["OUT"]


@pytest.mark.parametrize("out_dtype", [None, torch.float32])
def test_chunk_plan_past_2_31_elements(out_dtype):
    """The plan (no data read) of tensors past 2^31 elements: chunks tile the flat
    vector exactly, with 64-bit offsets, each fitting its slot."""
    from m2n2.safetensors_io import TensorEntry
    from m2n2.stream_merge import plan_chunks

    sizes = {"a.big": (2**31 + 7,), "b.odd": (3, 5), "c.big": (2**30 + 1, 3)}
    entries = {k: TensorEntry(k, torch.bfloat16, s, "x", 0, 0) for k, s in sizes.items()}
    slot = 64 << 20
    chunks = plan_chunks(entries, list(sizes), slot, out_dtype, True)
    flat, covered = 0, {k: 0 for k in sizes}
    for c in chunks:
        assert c.offset == flat
        for p in c.pieces:
            assert p.start == covered[p.entry.name]
            covered[p.entry.name] += p.count
            end = (p.cast_at + p.count * 4) if p.cast_at >= 0 else (p.b_at + p.count * 2)
            assert 0 <= p.a_at < p.b_at and end <= slot
        flat += c.numel
    assert covered == {k: entries[k].numel for k in sizes} and flat == sum(covered.values()) > 2**32


# --- failures leave no OUT ---------------------------------------------------------------------

def _no_leftovers(tmp_path, keep=("OUT",)):
    return [f for f in os.listdir(tmp_path) if f not in keep]


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
@pytest.mark.parametrize("existing", [False, True])
def test_failure_mid_write_leaves_no_out(tmp_path, folders, monkeypatch, error, existing):
    from m2n2 import safetensors_io

    out = tmp_path / "OUT"
    if existing:
        out.mkdir()
        (out / "old.txt").write_text("old")
    calls = {"n": 0}
    real = safetensors_io.ShardWriter.write

    def failing(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise error
        return real(self, *args)

    monkeypatch.setattr(safetensors_io.ShardWriter, "write", failing)
    with pytest.raises(type(error)):
        merge_checkpoints(*folders, str(out), split=0.5, w=0.5, memory_budget=BUDGET, force=True, progress=False)
    assert calls["n"] >= 3
    assert _no_leftovers(tmp_path) == []
    if existing:
        assert (out / "old.txt").read_text() == "old"
    else:
        assert not out.exists()


@pytest.mark.parametrize("method", ["slerp", "lerp"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_named(tmp_path, models, method, bad):
    a, b = dict(models[0]), dict(models[1])
    a["head.weight"] = a["head.weight"].clone()
    a["head.weight"][1500, 7] = bad
    pa, pb = save_folder(str(tmp_path / "A"), a), save_folder(str(tmp_path / "B"), b)
    # slerp finds it in pass 1 (the sums), lerp in pass 2 (the output): neither creates OUT
    with pytest.raises(NonFiniteError, match=r"head\.weight\[1500, 7\].*OUT was not created"):
        merge_checkpoints(pa, pb, str(tmp_path / "OUT"), split=0.5, w=0.5, method=method, memory_budget=BUDGET,
                          progress=False)
    assert _no_leftovers(tmp_path, keep=("A", "B")) == []


def test_overflow_of_out_dtype_is_named(tmp_path, models):
    a, b = dict(models[0]), dict(models[1])
    a["embed.weight"] = a["embed.weight"].clone()
    b["embed.weight"] = b["embed.weight"].clone()
    a["embed.weight"][3, 4] = b["embed.weight"][3, 4] = 1e6  # finite in fp32, past fp16's range
    pa, pb = save_folder(str(tmp_path / "A"), a), save_folder(str(tmp_path / "B"), b)
    with pytest.raises(NonFiniteError, match=r"embed\.weight\[3, 4\]"):
        merge_checkpoints(pa, pb, str(tmp_path / "OUT"), split=0.5, w=0.5, method="lerp", out_dtype="float16",
                          memory_budget=BUDGET, progress=False)
    assert _no_leftovers(tmp_path, keep=("A", "B")) == []


# --- bad input, refused before anything is written ----------------------------------------------

def _pair(tmp_path, change_b=None, change_a=None):
    a, b = make_model(1), make_model(2)
    b["step"], b["mask"] = a["step"].clone(), a["mask"].clone()
    if change_a:
        change_a(a)
    if change_b:
        change_b(b)
    return save_folder(str(tmp_path / "A"), a, extra_files=False), save_folder(str(tmp_path / "B"), b, extra_files=False)


def _refused(tmp_path, a, b, match, exc=ValueError, out="OUT", **kw):
    kw = {"split": 0.5, "w": 0.5, **kw}
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(exc, match=match):
        merge_checkpoints(a, b, str(tmp_path / out) if not os.path.isabs(out) else out, progress=False, **kw)
    assert sorted(os.listdir(tmp_path)) == before  # nothing written, no temporary left


def test_tensors_in_one_model_only(tmp_path):
    a, b = _pair(tmp_path, change_b=lambda m: (m.pop("head.weight"), m.update({"extra.bias": torch.zeros(3)})))
    _refused(tmp_path, a, b, r"only in a: \['head.weight'\], only in b: \['extra.bias'\]")


def test_shape_and_dtype_mismatch(tmp_path):
    def change(m):
        m["embed.weight"] = torch.zeros(1000, 66)
        m["layers.2.attn.weight"] = m["layers.2.attn.weight"].float()

    a, b = _pair(tmp_path, change_b=change)
    _refused(tmp_path, a, b, r"embed\.weight: \(1000, 67\) torch\.float32 vs \(1000, 66\).*layers\.2\.attn\.weight")


def test_non_floating_tensors_differ(tmp_path):
    a, b = _pair(tmp_path, change_b=lambda m: m.update({"mask": torch.tensor([True, True, True])}))
    _refused(tmp_path, a, b, r"mask is not floating point and differs between A and B \(first at mask\[1\]\)")


@pytest.mark.parametrize("split,match", [
    (10**9, r"split must lie in \[0, \d+\]"), (1.5, r"fraction must lie in \[0, 1\]"),
    ("no.such.tensor", "split names no floating-point tensor"), ("step", "split names no floating-point tensor"),
    (-1, r"split must lie in"),
])
def test_bad_split(tmp_path, split, match):
    a, b = _pair(tmp_path)
    _refused(tmp_path, a, b, match, split=split)


def test_bad_order(tmp_path):
    a, b = _pair(tmp_path)
    (tmp_path / "order.txt").write_text("embed.weight\nno.such\n")
    _refused(tmp_path, a, b, r"order names tensors the models do not hold: \['no.such'\]", order=str(tmp_path / "order.txt"))
    (tmp_path / "order2.txt").write_text("embed.weight\n")
    _refused(tmp_path, a, b, r"order must name every floating-point tensor once: .*missing \['head.weight'",
             order=str(tmp_path / "order2.txt"))


@pytest.mark.parametrize("damage", ["truncated", "header", "garbage"])
def test_corrupt_or_truncated_file(tmp_path, damage):
    a, b = _pair(tmp_path)
    victim = os.path.join(b, "part-1.safetensors")
    raw = open(victim, "rb").read()
    if damage == "truncated":
        raw = raw[:-10]
    elif damage == "header":
        raw = raw[:8] + b"[" + raw[9:]  # the JSON header broken
    else:
        raw = b"\x00" * 5
    open(victim, "wb").write(raw)
    _refused(tmp_path, a, b, r"part-1\.safetensors: not a valid safetensors file", exc=CheckpointError)


def test_index_names_missing_shards(tmp_path):
    a, b = _pair(tmp_path)
    os.remove(os.path.join(a, "part-2.safetensors"))
    _refused(tmp_path, a, b, r"A .*: the index names shards that are missing: \['part-2.safetensors'\]",
             exc=CheckpointError)


def test_index_disagrees_with_shards(tmp_path):
    a, b = _pair(tmp_path)
    path = os.path.join(b, "model.safetensors.index.json")
    index = json.load(open(path))
    index["weight_map"]["embed.weight"] = "part-0.safetensors" if index["weight_map"]["embed.weight"] != \
        "part-0.safetensors" else "part-1.safetensors"
    json.dump(index, open(path, "w"))
    _refused(tmp_path, a, b, r"B .*the index and the shards disagree: embed\.weight", exc=CheckpointError)


def test_out_equal_to_or_inside_an_input(tmp_path):
    a, b = _pair(tmp_path)
    _refused(tmp_path, a, b, "is input A", out=a, force=True)
    _refused(tmp_path, a, b, "is input B", out=b, force=True)
    _refused(tmp_path, a, b, "lies inside input A", out=os.path.join(a, "sub"))
    _refused(tmp_path, a, b, "holds input A", out=str(tmp_path), force=True)


@pytest.mark.parametrize("kw,match", [
    (dict(memory_budget="10KB"), "memory_budget must be at least 1MiB"),
    (dict(memory_budget="lots"), "memory_budget must be a size such as"),
    (dict(max_shard_size="-1GB"), "max_shard_size must be positive"),
    (dict(out_dtype="int8"), "out_dtype must be one of"),
    (dict(method="cubic"), "method"),
    (dict(w=float("nan")), "w must be finite"),
    (dict(noise_std=-1.0), "noise_std"),
])
def test_bad_arguments(tmp_path, kw, match):
    a, b = _pair(tmp_path)
    _refused(tmp_path, a, b, match, **kw)


def test_missing_input(tmp_path):
    a, _ = _pair(tmp_path)
    _refused(tmp_path, a, str(tmp_path / "nope"), r"B .*nope: no such file or folder", exc=CheckpointError)


# --- memory -------------------------------------------------------------------------------------

PEAK_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from safetensors.torch import save_file
    from m2n2.stream_merge import merge_checkpoints
    a, b, out, budget = sys.argv[1:5]
    budget = int(budget)
    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    # warm up (libraries, the op's first call) on a tiny merge outside the measured window
    save_file({"w": torch.ones(10)}, out + ".wa"); save_file({"w": torch.zeros(10)}, out + ".wb")
    merge_checkpoints(out + ".wa", out + ".wb", out + ".wo", split=5, w=0.5, progress=False)
    open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
    start = status("VmRSS:")
    s = merge_checkpoints(a, b, out, split=0.5, w=0.3, noise_std=0.01, memory_budget=budget, progress=False)
    print(json.dumps({"peak_extra": status("VmHWM:") - start, "buffers": s["buffer_bytes"]}))
""")


def _peak_checkpoints(tmp_path):
    """Two checkpoints of 26 MB each: an fp32 tensor of 20 MB and three bf16 ones."""
    for name, seed in (("A", 1), ("B", 2)):
        g = torch.Generator().manual_seed(seed)
        os.makedirs(tmp_path / name)
        save_file({"embed": torch.randn(5_000_000, generator=g)}, str(tmp_path / name / "part-0.safetensors"))
        save_file({f"layers.{i}.w": torch.randn(1_000_000, generator=g).bfloat16() for i in range(3)},
                  str(tmp_path / name / "part-1.safetensors"))
        weight_map = {"embed": "part-0.safetensors", **{f"layers.{i}.w": "part-1.safetensors" for i in range(3)}}
        json.dump({"weight_map": weight_map}, open(tmp_path / name / "model.safetensors.index.json", "w"))
    return sum(os.path.getsize(tmp_path / m / f) for m in "AB" for f in os.listdir(tmp_path / m))


def _peak(tmp_path, budget):
    out = str(tmp_path / "OUT")
    res = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(tmp_path / "A"), str(tmp_path / "B"), out,
                          str(budget)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert sorted(os.listdir(out)) == ["model.safetensors"]  # 26 MB: one shard, named as Hugging Face does
    assert load_file(os.path.join(out, "model.safetensors"))["embed"].shape == (5_000_000,)
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's /proc/self/clear_refs")
def test_peak_memory_within_budget(tmp_path):
    """Inputs of 52 MB, more than 10 x the 4 MiB budget, one tensor alone larger than
    it: the merge's peak resident memory (everything it holds, not only its
    buffers) stays within the budget."""
    budget = 4 << 20
    inputs = _peak_checkpoints(tmp_path)
    got = _peak(tmp_path, budget)
    assert inputs > 10 * budget
    assert got["buffers"] <= budget
    assert got["peak_extra"] <= budget, got


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's /proc/self/clear_refs")
def test_peak_memory_with_mapped_pass1(tmp_path):
    """From 64 MiB, pass 1 reads through memory maps: the mapped pages (a whole large
    folio may be mapped beyond a chunk) stay within the budget too."""
    from m2n2.stream_merge import MAPPED_PASS1_MIN_BUDGET

    _peak_checkpoints(tmp_path)
    got = _peak(tmp_path, MAPPED_PASS1_MIN_BUDGET)
    assert got["peak_extra"] <= MAPPED_PASS1_MIN_BUDGET, got


def test_mapped_and_copied_pass1_agree(tmp_path, models, folders, monkeypatch):
    """Pass 1 through maps and through the slots: both give the in-memory child."""
    from m2n2 import stream_merge

    want = m2n2.merge_state_dicts(*models, split=0.5, w=0.3)
    monkeypatch.setattr(stream_merge, "MAPPED_PASS1_MIN_BUDGET", 1 << 20)
    merge_checkpoints(*folders, str(tmp_path / "mapped"), split=0.5, w=0.3, memory_budget="1MiB", progress=False)
    monkeypatch.setattr(stream_merge, "MAPPED_PASS1_MIN_BUDGET", 1 << 40)
    merge_checkpoints(*folders, str(tmp_path / "copied"), split=0.5, w=0.3, memory_budget="1MiB", progress=False)
    assert_same(load_any(str(tmp_path / "mapped")), want)
    assert_same(load_any(str(tmp_path / "copied")), want)


# --- the command line ---------------------------------------------------------------------------

def test_cli_merge(tmp_path, models, folders, capsys):
    out = str(tmp_path / "OUT")
    summary = str(tmp_path / "summary.json")
    rc = cli.main(["merge", *folders, "-o", out, "--split", "head.weight", "--w", "0.3", "--method", "lerp",
                   "--noise-std", "0.02", "--seed", "4", "--memory-budget", "2MB", "--max-shard-size", "100KB",
                   "--summary", summary, "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "merged" in printed and "elements" in printed and "peak memory" in printed
    want = m2n2.merge_state_dicts(*models, split="head.weight", w=0.3, method="lerp", noise_std=0.02, seed=4)
    assert_same(load_any(out), want)
    assert json.load(open(summary))["method"] == "lerp"


@pytest.mark.parametrize("split,expect", [("1000", 1000), ("0.5", 0.5), ("1e-1", 0.1), ("head.weight", "head.weight")])
def test_cli_split_forms(split, expect):
    assert cli._split_arg(split) == expect and type(cli._split_arg(split)) is type(expect)


def test_cli_bad_input_is_one_line(tmp_path, folders, capsys):
    out = str(tmp_path / "OUT")
    rc = cli.main(["merge", *folders, "-o", out, "--split", "nope", "--w", "0.3", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("m2n2: error: split names no floating-point tensor") and err.count("\n") == 1
    assert not os.path.exists(out)


def test_seed_past_int63(tmp_path, models, folders):
    """A seed of 64 bits (the op takes its int64 form) keys the same noise as in memory."""
    seed = 2**64 - 3
    merge_checkpoints(*folders, str(tmp_path / "OUT"), split=0.5, w=0.3, noise_std=0.1, seed=seed, progress=False)
    assert_same(load_any(str(tmp_path / "OUT")), m2n2.merge_state_dicts(*models, split=0.5, w=0.3, noise_std=0.1,
                                                                          seed=seed))
