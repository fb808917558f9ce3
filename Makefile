# Two commands for a fresh machine: `make study` (the main job) and `make test`.
# Both create .venv when it is missing and install the package with its dev extras.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sdaanet-installed

.PHONY: study test export check-export nbtest pytest test-slow clean-venv docs gpu-check paper-check

$(STAMP): settings.ini setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"
	@touch $@

venv: $(STAMP)

# The main job: generate the embedded benchmark, run the study matrix on the CPU (2 runs side by side), build the
# HTML report in reports/_html/. A second call skips the finished runs.
study: $(STAMP)
	@start=$$(date +%s); \
	$(BIN)/sdaanet data generate --root data/embedded && \
	$(BIN)/sdaanet study --preset embedded --device cpu --jobs 2 && \
	echo "make study: wall time $$(( $$(date +%s) - start )) s"

# Write sdaanet/ from the notebooks.
export: $(STAMP)
	$(BIN)/nbdev_export

# Fail when the committed package is out of step with the notebooks.
check-export: $(STAMP)
	@tmp=$$(mktemp -d) && cp -r sdaanet $$tmp/ && $(BIN)/nbdev_export && \
	if ! diff -r -x __pycache__ $$tmp/sdaanet sdaanet; then \
	  echo "nbdev_export changed sdaanet/: the package was out of step with nbs/. Commit the export."; exit 1; fi; \
	rm -rf $$tmp; echo "sdaanet/ is in step with nbs/"

# Render every notebook in nbs/ to HTML in _docs/ with an index page listing them, offline: each notebook executed
# as nbdev_test runs it (its own process, 2 at a time, at most 240 s each; one that fails or runs over is shown
# with its saved outputs, and the index says so), its TeX as MathML (latex2mathml), no script from the web.
docs: $(STAMP)
	@start=$$(date +%s); \
	$(BIN)/python -c "from sdaanet.docs import build_docs; print(build_docs('nbs', '_docs', log=print))" && \
	echo "make docs: wall time $$(( $$(date +%s) - start )) s"

nbtest: $(STAMP)
	$(BIN)/nbdev_test --n_workers 2 --timing

pytest: $(STAMP)
	$(BIN)/python -m pytest -q tests

test: check-export nbtest pytest

# Slow notebook cells (#| slow) and slow tests (-m slow) as well.
test-slow: check-export
	$(BIN)/nbdev_test --n_workers 2 --flags slow --timing
	$(BIN)/python -m pytest -q -m "slow or not slow" tests

# On a machine with one CUDA GPU, in under 5 minutes: bench (fp32 and AMP, against the released forward), AMP vs
# fp32 logits, a 50-iteration pascal-shaped training whose loss must go down, peak GPU memory. Writes
# reports/gpu_check.json and prints a table; exit code 2 without a CUDA device.
gpu-check: $(STAMP)
	$(BIN)/python -m sdaanet.gpu_check --device cuda --out reports/gpu_check.json

# The paper's path end to end before a GPU study (sdaanet check, nbs/10b_check.ipynb): a small generated VOC 2012
# folder, ResNet-50 at 321/473 px, both variants, 1 and 5 shots, a two-cell study through papermill and Dask, the
# report; prints the stage table with full-schedule estimates; exit 1 on any failure. On a GPU: DEVICE=cuda.
DEVICE ?= auto
paper-check: $(STAMP)
	@start=$$(date +%s); \
	$(BIN)/sdaanet check --preset pascal --device $(DEVICE) && \
	echo "make paper-check: wall time $$(( $$(date +%s) - start )) s"

clean-venv:
	rm -rf $(VENV)
