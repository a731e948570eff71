# Quick start: `make test` (all set-up, then every test) and `make demo`.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: all build test lint up down env clean-testenv

all: build

build:
	$(CARGO) build --release

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

# Servers up, every test with testenv's environment, servers down even when tests fail;
# exits with the tests' status.
test:
	$(CARGO) build --all-targets --quiet
	testenv/up
	set -o pipefail; eval "$$(testenv/env)"; \
	  $(CARGO) test --all-targets 2>&1 | tee target/test-output.log; status=$$?; \
	  testenv/down; exit $$status

up:
	testenv/up

down:
	testenv/down

env:
	@testenv/env

clean-testenv:
	testenv/down
	rm -rf .testenv
