"""Per-sample score gathering: the Python API (checks, backend choice, dispatch)."""
import torch

from . import _backend, _checks, reference
from ._values import check_targets_and_index

KINDS = reference.SCORE_KINDS
REDUCES = reference.SCORE_REDUCES
LOGITS_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
FLOAT_OUT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
ZERO_ONE_OUT_DTYPES = (torch.bool, torch.uint8)


def _is_integer_dtype(dtype):
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


# ---------------------------------------------------------------------------
# The op's canonical arguments (csrc/scores_args.h checks the same, in the same words).
# ---------------------------------------------------------------------------


def check_op_args(logits, target, mask, ignore_index, kind, reduce, out, out_index):
    """sample_scores_out's arguments: logits [B, T, V] with a contiguous last
    dimension, target [B, T] int64, mask [B, T] bool or None, out 1-D, out_index [B]
    int64 or None. Values (targets, out_index) are not read here."""
    _checks.choice(kind, "kind", KINDS)
    _checks.choice(reduce, "reduce", REDUCES)
    if reduce == "all" and kind != "correct":
        raise ValueError("reduce='all' (exact match) needs kind='correct'")
    _checks.check_tensor(logits, "logits", LOGITS_DTYPES)
    if logits.dim() != 3:
        raise ValueError(f"logits must be 3-D [B, T, V], got shape {_checks.shape_str(logits.shape)}")
    batch, tokens, vocab = logits.shape
    if not 1 <= vocab < 2**31:
        raise ValueError(f"logits' last dimension (V, the number of classes) must lie in [1, 2**31), got {vocab}")
    if logits.stride(2) != 1 and vocab > 1:
        raise ValueError("logits' last dimension must be contiguous")
    _checks.check_like(target, "target", dtype=torch.int64, shape=(batch, tokens), device=logits.device,
                       contiguous=True)
    _checks.as_int64(ignore_index, "ignore_index")
    if mask is not None:
        _checks.check_like(mask, "mask", dtype=torch.bool, shape=(batch, tokens), device=logits.device,
                           contiguous=True, of=" (as target)")
    _checks.check_tensor(out, "out", FLOAT_OUT_DTYPES + ZERO_ONE_OUT_DTYPES)
    if out.dtype in ZERO_ONE_OUT_DTYPES and not _zero_one(kind, reduce, tokens):
        raise TypeError(
            f"out may be {out.dtype} only for 0/1 scores (kind='correct' with one token per sample or "
            f"reduce='all'); kind={kind!r}, reduce={reduce!r} needs a float out"
        )
    if out.dim() != 1:
        raise ValueError(f"out must be 1-D (e.g. a row S[i] of a score matrix), got shape {_checks.shape_str(out.shape)}")
    _checks.check_like(out, "out", device=logits.device)
    if out.stride(0) == 0 and out.shape[0] > 1:
        raise ValueError("out's elements must not overlap (an expanded tensor cannot be written)")
    if out_index is None:
        if out.shape[0] != batch:
            raise ValueError(f"out must have {batch} elements (one per sample) without out_index, got {out.shape[0]}")
    else:
        _checks.check_like(out_index, "out_index", dtype=torch.int64, shape=(batch,), device=logits.device,
                           contiguous=True, of=" (one index per sample)")
    _checks.check_disjoint(((out, "out"),), ((logits, "logits"), (target, "target"), (mask, "mask"),
                                             (out_index, "out_index")))


# ---------------------------------------------------------------------------
# The public API: canonical form, then the op.
# ---------------------------------------------------------------------------


def _check_logits(logits):
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dtype not in LOGITS_DTYPES:
        hint = " (convert float64 logits with .float())" if logits.dtype == torch.float64 else ""
        raise TypeError(f"logits must be float32, float16 or bfloat16, got {logits.dtype}{hint}")
    if logits.dim() not in (2, 3):
        raise ValueError(f"logits must be [B, V] or [B, T, V], got shape {tuple(logits.shape)}")
    if logits.shape[-1] < 1:
        raise ValueError("logits' last dimension (V, the number of classes) must be >= 1")


def _check_target(target, logits):
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if not _is_integer_dtype(target.dtype):
        raise TypeError(f"target must be an integer tensor (class indices), got {target.dtype}")
    if target.shape != logits.shape[:-1]:
        raise ValueError(
            f"target must have shape {tuple(logits.shape[:-1])} (logits without V), got {tuple(target.shape)}"
        )
    if target.device != logits.device:
        raise ValueError(f"target must be on {logits.device} (the device of logits), got {target.device}")


def _check_mask(mask, target):
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
    if not (mask.dtype == torch.bool or _is_integer_dtype(mask.dtype)):
        raise TypeError(f"mask must be bool or integer (nonzero = the token counts), got {mask.dtype}")
    if mask.shape != target.shape:
        raise ValueError(f"mask must have the shape of target {tuple(target.shape)}, got {tuple(mask.shape)}")
    if mask.device != target.device:
        raise ValueError(f"mask must be on {target.device} (the device of logits), got {mask.device}")


def _zero_one(kind, reduce, tokens):
    """Whether every score is 0 or 1, so that bool/uint8 can hold it."""
    return kind == "correct" and (reduce == "all" or tokens == 1)


