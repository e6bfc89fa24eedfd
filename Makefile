# The one front door: run, test, lint, proto, bench, e2e. Each target works on
# a fresh clone with only Python 3.11+ (the venv and packages come from PyPI).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PACKAGES := libs/proto libs/protocol libs/bus libs/backend libs/common libs/tokens libs/testing libs/devtools \
            services/gateway services/presence services/history services/auth services/api services/events services/webhooks
PYPROJECTS := $(addsuffix /pyproject.toml,$(PACKAGES))

GATEWAYS ?= 1
TTL ?= 3600
# `make token USER=alice`: USER from the command line only (the shell's $$USER is not a Meshcast user).
TOKEN_USER := $(if $(filter command line,$(origin USER)),$(USER),dev)
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install run token api-key admin-secret webhook-secret nats-url test unit integration e2e chaos lint format proto bench lock clean

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel

# The unmodified centrifuge-js SDK for the e2e tests (skipped where npm is missing;
# in CI, CI=true, a missing npm fails: .ci/run installs it).
JS_DIR := tests/e2e/js
JS_STAMP := $(JS_DIR)/node_modules/.installed

$(JS_STAMP): $(JS_DIR)/package.json $(JS_DIR)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  npm ci --prefix $(JS_DIR) --no-audit --no-fund --loglevel=error && touch $@; \
	elif [ "$$CI" = true ]; then echo "npm not found: CI runs the centrifuge-js e2e tests (.ci/run installs nodejs, npm)" >&2; exit 1; \
	else echo "npm not found: the centrifuge-js e2e tests will be skipped"; fi

# requirements.lock: what the services run on (the image installs it alone);
# requirements-dev.lock: tests, linters and tools.
$(STAMP): $(BIN)/python requirements.lock requirements-dev.lock $(PYPROJECTS)
	$(BIN)/python -m pip install --quiet -r requirements.lock -r requirements-dev.lock
	@# setuptools prints ~150 lines of editable-install warnings: kept in a log, shown on failure.
	@$(BIN)/python -m pip install --quiet --no-deps $(addprefix -e ,$(PACKAGES)) > $(VENV)/install.log 2>&1 \
	  || { cat $(VENV)/install.log; exit 1; }
	@touch $@

# `make run EXAMPLE=chat`: also the example backend of examples/chat (its namespaces delegate to it).
# `make run TRACING=1`: also Jaeger (built once with Go, `make jaeger`), every service traced into it;
# where it cannot be built, the stack runs without it. OTEL_* variables pass through to every service.
run: install
	$(BIN)/python -m meshcast.devtools run --gateways $(GATEWAYS) $(if $(EXAMPLE),--example $(EXAMPLE)) \
	  $(if $(TRACING),--jaeger "$$($(BIN)/python -m meshcast.testing.jaeger)")

token: install
	@$(BIN)/python -m meshcast.devtools token --user "$(TOKEN_USER)" --ttl $(TTL)

# The server API key of `make run` (MESHCAST_API_KEY, else what `make run` made once into .run/api-key).
api-key: install
	@$(BIN)/python -m meshcast.devtools api-key

# The admin UI's secret (http://127.0.0.1:9000/admin; MESHCAST_ADMIN_SECRET, else what `make run` made once into .run/admin-secret).
admin-secret: install
	@$(BIN)/python -m meshcast.devtools admin-secret

# The webhook relay's signing secret (MESHCAST_WEBHOOK_SECRET, else what `make run` made once into .run/webhook-secret).
webhook-secret: install
	@$(BIN)/python -m meshcast.devtools webhook-secret

# The NATS URL, with its password, of user `backend` (for your own backends) of the running `make run`.
nats-url: install
	@$(BIN)/python -m meshcast.devtools nats-url

# Centrifugo, the reference of the conformance suite (tests/conformance): built once with
# go install into ~/.cache/meshcast/tools (minutes on a fresh machine, then reused; see
# docs/compatibility.md). Without Go its tests skip; in CI (CI=true) a missing go fails.
.PHONY: reference conformance jaeger
reference: install
	@if command -v go >/dev/null 2>&1 || [ -x /usr/local/go/bin/go ]; then \
	  $(BIN)/python -m meshcast.testing.reference >/dev/null; \
	elif [ "$$CI" = true ]; then echo "go not found: CI runs the conformance suite (Centrifugo is built with go)" >&2; exit 1; \
	else echo "go not found: the conformance tests will be skipped"; fi

# Jaeger's all-in-one v1.76.0 for `make run TRACING=1` and the tracing e2e test: built once with Go
# into ~/.cache/meshcast/tools (about 10 minutes cold on 2 busy cores, bounded at 25; then reused),
# before pytest so that no test's timeout runs it. Without Go its test skips; in CI a missing go fails.
jaeger: install
	@if command -v go >/dev/null 2>&1 || [ -x /usr/local/go/bin/go ]; then \
	  $(BIN)/python -m meshcast.testing.jaeger >/dev/null || echo "Jaeger was not built: the tracing e2e test says why" >&2; \
	elif [ "$$CI" = true ]; then echo "go not found: CI runs the tracing e2e test (Jaeger is built with go)" >&2; exit 1; \
	else echo "go not found: the tracing e2e test will be skipped"; fi

# Debian's prometheus package for the monitoring tests (`promtool test rules`, a real
# prometheus): they skip where it is missing; in CI (CI=true) a missing one fails (.ci/run installs it).
.PHONY: prometheus-tools
prometheus-tools:
	@if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then :; \
	elif [ "$$CI" = true ]; then echo "promtool or prometheus not found: CI runs the monitoring tests (.ci/run installs Debian's prometheus)" >&2; exit 1; \
	else echo "promtool or prometheus not found (apt-get install prometheus): the monitoring tests will be skipped"; fi

test: install $(JS_STAMP) reference jaeger prometheus-tools
	$(BIN)/python -m pytest

unit: install
	$(BIN)/python -m pytest tests/unit

integration: install
	$(BIN)/python -m pytest tests/integration

e2e: install $(JS_STAMP) prometheus-tools
	$(BIN)/python -m pytest tests/e2e

# The differential suite against Centrifugo, every scripted session; `make test` runs the short ones.
conformance: install reference
	MESHCAST_CONFORMANCE=full $(BIN)/python -m pytest tests/conformance

# Faults under load in network namespaces (root, iproute2): the full schedule;
# `make test` runs the short one. CHAOS_SCHEDULE=short for the short one alone.
CHAOS_SCHEDULE ?= full
chaos: install
	MESHCAST_CHAOS_SCHEDULE=$(CHAOS_SCHEDULE) $(BIN)/python -m pytest tests/chaos -s

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

proto: install
	$(BIN)/python scripts/gen_proto.py

bench: install
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# Re-pin requirements.lock (the runtime closure of libs/ and services/) and
# requirements-dev.lock (the rest) from what the venv holds now.
lock: install
	$(BIN)/python -m meshcast.devtools.lock

clean:
	rm -rf $(VENV) .run build
