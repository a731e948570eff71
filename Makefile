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
test:
	$(CARGO) build --all-targets --quiet
	testenv/up
	set -o pipefail; eval "$$(testenv/env)"; \
	  $(CARGO) test --all-targets -- --test-threads=$(TEST_THREADS) 2>&1 | tee target/test-output.log; status=$$?; \
	  testenv/down; exit $$status

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

env:
	@testenv/env

clean-testenv:
	testenv/down
	rm -rf .testenv
