"""Shared test setup.

Without a GPU the Triton kernels run on CPU tensors in Triton's interpreter, which
must be switched on before any kernel is defined, so it is set here, before the
test modules import m2n2_kernels.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import m2n2_kernels  # noqa: E402
from m2n2_kernels import _backend  # noqa: E402

HAS_GPU = torch.cuda.is_available()
_NO_GPU = pytest.mark.skip(reason="no CUDA GPU on this machine")
# CUDA cases are always generated, and reported as skipped where no GPU exists.
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=() if HAS_GPU else _NO_GPU)]


def available_backends(device):
    """Backends that can run on tensors of `device` in this environment."""
    names = ["torch"]
    if device == "cpu" or _backend.cuda_compiled():
        names.append("cpp")
    if _backend.triton_importable() and (device == "cuda" or _backend.triton_interpreting()):
        names.append("triton")
    return names


def device_backend_params(*, with_torch=True):
    """(device, backend) pairs. with_torch=False leaves out the torch backend, for the
    tests whose oracle is reference.py: the torch backend is reference.py, so there it
    would be compared with itself (tests/test_semantics.py checks it against values
    worked out independently)."""
    params = [pytest.param("cpu", b, id=f"cpu-{b}") for b in available_backends("cpu") if with_torch or b != "torch"]
    for b in ("cpp", "triton") + (("torch",) if with_torch else ()):
        marks = () if HAS_GPU else _NO_GPU
        if HAS_GPU and b not in available_backends("cuda"):
            marks = pytest.mark.skip(reason=f"backend {b} not available for CUDA here")
        params.append(pytest.param("cuda", b, id=f"cuda-{b}", marks=marks))
    return params


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    # A developer's M2N2_BACKEND must not silently change what a test exercises.
    monkeypatch.delenv("M2N2_BACKEND", raising=False)


def pytest_report_header(config):
    return f"m2n2_kernels build_info: {m2n2_kernels.build_info()}"


@pytest.fixture
def one_torch_thread():
    """torch at one intra-op thread for the test (restored after): for modules of small
    tensors, where on a shared 2-core machine the threads only add barriers. Tests that
    set thread counts themselves still can."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_native_check(tmp_path, name, flags=()):
    """Compiles tests/native/<name>.cpp (torch-free code of csrc/ against its own
    oracle) with the C++ compiler here and runs it: (returncode, stdout). Skips where
    there is no compiler."""
    import shutil
    import subprocess

    cxx = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    exe = tmp_path / name
    subprocess.run([cxx, "-std=c++17", "-O2", "-ffp-contract=off", "-Wall", "-Werror", *flags,
                    "-I", os.path.join(root, "csrc", "include"), "-I", os.path.join(root, "csrc"),
                    os.path.join(root, "tests", "native", f"{name}.cpp"), "-o", str(exe)], check=True)
    run = subprocess.run([str(exe)], capture_output=True, text=True)
    return run.returncode, run.stdout


# What a compile check's script starts with: Triton, and compile_ptx(fn, pointers,
# consts), the PTX of a @triton.jit kernel for sm_90 (no GPU needed) with the pointer
# types of its first arguments (the others int64) and its constexprs, compiled as its
# launcher does (the WARPS of its module, no FMA contraction).
_TRITON_COMPILE_PRELUDE = r"""
import sys
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

def compile_ptx(fn, pointers, consts):
    sig = {a: (pointers[i] if i < len(pointers) else "i64") for i, a in enumerate(fn.arg_names) if a not in consts}
    sig.update({a: "constexpr" for a in consts})
    warps = sys.modules[fn.fn.__module__].WARPS
    return triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": warps, "enable_fp_fusion": False}).asm["ptx"]
"""


def run_triton_compile_check(script):
    """Runs `script` (Python that compiles Triton kernels for a GPU target with
    compile_ptx, defined before it, and prints "ok") in a fresh interpreter without
    TRITON_INTERPRET; skips where Triton finds no CUDA toolchain, else asserts it
    printed "ok"."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    run = subprocess.run([sys.executable, "-c", _TRITON_COMPILE_PRELUDE + script], env=env, cwd=root,
                         capture_output=True, text=True, timeout=600)
    if run.returncode and "ptxas" in run.stderr and "assert" not in run.stderr:
        pytest.skip(f"no CUDA toolchain for Triton here: {run.stderr.strip().splitlines()[-1]}")
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-3000:]
