# cancelwatch: the two-command quick start is `make demo` and `make test`.
# Ports: KAFKA_PORT=9092 PROMETHEUS_PORT=9090 ALERTMANAGER_PORT=9093
# ONCALL_PORT=5001 WORKER_PORT=6066, e.g. `make stack-up KAFKA_PORT=19092`.
# KAFKA_BROKERS=3 runs Kafka as a three-broker cluster (`make stack-up KAFKA_BROKERS=3`).
# Run `make help` for the list of targets.

SHELL := /bin/bash
.DEFAULT_GOAL := help
.PHONY: help install stack-up stack-down stack-status stack-clean test test-unit demo bench

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

install: ## Install what is missing: Debian packages, .venv, the compiled core, Kafka's jars
	@stack/install.sh

stack-up: install ## Start Kafka (KAFKA_BROKERS=3: a cluster), Prometheus, Alertmanager and the on-call receiver (idempotent)
	@stack/stack.sh up

stack-down: ## Stop every process of the stack (and the demo's worker and simulator)
	@stack/stack.sh down

stack-status: ## Show what runs where; non-zero when a service is down
	@stack/stack.sh status

stack-clean: ## Stop everything and wipe local data (.stack/ except jars, .state/)
	@stack/stack.sh clean

test: ## Install, start what the tests need, run pytest (PYTEST_ARGS=...), stop what it started
	@stack/test.sh

test-unit: install ## Run the quick tests that need no service (-m "not stack and not slow", on every core; PYTEST_ARGS=...); starts nothing
	@.venv/bin/python -m pytest -m "not stack and not slow" -n auto -q $(PYTEST_ARGS)

demo: ## Install, start the stack, the worker and the simulator; print where to look
	@stack/demo.sh

bench: install ## Run the benchmarks (bench/run.py; BENCH_ARGS=--quick for a smoke run)
	@.venv/bin/python -c 'import quixstreams, confluent_kafka' 2>/dev/null \
		|| .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[bench]'
	@.venv/bin/python bench/run.py $(BENCH_ARGS)

PROMETHEUS_URL ?= http://127.0.0.1:$(or $(PROMETHEUS_PORT),9090)
.PHONY: dashboards-render
dashboards-render: ## Draw each dashboard from Prometheus into .render/<uid>.png (PROMETHEUS_URL=..., RENDER_ARGS=...)
	@.venv/bin/python -c 'import matplotlib' 2>/dev/null \
		|| .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dashboards]'
	@.venv/bin/python -m dashboards.render --prometheus-url $(PROMETHEUS_URL) $(RENDER_ARGS)
