# plankton — the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ROOT   ?= ./artifacts
STAMP  := $(VENV)/.installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP) ## make .venv and install the project with its test extras

demo: $(STAMP) ## every stage end to end on generated data into $(ROOT)
	ROOT=$(ROOT) BIN=$(BIN) bash scripts/demo.sh

test: $(STAMP) ## the whole test suite ("no tests collected" fails)
	$(BIN)/python -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected" >&2; exit 1; fi; exit $$rc

bench: $(STAMP) ## speed figures, each a side-by-side ratio
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(ROOT) .pytest_cache
