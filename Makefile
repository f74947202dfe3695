# Everything a fresh Debian machine needs, as root: `make test` and `make demo`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
APT_DATA := dataset-fashion-mnist
# iproute2: `ip netns` and veth pairs for the two-node test cluster (launch/testing/slurm_cluster.sh).
APT_SLURM := slurmctld slurmd slurm-client munge iproute2
JOBS ?= 2
# `make demo EXECUTOR=slurm` submits the chain to a SLURM cluster instead of running it here.
EXECUTOR ?= local

.PHONY: venv apt-data apt-slurm test demo lint format bench clean

$(STAMP): setup.py constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt torch torchvision
	# compat mode: a .pth path entry, so packages added after install import too
	$(PIP) install --quiet -c constraints.txt --config-settings editable_mode=compat -e '.[dev,coco]'
	touch $(STAMP)

venv: $(STAMP)

# Installs Debian packages only when missing (dpkg -s), so reruns are instant.
apt-data:
	@bash scripts/apt_ensure.sh $(APT_DATA)

apt-slurm:
	@bash scripts/apt_ensure.sh $(APT_SLURM)

test: venv apt-data apt-slurm
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -n $(JOBS) --durations=15 tests

demo: venv apt-data
	$(PY) -m launch pipeline --config configs/pipeline/fashion_tiny.yaml --executor $(EXECUTOR) \
		--output-dir runs/demo
	PYTHONPATH=. $(PY) benchmarks/record_pipeline.py --run runs/demo  # benchmarks/results/demo.json

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) runs .pytest_cache
