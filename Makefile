# The two commands users need: `make run` and `make test`. Everything else supports them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser run cluster test lint bench bench-save bench-check compare scale loadtest services services-stop clean

install: $(STAMP)

# Debian's chromium for the admin page test (Playwright drives it; nothing is downloaded);
# `make test` needs it, `make run` does not.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || scripts/services.sh browser

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[all]'
	touch $(STAMP)

run: install
	$(BIN)/canopy serve --data-dir $${CANOPY_DATA_DIR:-./data}

test: install browser services
	$(BIN)/pytest -q

# Real Redis (Debian package) and Apache Cassandra 5.0 (from Maven Central) on loopback.
services:
	scripts/services.sh start

cluster: install
	BIN=$(BIN) scripts/cluster.sh

services-stop:
	scripts/services.sh stop

lint: install
	$(BIN)/ruff check engine gateway persistence tests bench
	$(BIN)/mypy

# A baseline from another CPU is still compared (pytest-benchmark warns; it must not fail).
BENCH := $(BIN)/pytest -q bench --benchmark-only -p no:cacheprovider -p no:unraisableexception \
	-W ignore::pytest_benchmark.logger.PytestBenchmarkWarning \
	--benchmark-columns=median,mean,ops,rounds --benchmark-storage=file://bench/baseline

bench: install
	$(BENCH)

# The regression suite: compare with the committed baseline, fail past +25% on a median.
bench-check: install
	$(BENCH) --benchmark-compare=0001 --benchmark-compare-fail=median:25%

# Canopy vs --cache off vs a bare aiohttp ceiling, one workload, sqlite (+ Cassandra if up).
compare: install
	$(BIN)/python -m bench.compare --json bench/results/compare.json

# Memory and latency at 10^3..10^6 hot messages on a real node.
scale: install
	$(BIN)/python -m bench.scale --json bench/results/scale.json

# A chat frontend's day, headless and bounded (32 users, 30 s): bench/results/.
loadtest: install
	$(BIN)/python -m bench.loadtest --users 32 --seconds 30

# Record a new baseline (on a quiet machine) and commit bench/baseline/.
bench-save: install
	rm -rf bench/baseline && $(BENCH) --benchmark-save=baseline

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
