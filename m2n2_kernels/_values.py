"""Checks that read the data, for the torch and Triton paths (the C++ kernels find
the same faults in the pass that reads the data, and raise the same messages:
csrc/niches_args.h, csrc/scores_args.h). Each costs one host sync on a GPU."""
import math

import torch

from . import reference


NEGATIVE_SCORE_HINT = "scores must be >= 0 (log-probabilities are not: use sample_scores(kind='prob'))"


def raise_if_bad_scores(S, child, z, *, find_negative=False):
    """Scores must be finite and >= 0 (they are resources shared among the models that
    earn them; z_j sums them). A NaN or inf score makes its column's z non-finite, and
    the Triton kernel makes z NaN for a negative score too; with find_negative (the
    torch reference, whose z is a plain sum) negative scores are looked for here.
    Raises for the first bad column, at its first bad score (the rows, then the child),
    in the words of csrc/niches_args.h."""
    bad = ~torch.isfinite(z)
    if find_negative and S.dtype.is_floating_point and S.numel() > 0:
        bad |= S.amin(0) < 0
        if child is not None:
            bad |= child < 0
    if not bool(bad.any()):
        return
    j = int(bad.nonzero()[0, 0])
    for name, column in (("S", S[:, j]), ("child", None if child is None else child[j : j + 1])):
        if column is None:
            continue
        rows = (~torch.isfinite(column) | (column < 0)).nonzero()
        if rows.numel() > 0:
            i = int(rows[0, 0])
            value = float(column[i])
            at = f"S[{i}, {j}]" if name == "S" else f"child[{j}]"
            reason = "scores must be finite" if not math.isfinite(value) else NEGATIVE_SCORE_HINT
            raise ValueError(f"{at} = {value}: {reason}")
    raise ValueError(f"z[{j}] (the sum of column {j} of S) is not finite: scores must be finite")


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
