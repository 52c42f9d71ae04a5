# Two commands for a fresh machine (only Python 3.11 needed):
#   make demo   - create .venv if missing, install, run the whole pipeline on the bundled sample
#   make test   - create .venv if missing, install, run the test suite
# Installation order matters: torch 2.13.0 first, then everything else constrained to it, so pip
# never swaps in a CUDA torch (GBs of nvidia wheels) on a CPU machine. On a CPU machine the
# registry's CUDA torchvision is made importable by scripts/torchvision_cpu_guard.py (reversible:
# `make torchvision-revert`); a GPU machine (nvidia-smi works, or GPU=1) leaves torchvision alone.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
GPU ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1 || echo 0)
STAMP := $(VENV)/.swiftpack-installed-gpu$(GPU)
PYTEST_ARGS ?=
# Two pytest workers, one whole test file each at a time (--dist loadfile: a file's module-scoped
# training runs are made once, on one worker), files handed out in collection order
# (--no-loadscope-reorder: tests/conftest.py puts the ~2-minute end-to-end file first, so it does
# not start last), one thread per process (two workers x two OpenMP threads on two cores spend
# their time spinning). PYTEST_WORKERS=0: one process, as plain pytest.
PYTEST_WORKERS ?= 2

.PHONY: install demo test bench torchvision-revert clean-venv

$(STAMP): pyproject.toml requirements/constraints-cpu.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required (found %d.%d); run: make PYTHON=python3.11 ..." % sys.version_info[:2])'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check torch==2.13.0
ifeq ($(GPU),1)
	$(PIP) install -q --disable-pip-version-check -e '.[test,bench]'
else
	$(PIP) install -q --disable-pip-version-check -c requirements/constraints-cpu.txt -e '.[test,bench]'
	$(PY) scripts/torchvision_cpu_guard.py apply
endif
	@rm -f $(VENV)/.swiftpack-installed-*
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/run_demo.py

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

torchvision-revert:
	$(PY) scripts/torchvision_cpu_guard.py revert

clean-venv:
	rm -rf $(VENV)
