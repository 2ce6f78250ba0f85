# The two commands a newcomer needs: `make book` and `make test`. Both create .venv and install
# the project (pyproject.toml, extras `book` and `test`) when it is missing or out of date.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install book test test-unit execute clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[book,test]'
	touch $(STAMP)

## book: build the HTML book from the committed executed notebooks into _build/html (no execution)
book: $(STAMP)
	$(BIN)/jupyter-book build . --builder html -W -n --keep-going

## test: unit tests, notebook/source sync, nbval on every executed chapter, smoke runs, book build
test: $(STAMP)
	$(BIN)/python -m pytest

## test-unit: the unit tests of mempkg only (seconds)
test-unit: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slow"

## execute: re-execute every chapter at its defaults with papermill into book/chapters/
execute: $(STAMP)
	$(BIN)/python -m mempkg execute

clean:
	rm -rf _build runs

.PHONY: test-browser test-sweep

## test-browser: build the book into a temporary folder and open every page in headless Chromium;
## screenshots go to _build/screenshots/ (needs `apt-get install -y chromium`; skips without it)
test-browser: $(STAMP)
	$(BIN)/python -m pytest tests/test_browser.py

## test-sweep: `python -m mempkg run`/`sweep` on a tiny chapter with a 2-worker Dask cluster (~30 s)
test-sweep: $(STAMP)
	$(BIN)/python -m pytest tests/test_run_and_sweep.py
