#!/usr/bin/env bash
# Refusal signals (issue #13): consume's refusal path (PT429) and try_consume's (allowed =
# false) with the counting on, beside the same with it off (entitlements.refusal_signals, the
# path as it was before counting), in one run, alternating, on 1,000 refused customers.
# Usage: bench/monitoring/run.sh PORT   (a cluster with the extension installed)
set -euo pipefail
cd "$(dirname "$0")/../.."
PORT=$1
SECONDS_PER_RUN=${BENCH_MONITORING_SECONDS:-10}
ROUNDS=${BENCH_MONITORING_ROUNDS:-3}
CLIENTS=${BENCH_MONITORING_CLIENTS:-2}
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)
"${PSQL[@]}" -d postgres -c "drop database if exists bench_monitoring" -c "create database bench_monitoring"
"${PSQL[@]}" -d bench_monitoring -c "create extension pg_entitlements" \
    -c "select entitlements.apply_catalog(\$json\$$(cat examples/catalog.json)\$json\$) is not null" >/dev/null
"${PSQL[@]}" -d bench_monitoring -f bench/monitoring/setup.sql >/dev/null

tps() { # script, on|off
    PGOPTIONS="-c entitlements.refusal_signals=$2" pgbench -n -h 127.0.0.1 -p "$PORT" -U postgres -M prepared \
        -f "bench/monitoring/$1.pgbench" -c "$CLIENTS" -j "$CLIENTS" -T "$SECONDS_PER_RUN" bench_monitoring 2>&1 |
        awk '/^tps/ {print $3; exit}'
}
echo "== refusals: counted (signals on) beside not counted (off), $CLIENTS clients, ${SECONDS_PER_RUN}s x $ROUNDS rounds each"
printf "%-28s %12s %12s %8s\n" "path" "on tps" "off tps" "on/off"
for script in consume_refused try_refused; do
    tps "$script" on >/dev/null; tps "$script" off >/dev/null   # warm-up
    on=0; off=0
    for _ in $(seq "$ROUNDS"); do
        on=$(awk -v a="$on" -v b="$(tps "$script" on)" 'BEGIN {print a + b}')
        off=$(awk -v a="$off" -v b="$(tps "$script" off)" 'BEGIN {print a + b}')
    done
    awk -v n="$script" -v a="$on" -v b="$off" -v r="$ROUNDS" \
        'BEGIN { printf "%-28s %12.0f %12.0f %7.3fx\n", n, a / r, b / r, a / b }'
done
counted=$("${PSQL[@]}" -d bench_monitoring -At -c "select coalesce(sum(count), 0) from entitlements.security_signals")
echo "refusals counted while on (written by the flush workers): $counted"
[ "$counted" -gt 0 ] || { echo "FAIL: nothing was counted" >&2; exit 1; }
"${PSQL[@]}" -d postgres -c "drop database bench_monitoring"
