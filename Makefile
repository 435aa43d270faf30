# `make test` and `make demo` set everything up from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTO_OUT := controlplane/api

.PHONY: all install protos test lint unit demo serve clean docs

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

$(PROTO_OUT)/admin_pb2.py: protos/controlplane/api/admin.proto $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. \
		protos/controlplane/api/admin.proto

install: $(STAMP) protos

protos: $(PROTO_OUT)/admin_pb2.py

lint: install
	$(BIN)/ruff check controlplane tests deploy $(wildcard benchmarks/*.py)
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: install
	$(BIN)/pytest -q tests/unit tests/golden

test: install lint
	$(BIN)/pytest -q -p no:cacheprovider

docs: install
	$(BIN)/python -m controlplane.model.reference docs/reference.md

demo: install
	$(BIN)/controlplane demo

serve: install
	$(BIN)/controlplane serve

clean:
	rm -rf $(VENV) .controlplane $(PROTO_OUT)/*_pb2*.py $(PROTO_OUT)/*_pb2*.pyi
