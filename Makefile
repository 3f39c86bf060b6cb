# The PGD book. Two commands do everything on a fresh machine:
#   make book   set up .venv, build the site into _build/html
#   make test   set up .venv, then lint, strict book build, unit tests (site in Chromium too), notebooks (smoke)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
# Chapters 7 and 8 compare no output with the committed one; tests/test_notebooks_fresh_folder.py
# runs them (smoke) alone in a new folder, as a reader does, and checks their outputs there.
NBVAL_NOTEBOOKS := $(filter-out notebooks/07_comparison.ipynb notebooks/08_own_data.ipynb,$(NOTEBOOKS))
PGD_PROFILE ?= full

.PHONY: setup book test lint unit notebooks book-strict execute bench grid student clean clean-runs system-deps

setup: $(STAMP)

# Exact pins (the `pinned` extra): torch 2.13.0 is a local CPU build here, anything else pulls GBs of
# CUDA wheels; torchvision 0.28.0 requires exactly that torch; Jupyter Book 2.x cannot build offline.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-cache-dir -e ".[pinned,book,dev]"
	touch $@

book: setup
	$(BIN)/jupyter-book build . -W -n --keep-going
	@echo "The book is built: open $(CURDIR)/_build/html/index.html"

book-strict: setup
	$(HERMETIC) $(BIN)/jupyter-book build . -W -n --keep-going

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

unit: setup
	$(HERMETIC) $(BIN)/python -m pytest -p no:cacheprovider --basetemp=$(CURDIR)/_build/pytest

# What the tests and chapter 8 use from the system, installed only by this explicit command (as
# root, with apt-get; elsewhere it prints the command): Chromium and its driver for the browser
# test, Debian's dataset-fashion-mnist for chapter 8. `make test` installs nothing: a test whose
# package is missing skips and says why; chapter 8 then downloads Fashion-MNIST or says how.
SYSTEM_PACKAGES := chromium chromium-driver dataset-fashion-mnist
system-deps:
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q $(SYSTEM_PACKAGES) || (apt-get update -q && apt-get install -y -q $(SYSTEM_PACKAGES)); \
	else \
		echo "run as root on Debian or Ubuntu: sudo apt-get install -y $(SYSTEM_PACKAGES)"; \
	fi

# Where the tests' tools keep their caches and settings: inside _build, not in the home folder.
HERMETIC := MPLCONFIGDIR=$(CURDIR)/_build/home/matplotlib IPYTHONDIR=$(CURDIR)/_build/home/ipython \
	JUPYTER_RUNTIME_DIR=$(CURDIR)/_build/home/jupyter XDG_CACHE_HOME=$(CURDIR)/_build/home/cache

# The notebooks, top to bottom, in the smoke profile; only cells tagged nbval-check-output are
# compared with the committed outputs (which come from a real run).
notebooks: setup
	rm -rf _build/smoke-runs
	$(HERMETIC) PGD_PROFILE=smoke PGD_RUNS=$(CURDIR)/_build/smoke-runs PGD_DATA=$(CURDIR)/_build/data \
		MPLBACKEND=Agg \
		$(BIN)/python -m pytest -p no:cacheprovider --nbval-lax --nbval-current-env $(NBVAL_NOTEBOOKS)

# The strict build runs before the unit tests: tests/test_site_browser.py then drives Chromium over
# that fresh _build/html instead of building the site a second time.
test: lint book-strict unit notebooks

# Re-execute every notebook in place, top to bottom, in $(PGD_PROFILE) (default full), progress
# bars replaced by one summary line per training stage: this is
# what produces the committed outputs. Checkpoints go to _build/runs-<profile> (kept: an
# interrupted `make execute` resumes; `make clean-runs` starts over).
execute: setup
	for nb in $(NOTEBOOKS); do \
		echo "executing $$nb (profile $(PGD_PROFILE))"; \
		PGD_PROFILE=$(PGD_PROFILE) PGD_PROGRESS=0 PGD_RUNS=$(CURDIR)/_build/runs-$(PGD_PROFILE) \
			$(BIN)/jupyter nbconvert --to notebook --execute --inplace \
			--ExecutePreprocessor.timeout=-1 "$$nb"; \
	done

