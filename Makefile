# `make test` and `make demo` set everything up on a fresh clone: the virtualenv, torch
# (the 2.14.1 / 0.29.1 pair whose files this machine's pip finds locally), the package with
# its test extras and, for the demo, Debian's Fashion-MNIST package where apt is available.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: test demo bench install clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

$(FASHION_MNIST):
	@if command -v apt-get >/dev/null 2>&1; then \
		(apt-get install -y -q dataset-fashion-mnist || \
		 (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)) >/dev/null; \
	else \
		echo "Fashion-MNIST is missing: install Debian's dataset-fashion-mnist or pass --data DIR"; \
	fi

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup

demo: $(STAMP) $(FASHION_MNIST)
	$(PY) -m prunable_nn demo

bench: $(STAMP) $(FASHION_MNIST)
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/import_time.py --out benchmarks/results/import_time.md
	$(PY) benchmarks/memory.py --out benchmarks/results/memory.md
	$(PY) benchmarks/convert.py
	$(PY) benchmarks/coverage.py
	$(PY) benchmarks/latency.py
	$(PY) benchmarks/latency.py --round-to 8 --out benchmarks/results/latency_round8.md
	$(PY) benchmarks/oracle_correlation.py
	$(PY) benchmarks/criteria_curves.py --threads 1 --seeds 4 --jobs 2
	$(PY) benchmarks/criteria_curves.py --threads 1 --seeds 4 --jobs 2 --ranking flops --out benchmarks/results/criteria_curves_flops.md
	$(PY) benchmarks/criteria_curves.py --threads 1 --seeds 4 --jobs 2 --target 0.5 --total-steps 720 --out benchmarks/results/criteria_curves_equal_training.md
	$(PY) benchmarks/criteria_curves.py --threads 1 --seeds 4 --jobs 2 --total-steps 900 --only Taylor --only random --out benchmarks/results/criteria_curves_equal_training_25.md
	$(PY) benchmarks/criteria_curves.py --threads 1 --seeds 4 --jobs 2 --flops-per-round 0.04 --total-steps 900 --only Taylor --only random --only "activation std" --out benchmarks/results/criteria_curves_flops_per_round.md
	$(PY) benchmarks/criteria_curves.py --threads 1 --seeds 4 --jobs 2 --flops-per-round 0.04 --total-steps 900 --only "activation mean" --only APoZ --only "minimum weight" --out benchmarks/results/criteria_curves_flops_per_round_others.md
	$(PY) benchmarks/vs_torch_pruning.py
	$(PY) benchmarks/vs_torch_pruning.py --round-to 8 --out benchmarks/results/vs_torch_pruning_round8.md

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