def _check_out(out, out_index, logits, batch, tokens, kind, reduce):
    if out is None:
        if out_index is not None:
            raise ValueError("out_index needs out (the tensor it indexes)")
        return None
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
    allowed = FLOAT_OUT_DTYPES + (ZERO_ONE_OUT_DTYPES if _zero_one(kind, reduce, tokens) else ())
    if out.dtype not in allowed:
        if out.dtype in ZERO_ONE_OUT_DTYPES:
            raise TypeError(
                f"out may be {out.dtype} only for 0/1 scores (kind='correct' with [B, V] logits or "
                f"reduce='all'); kind={kind!r}, reduce={reduce!r} needs a float out"
            )
        raise TypeError(f"out must be one of {allowed}, got {out.dtype}")
    if out.dim() != 1:
        raise ValueError(f"out must be 1-D (e.g. a row S[i] of a score matrix), got shape {tuple(out.shape)}")
    if out.device != logits.device:
        raise ValueError(f"out must be on {logits.device} (the device of logits), got {out.device}")
    if out_index is None:
        if out.shape[0] != batch:
            raise ValueError(f"out must have {batch} elements (one per sample) without out_index, got {out.shape[0]}")
        return None
    if isinstance(out_index, torch.Tensor):
        index = out_index
    else:
        index = _checks.as_tensor(out_index, "out_index", IndexError).to(out.device)
    if not _is_integer_dtype(index.dtype):
        raise TypeError(f"out_index must hold integers (datapoint indices), got {index.dtype}")
    if index.shape != (batch,):
        raise ValueError(f"out_index must have shape ({batch},) (one index per sample), got {tuple(index.shape)}")
    if index.device != out.device:
        raise ValueError(f"out_index must be on {out.device} (the device of out), got {index.device}")
    return index


def sample_scores(
    logits,
    target,
    *,
    kind="correct",
    mask=None,
    ignore_index=-100,
    reduce="mean",
    out=None,
    out_index=None,
    backend=None,
):
    """One score per sample from a model's logits, without a softmax in memory.

    logits [B, V] or [B, T, V] (float32, float16 or bfloat16; the last dimension should
    be contiguous, any strides on B and T, e.g. logits[:, :-1]); target [B] or [B, T]
    integer class indices; mask (optional, same shape as target, bool or 0/1 integers).

    kind: "correct" (argmax == target, exactly as torch.argmax: ties to the lowest
    index, NaN is the maximum), "logprob" (log_softmax at the target, online max and
    sum of exponentials in fp32), "prob" (its exp). Over the valid tokens of a sample
    (mask true and target != ignore_index), reduce: "mean", "sum" or "all" ("correct"
    only: 1 when every valid token is correct, an exact match). With [B, V] logits each
    sample is one token and reduce does not change the score.

    Documented edge cases: a sample with no valid token scores 0 (every kind and
    reduction: the datapoint is then neutral in the archive's niche statistics); a
    row holding a NaN or +inf, or only -inf, gives a NaN logprob/prob (and a NaN
    mean/sum); a -inf logit at the target gives logprob -inf, prob 0; "correct"
    follows torch.argmax on every input. A valid target outside [0, V) is a
    ValueError (targets of masked-out tokens are not checked), raised before out is
    touched.

    Returns float32 [B] when out is None. Otherwise the scores are written into
    out[out_index] (out[:] without out_index), in out's dtype, and out is returned:
    out is 1-D (e.g. the row S[i] of an archive score matrix), float, or bool/uint8
    for 0/1 scores (kind "correct" with one token per sample or reduce "all");
    out_index holds B distinct indices in [0, len(out)) (with repeated indices, which
    score lands is unspecified).
    """
    _check_logits(logits)
    _check_target(target, logits)
    _check_mask(mask, target)
    kind = _checks.choice(kind, "kind", KINDS)
    reduce = _checks.choice(reduce, "reduce", REDUCES)
    if reduce == "all" and kind != "correct":
        raise ValueError("reduce='all' (exact match) needs kind='correct'")
    ignore_index = _checks.as_int64(ignore_index, "ignore_index")
    batch = logits.shape[0]
    tokens = 1 if logits.dim() == 2 else logits.shape[1]
    index = _check_out(out, out_index, logits, batch, tokens, kind, reduce)
    if out is None:
        out = torch.empty(batch, dtype=torch.float32, device=logits.device)
    else:
        _checks.check_no_overlap(out, "out", ((logits, "logits"), (target, "target"), (mask, "mask"), (index, "out_index")))
    route = _backend.route(logits.device, backend)
    if batch == 0:
        return out

    # Canonical form of the op: [B, T, V] logits with a contiguous last dimension,
    # int64 targets, a bool mask, int64 out_index (copies only of the small tensors).
    logits3 = logits.unsqueeze(1) if logits.dim() == 2 else logits
    if logits3.numel() == 0:
        logits3 = logits3.new_empty(logits3.shape)  # contiguous strides (.contiguous() keeps an empty's)
    elif logits3.stride(-1) != 1 and logits3.shape[-1] > 1:
        logits3 = logits3.contiguous()
    target2 = target.reshape(batch, tokens).to(torch.int64).contiguous()
    mask2 = None if mask is None else mask.reshape(batch, tokens).to(torch.bool).contiguous()
    index = None if index is None else index.to(torch.int64).contiguous()

    args = (logits3, target2, mask2, ignore_index, kind, reduce, out, index)
    if route != "op":  # the C++ kernels check the same, in the same words (csrc/scores_args.h)
        check_op_args(*args)
    if route == "torch":
        if not torch.compiler.is_compiling():
            check_targets_and_index(target2, mask2, logits3.shape[-1], ignore_index, index, out.shape[0])
        scores = reference.sample_scores(
            logits3, target2, kind=kind, mask=mask2, ignore_index=ignore_index, reduce=reduce
        )
        with torch.no_grad():
            if index is None:
                out.copy_(scores)
            else:
                out.index_copy_(0, index, scores.to(out.dtype))
    elif route == "triton":
        from .triton import scores as triton_scores

        triton_scores.sample_scores_out(*args)
    else:
        torch.ops.m2n2.sample_scores_out(*args)
    return out
