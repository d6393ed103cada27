# pg_entitlements — `make run` and `make test` do all the setup they need.
SHELL := /bin/bash
PG_CONFIG := /usr/lib/postgresql/15/bin/pg_config
PREFIX ?= /usr/local

# `make run` cluster: data folder and port are configurable.
PGDATA ?= $(CURDIR)/.pgdata
PGPORT ?= 54329
export PGDATA PGPORT

.PHONY: setup install run test test-citus bench check clean

setup:
	@scripts/setup.sh

# Build and install the extension into the system PostgreSQL 15 and the worker on the PATH.
install: setup
	cd extension && cargo pgrx install --release --pg-config $(PG_CONFIG)
	install -m 0644 sql/pg_entitlements--*--*.sql $$($(PG_CONFIG) --sharedir)/extension/
	cargo build --release -p entitlements-worker
	install -m 0755 target/release/entitlements-worker $(PREFIX)/bin/entitlements-worker

run: install
	@scripts/run.sh

test: install
	@scripts/test.sh

# The Citus tier (not in `make test` until its setup flake is understood): scripts/test_citus.sh.
test-citus: install
	@scripts/test_citus.sh

bench: install
	@bench/run.sh

# Fast feedback while editing.
check:
	cargo check --workspace --all-targets

clean:
	-scripts/cluster.sh stop $(PGDATA)
	cargo clean
