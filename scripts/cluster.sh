#!/usr/bin/env bash
# Start/stop a private PostgreSQL 15 cluster owned by the `postgres` user.
#   scripts/cluster.sh start DATADIR PORT   (initdb on first use; reuses an existing cluster)
#   scripts/cluster.sh stop  DATADIR
#   PG_EXTRA_OPTS adds server options ("-c name=value ..."), e.g. Citus's preload (scripts/citus.sh).
#   scripts/cluster.sh replica DATADIR PORT PRIMARY_PORT   (a streaming hot standby of the
#       cluster on PRIMARY_PORT: pg_basebackup -R on first use, then started like any other)
set -euo pipefail
BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
cmd=${1:?start|stop}; dir=${2:?data directory}
as_pg() { if [ "$(id -un)" = postgres ]; then "$@"; else sudo -u postgres "$@"; fi; }

case "$cmd" in
replica)
    port=${3:?port}; primary=${4:?primary port}
    if [ ! -f "$dir/PG_VERSION" ]; then
        mkdir -p "$dir"
        chown postgres:postgres "$dir" 2>/dev/null || true
        chmod 700 "$dir"
        as_pg "$BIN/pg_basebackup" -h 127.0.0.1 -p "$primary" -U postgres -D "$dir" -R -X stream -c fast
        # The primary's log came along in the copy.
        as_pg truncate -s 0 "$dir/server.log" 2>/dev/null || true
    fi
    if [ ! -f "$dir/standby.signal" ]; then
        echo "$dir holds a cluster that is not a standby: refusing to start it as a replica" >&2
        exit 1
    fi
    exec "$0" start "$dir" "$port"
    ;;
start)
    port=${3:?port}
    mkdir -p "$dir"
    chown postgres:postgres "$dir" 2>/dev/null || true
    chmod 700 "$dir"
    if [ ! -f "$dir/PG_VERSION" ]; then
        as_pg "$BIN/initdb" -D "$dir" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    fi
    if as_pg "$BIN/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
        echo "cluster in $dir already running"
        exit 0
    fi
    if ! as_pg "$BIN/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start \
        -o "-p $port -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=200 -c max_worker_processes=16 -c shared_buffers=256MB -c fsync=${PG_FSYNC:-on} ${PG_EXTRA_OPTS:-}" >/dev/null; then
        # Say why (a port in use, memory), before a caller's cleanup removes the log.
        echo "cluster in $dir did not start on port $port; its log ends:" >&2
        tail -n 20 "$dir/server.log" >&2 || true
        exit 1
    fi
    echo "cluster in $dir listening on 127.0.0.1:$port"
    ;;
stop)
    if [ -f "$dir/PG_VERSION" ] && as_pg "$BIN/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
        as_pg "$BIN/pg_ctl" -D "$dir" -m fast -w stop >/dev/null
    fi
    ;;
*) echo "usage: $0 start DIR PORT | stop DIR | replica DIR PORT PRIMARY_PORT" >&2; exit 2 ;;
esac
