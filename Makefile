# Everything a fresh machine needs: `make main` (set up, build, run the main job)
# and `make test` (set up, build, run every test). The virtual environment lives
# in .venv at the repository root.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CUDA 13.0 build of torch (on this kind of machine it installs from local disk),
# so that the CUDA kernels compile even where no GPU is present.
TORCH_SPEC ?= torch==2.14.1
export CUDA_HOME ?= $(wildcard /usr/local/cuda)
export MAX_JOBS ?= 2

.PHONY: setup build main test test-fast bench clean cuda-host-check

$(VENV)/.installed: requirements-dev.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)" -r requirements-dev.txt
	touch $@

setup: build

# Incremental (ninja) in-place build of m2n2_kernels._C; a .pth file puts the
# repository root (m2n2_kernels) and python/ (the m2n2 engine) on the venv's path,
# like an editable install, and .venv/bin/m2n2 is the command line.
build: $(VENV)/.installed
	$(PY) setup.py -q build_ext --inplace
	$(PY) -c "import site, os; open(os.path.join(site.getsitepackages()[0], 'm2n2_kernels_dev.pth'), 'w').write(os.getcwd() + '\n' + os.path.join(os.getcwd(), 'python') + '\n')"
	printf '#!/bin/sh\nexec "%s" -m m2n2 "$$@"\n' "$(abspath $(PY))" > $(VENV)/bin/m2n2 && chmod +x $(VENV)/bin/m2n2
	$(PY) -c "import m2n2_kernels, json; print(json.dumps(m2n2_kernels.build_info()))"

# The main job: the paper's digits experiment (M2N2 from scratch, 50,000 forward
# passes, one seed): prints the results table and the paths of results.json,
# lineage.csv and accuracy.png (in runs/digits-<time>/).
main: build
	$(PY) -m m2n2 evolve --task digits --seeds 1

test: build
	$(PY) -m pytest -q tests

bench: build
	$(PY) benchmarks/run_all.py

# The CUDA kernels' per-thread logic run on the CPU (no GPU needed): every
# tests/native/<family>_cuda_host_check.cu, linked with the torch-free CPU kernels
# (csrc/cpu/*_kernels.cpp, and the files they call into) it may compare with byte for byte (crossover), or checked
# against the formulas in fp64 (niches).
NVCC ?= $(CUDA_HOME)/bin/nvcc
HOST_CHECKS := $(wildcard tests/native/*_cuda_host_check.cu)
HOST_CPU_SOURCES := $(wildcard csrc/cpu/*_kernels.cpp) csrc/cpu/isa_clones.cpp csrc/cpu/della_ranks.cpp
HOST_FLAGS := -std=c++17 -O2 -Icsrc/include -Icsrc
cuda-host-check:
	mkdir -p build/native
	for f in $(HOST_CPU_SOURCES); do \
		$(CXX) $(HOST_FLAGS) -ffp-contract=off -fopenmp -c $$f -o build/native/$$(basename $$f .cpp).o || exit 1; done
	for f in $(HOST_CHECKS); do exe=build/native/$$(basename $$f .cu); \
		$(NVCC) $(HOST_FLAGS) -arch=sm_80 --fmad=false -Werror all-warnings \
			-Xcompiler=-ffp-contract=off,-fopenmp,-Wall,-Werror $$f build/native/*.o -o $$exe -lgomp \
		&& ./$$exe || exit 1; done

clean:
	rm -rf build m2n2_kernels/*.so
