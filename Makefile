# matchenv: every set-up step is a target here; `make demo` and `make test` need nothing else on a fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CLUSTER_DIR ?= /tmp/matchenv-cluster
PYTEST_ARGS ?=

.PHONY: help system-deps venv lock crds monitoring lint e2e-kind test test-unit cluster-build node-build images cluster-up cluster-down demo bench chaos clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

system-deps:  ## install RabbitMQ, PostgreSQL and check Go (Debian; apt via sudo when not root)
	@scripts/install-system-deps.sh

$(STAMP): pyproject.toml devkit/pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --constraint requirements.lock -e '.[test,dev]' -e ./devkit
	@touch $@

venv: $(STAMP)  ## create .venv with matchenv, its dev kit (matchenv-dev) and its test/dev tools

lock:  ## pin every runtime dependency (transitive too) in requirements.lock, from a fresh venv
	rm -rf build/lock-venv && $(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/pip install --quiet --disable-pip-version-check .
	{ sed -n '1,3p' requirements.lock; build/lock-venv/bin/pip freeze --exclude matchenv; } > requirements.lock.new
	mv requirements.lock.new requirements.lock && rm -rf build/lock-venv

crds: $(STAMP)  ## regenerate the CRD and its defaulting policy (crds/, manifests/, the chart) from the models
	$(BIN)/matchenv crd

monitoring:  ## copy the monitoring component's rules and dashboard into the chart (charts/matchenv/files/)
	cp manifests/components/monitoring/prometheusrule.yaml manifests/components/monitoring/dashboard.json charts/matchenv/files/

lint: $(STAMP)  ## ruff, mypy, and a check that crds/ is up to date
	$(BIN)/ruff check src devkit tests conftest.py
	$(BIN)/mypy
	$(BIN)/matchenv crd --check

cluster-build: $(STAMP)  ## build (or reuse) the control plane, the oldest supported API server and helm, cached in ~/.cache/matchenv
	$(BIN)/matchenv-dev cluster build

node-build: $(STAMP)  ## build (or reuse) the cached node binaries: kubelet, kube-proxy, containerd, runc, CoreDNS
	$(BIN)/matchenv-dev node build

images: node-build  ## build (or reuse) the node's images: the project's Dockerfile on a Debian base, pause, CoreDNS
	$(BIN)/matchenv-dev images build

test: system-deps $(STAMP)  ## the whole suite: unit and integration tests while the cluster builds, the integration tier on RabbitMQ 3.10 too, the e2e tier, then the install tests on kind (scripts/test.sh)
	@PYTEST_ARGS="$(PYTEST_ARGS)" scripts/test.sh

test-unit: $(STAMP)  ## only the fast, pure tests
	$(BIN)/pytest tests/unit devkit/tests/unit $(PYTEST_ARGS)

cluster-up: cluster-build node-build images  ## start the local control plane and a real node in the background
	$(BIN)/matchenv-dev cluster up --node real --state-dir $(CLUSTER_DIR)

cluster-down: $(STAMP)  ## stop the local control plane and its node, leaving nothing behind
	$(BIN)/matchenv-dev cluster down --state-dir $(CLUSTER_DIR)

demo: system-deps cluster-build node-build images  ## the main job: the install from manifests/overlays/local on a real node, prod/dev/staging, scrape Jobs
	$(BIN)/matchenv-dev demo

e2e-kind: system-deps cluster-build node-build images  ## the install tests on a kind cluster built here (its own Docker engine; KIND_NODE_IMAGE: a public node image)
	scripts/e2e-kind.sh

bench: system-deps $(STAMP)  ## each measure beside its baseline (never part of make test): docs/benchmarks.md + .png
	$(BIN)/matchenv-dev bench

chaos: system-deps cluster-build  ## the chaos test with 50,000 matches, then the three-node broker's faults with 50,000 (the suite: 10,000 and 20,000)
	MATCHENV_CHAOS_MATCHES=$${MATCHENV_CHAOS_MATCHES:-50000} $(BIN)/pytest tests/e2e/test_chaos.py -s
	MATCHENV_CLUSTER_MATCHES=$${MATCHENV_CLUSTER_MATCHES:-50000} $(BIN)/pytest tests/integration/test_broker_cluster.py -s

clean:  ## remove the virtualenv and caches in the tree (the control-plane cache stays)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
