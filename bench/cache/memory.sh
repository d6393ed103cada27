#!/usr/bin/env bash
# The per-backend cache's own estimate of its size (entitlements.cache_stats()) against the
# backend's measured anonymous memory (RssAnon in /proc), for N customers read through
# has_feature in one session. Run by bench/run.sh; prints one line per N.
#   bench/cache/memory.sh PORT DB
set -euo pipefail
PORT=${1:?port}; DB=${2:?database}
for n in 20000 100000; do
    out=$(psql -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d "$DB" -At <<SQL
select pg_backend_pid() as pid \gset
select entitlements.has_feature('00000000-0000-0000-0000-000000000001', 'advanced_agents') as warm \gset
\setenv PE_PID :pid
\! grep RssAnon /proc/\$PE_PID/status | awk '{print "before", \$2}'
select count(*) filter (where entitlements.has_feature(('00000000-0000-0000-0000-' || lpad(to_hex(g), 12, '0'))::uuid, 'advanced_agents'))
  from generate_series(1, $n) g \gset
\! grep RssAnon /proc/\$PE_PID/status | awk '{print "after", \$2}'
select 'estimate ' || (entitlements.cache_stats() ->> 'approx_bytes') || ' ' || (entitlements.cache_stats() ->> 'customers');
SQL
)
    before=$(awk '/^before/ {print $2}' <<<"$out"); after=$(awk '/^after/ {print $2}' <<<"$out")
    read -r _ est held <<<"$(grep '^estimate' <<<"$out")"
    measured=$(( (after - before) * 1024 ))
    awk -v n="$n" -v held="$held" -v m="$measured" -v e="$est" 'BEGIN {
        printf "customers %d (held %d): measured %.1f MB (%.0f B each), estimated %.1f MB (%.0f B each), measured/estimated %.2f\n",
               n, held, m/1048576, m/held, e/1048576, e/held, m/e }'
done
