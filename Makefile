# Quick start: `make test` (all set-up, then every test) and `make demo`.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: all build test demo lint up down env clean-testenv

all: build

build:
	$(CARGO) build --release

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

# Servers up, every test with testenv's environment, servers down even when tests fail;
# exits with the tests' status. The integration tests are one binary (tests/suite);
# tests lock the servers they need (tests/suite/common/locks.rs) and mostly wait
# on the servers, so more test threads than cores (libtest's default) keep
# several servers busy at once.
TEST_THREADS ?= 4
# Beside the stack: a three-node OpenSearch cluster of its own (own state
# directory and ports), for the tests of what only a cluster shows (replicas,
# a node killed mid-snapshot: tests/suite/opensearch_cluster.rs). The tests
# read where it is from IT_CLUSTER_*.
CLUSTER_DIR ?= $(CURDIR)/.testenv/cluster
CLUSTER_PORT ?= 9500
CLUSTER_NODES ?= 3
CLUSTER := IT_TESTENV_DIR=$(CLUSTER_DIR) IT_TESTENV_OPENSEARCH_PORT=$(CLUSTER_PORT) IT_TESTENV_OPENSEARCH_NODES=$(CLUSTER_NODES)
# And a sandbox: a second stack (testenv's sandbox profile, ports +20000) that
# the sandbox drill restores the development stack's backups into
# (tests/suite/sandbox.rs); its target config is written for the tests.
# Its directory is named too: the test recipe exports the development
# stack's IT_TESTENV_DIR (testenv/env), which would beat the profile's.
SANDBOX := IT_TESTENV_PROFILE=sandbox IT_TESTENV_DIR=$(CURDIR)/.testenv/sandbox
SANDBOX_SERVICES := postgres opensearch neo4j
SANDBOX_CONFIG := $(CURDIR)/.testenv/sandbox.toml
test:
	$(CARGO) build --all-targets --quiet
	testenv/up
	$(CLUSTER) testenv/up opensearch
	$(SANDBOX) testenv/up $(SANDBOX_SERVICES)
	$(SANDBOX) testenv/target-config > $(SANDBOX_CONFIG)
	set -o pipefail; eval "$$(testenv/env)"; \
	  export IT_CLUSTER_TESTENV_DIR=$(CLUSTER_DIR) IT_CLUSTER_OPENSEARCH_PORT=$(CLUSTER_PORT) IT_CLUSTER_OPENSEARCH_NODES=$(CLUSTER_NODES); \
	  export IT_SANDBOX_TARGET_CONFIG=$(SANDBOX_CONFIG); \
	  $(CARGO) test --all-targets -- --test-threads=$(TEST_THREADS) 2>&1 | tee target/test-output.log; status=$$?; \
	  testenv/down; $(CLUSTER) testenv/down opensearch; $(SANDBOX) testenv/down $(SANDBOX_SERVICES); exit $$status

# The main job on the local stack: servers up (installed if missing), then the
# recovery drill (populate, back up, wipe, restore, verify, measure the RTO).
# --yes: this is the development stack, rewinding it to a backup taken seconds
# earlier is harmless. The servers stay up; `make down` stops them.
demo:
	$(CARGO) build --release --quiet
	testenv/up
	eval "$$(testenv/env)"; target/release/itbackup drill --yes $(DRILL_ARGS)
	@echo "backups: artifacts/backup (itbackup list); servers still running: make down"

up:
	testenv/up

down:
	testenv/down
	$(CLUSTER) testenv/down opensearch
	$(SANDBOX) testenv/down $(SANDBOX_SERVICES)

env:
	@testenv/env

clean-testenv:
	testenv/down
	$(CLUSTER) testenv/down opensearch
	$(SANDBOX) testenv/down $(SANDBOX_SERVICES)
	rm -rf .testenv
