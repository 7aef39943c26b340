# make test: the whole suite.  make fuzz: the property tests with many more
# examples.  make demo: the example job file end to end
# against the built-in simulator, no key needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test fuzz demo bench clean compiled

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# The package's bytecode, written as pip writes it for a regular install:
# where PYTHONDONTWRITEBYTECODE is set, the editable install would otherwise
# compile every module it loads at each start (about 40 ms of each command).
# Only what changed since is compiled again.
compiled: $(STAMP)
	$(BIN)/python -m compileall -q batcher

# The suite spends most of its time in subprocesses and waits: one worker per
# core halves it. A file's tests stay together, sharing their servers.
test: compiled
	$(BIN)/python -m pytest -q -n auto --dist loadfile

fuzz: compiled
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q -m property

demo: compiled
	$(BIN)/python -m batcher.demo

bench: compiled
	$(BIN)/python -m pytest -q -m slow
	$(BIN)/python bench/import_bench.py
	$(BIN)/python bench/estimate_bench.py
	$(BIN)/python bench/export_bench.py 1000000
	$(BIN)/python bench/scale_bench.py --resume
	$(BIN)/python bench/run_bench.py
	$(BIN)/python bench/rate_bench.py
	$(BIN)/python bench/api_bench.py
	$(BIN)/python bench/serve_bench.py

clean:
	rm -rf $(VENV) build dist *.egg-info demo.db demo.db-wal demo.db-shm
