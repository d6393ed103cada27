#!/usr/bin/env bash
# A Citus cluster on this machine: a coordinator and two workers, each a private cluster of
# scripts/cluster.sh on its own port (PORT, PORT+1, PORT+2), data under BASE.
#   scripts/citus.sh source                  print the folder of Citus's source and build.sh
#                                            (CITUS_SOURCE, ../shared/citus); fails if none
#   scripts/citus.sh install                 build and install Citus 13.2.2 from it
#   scripts/citus.sh start BASE PORT         start (initdb on first use) all three nodes
#   scripts/citus.sh stop BASE
# A test database on it: tests/src/db.rs (ENTITLEMENTS_TEST_CITUS_WORKERS).
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=${1:?source|install|start|stop}
# Citus turns on TLS with a self-signed certificate; on one machine the nodes talk in the clear.
OPTS="-c shared_preload_libraries=citus -c max_prepared_transactions=200 -c ssl=off -c citus.node_conninfo=sslmode=disable"

citus_source() {
    # A fresh clone elsewhere finds the machine's copy in /work/shared.
    for d in "${CITUS_SOURCE:-}" "$PWD/../shared/citus" /work/shared/citus; do
        if [ -n "$d" ] && [ -x "$d/build.sh" ]; then echo "$d"; return 0; fi
    done
    echo "citus: no Citus source (set CITUS_SOURCE to the folder of build.sh)" >&2
    return 1
}

case "$cmd" in
source)
    citus_source
    ;;
install)
    src=$(citus_source)
    "$src/build.sh"
    ;;
start)
    base=${2:?base directory}; port=${3:?coordinator port}
    for i in 0 1 2; do
        PG_EXTRA_OPTS="$OPTS" scripts/cluster.sh start "$base/node$i" $((port + i))
    done
    ;;
stop)
    base=${2:?base directory}
    for i in 0 1 2; do scripts/cluster.sh stop "$base/node$i"; done
    ;;
*) echo "usage: $0 source | install | start BASE PORT | stop BASE" >&2; exit 2 ;;
esac
