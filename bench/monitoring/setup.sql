-- Refusals (issue #13): 1,000 customers of the free plan with their 60 audio minutes used, so
-- every consume of them is refused (PT429) and every try_consume answers allowed = false.
create schema bench_monitoring;
create function bench_monitoring.cid(i integer) returns uuid language sql immutable
return ('00000000-0000-0000-0000-' || lpad(to_hex(i), 12, '0'))::uuid;
select count(entitlements.subscribe(bench_monitoring.cid(i), 'free')) from generate_series(1, 1000) i;
select count(entitlements.consume(bench_monitoring.cid(i), 'audio_minutes', 60)) from generate_series(1, 1000) i;
-- consume's refusal as an app sees it: the PT429 is raised (and caught here, so pgbench goes on).
create function bench_monitoring.refused(c uuid) returns void language plpgsql as $$
begin
    perform entitlements.consume(c, 'audio_minutes', 1);
    raise exception 'bench: consume was allowed';
exception when sqlstate 'PT429' then
    return;
end
$$;
