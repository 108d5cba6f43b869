"""Backend choice shared by every op.

CPU tensors -> "cpp"; CUDA tensors -> "cpp" (CUDA C++) when it was compiled, else
"triton". The `backend=` argument, then the M2N2_BACKEND environment variable,
override the automatic choice.
"""
import functools
import json
import os

import torch

BACKENDS = ("cpp", "triton", "torch")


@functools.lru_cache(maxsize=None)
def cuda_compiled() -> bool:
    return bool(json.loads(torch.ops.m2n2.build_info())["cuda"])


@functools.lru_cache(maxsize=None)
def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def choose(device: torch.device, backend=None) -> str:
    """The backend that runs an op on tensors of `device`; errors name `backend`."""
    source = "backend"
    if backend is None or backend == "auto":
        env = os.environ.get("M2N2_BACKEND", "")
        if env and env != "auto":
            backend, source = env, "M2N2_BACKEND"
        else:
            backend = None
    if backend is None:
        if device.type == "cuda":
            return "cpp" if cuda_compiled() else "triton"
        return "cpp"
    if backend not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS} or 'auto', got {backend!r}")
    if backend == "cpp" and device.type == "cuda" and not cuda_compiled():
        raise RuntimeError(
            f"{source}='cpp' on a CUDA tensor, but this build has no CUDA kernels "
            "(rebuild with M2N2_FORCE_CUDA=1, or use backend='triton')"
        )
    if backend == "cpp" and device.type not in ("cpu", "cuda"):
        raise ValueError(f"{source}='cpp' supports cpu and cuda tensors, got {device.type}")
    if backend == "triton":
        if not triton_importable():
            raise RuntimeError(f"{source}='triton' but triton is not installed")
        if device.type == "cpu" and not triton_interpreting():
            raise ValueError(
                f"{source}='triton' on CPU tensors needs TRITON_INTERPRET=1 "
                "(set before m2n2_kernels is imported)"
            )
    return backend


def route(device: torch.device, backend=None) -> str:
    """How an op reaches its kernels: "torch" (reference.py), "triton" (the Triton
    launcher called directly: CPU tensors under the interpreter, or Triton asked for
    where CUDA C++ exists), or "op" (torch.ops.m2n2.*: the C++ kernels, or on a
    build without CUDA C++ the Triton kernels that ops.py registers as the op's CUDA
    implementation, so that torch.compile sees one op)."""
    name = choose(device, backend)
    if name == "cpp" or (name == "triton" and device.type == "cuda" and not cuda_compiled()):
        return "op"
    return name
