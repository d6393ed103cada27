#!/usr/bin/env bash
# `make bench`: benchmarks side by side with their baselines, in one run, on a private cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${BENCH_PGPORT:-54349}
DATA=${BENCH_PGDATA:-/tmp/pg_entitlements-bench}
RUNS=${BENCH_RUNS:-7}
BASE_RUNS=${BENCH_BASE_RUNS:-3}
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)
# Which parts to run (all by default), e.g. BENCH_PARTS=metering; the setup always runs.
PARTS=" ${BENCH_PARTS:-has_feature replica metering cache webhooks provisioning revenue monitoring console} "
part() { [[ "$PARTS" == *" $1 "* ]]; }

REPLICA_DATA="$DATA-replica"
scripts/cluster.sh stop "$REPLICA_DATA"
scripts/cluster.sh stop "$DATA"
rm -rf "$DATA" "$REPLICA_DATA"
trap 'scripts/cluster.sh stop "$REPLICA_DATA"; scripts/cluster.sh stop "$DATA"' EXIT
scripts/cluster.sh start "$DATA" "$PORT"
"${PSQL[@]}" -d postgres -c "create database bench"
"${PSQL[@]}" -d bench -c "create extension pg_entitlements" \
    -c "select entitlements.apply_catalog(\$json\$$(cat examples/catalog.json)\$json\$) is not null" >/dev/null
"${PSQL[@]}" -d bench -f bench/has_feature/setup.sql >/dev/null
"${PSQL[@]}" -d bench -f bench/has_feature/baseline.sql >/dev/null
"${PSQL[@]}" -d bench -f bench/has_feature/rls.sql >/dev/null

# Median wall time (ms) of a query run N times in one session as bench_reader, after one warm-up.
median_ms() {
    local query=$1 n=$2 port=${3:-$PORT}
    { echo "set role bench_reader;"; echo "$query;"; echo "\\timing on"; for _ in $(seq "$n"); do echo "$query;"; done; } |
        psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d bench -At |
        awk '/^Time:/ {print $2}' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}
rows() { "${PSQL[@]}" -d bench -At -c "set role bench_reader" -c "select count(*) from bench.$1"; }

if part has_feature; then
echo "== has_feature: identical answers"
diff=$("${PSQL[@]}" -d bench -At -c "
    select count(*) from (select bench.cid(i) c from generate_series(1, 1000) i
                          union all select bench.cid(9000 + o) from generate_series(1, 50) o) x,
                         unnest(array['advanced_agents', 'sso']) f
     where entitlements.has_feature(x.c, f) is distinct from bench.has_feature_plpgsql(x.c, f)")
echo "customers x features where the extension and the PL/pgSQL baseline disagree: $diff"
[ "$diff" = 0 ] || { echo "FAIL: answers differ" >&2; exit 1; }


echo "== has_feature per row from an RLS policy, 200,000 rows, 1,000 customers"
n_ext=$(rows docs_ext); n_base=$(rows docs_plpgsql)
echo "rows visible: extension $n_ext, baseline $n_base"
[ "$n_ext" = "$n_base" ] || { echo "FAIL: visible rows differ" >&2; exit 1; }
open_ms=$(median_ms "select count(*) from bench.docs_open" "$RUNS")
ext_ms=$(median_ms "select count(*) from bench.docs_ext" "$RUNS")
base_ms=$(median_ms "select count(*) from bench.docs_plpgsql" "$BASE_RUNS")
awk -v o="$open_ms" -v e="$ext_ms" -v b="$base_ms" 'BEGIN {
    r = 200000
    printf "%-34s %10s %14s %16s\n", "policy", "median ms", "us/row (all)", "us/row (net)"
    printf "%-34s %10.1f %14.3f %16s\n", "using (true)  [scan only]", o, o * 1000 / r, "-"
    printf "%-34s %10.1f %14.3f %16.3f\n", "entitlements.has_feature", e, e * 1000 / r, (e - o) * 1000 / r
    printf "%-34s %10.1f %14.3f %16.3f\n", "PL/pgSQL baseline", b, b * 1000 / r, (b - o) * 1000 / r
    printf "ratio (baseline / extension): %.0fx per row overall, %.0fx net of the scan\n", b / e, (b - o) / (e - o)
}'
fi

