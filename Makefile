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
