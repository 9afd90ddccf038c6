# dstack-nft-cluster: the two set-up commands are `make testnet` and `make test`.
# Both install whatever is missing on a fresh machine (Debian packages, the npm toolchain of
# contracts/, Rust crates through Cargo.lock) and are safe to run again.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# One build profile (release) for tests and binaries, in a target dir outside the clone so fresh
# clones on this machine reuse earlier builds.
CARGO_TARGET_DIR ?= $(HOME)/.cache/dstack-nft-cluster/target
export CARGO_TARGET_DIR
CARGO ?= cargo
CARGO_FLAGS ?= --release --locked
BIN := $(CARGO_TARGET_DIR)/release

CONTRACTS := contracts
# The native Foundry binaries npm installed (not the node wrappers in node_modules/.bin: a test
# that kills a wrapper with SIGKILL would orphan the anvil it spawned).
FOUNDRY_PLATFORM := $(shell uname -s | tr '[:upper:]' '[:lower:]')-$(shell uname -m | sed 's/x86_64/amd64/;s/aarch64/arm64/')
FOUNDRY_PKGS := $(abspath $(CONTRACTS)/node_modules/@foundry-rs)
export ANVIL_BIN := $(FOUNDRY_PKGS)/anvil-$(FOUNDRY_PLATFORM)/bin/anvil
export FORGE_BIN := $(FOUNDRY_PKGS)/forge-$(FOUNDRY_PLATFORM)/bin/forge
export CAST_BIN := $(FOUNDRY_PKGS)/cast-$(FOUNDRY_PLATFORM)/bin/cast
FORGE := $(FORGE_BIN)
# CI runs the forge suite with its larger fuzz budget.
ifeq ($(CI),true)
export FOUNDRY_PROFILE ?= ci
endif

# Debian packages the project needs beyond the base machine: iproute2 and iptables for the chaos
# suite's network namespaces.
APT_PACKAGES := iproute2 iptables

.PHONY: help setup deps-apt deps-npm build test test-contracts test-rust test-fuzz testnet contracts \
        contracts-check fmt lint deploy clean bench fuzz fuzz-seeds

help:
	@echo "make testnet   set up what is missing, then run a local cluster"
	@echo "make test      set up what is missing, then run every test"
	@echo "make contracts rebuild the contract and refresh the committed artifact"
	@echo "make deploy    deploy the contract to RPC_URL (see README)"
	@echo "make bench     a short load sweep with SVG plots (.run/bench-sweep)"
	@echo "make fuzz      every fuzz target for FUZZ_SECONDS each (default $(FUZZ_SECONDS))"
	@echo "make fmt | make lint"

setup: deps-apt deps-npm

deps-apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "==> installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# npm ci only when the lockfile changed since the last install.
deps-npm: $(CONTRACTS)/node_modules/.installed
$(CONTRACTS)/node_modules/.installed: $(CONTRACTS)/package.json $(CONTRACTS)/package-lock.json
	@echo "==> installing the contract toolchain (npm ci)"
	cd $(CONTRACTS) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

build: setup
	$(CARGO) build $(CARGO_FLAGS) --workspace --all-targets

test: setup test-contracts test-rust test-fuzz
	@echo "==> all tests passed"

test-contracts: deps-npm
	@echo "==> forge test ($${FOUNDRY_PROFILE:-default} profile)"
	cd $(CONTRACTS) && $(FORGE) test
	@echo "==> gas snapshot check (contracts/.gas-snapshot; refresh: cd contracts && forge snapshot --match-contract Gas)"
	cd $(CONTRACTS) && $(FORGE) snapshot --match-contract Gas --check
	@$(MAKE) --no-print-directory contracts-check

test-rust: setup
	@echo "==> cargo build (release, once for tests and binaries)"
	$(CARGO) build $(CARGO_FLAGS) --workspace --all-targets
	@echo "==> cargo test"
	$(CARGO) test $(CARGO_FLAGS) --workspace
	@bash scripts/check-mutant-cfgs.sh

# Fuzzing (fuzz/, cargo-fuzz + libFuzzer, its own workspace, lockfile and target dir):
# `make fuzz` runs every target for FUZZ_SECONDS; `make test` runs each for FUZZ_TEST_SECONDS
# (12 targets: about 3 minutes of fuzzing after the build). Extra libFuzzer flags: FUZZ_ARGS.
FUZZ_SECONDS ?= 60
FUZZ_TEST_SECONDS ?= 15
FUZZ_TARGET_DIR ?= $(HOME)/.cache/dstack-nft-cluster/fuzz-target
export FUZZ_TARGET_DIR

test-fuzz:
	bash scripts/fuzz.sh $(FUZZ_TEST_SECONDS)

fuzz:
	bash scripts/fuzz.sh $(FUZZ_SECONDS)

# Rewrites the seed corpus (fuzz/corpus/<target>/seed-*) from fuzz/src/seeds.rs.
fuzz-seeds:
	cd fuzz && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz build -O -a -s none --target-dir $(FUZZ_TARGET_DIR) \
	  --features seeds seed_corpus
	$(FUZZ_TARGET_DIR)/$$(rustc -vV | sed -n 's/^host: //p')/release/seed_corpus

# `testnet up` with defaults (4 validators, powers 1,1,2,3, 1 s blocks) in .run/testnet; extra
# flags through TESTNET_ARGS (e.g. TESTNET_ARGS=--detach). Ctrl-C stops the whole cluster.
testnet: setup
	$(CARGO) build $(CARGO_FLAGS) -p testnet -p membership -p node --bins
	$(BIN)/testnet up $(TESTNET_ARGS)

# A short load sweep (not part of `make test`): n = 4 and 7 at two rates plus a leader kill;
# reports and SVG plots in .run/bench-sweep. Extra flags through BENCH_ARGS.
bench: setup
	$(CARGO) build $(CARGO_FLAGS) -p benches -p node -p membership --bins
	$(BIN)/bench sweep --nodes 4,7 --rates 2000,10000 --duration 5 --failover-rate 2000 \
	  --out .run/bench-sweep $(BENCH_ARGS)

contracts: deps-npm
	bash scripts/contract-artifact.sh write

contracts-check: deps-npm
	bash scripts/contract-artifact.sh check

deploy: deps-npm
	bash scripts/deploy.sh

fmt:
	$(CARGO) fmt --all
	cd $(CONTRACTS) && $(FORGE) fmt

lint: deps-npm
	$(CARGO) fmt --all -- --check
	cd $(CONTRACTS) && $(FORGE) fmt --check
	$(CARGO) clippy $(CARGO_FLAGS) --workspace --all-targets -- -D warnings

clean:
	rm -rf .run $(CONTRACTS)/out $(CONTRACTS)/cache
