# The two quick-start commands: `make run` and `make test`. Each sets up .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench bench-all clean

$(STAMP): pyproject.toml examples/eventgate-example/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' -e examples/eventgate-example
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/eventgate serve --config config/gateway.yaml

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/ingest.py

# Every figure of BENCHMARKS.md, one benchmark after the other (about 15 minutes); each prints
# its table and writes bench/results/<name>.json. Run it on an otherwise idle machine.
bench-all: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/latency.py
	$(BIN)/python bench/delivery.py
	$(BIN)/python bench/routing.py
	$(BIN)/python bench/warehouse.py --backend both
	$(BIN)/python bench/jetstream.py

clean:
	rm -rf $(VENV) data .mypy_cache .ruff_cache .pytest_cache
