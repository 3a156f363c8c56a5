# `make run`: set up .venv (first time only) and run the main job.
# `make test`: set up .venv and run the test suite.
# torch==2.13.0 is installed first, exactly (a CPU build: an unpinned torch would pull a
# multi-GB CUDA build); pyproject.toml itself accepts any torch>=2.3,<3.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
OUT    ?= runs/watch

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[data,report,dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/parse-dfl run configs/watch.yaml --methods parse,local --jobs 2 --out $(OUT) --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
