#!/usr/bin/env bash
# Revenue (issue #12): revenue_movements over 12 and 24 months and mrr(at), on 100,000
# customers with 24 months of history, beside the same numbers from an analyst's plain SQL
# (bench/revenue/analyst.sql) in the same run. Fails when the two disagree.
# Usage: bench/revenue/run.sh PORT   (a cluster with the extension installed)
set -euo pipefail
cd "$(dirname "$0")/../.."
PORT=$1
RUNS=${BENCH_REVENUE_RUNS:-3}
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)
"${PSQL[@]}" -d postgres -c "drop database if exists bench_revenue" -c "create database bench_revenue"
"${PSQL[@]}" -d bench_revenue -c "create extension pg_entitlements"
"${PSQL[@]}" -d bench_revenue -f bench/revenue/setup.sql -f bench/revenue/analyst.sql >/dev/null
"${PSQL[@]}" -d bench_revenue -At -c "select count(distinct customer_id) || ' customers, ' || count(*) || ' history rows, '
    || (select count(*) from entitlements.discounts) || ' discounts' from entitlements.subscription_history"

ours_12="select start_mrr, new_mrr, expansion_mrr, contraction_mrr, churned_mrr, reactivation_mrr, end_mrr
           from entitlements.revenue_movements('2025-01-01', '2026-01-01')"
theirs_12="select start_mrr, new_mrr, expansion_mrr, contraction_mrr, churned_mrr, reactivation_mrr, end_mrr
             from bench_revenue.analyst_movements('2025-01-01', 12)"
ours_24="select start_mrr, new_mrr, expansion_mrr, contraction_mrr, churned_mrr, reactivation_mrr, end_mrr
           from entitlements.revenue_movements('2024-01-01', '2026-01-01')"
theirs_24="select start_mrr, new_mrr, expansion_mrr, contraction_mrr, churned_mrr, reactivation_mrr, end_mrr
             from bench_revenue.analyst_movements('2024-01-01', 24)"
ours_1="select start_mrr, new_mrr, expansion_mrr, contraction_mrr, churned_mrr, reactivation_mrr, end_mrr
          from entitlements.revenue_movements('2025-06-01', '2025-07-01')"
theirs_1="select start_mrr, new_mrr, expansion_mrr, contraction_mrr, churned_mrr, reactivation_mrr, end_mrr
            from bench_revenue.analyst_movements('2025-06-01', 1)"
ours_mrr="select entitlements.mrr('2025-06-15')"
theirs_mrr="select bench_revenue.analyst_mrr('2025-06-15')"

# One line each (the table below reads them with `read`).
for v in ours_12 theirs_12 ours_24 theirs_24 ours_1 theirs_1; do
    printf -v "$v" '%s' "$(tr -s '\n ' ' ' <<< "${!v}")"
done

echo "== revenue: identical numbers"
for pair in "$ours_1|$theirs_1" "$ours_12|$theirs_12" "$ours_24|$theirs_24" "$ours_mrr|$theirs_mrr"; do
    a=$("${PSQL[@]}" -d bench_revenue -At -c "${pair%%|*}" | md5sum)
    b=$("${PSQL[@]}" -d bench_revenue -At -c "${pair##*|}" | md5sum)
    [ "$a" = "$b" ] || { echo "FAIL: the engine and the analyst's SQL disagree on: ${pair%%|*}" >&2; exit 1; }
done
echo "movements over 1, 12 and 24 months and mrr(at): the same figures"

# Median wall time (ms) of a query run N times in one session, after one warm-up.
median_ms() {
    { echo "$1;"; echo "\\timing on"; for _ in $(seq "$RUNS"); do echo "$1;"; done; } |
        "${PSQL[@]}" -d bench_revenue -At | awk '/^Time:/ {print $2}' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}
echo "== revenue: median of $RUNS runs, 100,000 customers"
printf "%-34s %12s %14s %8s\n" "query" "engine ms" "analyst ms" "ratio"
for row in "mrr(at)|$ours_mrr|$theirs_mrr" "revenue_movements, 1 month|$ours_1|$theirs_1" \
           "revenue_movements, 12 months|$ours_12|$theirs_12" "revenue_movements, 24 months|$ours_24|$theirs_24"; do
    IFS='|' read -r name ours theirs <<< "$row"
    e=$(median_ms "$ours"); b=$(median_ms "$theirs")
    awk -v n="$name" -v e="$e" -v b="$b" 'BEGIN { printf "%-34s %12.1f %14.1f %7.2fx\n", n, e, b, b / e }'
done
"${PSQL[@]}" -d postgres -c "drop database bench_revenue"
