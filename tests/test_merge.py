"""m2n2.merge_state_dicts: two models' state dicts as one flat vector each."""
import pytest
import torch

import m2n2_kernels as mk
from m2n2.merge import canonical_order, flat_names, merge_state_dicts, resolve_split


def model(seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return {
        "layers.10.weight": torch.randn(3, 4, generator=g).to(dtype),
        "layers.2.weight": torch.randn(5, 4, generator=g).to(dtype),
        "layers.2.norm": torch.randn(4, generator=g),  # fp32 beside bf16 weights
        "embed.weight": torch.randn(7, 4, generator=g).to(dtype),
        "steps": torch.tensor([3, 4]),  # not floating point: copied
    }


def test_canonical_order_compares_numbers_as_numbers():
    names = ["layers.10.weight", "layers.2.weight", "embed.weight", "layers.2.norm", "layers.1.weight"]
    assert canonical_order(names) == ["embed.weight", "layers.1.weight", "layers.2.norm", "layers.2.weight",
                                      "layers.10.weight"]
    assert flat_names(model(0)) == ["embed.weight", "layers.2.norm", "layers.2.weight", "layers.10.weight"]


def test_split_forms():
    names, numels = ["x", "y", "z"], [4, 6, 10]
    assert resolve_split(7, names, numels) == 7
    assert resolve_split(0.5, names, numels) == 10
    assert resolve_split("z", names, numels) == 10
    with pytest.raises(ValueError, match="split names no floating-point tensor"):
        resolve_split("w", names, numels)
    with pytest.raises(ValueError, match=r"split must lie in \[0, 20\]"):
        resolve_split(21, names, numels)
    with pytest.raises(ValueError, match=r"fraction must lie in \[0, 1\]"):
        resolve_split(1.5, names, numels)
    with pytest.raises(TypeError, match="split must be"):
        resolve_split(True, names, numels)


@pytest.mark.parametrize("method", ["lerp", "slerp"])
def test_the_merge_is_the_op_on_the_flat_vector(method):
    a, b = model(0), model(1)
    names = flat_names(a)
    flat_a = torch.cat([a[k].reshape(-1) for k in names])
    flat_b = torch.cat([b[k].reshape(-1) for k in names])
    split = 30
    kw = dict(method=method, noise_std=0.01, seed=5)
    # the same angle for both (the sums of the whole vector), so that the list and
    # the flat vector give the same bits
    sums = mk.interp_sums(flat_a, flat_b, split)
    want = mk.split_interpolate(flat_a, flat_b, split, 0.3, sums=sums, **kw)
    got = merge_state_dicts(a, b, split=split, w=0.3, **kw)
    if method == "lerp":
        assert torch.equal(torch.cat([got[k].reshape(-1) for k in names]), want)
    else:
        torch.testing.assert_close(torch.cat([got[k].reshape(-1) for k in names]), want, rtol=4e-6, atol=1e-6)
    assert torch.equal(got["steps"], a["steps"]) and list(got) == list(a)
    assert got["layers.2.norm"].dtype == torch.float32


def test_mixed_dtypes_keep_theirs_unless_out_dtype():
    a, b = model(0, torch.bfloat16), model(1, torch.bfloat16)
    got = merge_state_dicts(a, b, split="layers.2.weight", w=0.5, method="lerp")
    assert got["embed.weight"].dtype == torch.bfloat16 and got["layers.2.norm"].dtype == torch.float32
    # everything before layers.2.weight takes t = w, from it on 1 - w: w = 0.5 either way
    half = ((a["embed.weight"].float() + b["embed.weight"].float()) / 2).bfloat16()
    assert torch.equal(got["embed.weight"], half)
    cast = merge_state_dicts(a, b, split=0.5, w=0.5, method="lerp", out_dtype=torch.float16)
    assert all(v.dtype == torch.float16 for k, v in cast.items() if k != "steps")


def test_order_file_and_its_errors():
    a, b = model(0), model(1)
    order = ["layers.10.weight", "embed.weight", "layers.2.weight", "layers.2.norm"]
    got = merge_state_dicts(a, b, split="embed.weight", w=0.0, method="lerp", order=order)
    # before the split (layers.10.weight) t = w = 0: a; from it on t = 1: b
    assert torch.equal(got["layers.10.weight"], a["layers.10.weight"])
    assert torch.equal(got["embed.weight"], b["embed.weight"])
    with pytest.raises(ValueError, match=r"order names tensors the models do not hold: \['nope'\]"):
        merge_state_dicts(a, b, split=0, w=0.5, order=order + ["nope"])
    with pytest.raises(ValueError, match=r"missing \['layers.2.norm'\]"):
        merge_state_dicts(a, b, split=0, w=0.5, order=order[:-1])


def test_mismatched_models_are_named():
    a, b = model(0), model(1)
    del b["embed.weight"]
    with pytest.raises(ValueError, match=r"only in a: \['embed.weight'\], only in b: \[\]"):
        merge_state_dicts(a, b, split=0, w=0.5)
    b = model(1)
    b["layers.2.norm"] = torch.randn(5)
    with pytest.raises(ValueError, match=r"layers.2.norm: \(4,\) torch.float32 vs \(5,\) torch.float32"):
        merge_state_dicts(a, b, split=0, w=0.5)
    b = model(1)
    b["steps"] = torch.tensor([3, 5])
    with pytest.raises(ValueError, match="steps is not floating point and differs"):
        merge_state_dicts(a, b, split=0, w=0.5)


def test_inputs_are_not_modified():
    a, b = model(0), model(1)
    before = {k: v.clone() for k, v in a.items()}
    merge_state_dicts(a, b, split=10, w=0.3)
    assert all(torch.equal(a[k], before[k]) for k in a)
