# The front door: `make help` lists the targets.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run
BENCH_STAMP := $(VENV)/.installed-bench
BROWSER_STAMP := $(VENV)/.installed-browser
NETNS_STAMP := $(VENV)/.installed-netns
# apt-get as root, else through sudo (the dashboard test drives Debian's chromium)
APT := $(shell [ "$$(id -u)" = 0 ] || echo sudo) apt-get
PYTEST_ARGS ?=
BENCH_ARGS ?=

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

# Every install goes through constraints.txt: the versions tested, so a new release
# of a tool cannot turn a green main red overnight (`make lock` refreshes them).
PIP_INSTALL := $(PY) -m pip install --quiet -c constraints.txt

# `make run` needs only what `broker serve` imports: the server and the client. The dev
# tools (pytest, mypy, playwright, grpcurl) and the benchmark peers come with `install`.
$(RUN_STAMP): pyproject.toml clients/python/pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -e clients/python -e .
	touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP)
	$(PIP_INSTALL) --upgrade pip
	$(PIP_INSTALL) -e clients/python -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the broker, the client and the dev tools

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PIP_INSTALL) -e '.[bench]'
	touch $(BENCH_STAMP)

run: $(RUN_STAMP) ## Start the broker on 127.0.0.1:50051 with ./broker.db (installs the server alone)
	$(VENV)/bin/broker serve

$(BROWSER_STAMP): $(STAMP)
	command -v chromium >/dev/null 2>&1 || $(APT) install -y -q chromium \
	  || ($(APT) update -q && $(APT) install -y -q chromium)
	touch $(BROWSER_STAMP)

# The partition tests make a network namespace with veth links (ip) and fault them (nft).
$(NETNS_STAMP): $(STAMP)
	{ command -v ip && command -v nft; } >/dev/null 2>&1 || $(APT) install -y -q iproute2 nftables \
	  || ($(APT) update -q && $(APT) install -y -q iproute2 nftables)
	touch $(NETNS_STAMP)

test: $(STAMP) $(BROWSER_STAMP) $(NETNS_STAMP) ## Run the whole test suite (PostgreSQL tests need BROKER_TEST_DATABASE_URL)
	$(PY) -m pytest $(PYTEST_ARGS)

proto: $(STAMP) ## Regenerate the stubs in clients/python/src/eventbroker/v1
	PYTHON=$(PY) scripts/gen_proto.sh

proto-check: $(STAMP) ## Fail when the generated stubs are stale
	@tmp=$$(mktemp -d) && PYTHON=$(PY) scripts/gen_proto.sh $$tmp \
	  && diff -r clients/python/src/eventbroker/v1 $$tmp/eventbroker/v1 -x __pycache__ \
	  && echo "generated stubs are up to date"; rc=$$?; rm -rf $$tmp; exit $$rc

lint: $(STAMP) ## ruff check and ruff format --check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP) ## ruff format and ruff check --fix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

typecheck: $(STAMP) ## mypy --strict on the handwritten code and the tests
	$(VENV)/bin/mypy

bench: $(BENCH_STAMP) ## This broker beside NATS, RabbitMQ and pgqueuer; one table, bench-results.json
	$(PY) -m tests.bench.run $(BENCH_ARGS)

bench-scale: $(STAMP) ## One broker process against two on the local PostgreSQL
	$(PY) -m tests.bench.scale

check: proto-check lint typecheck test ## Everything CI runs

lock: ## Re-resolve the dependencies to their newest versions and pin them in constraints.txt
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --upgrade pip
	.venv-lock/bin/pip install --quiet ./clients/python '.[dev]'
	{ sed -n '1,2p' constraints.txt; .venv-lock/bin/pip freeze --all | grep -v '^eventbroker'; } > constraints.new
	mv constraints.new constraints.txt && rm -rf .venv-lock

clean: ## Remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

.PHONY: help install run test proto proto-check lint format typecheck bench bench-scale check lock clean
