#!/usr/bin/env bash
# Every test tier; fails on the first failing tier. Called by `make test` after `make install`.
#  0. lint: rustfmt, clippy -D warnings (plpgsql_check once the cluster runs)
#  1. #[pg_test] in the extension (cargo pgrx test, its own throwaway cluster)
#  2. pgTAP SQL tests in pg_test/ (pg_prove) against a private cluster, the README tour,
#     plpgsql_check, the privileges allow-list, dump/restore, two first installs at once and
#     the upgrade from 0.1.0
#  3. integration tests in tests/ (cargo test) against the same cluster
#  4. the worker's Kubernetes manifests against the real schemas
# The Citus tier is separate for now (`make test-citus`, scripts/test_citus.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${TEST_PGPORT:-54339}
DATA=${TEST_PGDATA:-/tmp/pg_entitlements-test}
PGRX_DATA=/tmp/pg_entitlements-pgrx-test
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)

echo "== 0/3 lint"
scripts/lint.sh

echo "== 1/3 extension unit tests (cargo pgrx test)"
mkdir -p "$PGRX_DATA" && chown postgres:postgres "$PGRX_DATA"
(cd extension && cargo pgrx test pg15 --runas postgres --pgdata "$PGRX_DATA/data")
# cargo pgrx test installs its own (test) build; put the release build back.
(cd extension && cargo pgrx install --release --pg-config "$PG_CONFIG" >/dev/null)

echo "== 2/3 SQL tests (pgTAP)"
scripts/cluster.sh stop "$DATA"
rm -rf "$DATA"
trap 'scripts/cluster.sh stop "$DATA"' EXIT
PG_FSYNC=off scripts/cluster.sh start "$DATA" "$PORT"
# A Supabase-shaped database: these roles exist before CREATE EXTENSION.
"${PSQL[@]}" -d postgres <<'SQL'
create role anon nologin;
create role authenticated nologin;
create role service_role nologin;
create role supabase_auth_admin nologin;
create database pg_test;
SQL
"${PSQL[@]}" -d pg_test -c "create extension pgtap" -c "create extension pg_entitlements"
pg_prove -h 127.0.0.1 -p "$PORT" -U postgres -d pg_test pg_test/*.sql

echo "== README tour, pasted into a fresh database"
"${PSQL[@]}" -d postgres -c "create database tour"
"${PSQL[@]}" -d tour -c "create extension pg_entitlements" \
    -c "select entitlements.apply_catalog(\$json\$$(cat examples/catalog.json)\$json\$) is not null" >/dev/null
sed -n '/<!-- tour:begin -->/,/<!-- tour:end -->/p' README.md | grep -v -e '^<!--' -e '^```' |
    "${PSQL[@]}" -d tour -f - >/dev/null

scripts/lint.sh --plpgsql-only "$PORT"
echo "== privileges allow-list"
scripts/test_privileges.sh "$PORT"
echo "== pg_dump / pg_restore round trip"
scripts/test_dump_restore.sh "$PORT"
echo "== two first installs at once"
scripts/test_install_race.sh $((PORT + 3))
echo "== upgrade from 0.1.0"
scripts/test_upgrade.sh "$PORT"

echo "== 3/3 integration tests"
# The unit tests of the worker (configuration, backoff, signatures, rendering of a server's
# Kubernetes objects) and of the resources contract, then the integration tests.
cargo test --release -p entitlements-worker --lib
cargo test --release -p entitlements-resources
ENTITLEMENTS_TEST_ADMIN_URL="postgres://postgres@127.0.0.1:$PORT/postgres" \
    cargo test --release -p integration-tests -- --test-threads=2
echo "== Kubernetes manifests (kubernetes-validate, Kubernetes 1.32 schemas)"
kubernetes-validate --strict -k 1.32 deploy/kubernetes/*.yaml
echo "== all tests passed"
