"""Build of m2n2_kernels._C: C++/OpenMP CPU kernels, plus CUDA kernels when possible.

Build switches (environment variables):
  M2N2_FORCE_CUDA=1      compile the CUDA kernels or fail (CI, and GPU-less build hosts)
  M2N2_NO_CUDA=1         never compile CUDA (fast CPU-only iteration)
  TORCH_CUDA_ARCH_LIST   GPU architectures, default "8.0;8.6;9.0+PTX" (Ampere, Hopper,
                         PTX for newer GPUs)
  MAX_JOBS               parallel compile jobs for ninja
Without a switch, CUDA is compiled when nvcc is found and torch is a CUDA build.
"""
import glob
import os

from setuptools import find_packages, setup

# An nvcc found on PATH may be a wrapper script outside the toolkit; prefer the
# toolkit's standard location (read by cpp_extension when it is imported).
if "CUDA_HOME" not in os.environ and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

from torch.utils import cpp_extension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;8.6;9.0+PTX"


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def want_cuda():
    if _flag("M2N2_NO_CUDA"):
        return False
    import torch

    have = cpp_extension.CUDA_HOME is not None and torch.version.cuda is not None
    if _flag("M2N2_FORCE_CUDA"):
        if not have:
            raise RuntimeError(
                "M2N2_FORCE_CUDA=1 but no CUDA toolkit (set CUDA_HOME) or torch is a CPU build"
            )
        return True
    return have


def extension():
    with_cuda = want_cuda() and bool(glob.glob("csrc/cuda/*.cu"))
    sources = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    define_macros = []
    cxx = [
        "-O3",
        "-fopenmp",
        # Element maths must round the same on every backend: no FMA contraction.
        "-ffp-contract=off",
        # Lets sqrt vectorise; the kernels never rely on errno.
        "-fno-math-errno",
        "-Wall",
        "-Werror",
        "-Wno-unknown-pragmas",
    ]
    extra = {"cxx": cxx}
    if with_cuda:
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_ARCHS
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs  # read by cpp_extension for -gencode
        import torch

        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        define_macros += [
            ("M2N2_WITH_CUDA", None),
            ("M2N2_CUDA_ARCHS", '"%s"' % archs),
            ("M2N2_CUDA_VERSION", '"%s"' % torch.version.cuda),
        ]
        extra["nvcc"] = [
            "-O3",
            "--fmad=false",  # same rounding as the CPU code and the torch reference
            "-Werror=all-warnings",
            "-Xcompiler=-Wall,-Werror,-Wno-unknown-pragmas",
        ]
        ext_type = cpp_extension.CUDAExtension
    else:
        ext_type = cpp_extension.CppExtension
    return ext_type(
        name="m2n2_kernels._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc/include"), os.path.join(ROOT, "csrc")],
        define_macros=define_macros,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
    )


setup(
    # Two import packages: the kernels (m2n2_kernels/, at the root) and the engine,
    # which lives in python/m2n2 and imports the kernels (never the other way).
    packages=find_packages(include=["m2n2_kernels", "m2n2_kernels.*"])
    + ["m2n2"]
    + ["m2n2." + p for p in find_packages("python/m2n2")],
    package_dir={"m2n2": "python/m2n2"},
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
