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
# The TypeScript client: its node packages (buf, ts-proto, tsc) come from its
# package-lock.json; only the targets that need them install them.
TS := clients/typescript
NPM_STAMP := $(TS)/node_modules/.installed
BUF := $(TS)/node_modules/.bin/buf

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

$(NPM_STAMP): $(TS)/package.json $(TS)/package-lock.json
	@command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 \
	  || { echo "node (20 or newer) and npm are needed for the TypeScript client" >&2; exit 1; }
	cd $(TS) && npm ci --no-audit --no-fund
	touch $(NPM_STAMP)

# The suites `make test` runs, one command each (a test of the Makefile puts others in).
PYTHON_SUITE = $(PY) -m pytest $(PYTEST_ARGS)
TS_SUITE = cd $(TS) && BROKER_BIN=$(CURDIR)/$(VENV)/bin/broker npm test

# Every suite runs, even after one failed; the end says how each went, and the
# exit status is not 0 when any failed (so `.ci/run` fails).
test: $(STAMP) $(BROWSER_STAMP) $(NETNS_STAMP) $(NPM_STAMP) ## Run the whole test suite, Python then TypeScript (PostgreSQL tests need BROKER_TEST_DATABASE_URL)
	@python=0; typescript=0; \
	( $(PYTHON_SUITE) ) || python=$$?; \
	( $(TS_SUITE) ) || typescript=$$?; \
	outcome() { if [ "$$2" = 0 ]; then echo "$$1 passed"; else echo "$$1 FAILED (exit $$2)"; fi; }; \
	echo; echo "make test: $$(outcome 'Python suite' $$python); $$(outcome 'TypeScript suite' $$typescript)"; \
	[ $$python = 0 ] && [ $$typescript = 0 ]

test-ts: $(STAMP) $(NPM_STAMP) ## Run the TypeScript client's node:test suite against a live broker
	$(TS_SUITE)

ts-pack: ## Pack the TypeScript client: clients/typescript/eventbroker-<version>.tgz, for `npm install PATH.tgz`
	@command -v npm >/dev/null 2>&1 || { echo "npm (Node 20 or newer) is needed to pack the TypeScript client" >&2; exit 1; }
	cd $(TS) && npm pack --no-audit --no-fund

proto: $(STAMP) $(NPM_STAMP) ## Regenerate the stubs (clients/python/src/eventbroker/v1, clients/typescript/src/gen) and the TypeScript dist/
	PYTHON=$(PY) scripts/gen_proto.sh
	scripts/gen_proto_ts.sh
	cd $(TS) && npm run build

proto-check: $(STAMP) $(NPM_STAMP) ## Fail when the generated stubs (Python or TypeScript) or the TypeScript dist/ are stale
	@tmp=$$(mktemp -d) && PYTHON=$(PY) scripts/gen_proto.sh $$tmp \
	  && diff -r clients/python/src/eventbroker/v1 $$tmp/eventbroker/v1 -x __pycache__ \
	  && scripts/gen_proto_ts.sh $$tmp/ts && diff -r $(TS)/src/gen $$tmp/ts/src/gen \
	  && echo "generated stubs are up to date"; rc=$$?; rm -rf $$tmp; exit $$rc
	@cd $(TS) && rm -rf .dist-check && node_modules/.bin/tsc -p tsconfig.json --outDir .dist-check \
	  && diff -r dist .dist-check && echo "clients/typescript/dist is up to date (else: npm run build)"; \
	  rc=$$?; rm -rf .dist-check; exit $$rc

proto-contract: $(NPM_STAMP) ## buf lint proto/, and fail on a breaking change against proto/released.binpb
	$(BUF) lint proto
	$(BUF) breaking proto --against proto/released.binpb
	@echo "proto/ passes buf lint and keeps the released API"

proto-release: $(NPM_STAMP) ## At a release: record proto/ as the released API (proto/released.binpb)
	$(BUF) build proto --exclude-source-info -o proto/released.binpb

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

check: proto-check proto-contract lint typecheck test ## Everything CI runs

lock: ## Re-resolve the dependencies to their newest versions and pin them in constraints.txt
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --upgrade pip
	.venv-lock/bin/pip install --quiet ./clients/python '.[dev]'
	{ sed -n '1,2p' constraints.txt; .venv-lock/bin/pip freeze --all | grep -v '^eventbroker'; } > constraints.new
	mv constraints.new constraints.txt && rm -rf .venv-lock

clean: ## Remove the virtualenv, node_modules, build output and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache $(TS)/node_modules $(TS)/dist $(TS)/build $(TS)/eventbroker-*.tgz

.PHONY: help install run test test-ts ts-pack proto proto-check proto-contract proto-release lint format typecheck bench bench-scale check lock clean
