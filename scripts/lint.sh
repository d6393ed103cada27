#!/usr/bin/env bash
# Lint, part of `make test`: rustfmt, clippy with warnings as errors, and every PL/pgSQL
# function of the extension through plpgsql_check (performance, extra and security
# warnings on). A finding fails unless tests/plpgsql_check.allow lists it with the reason.
#   scripts/lint.sh                        rustfmt and clippy
#   scripts/lint.sh --plpgsql-only PORT    plpgsql_check against a running cluster
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" != "--plpgsql-only" ]; then
    echo "== lint: cargo fmt --check"
    cargo fmt --all -- --check
    echo "== lint: cargo clippy -D warnings"
    cargo clippy --workspace --all-targets -- -D warnings
    exit 0
fi
PORT=${2:?port of a running cluster}
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)
echo "== lint: plpgsql_check (performance, extra and security warnings)"
"${PSQL[@]}" -d postgres -c "drop database if exists lint" -c "create database lint" >/dev/null
"${PSQL[@]}" -d lint -c "create extension plpgsql_check" -c "create extension pg_entitlements" >/dev/null
# Trigger functions are checked against a table they are attached to, with its transition tables.
"${PSQL[@]}" -d lint -At -F ' | ' > /tmp/plpgsql_check.found <<'SQL'
with fns as (
    select p.oid, p.oid::regprocedure::text as fn,
           (select t.tgrelid from pg_trigger t where t.tgfoid = p.oid order by t.tgrelid limit 1) as relid,
           (select t.tgoldtable from pg_trigger t where t.tgfoid = p.oid order by t.tgrelid limit 1) as oldtable,
           (select t.tgnewtable from pg_trigger t where t.tgfoid = p.oid order by t.tgrelid limit 1) as newtable,
           p.prorettype = 'trigger'::regtype as is_trigger
      from pg_proc p join pg_language l on l.oid = p.prolang
     where p.pronamespace = 'entitlements'::regnamespace and l.lanname = 'plpgsql')
select f.fn, c.level, c.message
  from fns f
  cross join lateral plpgsql_check_function_tb(f.oid, coalesce(f.relid, 0),
        performance_warnings => true, extra_warnings => true, security_warnings => true,
        oldtable => f.oldtable, newtable => f.newtable) c
 where not f.is_trigger or f.relid is not null
 order by 1, 2, 3;
SQL
# Allowed findings: "function | level | message  # why", one per line.
sed -e 's/[[:space:]]*#.*$//' -e '/^[[:space:]]*$/d' tests/plpgsql_check.allow | sort > /tmp/plpgsql_check.allowed
sort /tmp/plpgsql_check.found > /tmp/plpgsql_check.sorted
unexplained=$(comm -23 /tmp/plpgsql_check.sorted /tmp/plpgsql_check.allowed)
if [ -n "$unexplained" ]; then
    echo "plpgsql_check findings not explained in tests/plpgsql_check.allow:" >&2
    echo "$unexplained" >&2
    exit 1
fi
stale=$(comm -13 /tmp/plpgsql_check.sorted /tmp/plpgsql_check.allowed)
[ -z "$stale" ] || { echo "tests/plpgsql_check.allow lists findings that no longer occur:" >&2; echo "$stale" >&2; exit 1; }
echo "plpgsql_check: $(wc -l < /tmp/plpgsql_check.sorted) findings, each explained in tests/plpgsql_check.allow"
"${PSQL[@]}" -d postgres -c "drop database lint" >/dev/null
