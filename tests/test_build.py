"""What the build produced, and that the package imports on this machine."""
import os

import pytest
import torch

import m2n2_kernels as mk


# Ops without a CUDA C++ kernel yet.
NO_CUDA_KERNEL_YET: set = set()


def kernel_ops():
    """Every m2n2 operator that has kernels (all but build_info)."""
    names = torch._C._dispatch_get_all_op_names()
    return sorted(n for n in names if n.startswith("m2n2::") and n != "m2n2::build_info")


def test_build_info_describes_the_build():
    info = mk.build_info()
    assert info["cpu"] is True
    assert info["torch"] == torch.__version__
    assert info["openmp"] is True and info["omp_max_threads"] >= 1
    assert info["cpu_isa"]
    assert isinstance(info["cuda"], bool)
    if info["cuda"]:
        assert info["cuda_archs"] and info["cuda_version"]


@pytest.mark.skipif(os.environ.get("M2N2_EXPECT_CUDA_BUILD") != "1", reason="only where CI forces the CUDA build")
def test_cuda_kernels_were_compiled():
    info = mk.build_info()
    assert info["cuda"], "M2N2_FORCE_CUDA=1 build without CUDA kernels"
    assert "9.0" in info["cuda_archs"] or os.environ.get("TORCH_CUDA_ARCH_LIST")
    # every op has a CUDA kernel registered with the dispatcher, except those named
    # below, whose CUDA kernel is still to be written (the Python API runs the torch
    # reference on their CUDA tensors); an op that gains one must leave the list
    assert len(kernel_ops()) >= 3
    for op in kernel_ops():
        has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA")
        assert has_cuda != (op in NO_CUDA_KERNEL_YET), op


def test_every_op_has_a_cpu_kernel_and_runs_on_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    for op in kernel_ops():
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CPU"), op
    with FakeTensorMode():
        a, b, out = torch.empty(8), torch.empty(8), torch.empty(8)
        torch.ops.m2n2.split_interpolate_out([a], [b], [out], 3, 0.5, "slerp", "global", 0.0, 0, 0, 0)
        torch.ops.m2n2.split_interpolate_([a], [b], 3, 0.5, "lerp", "global", 0.0, 0, 0, 0, True)
        archive, idx = torch.empty(2, 8), torch.zeros(1, dtype=torch.int64)
        w = torch.zeros(1, dtype=torch.float64)
        torch.ops.m2n2.crossover_batch_out(archive, idx, idx, idx, w, torch.empty(1, 8), "lerp", "global", 0.0, 0)
