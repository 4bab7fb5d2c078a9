# The two commands of the README. Both set up .venv themselves on a fresh machine.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
# The dev setup pins torch 2.13.0, the CPU wheel the project's build machines keep on disk (a looser pin would
# fetch a multi-GB CUDA build); users get any torch>=2.5 from pyproject.toml.
TORCH   := torch==2.13.0
STAMP   := .venv/.fastprm-installed

.PHONY: test demo lint bench install clean

.venv/bin/python:
	python3 -m venv .venv
	$(PIP) install -q --upgrade pip

$(STAMP): .venv/bin/python pyproject.toml CMakeLists.txt $(wildcard csrc/*) $(shell find python kernels -name '*.py')
	$(PIP) install -q $(TORCH) scikit-build-core pybind11 ninja cmake
	$(PIP) install -q --no-build-isolation ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

lint: $(STAMP)
	.venv/bin/ruff check python tests benchmarks kernels
	.venv/bin/ruff format --check python tests benchmarks kernels

bench: $(STAMP)
	$(PY) benchmarks/bench_ops.py

demo: $(STAMP)
	$(PY) -m fastprm demo

clean:
	rm -rf build .venv