# Chapter 7's comparison grids (hours on a CPU; resumable: run it again after an interruption).
# Checkpoints go to _build/runs-full, shared with the chapters; the tidy results are copied to
# benchmarks/results/, which chapter 7 reads.
GRID_RUNS := $(CURDIR)/_build/runs-full
grid: setup
	PGD_RUNS=$(GRID_RUNS) PGD_PROGRESS=0 $(BIN)/python -m pgd compare --dataset cmnist \
		--digits auto --ratios 0.005,0.01,0.05 --methods all --seeds 3 --schedules full,quick \
		--protocols shared,own --selection all --no-progress --out $(GRID_RUNS)/compare/cmnist
	# the budget dimension at 1 %: every one-stage method with PGD's total number of epochs
	PGD_RUNS=$(GRID_RUNS) PGD_PROGRESS=0 $(BIN)/python -m pgd compare --dataset cmnist \
		--digits auto --ratios 0.01 --methods all --seeds 3 --schedules full --budget total \
		--selection all --no-progress --out $(GRID_RUNS)/compare/cmnist-budget
	PGD_RUNS=$(GRID_RUNS) PGD_PROGRESS=0 $(BIN)/python book/tools/groupdro_ablation.py \
		--out benchmarks/results/groupdro_ablation_cmnist.csv
	# DFA's own protocol as long as its official script trains (50,000 steps), vanilla beside it
	PGD_RUNS=$(GRID_RUNS) PGD_PROGRESS=0 $(BIN)/python book/tools/dfa_official_steps.py \
		--out benchmarks/results/dfa_official_steps_cmnist.csv
	PGD_RUNS=$(GRID_RUNS) PGD_PROGRESS=0 $(BIN)/python -m pgd compare --dataset celeba --stand-in \
		--methods all --seeds 3 --schedules full --epochs 8 --model cnn --image-size 48 \
		--selection all --no-progress --out $(GRID_RUNS)/compare/celeba-stand-in
	PGD_RUNS=$(GRID_RUNS) PGD_PROGRESS=0 $(BIN)/python -m pgd compare --dataset bffhq --stand-in \
		--ratios 0.005,0.01,0.02 --methods all --seeds 3 --schedules full --epochs 8 --model cnn \
		--image-size 48 --selection all --no-progress --out $(GRID_RUNS)/compare/bffhq-stand-in
	# the same face grids, choosing epochs and settings on a validation split with the real
	# datasets' composition (CelebA's training proportions, BFFHQ's 0.5pct folder's) instead of
	# the stand-ins' oracle one
	PGD_RUNS=$(GRID_RUNS) PGD_PROGRESS=0 $(BIN)/python -m pgd compare --dataset celeba --stand-in \
		--stand-in-validation real --methods all --seeds 3 --schedules full --epochs 8 --model cnn \
		--image-size 48 --selection all --no-progress --out $(GRID_RUNS)/compare/celeba-stand-in-real-valid
	PGD_RUNS=$(GRID_RUNS) PGD_PROGRESS=0 $(BIN)/python -m pgd compare --dataset bffhq --stand-in \
		--stand-in-validation real --ratios 0.005,0.01,0.02 --methods all --seeds 3 --schedules full \
		--epochs 8 --model cnn --image-size 48 --selection all --no-progress \
		--out $(GRID_RUNS)/compare/bffhq-stand-in-real-valid
	PGD_RUNS=$(GRID_RUNS) PGD_PROGRESS=0 $(BIN)/python book/tools/lff_weights.py \
		--out benchmarks/results/lff_weights_celeba_stand_in.csv
	for g in cmnist cmnist-budget celeba-stand-in bffhq-stand-in celeba-stand-in-real-valid \
		bffhq-stand-in-real-valid; do \
		cp $(GRID_RUNS)/compare/$$g/results.csv benchmarks/results/compare_$$(echo $$g | tr - _).csv; \
		cp $(GRID_RUNS)/compare/$$g/tuning.csv benchmarks/results/compare_$$(echo $$g | tr - _)_tuning.csv; \
	done

# BackPACK and Opacus are compared against, not used: they live in the `bench` extra only.
bench: setup
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[pinned,bench]"
	$(BIN)/python benchmarks/per_sample_norms.py

# Classroom kit: every chapter without outputs and without exercise solutions (standard library only).
student:
	$(PYTHON) book/tools/make_student.py --out _build/student

clean-runs:
	rm -rf _build/runs-* _build/smoke-runs

clean:
	rm -rf _build $(VENV)
