# medsynth_nb: two commands do all the set-up on a fresh machine.
#   make test   creates .venv when missing, installs, checks the export is in sync, runs nbdev_test, then pytest
#   make tour   same set-up, then runs every lesson at smoke size and renders tour/ (HTML + a results page)
#   make docs   same set-up, then builds the browsable site _site/ from the committed notebooks (not executed; Sphinx +
#               myst-nb, MathJax from npm copied in: works offline); open _site/index.html. tests/test_site.py checks it
#   make browser  installs Debian's chromium and npm when missing (apt-get; the site's test needs them; pytest runs it)
#   make lessons  executes the lessons in place and keeps their outputs (NB="nbs/12_lowdose_gan.ipynb" for some)
# TORCH picks the torch build installed first, e.g. make test TORCH=torch==2.13.0 (a local CPU wheel) or
#   make test TORCH="torch --index-url https://download.pytorch.org/whl/cpu" on a laptop without a GPU.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch
NBDEV_FLAGS ?=
TOUR_FLAGS ?=
LAB_FLAGS ?=
N_WORKERS ?= 2
# nbdev_test runs N_WORKERS notebooks at once: one BLAS/OpenMP thread each avoids oversubscribing the cores.
BIN := $(VENV)/bin
STAMP := $(VENV)/.medsynth-installed

.PHONY: test tour install sync nbtest pytest bench gpu-check readme data data-check clean-venv assignments grade lab lessons docs browser
SUBMISSIONS ?=
SCORES ?= scores.csv
.DEFAULT_GOAL := test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python setup.py settings.ini
	$(BIN)/python -m pip install --upgrade pip setuptools wheel
	$(BIN)/python -m pip install $(TORCH)
	$(BIN)/python -m pip install -e ".[dev]"
	# fastMRI's own reader, masks and transforms, for the cross-checks of lesson 01 and tests/test_fastmri.py. Its
	# metadata asks for pytorch-lightning and torchvision, which would replace the torch installed above, so it goes in
	# without dependencies; pandas is the one module fastmri.data imports that the dev install lacks.
	$(BIN)/python -m pip install pandas
	$(BIN)/python -m pip install --no-deps fastmri==0.3.0
	touch $(STAMP)

install: $(STAMP)

# Fails when nbdev_export or nbdev_clean would change a file: the library and the notebooks must agree.
sync: $(STAMP)
	$(BIN)/python tests/check_sync.py

# One nbdev_test process per notebook, N_WORKERS at a time. nbdev_test's own workers run several notebooks each in one
# process, and a lesson's exported cells re-register its experiments from __main__ (12_lowdose_gan's LowDoseConfig):
# the next notebook in that process got those classes from the registry and failed an isinstance check (62, in CI).
nbtest: $(STAMP)
	ls nbs/*.ipynb | grep -v '^nbs/_' | PATH=$(CURDIR)/$(BIN):$$PATH OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} \
	  xargs -P $(N_WORKERS) -I NB $(BIN)/nbdev_test --path NB --timing $(if $(NBDEV_FLAGS),--flags "$(NBDEV_FLAGS)")

pytest: $(STAMP) browser
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest tests -q -p no:cacheprovider

test: sync nbtest pytest

tour: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python tools/site.py tour --out tour --flags "$(TOUR_FLAGS)"

# Execute the lessons in place and commit their outputs: smoke-size cells plus the `#| slow` demo cells (these reuse
# finished runs under runs/, so a re-run that changes nothing is fast); `#| gpu` cells are labelled "not run here"
# unless a CUDA device is present. NB="nbs/12_lowdose_gan.ipynb nbs/13_patch_invariance.ipynb" picks notebooks.
NB ?=
lessons: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python tools/lessons.py run $(NB)

# The static site of the lessons (tools/docs.py): _site/index.html. DOCS_OUT=folder builds elsewhere.
DOCS_OUT ?= _site
docs: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python tools/docs.py build --out $(DOCS_OUT)

# Debian's chromium for the site's browser test (tests/test_site.py); as root directly, otherwise through sudo.
# The site's build also needs npm (MathJax comes from the npm registry): installed the same way when missing.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y chromium || { $$SUDO apt-get update && $$SUDO apt-get install -y chromium; }; }
	@command -v npm >/dev/null 2>&1 || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y npm || { $$SUDO apt-get update && $$SUDO apt-get install -y npm; }; }

# JupyterLab on the lessons (nbs/); as root (a container) it adds --allow-root. LAB_FLAGS="--no-browser --port 8890"
lab: $(STAMP)
	cd nbs && PATH=$(CURDIR)/$(BIN):$$PATH $(CURDIR)/$(BIN)/jupyter lab $$([ "$$(id -u)" = 0 ] && echo --allow-root) $(LAB_FLAGS)

bench: $(STAMP)
	for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

# GPU readiness (issue 21; tools/gpu_check.py): every experiment's paper preset, bit-exact resume on CUDA, the lessons'
# `#| gpu` cells and the benchmarks on one GPU, as a markdown table in $(GPU_CHECK_OUT) (about 8 minutes; exit 1 when a
# row failed). GPU_CHECK_FLAGS=--dry-run runs the same code paths on the CPU at smoke size (under 2 minutes).
GPU_CHECK_OUT ?= gpu_check.md
GPU_CHECK_FLAGS ?=
gpu-check: $(STAMP)
	PYTHON=$(BIN)/python bash tools/gpu_check.sh --out $(GPU_CHECK_OUT) $(GPU_CHECK_FLAGS)

clean-venv:
	rm -rf $(VENV)

readme: $(STAMP)
	$(BIN)/python tools/site.py readme

# Rebuild data_samples/ from the simulator (bit-exact; the manifest's sha256 is over decoded arrays).
data: $(STAMP)
	$(BIN)/python -m medsynth_nb.phantom

data-check: $(STAMP)
	$(BIN)/python -m medsynth_nb.phantom --check

# Student versions of the course assignments (nbgrader generate_assignment) -> assignments/release/<name>/<name>.ipynb
assignments: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python assignments/build.py

# Autograde a folder of submissions (<student>/<name>.ipynb): writes $(SCORES) and its _totals.csv
grade: $(STAMP)
	@test -n "$(SUBMISSIONS)" || { echo "usage: make grade SUBMISSIONS=folder [SCORES=scores.csv]"; exit 2; }
	PATH=$(CURDIR)/$(BIN):$$PATH OMP_NUM_THREADS=1 $(BIN)/python assignments/grade.py "$(SUBMISSIONS)" --out "$(SCORES)"
