#!/usr/bin/env bash
# A Citus cluster on this machine: a coordinator and two workers, each a private cluster of
# scripts/cluster.sh on its own port (PORT, PORT+1, PORT+2), data under BASE.
#   scripts/citus.sh install                 build and install Citus 13.2.2 (../shared/citus)
#   scripts/citus.sh start BASE PORT         start (initdb on first use) all three nodes
#   scripts/citus.sh createdb BASE PORT DB   a database on every node with citus, the workers
#                                            added to the coordinator's metadata
#   scripts/citus.sh stop BASE
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=${1:?install|start|createdb|stop}
# Citus turns on TLS with a self-signed certificate; on one machine the nodes talk in the clear.
OPTS="-c shared_preload_libraries=citus -c max_prepared_transactions=200 -c ssl=off -c citus.node_conninfo=sslmode=disable"
psql_at() { psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U postgres "${@:2}"; }

citus_source() {
    for d in "${CITUS_SOURCE:-}" "$PWD/../shared/citus" /work/shared/citus; do
        if [ -n "$d" ] && [ -x "$d/build.sh" ]; then echo "$d"; return 0; fi
    done
    return 1
}

case "$cmd" in
install)
    src=$(citus_source) || { echo "citus: no Citus source (set CITUS_SOURCE to the folder of build.sh)" >&2; exit 3; }
    "$src/build.sh"
    ;;
start)
    base=${2:?base directory}; port=${3:?coordinator port}
    for i in 0 1 2; do
        PG_EXTRA_OPTS="$OPTS" scripts/cluster.sh start "$base/node$i" $((port + i))
    done
    ;;
createdb)
    base=${2:?base directory}; port=${3:?coordinator port}; db=${4:?database}
    for i in 0 1 2; do
        psql_at $((port + i)) -d postgres -c "create database $db"
        psql_at $((port + i)) -d "$db" -c "create extension citus"
    done
    psql_at "$port" -d "$db" -c "select citus_set_coordinator_host('127.0.0.1', $port)" \
        -c "select citus_add_node('127.0.0.1', $((port + 1)))" -c "select citus_add_node('127.0.0.1', $((port + 2)))" >/dev/null
    ;;
stop)
    base=${2:?base directory}
    for i in 0 1 2; do scripts/cluster.sh stop "$base/node$i"; done
    ;;
*) echo "usage: $0 install | start BASE PORT | createdb BASE PORT DB | stop BASE" >&2; exit 2 ;;
esac
