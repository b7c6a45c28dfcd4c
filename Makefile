# make train   -- install (idempotent), then run the default experiment
# make test    -- install (idempotent), then lint (ruff: pyflakes, pycodestyle, import order) and the whole test suite
# make tables  -- rebuild the paper's tables and figures from logged runs (RUNS=dir)
# make bench   -- run the benchmarks in benchmarks/ at their default sizes (about 10 min on a 2-core CPU)
# make bench-quick -- every benchmark path at tiny sizes (about 2-3 min on a 2-core CPU; numbers not to quote)
#                 BENCH_ARGS='--device cuda' (or any epoch_time.py option) is passed to epoch_time.py
# make wheelhouse -- wheels of every run-time dependency but torch / torchvision into wheelhouse/ (WHEELHOUSE_ARGS)
# make gpu-check  -- prove and measure the GPU path (<= 8 min on one H100/H200); ARGS=--dry-run: tiny, on CPU
# make gpu-science -- the real-data GPU grids (<= 10 min on one H200); ARGS=--dry-run: tiny, on CPU
#   The last three never install: they run with GPU_PY (.venv's python if it exists, else python3), so they work
#   from a source tree with the machine's own torch: PYTHONPATH=<deps>:. make gpu-check (docs/gpu.md).

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
WHEELHOUSE_ARGS ?=
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
ARGS ?=
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: install data train test bench bench-quick clean-venv wheelhouse gpu-check gpu-science

install: $(VENV)/.installed data

$(VENV)/.installed: pyproject.toml constraints.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $@

# Fashion-MNIST ships as the Debian package dataset-fashion-mnist.
data:
	@if [ -f $(FMNIST) ] || [ -n "$$SPARSE_EXP_DATA" ]; then \
	  true; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian package dataset-fashion-mnist"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
	  echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist', or set SPARSE_EXP_DATA" \
	       "to a directory holding train-images-idx3-ubyte.gz and the other three files."; \
	fi

train: install
	$(PY) -m sparse_exp.train $(ARGS)

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/step_time.py --steps 10 --repeats 2
	$(PY) benchmarks/epoch_time.py $(BENCH_ARGS)
	$(PY) benchmarks/data_scaling.py

bench-quick: install
	$(PY) benchmarks/step_time.py --steps 3 --repeats 1 --warmup 1
	$(PY) benchmarks/epoch_time.py --quick $(BENCH_ARGS)
	$(PY) benchmarks/data_scaling.py --quick

clean-venv:
	rm -rf $(VENV)

wheelhouse:
	$(GPU_PY) scripts/wheelhouse.py $(WHEELHOUSE_ARGS)

gpu-check:
	$(GPU_PY) benchmarks/gpu_check.py $(ARGS)

gpu-science:
	$(GPU_PY) benchmarks/gpu_science.py $(ARGS)

# make tables RUNS=runs OUT=results  (or SOURCE=wandb PROJECT=entity/project)
RUNS ?= runs
OUT ?= results
SOURCE ?= local
PROJECT ?=

.PHONY: tables
tables: install
	$(PY) -m sparse_exp.analysis --source $(SOURCE) --runs $(RUNS) --out $(OUT) $(if $(PROJECT),--project $(PROJECT)) --compare-paper
