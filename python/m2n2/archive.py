"""The archive: N models as one parameter matrix, their score matrix S, and the
slots where each step's children are made and scored.

Both buffers hold N + K rows: rows [0, N) are the archive, rows [N, N + K) the K
children of the current step. Crossover writes a child straight into its slot,
evaluation writes its scores into the matching row of S, and insertion copies the
slot over the row it replaces: no per-step allocation of a parameter or score row.
"""
import torch

PARAM_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


class Archive:
    """N models of n parameters scored on D datapoints, with K child slots.

    params [N, n] and S [N, D] (bool right/wrong scores, or floats in [0, 1]) are
    views of the row buffers; `filled` marks the rows that hold a model (the others
    score 0 everywhere, so they are never drawn and are replaced first); `train`
    is each row's mean score; `version` counts the models written into each row
    (so a cached test score can tell when its row changed).
    """

    def __init__(self, size, n, d, *, child_slots=1, dtype=torch.float32, score_dtype=torch.bool, device="cpu"):
        if isinstance(size, bool) or not isinstance(size, int) or size < 2:
            raise ValueError(f"archive size must be an integer >= 2, got {size!r}")
        if dtype not in PARAM_DTYPES:
            raise TypeError(f"archive dtype must be one of {PARAM_DTYPES}, got {dtype}")
        if not (score_dtype == torch.bool or score_dtype.is_floating_point):
            raise TypeError(f"score dtype must be torch.bool or a float dtype, got {score_dtype}")
        device = torch.device(device)
        self.size, self.n, self.d, self.child_slots = size, n, d, child_slots
        self.params_buf = torch.zeros(size + child_slots, n, dtype=dtype, device=device)
        self.scores_buf = torch.zeros(size + child_slots, d, dtype=score_dtype, device=device)
        self.params = self.params_buf[:size]
        self.S = self.scores_buf[:size]
        self.children = self.params_buf[size:]
        self.child_scores = self.scores_buf[size:]
        self.filled = torch.zeros(size, dtype=torch.bool, device=device)
        self.train = torch.zeros(size, dtype=torch.float64, device=device)
        self.version = torch.zeros(size, dtype=torch.int64, device=device)

    @property
    def device(self):
        return self.params_buf.device

    def put(self, row, slot, score):
        """Copy child `slot` (parameters and scores) into archive row `row` (an int)."""
        self.params[row].copy_(self.children[slot])
        self.S[row].copy_(self.child_scores[slot])
        self.train[row] = score
        self.filled[row] = True
        self.version[row] += 1

    def put_masked(self, worst, slot, score):
        """`put` without a host sync: `worst` is a 0-d int64 tensor on the device, the
        row to replace, or N (the child itself is the worst: nothing changes). Each
        buffer gets a masked write of the chosen row. Returns the replaced row or -1
        as a 0-d tensor."""
        keep = worst < self.size
        dest = worst.clamp(max=self.size - 1).reshape(1)
        for buf, src in ((self.params, self.children[slot]), (self.S, self.child_scores[slot])):
            buf.index_copy_(0, dest, torch.where(keep, src, buf.index_select(0, dest)[0]).unsqueeze(0))
        self.train.index_copy_(0, dest, torch.where(keep, score, self.train.index_select(0, dest)))
        self.filled.index_copy_(0, dest, self.filled.index_select(0, dest) | keep)
        self.version.index_add_(0, dest, keep.to(torch.int64).reshape(1))
        return torch.where(keep, worst, torch.full_like(worst, -1))

    def best_row(self):
        """The row with the best train score (the first one on ties), as an int."""
        return int(self.train.argmax())

    def tensors(self):
        """The state to checkpoint (rows [0, N) only)."""
        return {
            "params": self.params,
            "S": self.S,
            "filled": self.filled,
            "train": self.train,
            "version": self.version,
        }

    def load_tensors(self, tensors, skip=()):
        for name, dst in self.tensors().items():
            if name in skip:
                continue
            src = tensors[name]
            if src.shape != dst.shape or src.dtype != dst.dtype:
                raise ValueError(
                    f"checkpoint tensor {name!r} is {src.dtype} {tuple(src.shape)}, "
                    f"expected {dst.dtype} {tuple(dst.shape)}"
                )
            dst.copy_(src)
