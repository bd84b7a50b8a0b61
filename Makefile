# Two entry points do all the set-up on a fresh machine: `make demo` and `make test`.
# Each creates .venv when it is missing and installs what it needs, once.
# The venv sees the system's packages, so a machine that already has torch (a GPU
# machine with a CUDA build) keeps it; where no torch is importable, the CPU build
# torch==2.13.0 is installed instead of a multi-GB CUDA build.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.memmodel-installed
PLOT_STAMP := $(VENV)/.memmodel-plot
# `make demo DEMO=long`: trains longer and evaluates at 512K and 1M tokens too
DEMO ?=
DEMO_OUT ?= results

.PHONY: demo test test-fast bench bench-cpu throughput lint clean

$(PY):
	$(PYTHON) -m venv --system-site-packages $(VENV)

$(STAMP): $(PY) setup.py pyproject.toml
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "torch==2.13.0"
	$(PY) -m pip install -e ".[test]"
	touch $(STAMP)

$(PLOT_STAMP): $(STAMP)
	$(PY) -m pip install -e ".[plot]"
	touch $(PLOT_STAMP)

demo: $(PLOT_STAMP)
	$(PY) -m memmodel.training.demo --out $(DEMO_OUT) $(if $(filter long,$(DEMO)),--long,)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# pytest-benchmark suites of the CPU hot paths (benchmarks/test_bench_hotpaths.py; `make
# test` never collects them): each run is saved under .benchmarks/, and
# `make bench BENCH_ARGS=--benchmark-compare` compares it with the last saved one.
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-autosave -p no:cacheprovider $(BENCH_ARGS)

# long-sequence throughput of every variant beside SSM only and a Transformer
# (`make throughput THROUGHPUT_ARGS="--lengths 1K,4K --repeats 1"` for a quick look)
THROUGHPUT_ARGS ?=
throughput: $(PLOT_STAMP)
	$(PY) benchmarks/bench_throughput.py --out $(DEMO_OUT)/throughput $(THROUGHPUT_ARGS)

bench-cpu: $(STAMP)
	$(PY) benchmarks/bench_selective_scan_cpu.py

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
