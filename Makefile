# The two commands of the README:
#   make speedrun   set up .venv (first time) and run every stage on the embedded default
#   make test       set up .venv (first time) and run the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: speedrun test install bench clean

$(BIN)/chatforge: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $(BIN)/chatforge

install: $(BIN)/chatforge

speedrun: install
	$(BIN)/chatforge speedrun $(ARGS)

test: install
	$(BIN)/python -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
