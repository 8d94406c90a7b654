# The two commands a newcomer needs: `make up` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: up test test-unit test-integration test-e2e lint fmt clean bench bench-reminders

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Run the whole stack locally on embedded Postgres, Kafka-protocol broker and SMTP sink.
up: $(STAMP)
	$(BIN)/refnet up

## Run the whole test suite: unit, integration (real Postgres + broker), e2e (the stack as processes).
test: $(STAMP)
	$(BIN)/pytest -q

test-unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

test-integration: $(STAMP)
	$(BIN)/pytest -q tests/integration

test-e2e: $(STAMP)
	$(BIN)/pytest -q tests/e2e

## Run both benchmarks: matching (time per need by directory size, throughput against a bare
## Kafka loop), then reminders.
bench: $(STAMP)
	$(BIN)/python -m bench.matching && $(BIN)/python -m bench.reminders

## Measure reminders: 100,000 due reminders drained into the SMTP sink against its raw rate.
bench-reminders: $(STAMP)
	$(BIN)/python -m bench.reminders

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .refnet .pytest_cache .mypy_cache .ruff_cache
