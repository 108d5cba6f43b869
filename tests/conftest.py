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

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def available_backends(device):
    """Backends that can run on tensors of `device` in this environment."""
    names = ["torch"]
    if device == "cpu" or _backend.cuda_compiled():
        names.append("cpp")
    if _backend.triton_importable() and (device == "cuda" or _backend.triton_interpreting()):
        names.append("triton")
    return names


def device_backend_params():
    return [pytest.param(d, b, id=f"{d}-{b}") for d in DEVICES for b in available_backends(d)]


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    # A developer's M2N2_BACKEND must not silently change what a test exercises.
    monkeypatch.delenv("M2N2_BACKEND", raising=False)


def pytest_report_header(config):
    return f"m2n2_kernels build_info: {m2n2_kernels.build_info()}"
