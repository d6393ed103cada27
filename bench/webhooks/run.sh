#!/usr/bin/env bash
# Webhook intake (issue #4), called by bench/run.sh on its cluster: signed Stripe deliveries
# posted over HTTP to a real `entitlements-worker serve` (which verifies, stores and, in the
# background, applies them), against the baseline of inserting the same events straight
# into a plain table over as many connections. Fails if a delivery is refused or an event is
# left unapplied; reports whether 1,000 deliveries per second were accepted.
set -euo pipefail
cd "$(dirname "$0")/../.."
PORT=${BENCH_PGPORT:-54349}
EVENTS=${BENCH_WEBHOOK_EVENTS:-20000}
CONNECTIONS=${BENCH_WEBHOOK_CONNECTIONS:-16}
WORKER_PORT=${BENCH_WORKER_PORT:-54359}
DB=postgres://postgres@127.0.0.1:$PORT/bench_webhooks
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)
SECRET=whsec_bench_$(date +%s)

cargo build -q --release -p integration-tests --example webhook_load
LOAD=target/release/examples/webhook_load
"${PSQL[@]}" -d postgres -c "drop database if exists bench_webhooks" -c "create database bench_webhooks"
"${PSQL[@]}" -d bench_webhooks -c "create extension pg_entitlements" \
    -c "select entitlements.apply_catalog(\$json\$$(cat examples/catalog.json)\$json\$) is not null" \
    -c "select count(entitlements.link_stripe_customer(md5('bench' || i)::uuid, 'cus_bench' || i)) from generate_series(0, 999) i" \
    -c "create schema bench" -c "create table bench.raw_events (id text primary key, payload jsonb not null)" >/dev/null

DATABASE_URL=$DB ENTITLEMENTS_LISTEN_ADDR=127.0.0.1:$WORKER_PORT STRIPE_WEBHOOK_SECRET=$SECRET \
    ENTITLEMENTS_SCHEDULER=false RUST_LOG=warn entitlements-worker serve &
WORKER=$!
trap 'kill $WORKER 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$WORKER_PORT/healthz" >/dev/null && break; sleep 0.1; done

echo "== webhook intake: $EVENTS signed deliveries over $CONNECTIONS connections (1,000 subscriptions)"
read -r _ _ base_s base_rate < <("$LOAD" --raw --events "$EVENTS" --connections "$CONNECTIONS" --database-url "$DB")
read -r _ _ stored_s stored_rate applied_s applied_rate retried < <("$LOAD" --url "http://127.0.0.1:$WORKER_PORT/webhooks/stripe" \
    --secret "$SECRET" --events "$EVENTS" --connections "$CONNECTIONS" --database-url "$DB")
kill -TERM $WORKER; wait $WORKER || true
applied=$("${PSQL[@]}" -d bench_webhooks -At -c "select count(*) from entitlements.stripe_events where applied_at is not null")
awk -v bs="$base_s" -v br="$base_rate" -v ss="$stored_s" -v sr="$stored_rate" -v as="$applied_s" -v ar="$applied_rate" 'BEGIN {
    printf "%-52s %9s %10s\n", "", "seconds", "per second"
    printf "%-52s %9.2f %10.0f\n", "baseline: INSERT into a plain table (no HTTP)", bs, br
    printf "%-52s %9.2f %10.0f\n", "worker: verified and stored (2xx answered)", ss, sr
    printf "%-52s %9.2f %10.0f\n", "worker: applied (from the first delivery)", as, ar
    printf "ratio (worker accepted / baseline): %.2f\n", sr / br
}'
echo "applied events: $applied of $EVENTS; events that needed a retry: $retried"
[ "$applied" = "$EVENTS" ] || { echo "FAIL: not every event was applied" >&2; exit 1; }
# The goal is a figure on a quiet machine, not a correctness check: say where it stands.
awk -v r="$stored_rate" -v load="$(cut -d' ' -f1 /proc/loadavg)" 'BEGIN {
    printf "goal (1,000 deliveries per second accepted): %s (load average %s on %d cores)\n",
        (r >= 1000 ? "met" : "NOT met"), load, '"$(nproc)"'
}'
