# The two commands of the README: `make run` and `make test`. Both install what they
# need (Debian packages, a virtualenv) and are safe to run again.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DATA := .data

.PHONY: run test lint format openapi bench deps system-deps clean

run: deps
	@url=$$($(BIN)/directory localdb start $(DATA)/pg); \
	export DIRECTORY_DATABASE_URL=$$url; \
	export DIRECTORY_RATE_LIMIT_STORAGE_URL=$$($(BIN)/directory localredis start $(DATA)/redis); \
	export DIRECTORY_WEBHOOK_ALLOW_LOOPBACK=1; \
	$(BIN)/directory migrate; \
	$(BIN)/directory demo --keys-file $(DATA)/demo-keys.json; \
	echo "database: $$url"; \
	echo "API: http://127.0.0.1:8000  (spec: http://127.0.0.1:8000/openapi.json)"; \
	$(BIN)/directory worker & worker=$$!; \
	trap 'kill $$worker 2>/dev/null; wait $$worker' EXIT; \
	$(BIN)/directory serve --bind 127.0.0.1:8000

test: deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

lint: deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: deps
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

openapi: deps
	$(BIN)/directory openapi
	$(BIN)/python clients/python/generate_models.py
	cd clients/typescript && { test -d node_modules || npm ci --silent; } && npm run generate --silent

bench: deps
	$(BIN)/python bench/ingest.py

.PHONY: bench-search bench-flood bench-relay bench-delivery-drain bench-relay-layers bench-sync bench-hostile bench-erasure bench-ad-limit
bench-search: deps
	$(BIN)/python bench/search.py

bench-flood: deps
	$(BIN)/python -m bench.flood

bench-relay: deps
	$(BIN)/python bench/relay.py

bench-delivery-drain: deps
	$(BIN)/python bench/delivery_drain.py

bench-relay-layers: deps
	$(BIN)/python bench/relay_layers.py

bench-sync: deps
	$(BIN)/python bench/sync.py

bench-hostile: deps
	$(BIN)/python bench/hostile.py

bench-erasure: deps
	$(BIN)/python bench/erasure.py

bench-ad-limit: deps
	$(BIN)/python bench/ad_limit.py

deps: system-deps $(VENV)/.installed

system-deps:
	@scripts/system-deps.sh

$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) is needed"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]" -e clients/python
	touch $@

clean:
	-$(BIN)/directory localdb stop $(DATA)/pg
	-$(BIN)/directory localredis stop $(DATA)/redis
	rm -rf $(VENV) $(DATA)
