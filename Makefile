# The two commands of the README: `make demo` and `make test`. Both install what they need.
# `make test-fast` is the edit loop: every test not marked slow (pyproject's pytest markers).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# docker.io ... debootstrap: the compose test's engine (docker/test/engine.sh installs them too);
# iproute2: ip and tc for the multi-host test's network namespaces
DEBS := openssh-server chromium iproute2 docker.io containerd runc docker-compose debootstrap
DEMO_HOME ?= $(CURDIR)/.ccat-demo

.PHONY: test test-fast test-compose docker-engine-stop demo ui lint format bench debs install clean faults

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# Debian packages the integration tests need (a real OpenSSH sshd; iproute2 for the network
# namespaces of test_multihost.py).
debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

# ruff, the layer contract (pyproject's [tool.importlinter]; docs/design.md, "The layers") and
# pyright in basic mode (pyproject's [tool.pyright] says what it covers).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pyright -p pyproject.toml

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The suite runs on TEST_WORKERS pytest-xdist workers (the machines this runs on have 2 cores):
# a test file stays on one worker, the deployment and fault-harness files share one
# (ccat_dagster_tests/conftest.py).
TEST_WORKERS ?= 2
# The deployment tests (a daemon, a webserver and three code servers each) run afterwards, not
# beside the CPU-bound rest: under the other worker's load their code servers overran the stop
# timeout. They run two at a time, in two fixed pairs (conftest.py, DEPLOYMENT_PAIRS): their run
# workers start warm, so they mostly wait. The compose test (the whole docker/compose.yaml in a
# local Docker engine, on fixed ports of its own) is one of them. test_multihost.py is the same
# deployment with each site on a host of its own (network namespaces, root only: it fails,
# never skips, where they cannot be made; docs/scale.md).
DEPLOYMENT_TESTS := ccat_dagster_tests/test_deployment.py ccat_dagster_tests/test_deployment_dead_runs.py \
  ccat_dagster_tests/test_multihost.py ccat_dagster_tests/test_compose.py
test: install debs lint
	$(VENV)/bin/pytest -q -ra -n $(TEST_WORKERS) $(addprefix --ignore=,$(DEPLOYMENT_TESTS))
	$(VENV)/bin/pytest -q -ra -n $(TEST_WORKERS) --dist loadfile $(DEPLOYMENT_TESTS)

test-fast: install debs
	$(VENV)/bin/pytest -q -ra -m "not slow" -n $(TEST_WORKERS)

# docker/compose.yaml started for real (docker/README.md, "Testing the compose file"): installs
# and starts a Docker engine when there is none, builds the base images once (cached), runs the
# stack, archives a package, tears it down and stops the engine it started.
test-compose: install debs
	$(VENV)/bin/pytest -q -ra ccat_dagster_tests/test_compose.py

# Stops a dockerd that docker/test/engine.sh started and left running (e.g. after `engine.sh up`).
docker-engine-stop:
	bash docker/test/engine.sh stop

# The nightly-size fault-injection run (docs/reliability.md): FAULT_SCHEDULES seeded schedules
# against the real components on FAULT_WORKERS harnesses side by side; exit 1 on any violation.
FAULT_SCHEDULES ?= 500
FAULT_WORKERS ?= 2
faults: install debs
	$(PY) -m ccat_dagster_tests.faults --schedules $(FAULT_SCHEDULES) --workers $(FAULT_WORKERS)

demo: install
	CCAT_HOME=$(DEMO_HOME) $(VENV)/bin/ccat demo

# The UI on the demo home. `ccat demo --prepare` first makes the home (ops DB with the demo
# topology, Dagster instance) if there is none yet, so the code locations load on a fresh clone
# too; it keeps a home that exists. UI_ARGS go to `dagster dev` (e.g. UI_ARGS="-p 3001").
UI_ARGS ?=
ui: install
	CCAT_HOME=$(DEMO_HOME) $(VENV)/bin/ccat demo --prepare
	CCAT_HOME=$(DEMO_HOME) DAGSTER_HOME=$(DEMO_HOME)/dagster_home \
	  $(VENV)/bin/dagster dev -w workspace.yaml $(UI_ARGS)

# bench_e2e.py moves E2E_GB through three sites under the daemon (10 GB: ~40 GB of disk, and
# ~10 GB of memory for the in-process S3 server); docs/performance.md records 2 and 4.4 GB runs.
E2E_GB ?= 10
bench: install debs
	@for b in bench/bench_*.py; do echo "== $$b"; \
	  if [ $$b = bench/bench_e2e.py ]; then $(PY) $$b --gb $(E2E_GB) || exit 1; \
	  else $(PY) $$b || exit 1; fi; done

clean:
	rm -rf $(VENV) $(DEMO_HOME) .pytest_cache .ruff_cache .import_linter_cache
