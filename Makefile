# The two commands of this project: `make run` (the mesh) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export AMQP_URL ?= amqp://guest:guest@localhost:5672//

#: uv resolves and installs every lock. `make install` bootstraps it with pip from its own
#: entry in the dev lock (version and hashes); `make lock` locks this version there.
UV_VERSION := 0.13.9
DEV_LOCK := deploy/dev-requirements.lock

.PHONY: run demo test unit install broker test-broker lint schemas definitions lock bench clean

## run: install, migrate both databases, declare the topology, run the API, relay and workers (Ctrl-C stops all)
run: install broker
	VENV=$(VENV) deploy/scripts/run-mesh.sh

## demo: start the mesh, create a booking, print the e-mail and push it produced, stop
demo: install broker
	VENV=$(VENV) deploy/scripts/demo.sh

## test: create .venv if missing, install the dev lock, make sure RabbitMQ answers, lint, run every tier of tests
test: install test-broker lint
	$(BIN)/python -m pytest

## unit: the unit tier only: no broker, no database server, no subprocess
unit: install
	$(BIN)/python -m pytest tests/unit

## install: .venv with exactly the versions of $(DEV_LOCK), then the project itself (editable, no resolving)
install: $(VENV)/.installed

# uv pip sync makes the venv hold the lock and nothing else (a package dropped from the
# lock leaves the venv too); pip, uv, setuptools and wheel are locked there as well, so
# it keeps them. The project goes in last without build isolation, with the locked
# setuptools: nothing is resolved or fetched unpinned.
$(VENV)/.installed: pyproject.toml $(DEV_LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	awk '/^[^ #]/ { keep = /^uv==/ } keep' $(DEV_LOCK) > $(VENV)/uv-requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes -r $(VENV)/uv-requirements.txt
	$(BIN)/uv pip sync --quiet --python $(BIN)/python --require-hashes $(DEV_LOCK)
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps --no-build-isolation -e .
	touch $@

## broker: make sure RabbitMQ answers on AMQP_URL, starting a local rabbitmq-server when it does not
broker:
	PYTHON=$(PYTHON) deploy/scripts/ensure-rabbitmq.sh

# The tests' broker step: fatal only under CI=true. On a laptop without RabbitMQ the
# unit tier still runs and every test that needs the broker skips with its reason.
test-broker:
	PYTHON=$(PYTHON) deploy/scripts/ensure-rabbitmq.sh \
		|| { [ "$${CI:-}" != true ] && echo "no RabbitMQ: the tests that need it will be skipped" >&2; }

## lint: the import contracts, ruff and mypy (configured in pyproject.toml)
lint: install
	$(BIN)/lint-imports
	$(BIN)/ruff check .
	$(BIN)/mypy

## schemas: regenerate the committed JSON Schema files from the marshmallow schemas
schemas: install
	$(BIN)/python -m shared export-schemas

## definitions: regenerate deploy/rabbitmq/definitions.json from the topology module
definitions: install
	$(BIN)/notification-service topology export deploy/rabbitmq/definitions.json

## lock: pin, with hashes, every package the dev venv and each image installs
## (CPython 3.11 on Linux, like the images); run it after changing a dependency in
## pyproject.toml or UV_VERSION (needs PyPI). The dev lock is resolved first and every
## image lock within it, so a package has one version everywhere: the tests in .venv
## test what the images ship.
LOCK := $(BIN)/uv pip compile --python-version 3.11 --python-platform linux --generate-hashes \
	--custom-compile-command "make lock" --quiet
BUILD_REQUIRES := $(BIN)/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")'
lock: install
	{ $(BUILD_REQUIRES); echo "uv==$(UV_VERSION)"; echo pip; } \
		| $(LOCK) pyproject.toml - --extra booking --extra notification --extra flower --extra dev -o $(DEV_LOCK)
	$(LOCK) pyproject.toml --extra booking -c $(DEV_LOCK) -o deploy/booking/requirements.lock
	$(LOCK) pyproject.toml --extra notification -c $(DEV_LOCK) -o deploy/notification/requirements.lock
	$(LOCK) pyproject.toml --extra notification --extra flower -c $(DEV_LOCK) -o deploy/flower/requirements.lock
	$(LOCK) pyproject.toml --extra notification --extra webhooks -c $(DEV_LOCK) -o deploy/webhooks/requirements.lock
	$(BUILD_REQUIRES) | $(LOCK) - -c $(DEV_LOCK) -o deploy/build-requirements.lock

## bench: the three benchmark scripts (bounded, loopback only; bench_faults starts its own RabbitMQ node)
bench: install broker
	$(BIN)/python benchmarks/bench_booking.py
	$(BIN)/python benchmarks/bench_notification.py
	$(BIN)/python benchmarks/bench_faults.py

clean:
	rm -rf $(VENV) var
