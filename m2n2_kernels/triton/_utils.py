"""Helpers every Triton kernel module shares (device helpers and host glue)."""
import contextlib

import torch
import triton
import triton.language as tl

# CUDA limits grid dimensions y and z to 65535.
MAX_GRID_Y = 65535


@triton.jit
def i64(x):
    # Scalar int arguments arrive as i32 or i64 (or constexpr 1): widen once. The
    # addition repairs the Triton 3.8 interpreter, which holds an int argument in
    # [2**31, 2**32) as uint32 data under an int64 type, so that a later >> would
    # shift a negative int32 (on the GPU it folds away).
    return tl.cast(x, tl.int64) + tl.full([], 0, tl.int64)


def on_device(device):
    """Triton launches on the current CUDA device: make it the tensors' one."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def interpreting(device) -> bool:
    """Kernels launched on CPU tensors run in the Triton interpreter (TRITON_INTERPRET=1,
    which m2n2_kernels._backend requires for them): programs run one after another."""
    return torch.device(device).type == "cpu"
