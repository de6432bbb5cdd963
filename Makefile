# fpnunet: `make demo` runs the whole pipeline on synthetic data; `make test` runs the tests.
PY      ?= python3.11
VENV    ?= .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
export FPN_RAW          ?= $(CURDIR)/fpn_data/raw
export FPN_PREPROCESSED ?= $(CURDIR)/fpn_data/preprocessed
export FPN_RESULTS      ?= $(CURDIR)/fpn_data/results

.PHONY: venv test test-bf16 demo bench lint clean

$(STAMP): setup.py
	@test -x $(VPY) || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q torch==2.13.0
	$(VPY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(VPY) -m pytest -q tests

# the whole suite with --precision auto forced to bf16 (slow emulation on a CPU without native bf16)
test-bf16: $(STAMP)
	FPN_CPU_BF16=1 $(VPY) -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VPY) scripts/lint_imports.py

demo: $(STAMP)
	bash scripts/demo.sh

bench: $(STAMP)
	$(VPY) benchmarks/preprocess.py
	$(VPY) benchmarks/networks.py --no-timing

clean:
	rm -rf fpn_data .pytest_cache
