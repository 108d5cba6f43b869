"""Checks that read the data, for the torch and Triton paths (the C++ kernels find
the same faults in the pass that reads the data, and raise the same messages:
csrc/niches_args.h, csrc/scores_args.h). Each costs one host sync on a GPU."""
import torch

from . import reference


def raise_if_non_finite(S, child, z):
    """A NaN or inf score makes its column's z non-finite: find the first such column,
    then the score itself, and raise."""
    bad = ~torch.isfinite(z)
    if not bool(bad.any()):
        return
    j = int(bad.nonzero()[0, 0])
    column = S[:, j]
    rows = (~torch.isfinite(column)).nonzero()
    if rows.numel() > 0:
        i = int(rows[0, 0])
        raise ValueError(f"S[{i}, {j}] = {float(column[i])}: scores must be finite")
    raise ValueError(f"child[{j}] = {float(child[j])}: scores must be finite")


def check_targets_and_index(target, mask, vocab, ignore_index, out_index, out_size):
    """Valid targets (mask true, not ignore_index) lie in [0, V); out_index in
    [0, len(out)). IndexError naming the first offender."""
    valid = reference.token_valid(target, mask, ignore_index)
    bad = valid & ((target < 0) | (target >= vocab))
    if bool(bad.any()):
        pos = tuple(int(i) for i in bad.nonzero()[0])
        raise IndexError(
            f"target{list(pos)} = {int(target[pos])} lies outside [0, {vocab}) and is not ignore_index ({ignore_index})"
        )
    if out_index is not None and out_index.numel() > 0:
        bad = (out_index < 0) | (out_index >= out_size)
        if bool(bad.any()):
            b = int(bad.nonzero()[0, 0])
            raise IndexError(f"out_index[{b}] = {int(out_index[b])} lies outside [0, {out_size}) (the elements of out)")
