"""m2n2_kernels.mergekit: mergekit's task-vector merges on the fused op.

In memory (mergekit's merge_tensors with and without install()) and end to end
(mergekit-yaml against `python -m m2n2_kernels.mergekit` on a tiny Llama-shaped model
made here): task arithmetic equal within fp32 rounding, TIES and Model Breadcrumbs
equal except at elements tied with a threshold, DARE equal in distribution (and
exactly with density 1), DELLA too, per band of magnitude ranks; the fused methods
compute exactly this package's ops.
"""
import json
import logging
import os
import subprocess
import sys

import pytest
import torch

mergekit = pytest.importorskip("mergekit")
from mergekit.merge_methods import get  # noqa: E402
from mergekit.merge_methods.api import merge_tensors  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import m2n2_kernels.mergekit as m2k  # noqa: E402
from m2n2_kernels import breadcrumbs_merge, della_merge, task_arithmetic, ties_merge  # noqa: E402

PARAMS = dict(weight=[0.5, 0.3, 0.2], density=[0.3, 0.3, 0.3])


@pytest.fixture
def fused():
    m2k.install()
    yield
    m2k.uninstall()


def _inputs(n=(512, 129), dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, generator=g).to(dtype)
    return base, [(base.float() + torch.randn(n, generator=g) * 0.01).to(dtype) for _ in range(3)]


def _both(name, base, models, params=PARAMS):
    m2k.uninstall()
    theirs = merge_tensors([base, *models], name, parameters=params, base_index=0)
    m2k.install()
    try:
        ours = merge_tensors([base, *models], name, parameters=params, base_index=0)
    finally:
        m2k.uninstall()
    return theirs, ours


def test_install_replaces_and_registers():
    names = m2k.install()
    try:
        assert names == ["task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs",
                         "breadcrumbs_ties", "della", "della_linear"] == m2k.installed()
        assert type(get("ties")).__name__ == "FusedTaskArithmeticMerge"
        assert get("m2n2_ties").spec.name == "m2n2_ties"
        assert m2k.install() == names  # idempotent
    finally:
        m2k.uninstall()
    assert m2k.installed() == [] and type(get("ties")).__name__ == "GeneralizedTaskArithmeticMerge"


def test_task_arithmetic_equal():
    base, models = _inputs()
    theirs, ours = _both("task_arithmetic", base, models, dict(weight=[0.5, 0.3, 0.2], **{"lambda": 0.8}))
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_ties_equal_except_threshold_ties():
    base, models = _inputs()
    theirs, ours = _both("ties", base, models)
    differ = (theirs - ours).abs() > 1e-6
    assert differ.float().mean() < 1e-3  # where a model's |d| ties with its threshold


@pytest.mark.parametrize("name,params", [
    ("breadcrumbs", dict(weight=[0.5, 0.3, 0.2], density=[0.3, 0.5, 0.9], gamma=[0.01, 0.1, 0.2])),
    ("breadcrumbs_ties", dict(weight=[0.5, 0.3, 0.2], density=[0.3, 0.5, 0.9], gamma=[0.01, 0.1, 0.2],
                              rescale=True, normalize=True)),
    ("breadcrumbs", dict(weight=[0.5, 0.3, 0.2], density=[0.3, 0.3, 0.3])),  # mergekit's default gamma 0.01
])
def test_breadcrumbs_equal_except_threshold_ties(name, params):
    # fp32 deltas of N(0, 0.01^2): few magnitudes tie, so the bands are the same sets.
    base, models = _inputs()
    theirs, ours = _both(name, base, models, params)
    differ = (theirs - ours).abs() > 1e-6
    assert differ.float().mean() < 1e-3
    assert ((ours != base).float().mean() - (theirs != base).float().mean()).abs() < 1e-3


def test_breadcrumbs_fused_is_our_op(fused):
    base, models = _inputs(dtype=torch.bfloat16)
    params = dict(weight=[0.5, 0.3, 0.2], density=[0.3, 0.5, 0.9], gamma=[0.05, 0.1, 0.2])
    got = merge_tensors([base, *models], "breadcrumbs_ties", parameters=params, base_index=0)
    assert torch.equal(got, breadcrumbs_merge(base, models, params["weight"], params["density"],
                                              gamma=params["gamma"], consensus="sum"))


