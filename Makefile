# One virtual environment in the checkout holds every stage; a Pi installs only the edge extra of the wheel:
#   pip install -c constraints-pi.txt "xray_edge-0.1.0-py3-none-any.whl[edge]"   (make dist; README "On the Raspberry Pi")
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO ?= demo-out
FILMS ?=
PYTEST_ARGS ?=
# The suite runs on two pytest-xdist workers (the slow artefacts build in the background meanwhile: tests/conftest.py)
TEST_WORKERS ?= 2

SPREAD ?= spread-out
SEEDS ?= 0 1 2

.PHONY: install test lint demo demo-clean serve convert bench bench-train seed-spread fuzz lock aarch64-check clean

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
	$(PY) -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

# The whole chain on phantom films: generate -> train -> convert -> scan. FILMS="a.png dir/" adds yours.
# Safe to run again: finished stages with unchanged inputs are reused, an unfinished training resumes
# (tools/demo.sh); `make demo-clean` starts over.
demo: install
	tools/demo.sh $(PY) $(DEMO) $(FILMS)

demo-clean:
	rm -rf $(DEMO)

# The app on the demo's bundle and results (after `make demo`): python -m edge.serve, see README "The app".
SERVE_ARGS ?=
serve: install
	$(PY) -m edge.serve --bundle $(DEMO)/bundle --out $(DEMO)/results $(SERVE_ARGS)

convert: install
	$(PY) -m convert $(CKPT) --data $(DATA) --out $(OUT)

# Run after `make demo` (it benchmarks the demo's bundle and films).
bench: install
	$(PY) -m convert.bench $(DEMO)/bundle $(DEMO)/run/best.safetensors --json $(DEMO)/bench-convert.json
	$(PY) -m edge.bench --bundle $(DEMO)/bundle --json $(DEMO)/bench-edge.json
	$(PY) -m edge.web.bench --bundle $(DEMO)/bundle --json $(DEMO)/bench-app.json

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
	  -c constraints.txt numpy==1.26.4 Pillow==13.0.0 pydicom==3.0.2 ai-edge-litert==2.1.0 Flask==3.1.3 Jinja2==3.1.6 MarkupSafe==3.0.4 waitress==3.0.2

# Release and the Raspberry Pi (README "On the Raspberry Pi"). dist: the wheel and sdist (python -m build) and
# constraints-pi.txt, the edge set's pins only (make lock-pi rewrites it from constraints.txt).
# pi-check (root): that wheel installed with its edge extra in an emulated arm64 Debian bookworm root, scoring
# real films and phantoms as x86 does, and edge.serve answering there (tools/pi_check.py; BUNDLE=DIR, PI_CPU=).
.PHONY: dist dist-check lock-pi pi-check
BUNDLE ?=
PI_CPU ?= cortex-a72

dist: install
	rm -rf dist
	mkdir -p .cache && $(PY) -m build --outdir dist . > .cache/build.log 2>&1 || { cat .cache/build.log; false; }
	cp constraints-pi.txt dist/

lock-pi: install
	$(PY) -m tools.pi_constraints > constraints-pi.txt.new && mv constraints-pi.txt.new constraints-pi.txt

# dist-check: that wheel installed on this machine as a user would, in a new venv with only its edge extra
# (tools/dist_check.py: every edge command answers --help, torch/tensorflow/onnx absent; BUNDLE=DIR also scans).
dist-check: dist
	$(PY) -m tools.dist_check --wheel $$(ls dist/*.whl) $(if $(BUNDLE),--bundle $(BUNDLE))

pi-check: dist
	$(PY) -m tools.pi_check --wheel $$(ls dist/*.whl) --cpu $(PI_CPU) $(if $(BUNDLE),--bundle $(BUNDLE))

lock: install
	@{ sed -n '1,2p' constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -vE '^(pip|setuptools|wheel)==' \
	  | sed 's/+cpu$$//'; } > constraints.txt.new && mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) $(DEMO) $(SPREAD) .pytest_cache .ruff_cache
