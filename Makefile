# raytrain: `make demo` and `make test` set everything up on a fresh machine.
# The first interpreter that runs and is 3.10-3.12 (TensorFlow's and Ray's wheels).
PYTHON ?= $(shell for p in python3 python3.12 python3.11 python3.10; do \
  $$p -c 'import sys; assert (3, 10) <= sys.version_info[:2] <= (3, 12)' 2>/dev/null && { echo $$p; break; }; done)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_DATA := data/train.h5
DEMO_IMAGES := data/images

.PHONY: install demo demo-images demo-tune test test-fast docs clean-demo

install: $(STAMP)

# Re-installs when pyproject.toml changes. uv installs the same requirements as pip, in a fraction
# of the time (a fresh .venv took pip ~3 minutes). --compile-bytecode as pip does: without .pyc files
# (and with PYTHONDONTWRITEBYTECODE set, as on this machine) each process compiled TensorFlow and Ray
# from source, and importing them took 15.6 s instead of 5.8 s.
$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "raytrain needs Python 3.10-3.12; set PYTHON=/path/to/python3.11"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[test]'
	touch $(STAMP)

$(DEMO_DATA): $(STAMP)
	$(BIN)/raytrain synth $(DEMO_DATA) --samples 4000 --shape 32,32,3 --classes 4

DEMO_RUN := demo-$(shell date -u +%Y%m%d-%H%M%S)

# Trains the built-in conv net with 2 Ray Train workers on this machine, then draws its report.
demo: $(DEMO_DATA)
	$(BIN)/raytrain train examples/hdf5.yaml --num-workers 2 --name $(DEMO_RUN)
	$(BIN)/raytrain report runs/$(DEMO_RUN)

$(DEMO_IMAGES): $(STAMP)
	$(BIN)/raytrain synth --images $(DEMO_IMAGES) --samples 2000 --shape 80,80 --formats jpg,png

# Trains the built-in conv net locally on a folder of JPEG and PNG files.
# A 6-trial hyperparameter search (Ray Tune, ASHA) on the demo data; about 3 minutes on 2 cores.
demo-tune: $(DEMO_DATA)
	$(BIN)/raytrain tune examples/tune.yaml --name demo-tune-$$(date -u +%Y%m%d-%H%M%S)

demo-images: $(DEMO_IMAGES)
	$(BIN)/raytrain train examples/images.yaml --local

# The docs are part of the suite: a broken link or a page missing from the navigation fails it.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# Two pytest processes; the tests that bring up the simulated cluster run in one of them, one
# after the other (docs/development.md, "Tests").
test: docs
	$(BIN)/python -m pytest -n 2 --dist load --maxschedchunk 1

# The tests that start no Ray and no extra processes: for iterating on a change.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 -m "not ray and not slow"
