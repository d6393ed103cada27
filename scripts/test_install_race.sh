#!/usr/bin/env bash
# Two first installs at once, into two databases of a new cluster. The extension's roles are
# cluster-wide, so the second install meets the first one's uncommitted role; it must carry on
# (it failed with 23505 on pg_authid). Deterministic: the first install is held open after it
# created the roles (on an advisory lock), the second is seen waiting on it, then both go on.
#   scripts/test_install_race.sh PORT     (a free port for a throwaway cluster)
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${1:?a free port}
DATA=/tmp/pg_entitlements-install-race
WORK=$(mktemp -d)
cleanup() {
    exec 3>&- 2>/dev/null || true
    kill $(jobs -p) 2>/dev/null || true
    scripts/cluster.sh stop "$DATA"
    rm -rf "$DATA" "$WORK"
}
trap cleanup EXIT
scripts/cluster.sh stop "$DATA"
rm -rf "$DATA"
PG_FSYNC=off scripts/cluster.sh start "$DATA" "$PORT" >/dev/null
q() { psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres "$@"; }
# Poll a boolean query until true, at most 60 s.
wait_for() {
    for _ in $(seq 600); do
        [ "$(q -d postgres -At -c "$1")" = t ] && return 0
        sleep 0.1
    done
    echo "install race: timed out waiting for: $2" >&2
    exit 1
}
q -d postgres -c "create database race_a" -c "create database race_b"

# A session that holds advisory lock 4242 (of race_a: advisory locks are per database) until
# this script closes its input.
mkfifo "$WORK/hold"
q -d race_a < "$WORK/hold" >/dev/null &
exec 3>"$WORK/hold"
echo "select pg_advisory_lock(4242);" >&3
wait_for "select exists (select 1 from pg_locks where locktype = 'advisory' and objid = 4242 and granted)" "the lock held"

# Neither install may hold the holder's input open (3>&-), or its session never ends.
q -1 -d race_a -c "create extension pg_entitlements" -c "select pg_advisory_xact_lock(4242)" >/dev/null 2>"$WORK/a.err" 3>&- &
a=$!
wait_for "select exists (select 1 from pg_locks where locktype = 'advisory' and objid = 4242 and not granted)" \
    "the first install waiting, its roles created"
q -d race_b -c "create extension pg_entitlements" >/dev/null 2>"$WORK/b.err" 3>&- &
b=$!
wait_for "select exists (select 1 from pg_stat_activity where datname = 'race_b' and wait_event_type = 'Lock')" \
    "the second install waiting on the first one's role"
exec 3>&-   # the holder's session ends: the first install commits, the second goes on

ok=true
wait "$a" || { echo "install race: the first install failed: $(cat "$WORK/a.err")" >&2; ok=false; }
wait "$b" || { echo "install race: the second install failed: $(cat "$WORK/b.err")" >&2; ok=false; }
$ok
for db in race_a race_b; do
    [ "$(q -d "$db" -At -c "select extversion from pg_extension where extname = 'pg_entitlements'")" != "" ] ||
        { echo "install race: no extension in $db" >&2; exit 1; }
done
echo "install race: two first installs at once both succeed"