# --- Checks on a read replica: the same RLS scan on the primary and on a hot standby -------
if part replica; then
echo "== has_feature per row on a streaming hot standby beside its primary (200,000 rows)"
REPLICA_PORT=${BENCH_REPLICA_PGPORT:-$((PORT - 1))}
scripts/cluster.sh replica "$REPLICA_DATA" "$REPLICA_PORT" "$PORT" >/dev/null
lsn=$("${PSQL[@]}" -d bench -At -c "select pg_current_wal_lsn()")
for _ in $(seq 600); do
    caught=$(psql -X -h 127.0.0.1 -p "$REPLICA_PORT" -U postgres -d bench -At \
        -c "select coalesce(pg_last_wal_replay_lsn() >= '$lsn', false)" 2>/dev/null || echo f)
    [ "$caught" = t ] && break
    sleep 0.1
done
[ "$caught" = t ] || { echo "FAIL: the replica did not replay $lsn within a minute" >&2; exit 1; }
n_rep=$(psql -X -q -h 127.0.0.1 -p "$REPLICA_PORT" -U postgres -d bench -At -c "set role bench_reader" \
    -c "select count(*) from bench.docs_ext")
n_pri=$(rows docs_ext)
echo "rows visible: primary $n_pri, replica $n_rep"
[ "$n_rep" = "$n_pri" ] || { echo "FAIL: the replica answers differently" >&2; exit 1; }
pri_open=$(median_ms "select count(*) from bench.docs_open" "$RUNS")
pri_ext=$(median_ms "select count(*) from bench.docs_ext" "$RUNS")
rep_open=$(median_ms "select count(*) from bench.docs_open" "$RUNS" "$REPLICA_PORT")
rep_ext=$(median_ms "select count(*) from bench.docs_ext" "$RUNS" "$REPLICA_PORT")
awk -v po="$pri_open" -v pe="$pri_ext" -v ro="$rep_open" -v re="$rep_ext" 'BEGIN {
    r = 200000
    printf "%-10s %14s %18s %18s\n", "server", "scan only ms", "has_feature ms", "us/row (net)"
    printf "%-10s %14.1f %18.1f %18.3f\n", "primary", po, pe, (pe - po) * 1000 / r
    printf "%-10s %14.1f %18.1f %18.3f\n", "replica", ro, re, (re - ro) * 1000 / r
    printf "ratio (replica / primary): %.2fx overall, %.2fx net of the scan\n", re / pe, (re - ro) / (pe - po)
}'
scripts/cluster.sh stop "$REPLICA_DATA"
fi

# --- Metering: consume() against the hand-written counter, same clients, same run ---------
if part metering; then
SECONDS_PER_RUN=${BENCH_SECONDS:-20}
CLIENTS=${BENCH_CLIENTS:-16}
"${PSQL[@]}" -d bench -f bench/metering/setup.sql >/dev/null
# tps of one pgbench run: script, customer range lo..hi, clients, then -T seconds or -t transactions.
tps() {
    pgbench -n -h 127.0.0.1 -p "$PORT" -U postgres -M prepared -f "bench/metering/$1.pgbench" \
        -D lo="$2" -D hi="$3" -c "$4" -j 2 "${@:5}" bench 2>&1 | awk '/^tps/ {print $3; exit}'
}
# Untimed warm-up: the baseline's setup created every counter row up front; the extension
# opens a customer's window for the month on first use, so each side counts once for every
# customer before timing, then runs each workload briefly.
"${PSQL[@]}" -d bench -At -c "select count(entitlements.consume(bench.cid(i), 'api_requests')) from generate_series(20000, 30000) i" >/dev/null
"${PSQL[@]}" -d bench -At -c "update bench.counters set used = used + 1 where customer_id in (select bench.cid(i) from generate_series(20000, 30000) i)" >/dev/null
for script in baseline consume; do
    tps "$script" 20000 20000 "$CLIENTS" -T 3 >/dev/null
    tps "$script" 20001 30000 "$CLIENTS" -T 3 >/dev/null
