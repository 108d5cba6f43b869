"""Any torch model as a flat parameter vector, and its batched evaluation.

The engine sees a model as one vector of n numbers (its parameters in
`named_parameters()` order, each flattened row-major). `ModuleEvaluator` turns
an archive row block [K, n] back into K parameter sets (views, no copy), runs the
module on the data for all K at once with `torch.func.functional_call` under
`torch.func.vmap` (a loop over the K models where vmap does not apply), and
turns the outputs into one score per datapoint with `m2n2_kernels.sample_scores`.
"""
import warnings

import torch

import m2n2_kernels as mk

# Score kinds the competition can use: scores must lie in [0, 1], because each
# datapoint is a resource shared among the models that score on it.
KINDS = {
    "correct": ("correct", "mean"),  # argmax == target (bool with one token per sample)
    "exact": ("correct", "all"),  # every valid token right (bool)
    "prob": ("prob", "mean"),  # mean probability of the target tokens
}


def layout(module):
    """[(name, shape, offset, numel)] of the module's parameters in the flat vector."""
    out, offset = [], 0
    for name, p in module.named_parameters():
        out.append((name, tuple(p.shape), offset, p.numel()))
        offset += p.numel()
    return out


def flatten(module, dtype=None):
    """The module's parameters as one flat vector [n] (a copy)."""
    params = [p.detach().reshape(-1) for p in module.parameters()]
    if not params:
        raise ValueError("the module has no parameters")
    flat = torch.cat(params)
    return flat if dtype is None else flat.to(dtype)


def load_flat(module, vector):
    """Copy a flat vector [n] into the module's parameters (in place)."""
    n = sum(p.numel() for p in module.parameters())
    if vector.dim() != 1 or vector.numel() != n:
        raise ValueError(f"vector must have shape ({n},) (the module's parameter count), got {tuple(vector.shape)}")
    with torch.no_grad():
        for name, shape, offset, numel in layout(module):
            module.get_parameter(name).copy_(vector[offset : offset + numel].view(shape))
    return module


class ModuleEvaluator:
    """evaluate(params [K, n]) -> scores [K, D] for a module on fixed data.

    module: the architecture (its own parameter values are not used).
    inputs: a tensor [D, ...] (batched with `batch_size`), or a sequence of
        (inputs, targets) batches (e.g. a DataLoader, read once and kept).
    targets: int64 [D] (or [D, T] for sequences) when inputs is a tensor.
    kind: "correct" (argmax == target; bool scores for one token per sample),
        "exact" (every valid token right; bool), or "prob" (mean probability of the
        target tokens; float). Log-probabilities are not scores in [0, 1]: use "prob".
    mask / ignore_index: which tokens count, as m2n2_kernels.sample_scores.
    output: a function from the module's output to logits [B, V] or [B, T, V]
        (default: the output itself, or its `.logits`).
    vmap: evaluate the K models in one vmapped call (falls back to a loop, with a
        warning, when the module does not support vmap).
    """

    def __init__(
        self, module, inputs, targets=None, *, kind="correct", batch_size=None, mask=None, ignore_index=-100,
        output=None, vmap=True,
    ):
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        if kind not in KINDS:
            hint = " (scores must lie in [0, 1]: use kind='prob')" if kind == "logprob" else ""
            raise ValueError(f"kind must be one of {tuple(KINDS)}, got {kind!r}{hint}")
        self.module, self.kind = module, kind
        self.ignore_index = ignore_index
        self.output = output
        self.vmap = vmap
        self.layout = layout(module)
        self.n = sum(numel for *_, numel in self.layout)
        if self.n == 0:
            raise ValueError("the module has no parameters")
        self.buffers = dict(module.named_buffers())
        if isinstance(inputs, torch.Tensor):
            if targets is None:
                raise ValueError("targets must be given when inputs is a tensor")
            if targets.shape[0] != inputs.shape[0]:
                raise ValueError(f"inputs and targets must hold as many samples, got {inputs.shape[0]} and {targets.shape[0]}")
            if mask is not None and mask.shape != targets.shape:
                raise ValueError(f"mask must have the shape of targets {tuple(targets.shape)}, got {tuple(mask.shape)}")
            step = batch_size or inputs.shape[0]
            self.batches = [
                (inputs[i : i + step], targets[i : i + step], None if mask is None else mask[i : i + step])
                for i in range(0, inputs.shape[0], step)
            ]
        else:
            if targets is not None:
                raise ValueError("targets must be None when inputs is a sequence of (inputs, targets) batches")
            self.batches = [(b[0], b[1], b[2] if len(b) > 2 else None) for b in inputs]
        self.d = sum(t.shape[0] for _, t, _ in self.batches)
        if self.d == 0:
            raise ValueError("the data has no samples")
        tokens = self.batches[0][1].dim()
        self.score_dtype = torch.bool if kind == "exact" or (kind == "correct" and tokens == 1) else torch.float32

    def _params(self, row_block):
        k = row_block.shape[0]
        return {
            name: row_block[:, offset : offset + numel].reshape((k,) + shape)
            for name, shape, offset, numel in self.layout
        }

    def _logits(self, out):
        if self.output is not None:
            return self.output(out)
        return getattr(out, "logits", out)

    def _forward_all(self, params, x):
        call = torch.func.functional_call

        def one(p):
            return self._logits(call(self.module, {**p, **self.buffers}, (x,)))

        if self.vmap:
            try:
                return torch.func.vmap(one)(params)
            except Exception as e:  # modules with data-dependent control flow, in-place buffer updates...
                warnings.warn(f"vmap does not apply to this module ({type(e).__name__}: {e}); evaluating in a loop")
                self.vmap = False
        k = next(iter(params.values())).shape[0]
        return torch.stack([one({name: t[i] for name, t in params.items()}) for i in range(k)])

    def __call__(self, params):
        if params.dim() != 2 or params.shape[1] != self.n:
            raise ValueError(f"params must be [K, {self.n}] (K flat parameter vectors), got {tuple(params.shape)}")
        kind, reduce = KINDS[self.kind]
        k = params.shape[0]
        scores = torch.empty(k, self.d, dtype=self.score_dtype, device=params.device)
        p = self._params(params)
        col = 0
        with torch.no_grad():
            for x, y, m in self.batches:
                logits = self._forward_all(p, x)
                for i in range(k):
                    mk.sample_scores(
                        logits[i], y, kind=kind, reduce=reduce, mask=m, ignore_index=self.ignore_index,
                        out=scores[i, col : col + y.shape[0]],
                    )
                col += y.shape[0]
        return scores

    def accuracy(self, params):
        """The mean score of each of K models: float64 [K]."""
        return self(params).sum(1, dtype=torch.float64) / self.d
