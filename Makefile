# sslkit: `make demo` (pretrain + evaluate on Fashion-MNIST, CPU) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.sslkit-installed
# TORCH=cpu: take torch and torchvision from PyTorch's CPU-only wheel index first (a few
# hundred MB instead of the CUDA build's ~6 GB); pip then keeps them. On a machine that
# already has a .venv, remove it first (rm -rf .venv) to switch builds.
TORCH  ?=
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: setup demo test test-slow clean-demo

setup: $(STAMP)

# Idempotent: the venv is created when missing and re-installed only when pyproject changes.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
ifeq ($(TORCH),cpu)
	$(BIN)/python -m pip install -q torch torchvision --index-url $(TORCH_CPU_INDEX)
endif
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: setup
	$(BIN)/python run_pretrain.py --config configs/demo.yaml --overwrite
	$(BIN)/python run_lincls.py --checkpoint runs/demo/checkpoints/last.pt

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

clean-demo:
	rm -rf runs/demo