done
# Usage thresholds (issue #11): api_requests has the default ones (80% and 100%, so a
# window's stripes stop at 800,000); the same catalog with `"thresholds": []` is consume as
# it was before them. Each round runs consume both ways, switching the catalog. A switch
# re-splits the open windows (their split no longer matches) and voids their stamps, so after it every customer counts
# twice untimed (the first call splits its window again, the second stamps it) and each
# workload runs briefly: both sides are timed in their steady state.
CATALOG_NO_THRESHOLDS=$(python3 -c 'import json
d = json.load(open("examples/catalog.json"))
for f in d["features"]:
    if f["key"] == "api_requests":
        f["thresholds"] = []
print(json.dumps(d))')
use_catalog() {
    if [ "$1" = none ]; then doc=$CATALOG_NO_THRESHOLDS; else doc=$(cat examples/catalog.json); fi
    "${PSQL[@]}" -d bench -c "select entitlements.apply_catalog(\$json\$${doc}\$json\$) is not null" >/dev/null
    for _ in 1 2; do
        "${PSQL[@]}" -d bench -At -c "select count(entitlements.consume(bench.cid(i), 'api_requests'))
                                        from generate_series(20000, 30000) i" >/dev/null
    done
    tps consume 20000 20000 "$CLIENTS" -T 2 >/dev/null
    tps consume 20001 30000 "$CLIENTS" -T 2 >/dev/null
}
ROUNDS=${BENCH_METER_ROUNDS:-3}
echo "== consume: $CLIENTS clients, ${SECONDS_PER_RUN}s per run, $ROUNDS rounds (pgbench -M prepared, fsync on)"
printf "%-6s %-18s %13s %13s %13s %9s %12s\n" "round" "workload" "baseline tps" "consume tps" "no-alert tps" "ratio" "alerts cost"
for round in $(seq "$ROUNDS"); do
    for workload in hot wide; do
        if [ "$workload" = hot ]; then lo=20000 hi=20000 name="one hot customer"; else lo=20001 hi=30000 name="10,000 customers"; fi
        base=$(tps baseline "$lo" "$hi" "$CLIENTS" -T "$SECONDS_PER_RUN")
        use_catalog default
        ext=$(tps consume "$lo" "$hi" "$CLIENTS" -T "$SECONDS_PER_RUN")
        use_catalog none
        plain=$(tps consume "$lo" "$hi" "$CLIENTS" -T "$SECONDS_PER_RUN")
        awk -v r="$round" -v n="$name" -v b="$base" -v e="$ext" -v p="$plain" \
            'BEGIN { printf "%-6s %-18s %13.0f %13.0f %13.0f %8.2fx %11.1f%%\n", r, n, b, e, p, e / b, (p - e) * 100 / p }'
    done
done
use_catalog default
alerts=$("${PSQL[@]}" -d bench -At -c "select count(*) from entitlements.outbox where kind = 'quota.threshold'")
echo "quota.threshold events written by the runs (no customer reached 80%): $alerts"
drift=$("${PSQL[@]}" -d bench -At -c "select count(*) from entitlements.usage_drift()")
echo "windows where counters differ from the ledger after the runs: $drift"
[ "$drift" = 0 ] || { echo "FAIL: counters differ from the ledger" >&2; exit 1; }

echo "== overshoot: 32 clients x 50 try_consume on a customer allowed 1,000"
tps try_consume 31000 31000 32 -t 50 >/dev/null
read -r counted ledger drift < <("${PSQL[@]}" -d bench -At -F ' ' -c "
    select (select sum(used) from entitlements.usage_counters where customer_id = bench.cid(31000)),
           (select count(*) from entitlements.usage_ledger where customer_id = bench.cid(31000)),
           (select count(*) from entitlements.usage_drift())")
echo "counted $counted, ledger rows $ledger, windows where counters differ from the ledger: $drift"
[ "$counted" = 1000 ] && [ "$ledger" = 1000 ] && [ "$drift" = 0 ] || { echo "FAIL: overshoot or drift" >&2; exit 1; }
fi

# --- The per-backend cache's memory: its estimate against the measured (issue #8) -----------
if part cache; then
echo "== cache memory: estimate (cache_stats) against the backend's RssAnon"
bench/cache/memory.sh "$PORT" bench
fi

# --- Webhook intake (issue #4): signed deliveries through a real worker ----------------------
if part webhooks; then
BENCH_PGPORT=$PORT bench/webhooks/run.sh
fi

# --- Provisioning (issue #10): 1,000 servers against the fake Kubernetes API ------------------
if part provisioning; then
# Converge and resync through the installed worker (`make install`), beside a naive loop that
# applies everything; the test creates its own database in this cluster and fails if the resync
# writes anything.
echo "== provisioning: converge and resync of 1,000 servers against the fake API, beside a naive apply-everything loop"
ENTITLEMENTS_TEST_ADMIN_URL="postgres://postgres@127.0.0.1:$PORT/postgres" \
    cargo test --release -p integration-tests --test provision_bench -- --ignored --nocapture
fi

# --- Revenue (issue #12): movements and MRR over 100,000 customers' history ------------------
if part revenue; then
bench/revenue/run.sh "$PORT"
fi

# --- Refusal signals (issue #13): consume's refusal path counted vs not ------------------------
if part monitoring; then
bench/monitoring/run.sh "$PORT"
fi

# --- Admin console (issue #14): pages beside the SQL they run, 100,000 customers --------------
if part console; then
bench/console/run.sh "$PORT"
fi
