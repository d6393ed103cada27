-- Three copies of the rows behind RLS, read by a role that is not owner/superuser:
-- the policy calls the extension, the PL/pgSQL baseline, or nothing (scan cost).
\set ON_ERROR_STOP 1
create role bench_reader nologin;
grant usage on schema bench to bench_reader;
create table bench.docs_ext as table bench.docs;
create table bench.docs_plpgsql as table bench.docs;
create table bench.docs_open as table bench.docs;
do $$
declare t text;
begin
    foreach t in array array['docs_ext', 'docs_plpgsql', 'docs_open'] loop
        execute format('alter table bench.%I enable row level security', t);
        execute format('grant select on bench.%I to bench_reader', t);
    end loop;
end $$;
create policy premium on bench.docs_ext for select using (entitlements.has_feature(owner, 'advanced_agents'));
create policy premium on bench.docs_plpgsql for select using (bench.has_feature_plpgsql(owner, 'advanced_agents'));
create policy everyone on bench.docs_open for select using (true);
vacuum analyze bench.docs_ext, bench.docs_plpgsql, bench.docs_open;
