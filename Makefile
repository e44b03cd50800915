# Entry points: `make demo`, `make test`. Everything else is for developers.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
# the bench's peers (benchmarks/peers/): Quix Streams pins confluent-kafka below the pipeline's
PEERS_VENV  := .venv-peers
PEERS_STAMP := $(PEERS_VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
ARGS   ?=

.PHONY: install peers demo test test-quick test-browser chromium console faults bench bench-year bench-state lint clean up docs
CHROMIUM ?= /usr/bin/chromium

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (found %s); set PYTHON=python3.11" % sys.version.split()[0])'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing into $(VENV) ..."
	@$(BIN)/python -m pip install -q --upgrade pip > $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)
	@$(BIN)/python -m pip install -q -e '.[dev]' >> $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

install: $(STAMP)

$(PEERS_STAMP): pyproject.toml
	@test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	@echo "installing the bench's peers into $(PEERS_VENV) ..."
	@$(PEERS_VENV)/bin/python -m pip install -q --upgrade pip > $(PEERS_VENV)/install.log 2>&1 || (cat $(PEERS_VENV)/install.log; exit 1)
	@$(PEERS_VENV)/bin/python -m pip install -q -e '.[peers]' >> $(PEERS_VENV)/install.log 2>&1 || (cat $(PEERS_VENV)/install.log; exit 1)
	@$(PEERS_VENV)/bin/python -m pip check >> $(PEERS_VENV)/install.log 2>&1 || (cat $(PEERS_VENV)/install.log; exit 1)
	@rm -f $(PEERS_VENV)/.installed-*
	@touch $(PEERS_STAMP)

## The virtualenv of the bench's Quix Streams peer (make bench installs it).
peers: $(PEERS_STAMP)

## Run the whole system: embedded broker + PostgreSQL, workers, sinks, a simulated city, live counters.
demo: $(STAMP)
	@$(BIN)/ehb demo $(ARGS)

## Start only the embedded broker and PostgreSQL (prints the EHB_* variables to use them).
up: $(STAMP)
	@$(BIN)/ehb up $(ARGS)

## Debian's chromium for the console's browser tests (Playwright drives it; it never downloads
## a browser): installed with apt-get when missing and we are root, else those tests skip.
chromium:
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
	    echo "installing Debian's chromium for the browser tests ..."; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
	      > $(VENV)/chromium-install.log 2>&1 \
	      || echo "chromium could not be installed ($(VENV)/chromium-install.log): the browser tests will be skipped"; \
	  else echo "no $(CHROMIUM) and not root: the browser tests will be skipped"; fi; }

## The default test suite (starts its own broker and database), on two pytest-xdist workers,
## a test module each at a time: most tests wait on their deployment.
test: $(STAMP) chromium
	@$(BIN)/python -m pytest -n 2 --dist loadscope $(ARGS)

## Only the console's browser tests (headless Chromium); screenshots in reports/console/.
test-browser: $(STAMP) chromium
	@$(BIN)/python -m pytest -m browser tests/console $(ARGS)

## The tests that need no services (no broker, no PostgreSQL): about a minute.
test-quick: $(STAMP)
	@$(BIN)/python -m pytest -m "not integration" $(ARGS)

## Regenerate the generated tables in docs/ (settings, reason codes).
docs: $(STAMP)
	@$(BIN)/python -m ehb.commands.docs

## Static checks: ruff format and ruff, the import layers (import-linter), the types (mypy, [tool.mypy]).
lint: $(STAMP)
	@$(BIN)/ruff format --check .
	@$(BIN)/ruff check .
	@$(BIN)/lint-imports
	@$(BIN)/mypy

## Fault injection (200,000 events a scenario: EHB_FAULTS_EVENTS, EHB_FAULTS_BROKER_EVENTS for the durable-broker ones), every crash point, scenario 1 x 50 (EHB_FAULTS_LOOP_RUNS), bad input, fuzzing; writes reports/faults.{md,json}.
faults: $(STAMP)
	@$(BIN)/python -m pytest -m faults tests/faults -n 2 --dist loadscope $(ARGS)

bench: $(STAMP) $(PEERS_STAMP)
	@$(BIN)/python benchmarks/bench.py $(ARGS)

bench-year: $(STAMP)
	@$(BIN)/python benchmarks/bench.py --year $(ARGS)

## The citizens table on RocksDB at 10 M citizens: rebuild, restarts with and without the local
## state, standby takeover, memory and disk (benchmarks/state_bench.py; ARGS="--citizens N").
bench-state: $(STAMP)
	@$(BIN)/python -m benchmarks.state_bench $(ARGS)

## The web console alone (ehb console), on the running `make up` / `make demo` stack.
console: $(STAMP)
	@$(BIN)/ehb console $(ARGS)

clean:
	rm -rf .ehb .pytest_cache