def test_breadcrumbs_fallback_for_gamma_outside_unit_range(fused, caplog):
    base, models = _inputs()
    params = dict(weight=[0.5, 0.3, 0.2], density=[0.3, 0.3, 0.3], gamma=[0.01, 0.01, 1.5])
    with caplog.at_level(logging.WARNING, logger="m2n2_kernels.mergekit"):
        merge_tensors([base, *models], "breadcrumbs", parameters=params, base_index=0)
    assert any("breadcrumbs on a gamma that is not a number in [0, 1]" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("name", ["dare_linear", "dare_ties"])
def test_dare_equal_in_distribution(name):
    base, models = _inputs((400, 250))
    theirs, ours = _both(name, base, models)
    kept_theirs = (theirs != base).float().mean()
    kept_ours = (ours != base).float().mean()
    assert abs(kept_theirs - kept_ours) < 0.01
    # the l1 rescale keeps the merged delta's size
    ratio = (ours - base).abs().sum() / (theirs - base).abs().sum()
    assert 0.97 < ratio < 1.03


def test_dare_density_one_is_task_arithmetic():
    base, models = _inputs()
    params = dict(weight=[0.5, 0.3, 0.2], density=[1.0, 1.0, 1.0])
    theirs, ours = _both("dare_linear", base, models, params)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


def _rank_bands(base, model, merged, bands=5):
    """The kept fraction of each band of magnitude ranks within the rows."""
    d = (model - base).abs()
    rank = d.argsort(1).argsort(1)
    B = d.shape[1]
    kept = merged != base
    return [float(kept[(rank >= B * q // bands) & (rank < B * (q + 1) // bands)].float().mean())
            for q in range(bands)]


@pytest.mark.parametrize("name", ["della", "della_linear"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_della_equal_in_distribution(name, dtype):
    # One model: its kept fraction in each fifth of the ranks within rows (from
    # density - epsilon to density + epsilon) and the l1 rescale's size.
    base, models = _inputs((600, 300), dtype=dtype)
    params = dict(weight=[1.0], density=[0.4], epsilon=[0.3])
    theirs, ours = _both(name, base, models[:1], params)
    bands_theirs = _rank_bands(base.float(), models[0].float(), theirs)
    bands_ours = _rank_bands(base.float(), models[0].float(), ours)
    assert bands_ours[0] < 0.2 and bands_ours[-1] > 0.6
    # bf16 deltas tie often, and mergekit ranks its deltas rounded to bf16 in argsort's
    # order of ties: the bands of a third ranking then differ by a few percent.
    for a, b in zip(bands_ours, bands_theirs):
        assert abs(a - b) < (0.01 if dtype == torch.float32 else 0.05)
    assert abs(sum(bands_ours) - sum(bands_theirs)) / len(bands_ours) < 0.01
    ratio = float((ours.float() - base.float()).abs().sum() / (theirs.float() - base.float()).abs().sum())
    assert 0.97 < ratio < 1.03


def test_della_density_one_is_task_arithmetic():
    base, models = _inputs()
    params = dict(weight=[0.5, 0.3, 0.2], density=[1.0, 1.0, 1.0])
    theirs, ours = _both("della_linear", base, models, params)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_della_fused_is_our_op(fused):
    base, models = _inputs(dtype=torch.bfloat16)
    params = dict(weight=[0.5, 0.3, 0.2], density=[0.3, 0.5, 1.0], epsilon=[0.1, 0.2, 0.5])
    torch.manual_seed(3)
    got = merge_tensors([base, *models], "della", parameters=params, base_index=0)
    torch.manual_seed(3)  # the fused method draws its seed from torch's generator, as mergekit draws its masks
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    assert torch.equal(got, della_merge(base, models, params["weight"], params["density"], epsilon=[0.1, 0.2, 0.0],
                                        seed=seed))


@pytest.mark.parametrize("params,shape,reason", [
    (dict(density=[0.3, 0.3, 0.3], epsilon=[0.1, 0.1, 0.3]), (64, 9), "a density +- epsilon outside (0, 1)"),
    (dict(density=[0.3, 0.3, 0.3], epsilon=[0.1, 0.1, 0.1]), (64, 1), "rows of one element"),
])
def test_della_fallback_is_mergekits_error(fused, caplog, params, shape, reason):
    base, models = _inputs(shape)
    with caplog.at_level(logging.WARNING, logger="m2n2_kernels.mergekit"):
        with pytest.raises((ValueError, RuntimeError)):
            merge_tensors([base, *models], "della", parameters=dict(weight=[0.5, 0.3, 0.2], **params), base_index=0)
    assert any(f"della on {reason}" in r.getMessage() for r in caplog.records)


def test_fused_is_our_op(fused):
    base, models = _inputs(dtype=torch.bfloat16)
    got = merge_tensors([base, *models], "ties", parameters=PARAMS, base_index=0)
    assert torch.equal(got, ties_merge(base, models, PARAMS["weight"], 0.3))
    got = merge_tensors([base, *models], "m2n2_task_arithmetic", parameters=dict(weight=[1.0, 2.0, 3.0]), base_index=0)
    assert torch.equal(got, task_arithmetic(base, models, [1.0, 2.0, 3.0]))


def test_fallback_is_logged_once(fused, caplog):
    base, models = _inputs()
    params = dict(weight=[0.5, 0.3, 0.2], density=[0.3, 0.3, 1.5])  # outside [0, 1]: mergekit's own code
    with caplog.at_level(logging.WARNING, logger="m2n2_kernels.mergekit"):
        merge_tensors([base, *models], "ties", parameters=params, base_index=0)
        merge_tensors([base, *models], "ties", parameters=params, base_index=0)
    notes = [r.getMessage() for r in caplog.records if "mergekit's own code" in r.getMessage()]
    assert notes == ["m2n2_kernels.mergekit: ties on a density outside [0, 1] runs mergekit's own code"]


# --- end to end: mergekit-yaml with and without the fused methods --------------------------

H, I, L, V = 64, 96, 2, 128


def _llama(path, seed, base=None):
    g = torch.Generator().manual_seed(seed)
    if base is None:
        sd = {"model.embed_tokens.weight": torch.randn(V, H, generator=g), "model.norm.weight": torch.ones(H),
              "lm_head.weight": torch.randn(V, H, generator=g)}
        for i in range(L):
            p = f"model.layers.{i}."
            for n, s in [("self_attn.q_proj", (H, H)), ("self_attn.k_proj", (H, H)), ("self_attn.v_proj", (H, H)),
                         ("self_attn.o_proj", (H, H)), ("mlp.gate_proj", (I, H)), ("mlp.up_proj", (I, H)),
                         ("mlp.down_proj", (H, I))]:
                sd[p + n + ".weight"] = torch.randn(*s, generator=g) * 0.02
            sd[p + "input_layernorm.weight"] = torch.ones(H)
            sd[p + "post_attention_layernorm.weight"] = torch.ones(H)
    else:
        sd = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    os.makedirs(path)
    save_file(sd, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H, "intermediate_size": I,
              "num_hidden_layers": L, "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": V,
              "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "tie_word_embeddings": False}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    return sd


def _yaml(tmp_path, cmd, out):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(cmd + [str(tmp_path / "config.yml"), str(tmp_path / out), "--no-write-model-card",
                                "--no-copy-tokenizer"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "mergekit's own code" not in res.stderr  # no group fell back
    return load_file(str(tmp_path / out / "model.safetensors"))


@pytest.mark.parametrize("method", ["ties", "task_arithmetic", "breadcrumbs_ties"])
def test_mergekit_yaml_end_to_end(tmp_path, method):
    base = _llama(str(tmp_path / "base"), 0)
    m1, m2 = _llama(str(tmp_path / "m1"), 1, base), _llama(str(tmp_path / "m2"), 2, base)
    (tmp_path / "config.yml").write_text(
        f"merge_method: {method}\nbase_model: base\nmodels:\n"
        "  - model: m1\n    parameters: {weight: 0.6, density: 0.3}\n"
        "  - model: m2\n    parameters: {weight: 0.4, density: 0.3}\n"
        "dtype: float32\n")
    theirs = _yaml(tmp_path, [os.path.join(os.path.dirname(sys.executable), "mergekit-yaml")], "theirs")
    ours = _yaml(tmp_path, [sys.executable, "-m", "m2n2_kernels.mergekit"], "ours")
    assert set(ours) == set(theirs) == set(base)
    for k in base:
        if method == "ties":
            want = ties_merge(base[k], [m1[k], m2[k]], [0.6, 0.4], 0.3)
        elif method == "breadcrumbs_ties":  # mergekit's defaults: gamma 0.01, no rescale, no normalize
            want = breadcrumbs_merge(base[k], [m1[k], m2[k]], [0.6, 0.4], 0.3, gamma=0.01, consensus="sum")
        else:
            want = task_arithmetic(base[k], [m1[k], m2[k]], [0.6, 0.4])
        assert torch.equal(ours[k], want), k  # the fused method ran, with mergekit's parameters
        close = torch.isclose(ours[k], theirs[k], rtol=1e-5, atol=1e-6)
        assert bool(close.all()) if method == "task_arithmetic" else close.float().mean().item() > 0.999, k


def test_mergekit_yaml_della_end_to_end(tmp_path):
    """DELLA through mergekit-yaml: the masks come from different generators, so
    compare the kept fraction over the whole model and the rescaled deltas' size."""
    base = _llama(str(tmp_path / "base"), 0)
    m1, m2 = _llama(str(tmp_path / "m1"), 1, base), _llama(str(tmp_path / "m2"), 2, base)
    (tmp_path / "config.yml").write_text(
        "merge_method: della_linear\nbase_model: base\nmodels:\n"
        "  - model: m1\n    parameters: {weight: 1.0, density: 0.4, epsilon: 0.2}\n"
        "dtype: float32\n")
    theirs = _yaml(tmp_path, [os.path.join(os.path.dirname(sys.executable), "mergekit-yaml")], "theirs")
    ours = _yaml(tmp_path, [sys.executable, "-m", "m2n2_kernels.mergekit"], "ours")
    assert set(ours) == set(theirs) == set(base)
    kept = [sum(int((r[k] != base[k]).sum()) for k in base) for r in (ours, theirs)]
    n = sum(v.numel() for v in base.values())
    assert abs(kept[0] - kept[1]) / n < 0.01 and abs(kept[0] / n - 0.4) < 0.01
    size = [sum(float((r[k] - base[k]).abs().sum()) for k in base) for r in (ours, theirs)]
    assert abs(size[0] / size[1] - 1) < 0.02
