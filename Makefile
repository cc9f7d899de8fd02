# The two commands users need: `make run` and `make test`. Everything else supports them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench services services-stop clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[all]'
	touch $(STAMP)

run: install
	$(BIN)/canopy serve --data-dir $${CANOPY_DATA_DIR:-./data}

test: install services
	$(BIN)/pytest -q

# Real Redis (Debian package) and Apache Cassandra 5.0 (from Maven Central) on loopback.
services:
	scripts/services.sh start

services-stop:
	scripts/services.sh stop

lint: install
	$(BIN)/ruff check engine gateway persistence tests bench
	$(BIN)/mypy

bench: install
	$(BIN)/pytest -q bench --benchmark-only -p no:cacheprovider -p no:unraisableexception \
		--benchmark-columns=median,mean,ops,rounds

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
