# One virtual environment in the checkout holds every stage; a Pi installs only the edge extra:
#   pip install -c constraints.txt ".[edge]"
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO ?= demo-out
FILMS ?=
PYTEST_ARGS ?=

SPREAD ?= spread-out
SEEDS ?= 0 1 2

.PHONY: install test lint demo convert bench bench-train seed-spread fuzz lock aarch64-check clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==26.3
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e ".[edge,train,convert,dev]"
	touch $(STAMP)

lint: install
	$(VENV)/bin/ruff check .

test: install lint
	$(PY) -m pytest $(PYTEST_ARGS)

# The whole chain on phantom films: generate -> train -> convert -> scan. FILMS="a.png dir/" adds yours.
demo: install
	@bash -c 'set -euo pipefail; t0=$$SECONDS; \
	  echo "== 1/4 phantom films"; $(PY) -m train.phantoms --out $(DEMO)/phantoms --patients 120 --seed 0; \
	  $(PY) -m train.phantoms --out $(DEMO)/field --patients 6 --seed 1001 --quiet; \
	  $(PY) -m convert.oddballs --out $(DEMO)/not-films --per-kind 1 --photos 1 --films $$(ls $(DEMO)/field/images/*.png | head -1); t1=$$SECONDS; \
	  echo "== 2/4 training DenseNet-121 on the CPU"; $(PY) -m train --data $(DEMO)/phantoms --out $(DEMO)/run --preset demo; t2=$$SECONDS; \
	  echo "== 3/4 converting to int8 TFLite"; $(PY) -m convert $(DEMO)/run/best.safetensors --data $(DEMO)/phantoms --out $(DEMO)/bundle --calibration 64 --force --max-mean-dauroc 0.05 --max-dscore 0.2; t3=$$SECONDS; \
	  echo "== 4/4 scanning films"; $(PY) -m edge.scan $(DEMO)/field/images $(DEMO)/not-films $(FILMS) --bundle $(DEMO)/bundle --out $(DEMO)/results; t4=$$SECONDS; \
	  echo "demo stages (s): phantoms $$((t1-t0)), train $$((t2-t1)), convert $$((t3-t2)), scan $$((t4-t3)); total $$((t4-t0))"'

convert: install
	$(PY) -m convert $(CKPT) --data $(DATA) --out $(OUT)

# Run after `make demo` (it benchmarks the demo's bundle and films).
bench: install
	$(PY) -m convert.bench $(DEMO)/bundle $(DEMO)/run/best.safetensors --json $(DEMO)/bench-convert.json
	$(PY) -m edge.bench --bundle $(DEMO)/bundle --json $(DEMO)/bench-edge.json

bench-train: install
	OMP_WAIT_POLICY=PASSIVE $(PY) -m train.bench

# The test session's recipe trained with each seed, converted and measured: figure x seed, min/median/max
# against the suite's bars (15-25 min a seed on 2 cores; a second call only adds what is missing).
seed-spread: install
	$(PY) -m convert.spread --out $(SPREAD) --seeds $(SEEDS)

fuzz: install
	FUZZ_ITERATIONS=20000 $(PY) -m pytest tests/edge/test_fuzz.py -q

# Dry run: does the edge extra resolve for a Raspberry Pi (aarch64, CPython 3.11)?
aarch64-check:
	$(PYTHON) -m pip install --quiet --dry-run --ignore-installed --target $$(mktemp -d) --only-binary=:all: \
	  --python-version 3.11 --implementation cp --platform manylinux_2_36_aarch64 --platform manylinux_2_28_aarch64 \
	  --platform manylinux_2_27_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 \
	  -c constraints.txt numpy==1.26.4 Pillow==13.0.0 pydicom==3.0.2 ai-edge-litert==2.1.0

lock: install
	@{ sed -n '1,2p' constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -vE '^(pip|setuptools|wheel)==' \
	  | sed 's/+cpu$$//'; } > constraints.txt.new && mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) $(DEMO) $(SPREAD) .pytest_cache .ruff_cache
