"""Helpers every Triton kernel module shares (device helpers and host glue)."""
import contextlib
import struct

import torch
import triton
import triton.language as tl

# CUDA limits grid dimensions y and z to 65535.
MAX_GRID_Y = 65535


def double_bits(x: float) -> int:
    """The bits of the fp64 value x as a signed int64: Triton passes Python floats
    as fp32, so fp64 scalars travel as bits and are bitcast back in the kernel
    (f64_from_bits)."""
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def compute_dtype(dtype):
    """The compute type of a storage dtype: fp64 for fp64, else fp32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def launch_opts(warps):
    """Launch options of every kernel: interpreted runs ignore them; compiled runs
    must not contract a * b + c into an FMA (the C++ kernels round each step)."""
    return {"num_warps": warps, "enable_fp_fusion": False}


@triton.jit
def f64_from_bits(bits):
    return tl.cast(tl.cast(bits, tl.int64), tl.float64, bitcast=True)


@triton.jit
def round_to_bf16(x):
    """fp32 -> bf16, round to nearest even, on the bits: the Triton interpreter
    truncates when it casts to bf16 (on the GPU this is what cvt.rn does)."""
    bits = x.to(tl.uint32, bitcast=True)
    rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
    is_nan = (bits & 0x7FFFFFFF) > 0x7F800000
    hi = tl.where(is_nan, (bits >> 16) | 0x40, rounded)
    return hi.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def to_storage(x, DT: tl.constexpr):
    """x (compute type) rounded to the storage type DT."""
    if DT == tl.bfloat16:
        return round_to_bf16(x)
    else:
        return x.to(DT)


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
