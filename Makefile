# The two commands of this project: `make run` (the mesh) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export AMQP_URL ?= amqp://guest:guest@localhost:5672//

.PHONY: test install broker lint schemas definitions clean

## test: create .venv if missing, install, make sure RabbitMQ answers, run every test
test: install broker
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[booking,notification,dev]'
	touch $@

broker:
	PYTHON=$(PYTHON) deploy/scripts/ensure-rabbitmq.sh

lint: install
	$(BIN)/lint-imports

## schemas: regenerate the committed JSON Schema files from the marshmallow schemas
schemas: install
	$(BIN)/python -m shared export-schemas

clean:
	rm -rf $(VENV) var
