# The two commands a newcomer needs: `make up` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: up test test-unit test-integration test-e2e lint fmt clean bench bench-matching \
	bench-reminders reliability

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

## Reliability under faults (tests/reliability/README.md): 300 needs through the whole stack
## while matching, notifications and intake are SIGKILLed, Postgres restarted and the broker
## paused, each 4 times (`make test` runs 40 needs, each fault once); under 10 min on 2
## cores. Prints the table and writes build/reliability/report.json.
RELIABILITY_NEEDS ?= 300
RELIABILITY_ROUNDS ?= 4
reliability: $(STAMP)
	RELIABILITY_NEEDS=$(RELIABILITY_NEEDS) RELIABILITY_ROUNDS=$(RELIABILITY_ROUNDS) \
		$(BIN)/pytest -q tests/reliability

## The pipeline benchmark (~6-8 min on 2 cores, under 10): the whole stack against a bare
## broker and a bare web+db baseline, intake's rate, end-to-end needs/s and latency at 50,
## 200 and 500 needs/s; writes docs/bench/report.json, report.md and latency.svg.
bench: $(STAMP)
	$(BIN)/python -m bench.pipeline

## Measure matching: time per need by directory size, throughput against a bare Kafka loop.
bench-matching: $(STAMP)
	$(BIN)/python -m bench.matching

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
