#!/usr/bin/env bash
# Console (issue #14): the server time of the admin overview and of a customer search, through
# a real worker over HTTP with a signed-in admin, beside the bare SQL statements those pages run
# (bench/console/overview.sql, search.sql: the same statements, as the same user, in one psql
# session), on the revenue bench's 100,000 customers (bench/revenue/setup.sql) given emails.
# Usage: bench/console/run.sh PORT   (a cluster with the extension installed)
set -euo pipefail
cd "$(dirname "$0")/../.."
PORT=$1
RUNS=${BENCH_CONSOLE_RUNS:-7}
ADDR=127.0.0.1:${BENCH_CONSOLE_HTTP_PORT:-8197}
DB=bench_console
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)
ADMIN=a0000000-0000-0000-0000-0000000bad01
"${PSQL[@]}" -d postgres >/dev/null <<'SQL'
do $$ begin
    if not exists (select 1 from pg_roles where rolname = 'authenticated') then create role authenticated nologin; end if;
end $$;
SQL
"${PSQL[@]}" -d postgres -c "drop database if exists $DB" -c "create database $DB" >/dev/null
"${PSQL[@]}" -d $DB -c "create extension pg_entitlements" -c "grant entitlements_api to authenticated" >/dev/null
"${PSQL[@]}" -d $DB -f bench/revenue/setup.sql >/dev/null
"${PSQL[@]}" -d $DB >/dev/null <<SQL
set session_replication_role = replica;
update entitlements.customers c set email = 'user' || n || '@example.org', display_name = 'User ' || n,
       stripe_customer_id = 'cus_bench' || n
  from (select id, row_number() over (order by id) n from entitlements.customers) x where x.id = c.id;
-- An audit log of 1,000,000 rows about them (grants given), for the customer page's trail.
insert into entitlements.audit_log (at, txid, actor_role, action, table_name, row_key, new_values, reason)
select now() - make_interval(secs => i), i, 'postgres', 'insert', 'entitlements.grants', gen_random_uuid()::text,
       jsonb_build_object('customer_id', ('00000000-0000-0000-0000-' || lpad(to_hex(1 + i % 100000), 12, '0'))::uuid,
                          'kind', 'boost', 'feature_key', 'api_requests'), 'bench'
  from generate_series(1, 1000000) i;
reset session_replication_role;
analyze;
select entitlements.add_admin('$ADMIN');
SQL
TOKEN=$("${PSQL[@]}" -d $DB -At -c "select entitlements.create_admin_token('$ADMIN', 'bench', now() + interval '1 hour')")
echo "== console: $("${PSQL[@]}" -d $DB -At -c "select count(*) from entitlements.customers") customers, median of $RUNS runs"

DATABASE_URL="postgres://postgres@127.0.0.1:$PORT/$DB" ENTITLEMENTS_LISTEN_ADDR=$ADDR ENTITLEMENTS_SCHEDULER=false \
    ENTITLEMENTS_DELIVERY=false ENTITLEMENTS_CONSOLE_SECRET=bench-console-secret-0123456789abcdef RUST_LOG=warn \
    entitlements-worker serve &
WORKER=$!
JAR=$(mktemp)
trap 'kill $WORKER 2>/dev/null; rm -f "$JAR"; "${PSQL[@]}" -d postgres -c "drop database if exists $DB" >/dev/null 2>&1 || true' EXIT
for _ in $(seq 200); do curl -sf "http://$ADDR/livez" >/dev/null && break; sleep 0.1; done
# Sign in as the admin: the form's CSRF token and cookie, then the token.
csrf=$(curl -sf -c "$JAR" "http://$ADDR/sign-in" | sed -n 's/.*name="csrf" value="\([^"]*\)".*/\1/p' | head -1)
code=$(curl -s -o /dev/null -w '%{http_code}' -b "$JAR" -c "$JAR" --data-urlencode "csrf=$csrf" \
    --data-urlencode "token=$TOKEN" --data-urlencode "next=/admin" "http://$ADDR/sign-in")
[ "$code" = 303 ] || { echo "FAIL: sign-in answered $code" >&2; exit 1; }

# Median of RUNS (after one warm-up) of a page's total time, ms.
page_ms() {
    curl -sf -b "$JAR" -o /dev/null "http://$ADDR$1"
    for _ in $(seq "$RUNS"); do curl -sf -b "$JAR" -o /dev/null -w '%{time_total}\n' "http://$ADDR$1"; done |
        sort -n | awk '{a[NR]=$1 * 1000} END {print a[int((NR+1)/2)]}'
}
# Median of RUNS of a file's statements together, as the admin (as the page runs them), ms.
sql_ms() {
    { echo "begin;"; echo "select set_config('role', 'authenticated', true), set_config('request.jwt.claims', '{\"sub\": \"$ADMIN\"}', true);"
      sed "s/:q/'$2'/g" "$1"; echo "commit;"; } > "$JAR.sql"
    "${PSQL[@]}" -d $DB -f "$JAR.sql" >/dev/null
    for _ in $(seq "$RUNS"); do
        s=$(date +%s%N); "${PSQL[@]}" -d $DB -f "$JAR.sql" >/dev/null; e=$(date +%s%N)
        echo $(( (e - s) / 1000 ))
    done | sort -n | awk '{a[NR]=$1 / 1000} END {print a[int((NR+1)/2)]}'
}
# The same connection cost on both sides: psql's start-up, measured with an empty script.
echo "select 1;" > "$JAR.empty"
psql_ms=$(for _ in $(seq "$RUNS"); do s=$(date +%s%N); "${PSQL[@]}" -d $DB -f "$JAR.empty" >/dev/null; e=$(date +%s%N); echo $(( (e - s) / 1000 )); done |
    sort -n | awk '{a[NR]=$1 / 1000} END {print a[int((NR+1)/2)]}')
printf "%-40s %12s %16s %8s\n" "page" "page ms" "bare SQL ms" "ratio"
for row in "overview (/admin)|/admin|bench/console/overview.sql|" \
           "customer search, an email prefix|/admin/customers?q=user4242|bench/console/search.sql|user4242" \
           "customer search, an exact Stripe id|/admin/customers?q=cus_bench77|bench/console/search.sql|cus_bench77" \
           "customer page|/admin/customers/00000000-0000-0000-0000-000000001092|bench/console/customer.sql|00000000-0000-0000-0000-000000001092"; do
    IFS='|' read -r name path file q <<< "$row"
    p=$(page_ms "$path"); s=$(sql_ms "$file" "$q")
    awk -v n="$name" -v p="$p" -v s="$s" -v c="$psql_ms" 'BEGIN { net = s - c; if (net < 0.1) net = 0.1;
        printf "%-40s %12.1f %16.1f %7.2fx\n", n, p, net, p / net }'
done
echo "(bare SQL: the page's statements in one transaction as the same admin, psql's own start-up of $psql_ms ms taken off)"
