# The two commands of this project: `make run` (the mesh) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export AMQP_URL ?= amqp://guest:guest@localhost:5672//

.PHONY: run demo test install broker lint schemas definitions lock bench clean

## run: install, migrate both databases, declare the topology, run the API, relay and workers (Ctrl-C stops all)
run: install broker
	VENV=$(VENV) deploy/scripts/run-mesh.sh

## demo: start the mesh, create a booking, print the e-mail and push it produced, stop
demo: install broker
	VENV=$(VENV) deploy/scripts/demo.sh

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

## definitions: regenerate deploy/rabbitmq/definitions.json from the topology module
definitions: install
	$(BIN)/notification-service topology export deploy/rabbitmq/definitions.json

## lock: pin every package each image installs, with hashes (CPython 3.11 on Linux, like the images);
## run it after changing a dependency in pyproject.toml (needs PyPI)
LOCK := $(BIN)/uv pip compile --python-version 3.11 --python-platform linux --generate-hashes \
	--custom-compile-command "make lock" --quiet
lock: install
	$(BIN)/pip install --quiet 'uv>=0.5'
	$(LOCK) pyproject.toml --extra booking -o deploy/booking/requirements.lock
	$(LOCK) pyproject.toml --extra notification -o deploy/notification/requirements.lock
	$(BIN)/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
		| $(LOCK) - -o deploy/build-requirements.lock

## bench: the three benchmark scripts (bounded, loopback only; bench_faults starts its own RabbitMQ node)
bench: install broker
	$(BIN)/python benchmarks/bench_booking.py
	$(BIN)/python benchmarks/bench_notification.py
	$(BIN)/python benchmarks/bench_faults.py

clean:
	rm -rf $(VENV) var
