\set ON_ERROR_STOP 1
\set QUIET 1
-- Issue 8: the exploits, tried as an attacker, each asserting the fixed behaviour.
-- Runs as the superuser postgres in a Supabase-shaped database (anon, authenticated,
-- service_role and supabase_auth_admin existed before CREATE EXTENSION, scripts/test.sh).
-- Attackers are roles created in this transaction; everything is rolled back at the end.
--
--   mallory     a plain login role: no grants, not an API role, not an admin
--   ops_admin   a login role granted entitlements_admin
--   tableowner  a login role that owns an app table the extension audits
--
-- Exploit attempts that must not abort the file are wrapped (pgTAP throws_ok/lives_ok, or
-- the pg_temp helpers below), so every assertion reports even while the exploits work.
begin;
select plan(62);
\ir fixtures/catalog.sql

\set admin '''00000000-0000-0000-0000-0000000008ad'''
\set u1    '''00000000-0000-0000-0000-0000000008c1'''
\set u2    '''00000000-0000-0000-0000-0000000008c2'''
\set pc    '''00000000-0000-0000-0000-0000000008e8'''
\set pd    '''00000000-0000-0000-0000-0000000008e9'''

-- Helpers (SECURITY INVOKER: they run as whoever calls them) ---------------------------

-- The value of an expression as text, or 'ERROR <sqlstate>: <message>'.
create function pg_temp.eval_text(expr text) returns text language plpgsql as $f$
declare
    v text;
begin
    execute 'select (' || expr || ')::text' into v;
    return v;
exception when others then
    return 'ERROR ' || sqlstate || ': ' || sqlerrm;
end
$f$;

-- Run a statement and undo it whatever happens: 'ok', or the SQLSTATE it raised.
create function pg_temp.attempt(stmt text) returns text language plpgsql as $f$
begin
    begin
        execute stmt;
    exception when others then
        return sqlstate;
    end;
    raise exception using errcode = 'ZZ801';  -- undo what it did
exception when sqlstate 'ZZ801' then
    return 'ok';
end
$f$;

-- Run a statement and keep its effects: 'ok', or 'sqlstate: message'.
create function pg_temp.try_sql(stmt text) returns text language plpgsql as $f$
begin
    execute stmt;
    return 'ok';
exception when others then
    return sqlstate || ': ' || sqlerrm;
end
$f$;

-- Call an internal function of schema entitlements: 'absent' when no function of that
-- name exists there any more (moved or dropped), else what attempt() says.
create function pg_temp.refused(fn text, stmt text) returns text language plpgsql as $f$
begin
    if not exists (select 1 from pg_proc p join pg_namespace n on n.oid = p.pronamespace
                    where n.nspname = 'entitlements' and p.proname = fn) then
        return 'absent';
    end if;
    return pg_temp.attempt(stmt);
end
$f$;

-- What the calling role can do to entitlements.<tbl>: each of SELECT, INSERT, UPDATE,
-- DELETE it holds ('grant:...') or that did not fail with 42501 ('select:ok',
-- 'insert:23502', ...). Empty = denied everything. Names are looked up in the catalogs,
-- so this works when the schema itself is not usable.
create function pg_temp.not_denied(tbl text) returns text[] language plpgsql as $f$
declare
    v_oid oid;
    v_col text;
    v_op text;
    v_stmt text;
    v_res text;
    v_out text[] := '{}';
begin
    select c.oid into v_oid from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where n.nspname = 'entitlements' and c.relname = tbl;
    if v_oid is null then
        return array['missing table entitlements.' || tbl];
    end if;
    select quote_ident(a.attname) into v_col from pg_attribute a
     where a.attrelid = v_oid and a.attnum > 0 and not a.attisdropped and a.attidentity = '' and a.attgenerated = ''
     order by a.attnum limit 1;
    foreach v_op in array array['select', 'insert', 'update', 'delete'] loop
        if has_table_privilege(current_user, v_oid, v_op) then
            v_out := v_out || ('grant:' || v_op);
        end if;
        v_stmt := case v_op
            when 'select' then format('select count(*) from entitlements.%I', tbl)
            when 'insert' then format('insert into entitlements.%I default values', tbl)
            when 'update' then format('update entitlements.%I set %s = %s where false', tbl, v_col, v_col)
            when 'delete' then format('delete from entitlements.%I where false', tbl) end;
        v_res := pg_temp.attempt(v_stmt);
        if v_res <> '42501' then
            v_out := v_out || (v_op || ':' || v_res);
        end if;
    end loop;
    return v_out;
end
$f$;

-- Set (or clear, with NULL) the two identity settings, as the calling role. A refusal to
-- set them is not a failure: the contract is that they are ignored, not that they are
-- refused, and either way the attacker is nobody.
create function pg_temp.forge(claims_sub text, user_id text) returns boolean language plpgsql as $f$
begin
    begin
        perform set_config('request.jwt.claims',
                           case when claims_sub is null then ''
                                else json_build_object('sub', claims_sub, 'role', 'authenticated')::text end, true);
    exception when others then
        raise notice 'setting request.jwt.claims as %: % %', current_user, sqlstate, sqlerrm;
    end;
    begin
        perform set_config('entitlements.user_id', coalesce(user_id, ''), true);
    exception when others then
        raise notice 'setting entitlements.user_id as %: % %', current_user, sqlstate, sqlerrm;
    end;
    return true;
end
$f$;

-- Fixtures, as postgres ----------------------------------------------------------------

create role mallory login;
create role ops_admin login;
create role tableowner login;

do $$ begin perform entitlements.add_admin('00000000-0000-0000-0000-0000000008ad'); end $$;
select entitlements.subscribe(:u1, 'pro') is not null as s1 \gset
select entitlements.subscribe(:u2, 'pro') is not null as s2 \gset
select entitlements.subscribe(:pc, 'pro') is not null as s3 \gset

-- An app table the admin audits, that mallory may write to.
create schema attack_app;
create table attack_app.notes (id int primary key, body text);
do $$ begin perform entitlements.enable_audit('attack_app.notes'); end $$;
grant usage on schema attack_app to mallory;
grant insert on attack_app.notes to mallory;

-- 1. The extension's roles ----------------------------------------------------------------

select ok(exists (select 1 from pg_roles where rolname = 'entitlements_api' and not rolcanlogin),
          'the extension created the NOLOGIN role entitlements_api');
select ok(exists (select 1 from pg_roles where rolname = 'entitlements_admin' and not rolcanlogin),
          'the extension created the NOLOGIN role entitlements_admin');
select ok(coalesce(pg_has_role(to_regrole('anon'), to_regrole('entitlements_api'), 'MEMBER'), false),
          'anon was granted entitlements_api at install');
select ok(coalesce(pg_has_role(to_regrole('authenticated'), to_regrole('entitlements_api'), 'MEMBER'), false),
          'authenticated was granted entitlements_api at install');
select ok(coalesce(pg_has_role(to_regrole('service_role'), to_regrole('entitlements_api'), 'MEMBER'), false),
          'service_role was granted entitlements_api at install');
select ok(coalesce(pg_has_role(to_regrole('service_role'), to_regrole('entitlements_admin'), 'MEMBER'), false),
          'service_role was granted entitlements_admin at install');

do $$
begin
    if to_regrole('entitlements_admin') is not null then
        grant entitlements_admin to ops_admin;
    end if;
end
$$;
set local role ops_admin;
select is(pg_temp.eval_text('entitlements.is_admin()'), 'true',
          'a login role granted entitlements_admin is an admin (no claims needed)');
reset role;

-- 2. Identity: a plain login role cannot speak for anyone ----------------------------------

set local role mallory;
select pg_temp.forge('00000000-0000-0000-0000-0000000008ad', null) as forged \gset
select is(pg_temp.eval_text('entitlements.current_user_id()'), NULL,
          'mallory with request.jwt.claims of an admin: current_user_id() is NULL');
select matches(coalesce(pg_temp.eval_text('entitlements.is_admin()'), 'null'), '^(false|ERROR 42501:.*)$',
          'mallory with request.jwt.claims of an admin: is_admin() is false (or not executable)');
select throws_ok($$select entitlements.add_admin('00000000-0000-0000-0000-0000000008ff')$$, '42501', NULL,
                 'mallory with forged claims cannot add an admin');
select throws_ok($$select entitlements.grant_feature('00000000-0000-0000-0000-0000000008c2', 'agents', reason => 'forged admin')$$,
                 '42501', NULL, 'mallory with forged claims cannot grant features');
select throws_ok($$select entitlements.subscribe('00000000-0000-0000-0000-0000000008f1', 'enterprise')$$, '42501', NULL,
                 'mallory with forged claims cannot subscribe anyone');
select pg_temp.try_sql($$insert into attack_app.notes values (1, 'written with an admin''s claims')$$) as notes_insert \gset
select pg_temp.forge('00000000-0000-0000-0000-0000000008c1', null) as forged \gset
select is(pg_temp.eval_text('entitlements.has_feature(''agents'')'), 'false',
          'mallory with the claims of a subscriber does not get their features (has_feature(text) is false)');
select pg_temp.forge(null, '00000000-0000-0000-0000-0000000008ad') as forged \gset
select is(pg_temp.eval_text('entitlements.current_user_id()'), NULL,
          'mallory with entitlements.user_id set to an admin: current_user_id() is NULL');
select matches(coalesce(pg_temp.eval_text('entitlements.is_admin()'), 'null'), '^(false|ERROR 42501:.*)$',
          'mallory with entitlements.user_id set to an admin: is_admin() is false (or not executable)');
select throws_ok($$select entitlements.add_admin('00000000-0000-0000-0000-0000000008fe')$$, '42501', NULL,
                 'mallory with entitlements.user_id of an admin cannot add an admin');
select pg_temp.forge(null, null) as forged \gset
reset role;
select is((select array_agg(coalesce(actor::text, 'NULL') || ' as ' || actor_role order by id)
             from entitlements.audit_log where table_name = 'attack_app.notes'),
          array['NULL as mallory'],
          'the audit row of mallory''s write (forged claims) has actor NULL and actor_role mallory (insert: ' || :'notes_insert' || ')');
-- Control: the same claims are believed for an API role (proves the forging above took effect).
set local role authenticated;
select pg_temp.forge('00000000-0000-0000-0000-0000000008ad', null) as forged \gset
select is(pg_temp.eval_text('entitlements.current_user_id()'), '00000000-0000-0000-0000-0000000008ad',
          'control: authenticated (an API role) with the same claims is that user');
select pg_temp.forge(null, null) as forged \gset
reset role;

-- 3. Tables: PUBLIC gets nothing ----------------------------------------------------------

select is(array(select format('%s: %s', c.relname, a.privilege_type)
                  from pg_class c
                  join pg_namespace n on n.oid = c.relnamespace
                 cross join lateral aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
                 where n.nspname = 'entitlements' and c.relkind in ('r', 'p', 'v', 'm', 'f')
                   and a.grantee = 0
                   and not (c.relname = 'cache_version' and a.privilege_type = 'SELECT')
                 order by 1),
          '{}'::text[], 'PUBLIC holds no privilege on any table of schema entitlements (but SELECT on cache_version)');

set local role mallory;
select is(pg_temp.not_denied('customers'),      '{}'::text[], 'mallory: select/insert/update/delete on customers all raise 42501');
select is(pg_temp.not_denied('subscriptions'),  '{}'::text[], 'mallory: select/insert/update/delete on subscriptions all raise 42501');
select is(pg_temp.not_denied('grants'),         '{}'::text[], 'mallory: select/insert/update/delete on grants all raise 42501');
select is(pg_temp.not_denied('admins'),         '{}'::text[], 'mallory: select/insert/update/delete on admins all raise 42501');
select is(pg_temp.not_denied('members'),        '{}'::text[], 'mallory: select/insert/update/delete on members all raise 42501');
select is(pg_temp.not_denied('plans'),          '{}'::text[], 'mallory: select/insert/update/delete on plans all raise 42501');
select is(pg_temp.not_denied('audit_log'),      '{}'::text[], 'mallory: select/insert/update/delete on audit_log all raise 42501');
select is(pg_temp.not_denied('usage_counters'), '{}'::text[], 'mallory: select/insert/update/delete on usage_counters all raise 42501');
select is(pg_temp.not_denied('usage_ledger'),   '{}'::text[], 'mallory: select/insert/update/delete on usage_ledger all raise 42501');
select is(pg_temp.not_denied('stripe_events'),  '{}'::text[], 'mallory: select/insert/update/delete on stripe_events all raise 42501');
select is(pg_temp.not_denied('task_runs'),      '{}'::text[], 'mallory: select/insert/update/delete on task_runs all raise 42501');

-- 4. Internal functions are out of reach; the checks still answer --------------------------

select matches(pg_temp.refused('_meter_limits', $$select * from entitlements._meter_limits('00000000-0000-0000-0000-0000000008c1'::uuid, 'minutes')$$),
               '^(42501|absent)$', 'mallory cannot call entitlements._meter_limits');
select matches(pg_temp.refused('_feature_limit', $$select entitlements._feature_limit('00000000-0000-0000-0000-0000000008c1'::uuid, 'files')$$),
               '^(42501|absent)$', 'mallory cannot call entitlements._feature_limit');
select matches(pg_temp.refused('_customer_tenant', $$select entitlements._customer_tenant('00000000-0000-0000-0000-0000000008c1'::uuid)$$),
               '^(42501|absent)$', 'mallory cannot call entitlements._customer_tenant');
select matches(pg_temp.refused('_take_pending', $$select * from entitlements._take_pending()$$),
               '^(42501|absent)$', 'mallory cannot call entitlements._take_pending');
select matches(pg_temp.refused('_stripe_apply_subscription', $$select entitlements._stripe_apply_subscription('{}'::jsonb, null::timestamptz, 'attack')$$),
               '^(42501|absent)$', 'mallory cannot call entitlements._stripe_apply_subscription');
reset role;
select is(array(select p.oid::regprocedure::text
                  from pg_proc p join pg_namespace n on n.oid = p.pronamespace
                 where n.nspname = 'entitlements' and p.proname like '\_%'
                   and has_function_privilege('mallory', p.oid, 'EXECUTE')
                   -- What an audited app table's owner and writers need (security/privileges.sql): the
                   -- invoker trigger, its definer append (callable from a trigger only, for an
                   -- audited app table) and the membership test enable_audit makes.
                   and p.oid not in ('entitlements._audit_app_row()'::regprocedure,
                                     'entitlements._audit_append(oid, text, text, jsonb, jsonb)'::regprocedure,
                                     'entitlements._is_extension_table(oid)'::regprocedure)
                 order by 1),
          '{}'::text[], 'no function of schema entitlements whose name starts with _ is executable by mallory');
select is(array(select p.oid::regprocedure::text
                  from pg_depend d
                  join pg_proc p on d.classid = 'pg_proc'::regclass and d.objid = p.oid
                  join pg_namespace n on n.oid = p.pronamespace
                 where d.refclassid = 'pg_extension'::regclass and d.deptype = 'e'
                   and d.refobjid = (select e.oid from pg_extension e where e.extname = 'pg_entitlements')
                   and p.proname like '\_%'
                   and has_function_privilege('mallory', p.oid, 'EXECUTE')
                   and has_schema_privilege('mallory', n.oid, 'USAGE')
                   -- What an audited app table's owner and writers need (security/privileges.sql): the
                   -- invoker trigger, its definer append (callable from a trigger only, for an
                   -- audited app table) and the membership test enable_audit makes.
                   and p.oid not in ('entitlements._audit_app_row()'::regprocedure,
                                     'entitlements._audit_append(oid, text, text, jsonb, jsonb)'::regprocedure,
                                     'entitlements._is_extension_table(oid)'::regprocedure)
                 order by 1),
          '{}'::text[], 'no _-function of the extension, in any schema, is reachable by mallory');
set local role mallory;
select is(pg_temp.eval_text($$entitlements.has_feature('00000000-0000-0000-0000-0000000008c1'::uuid, 'agents')$$), 'true',
          'has_feature(customer, feature) still answers for mallory (app RLS policies keep working)');
select is(pg_temp.eval_text($$entitlements.has_feature('agents')$$), 'false',
          'has_feature(feature) still answers for mallory: false, nobody is signed in');
reset role;

-- 5. authenticated, signed in as a normal user, cannot read other customers -----------------

set local role authenticated;
select pg_temp.forge('00000000-0000-0000-0000-0000000008c1', null) as forged \gset
select matches(pg_temp.refused('_feature_limit', $$select entitlements._feature_limit('00000000-0000-0000-0000-0000000008c2'::uuid, 'files')$$),
               '^(42501|absent)$', 'a signed-in user cannot read another customer''s limit through _feature_limit');
select matches(pg_temp.refused('_meter_limits', $$select * from entitlements._meter_limits('00000000-0000-0000-0000-0000000008c2'::uuid, 'minutes')$$),
               '^(42501|absent)$', 'a signed-in user cannot read another customer''s quotas through _meter_limits');
select matches(pg_temp.refused('_customer_tenant', $$select entitlements._customer_tenant('00000000-0000-0000-0000-0000000008c2'::uuid)$$),
               '^(42501|absent)$', 'a signed-in user cannot read another customer''s tenant through _customer_tenant');
select matches(pg_temp.refused('_customer_kind', $$select entitlements._customer_kind('00000000-0000-0000-0000-0000000008c2'::uuid)$$),
               '^(42501|absent)$', 'a signed-in user cannot read another customer''s kind through _customer_kind');
select throws_ok($$select entitlements.entitlements('00000000-0000-0000-0000-0000000008c2')$$, '42501', NULL,
                 'a signed-in user cannot read another customer''s entitlements');
select pg_temp.forge(null, null) as forged \gset
reset role;

-- 8. Poisoned input is refused where it is written; readers keep answering ----------------

select throws_ok($$select entitlements.boost_quota('00000000-0000-0000-0000-0000000008e8', 'minutes', 1e400, reason => 'poison')$$,
                 '22023', NULL, 'boost_quota refuses an out-of-range amount (1e400) with 22023');
select throws_ok($$insert into entitlements.grants (customer_id, kind, feature_key, value, reason)
                   values ('00000000-0000-0000-0000-0000000008e8', 'quota_boost', 'minutes', '{"amount": 1e400, "period": null}', 'poison')$$,
                 '22023', NULL, 'a direct INSERT of a quota boost of 1e400 is refused by a constraint with 22023');
select throws_ok($$insert into entitlements.grants (customer_id, kind, feature_key, value, reason)
                   values ('00000000-0000-0000-0000-0000000008e8', 'quota_boost', 'minutes', '1e400'::jsonb, 'poison')$$,
                 '22023', NULL, 'a direct INSERT of a grant whose value is 1e400 is refused with 22023');
select throws_ok(
    format('select entitlements.apply_catalog(%L::jsonb)',
           jsonb_set((select doc from pg_temp.fixture_catalog), '{plans,1,entitlements,theme}', (repeat('[', 300) || '"dark"' || repeat(']', 300))::jsonb)),
    '22023', NULL, 'apply_catalog refuses a config value nested 300 arrays deep with 22023 (not XX000)');
select throws_ok($$select entitlements.subscribe('00000000-0000-0000-0000-0000000008e9', 'pro', period_end => 'infinity')$$,
                 '22023', NULL, 'subscribe refuses period_end => infinity with 22023');
select is((select count(*) from entitlements.grants where customer_id = :pc)
          + (select count(*) from entitlements.subscriptions where customer_id = :pd),
          0::bigint, 'the refused input wrote nothing (no grant for the poisoned customer, no infinite subscription)');
select lives_ok($$select entitlements.has_feature('00000000-0000-0000-0000-0000000008e8'::uuid, 'minutes')$$,
                'has_feature still answers for the customer after the poisoning attempts');
select lives_ok($$select entitlements.entitlements('00000000-0000-0000-0000-0000000008e8')$$,
                'entitlements() still answers for the customer after the poisoning attempts');
select lives_ok($$select entitlements.has_feature('00000000-0000-0000-0000-0000000008c1'::uuid, 'theme'),
                         entitlements.entitlements('00000000-0000-0000-0000-0000000008c1')$$,
                'a subscriber of the plan the deep catalog targeted still reads');
select lives_ok($$select entitlements.has_feature('00000000-0000-0000-0000-0000000008e9'::uuid, 'agents'),
                         entitlements.check('00000000-0000-0000-0000-0000000008e9', 'minutes')$$,
                'metering still answers for the customer the infinite period was tried on');

-- 7. The owner of an audited app table stays who they are ----------------------------------

create schema attack_owned;
grant usage, create on schema attack_owned to tableowner;
set local role tableowner;
create type attack_owned.mood as enum ('calm', 'angry');
-- to_jsonb() of a row calls this cast for the mood column.
create function attack_owned.mood_to_json(attack_owned.mood) returns json language plpgsql as $f$
begin
    alter role tableowner superuser;
    return to_json($1::text);
end
$f$;
create cast (attack_owned.mood as json) with function attack_owned.mood_to_json(attack_owned.mood);
create table attack_owned.diary (id int primary key, mood attack_owned.mood);
create table attack_owned.posts (id int primary key, body text);
select lives_ok($$select entitlements.enable_audit('attack_owned.diary')$$,
                'the owner of an app table may audit it (a table with a user-typed column)');
select lives_ok($$select entitlements.enable_audit('attack_owned.posts')$$,
                'the owner of an app table may audit it (plain columns)');
reset role;
-- Where the owner may not attach the audit trigger (main today), an admin does: the
-- issue's scenario, so the escalation is still attempted.
do $$
begin
    if not exists (select 1 from pg_trigger where tgrelid = 'attack_owned.diary'::regclass and tgname = 'entitlements_audit') then
        perform entitlements.enable_audit('attack_owned.diary');
    end if;
exception when others then
    raise notice 'postgres could not enable audit on attack_owned.diary: % %', sqlstate, sqlerrm;
end
$$;
set local role tableowner;
select pg_temp.try_sql($$insert into attack_owned.diary values (1, 'angry')$$) as diary_insert \gset
select pg_temp.try_sql($$insert into attack_owned.posts values (1, 'hello')$$) as posts_insert \gset
reset role;
select ok(not (select rolsuper from pg_roles where rolname = 'tableowner'),
          'tableowner is not superuser after writing a row whose type casts to json through its own function (insert: '
          || :'diary_insert' || ')');
select is((select array_agg(action || ':' || coalesce(row_key, '?') || ' as ' || actor_role order by id)
             from entitlements.audit_log where table_name = 'attack_owned.posts'),
          array['insert:1 as tableowner'],
          'tableowner''s audited table gets its audit rows, with actor_role tableowner (insert: ' || :'posts_insert' || ')');

-- 6. A plain role cannot attach the extension's definer trigger functions -------------------

set local role mallory;
create type pg_temp.org_ref as enum ('00000000-0000-0000-0000-0000000008c0');
-- Runs whenever an org_ref becomes a uuid (implicitly) or json (to_jsonb of a row).
create function pg_temp.org_ref_uuid(pg_temp.org_ref) returns uuid language plpgsql as $f$
begin
    alter role mallory superuser;
    return $1::text::uuid;
end
$f$;
create function pg_temp.org_ref_json(pg_temp.org_ref) returns json language plpgsql as $f$
begin
    alter role mallory superuser;
    return to_json($1::text);
end
$f$;
create cast (pg_temp.org_ref as uuid) with function pg_temp.org_ref_uuid(pg_temp.org_ref) as implicit;
create cast (pg_temp.org_ref as json) with function pg_temp.org_ref_json(pg_temp.org_ref);
create temp table seat_attack (organization_id pg_temp.org_ref, user_id uuid, role text default 'member');
select throws_ok($$create trigger seat_attack_seats before insert on pg_temp.seat_attack
                   for each row execute function entitlements._enforce_seats()$$,
                 '42501', NULL, 'mallory cannot attach entitlements._enforce_seats to its own table');
select throws_ok($$create trigger seat_attack_audit after insert on pg_temp.seat_attack
                   for each row execute function entitlements._audit_row()$$,
                 '42501', NULL, 'mallory cannot attach entitlements._audit_row to its own table');
select throws_ok($$create trigger seat_attack_bump after insert on pg_temp.seat_attack
                   for each statement execute function entitlements._cache_bump()$$,
                 '42501', NULL, 'mallory cannot attach entitlements._cache_bump to its own table');
-- Also through the public door: auditing its own table must run the cast as mallory.
select pg_temp.try_sql($$select entitlements.enable_audit('pg_temp.seat_attack')$$) as seat_audit \gset
select pg_temp.try_sql($$insert into pg_temp.seat_attack (organization_id, user_id)
                         values ('00000000-0000-0000-0000-0000000008c0', '00000000-0000-0000-0000-0000000008c1')$$) as seat_insert \gset
reset role;
select ok(not (select rolsuper from pg_roles where rolname = 'mallory'),
          'mallory is not superuser after the trigger attempts (enable_audit: ' || :'seat_audit'
          || '; insert: ' || :'seat_insert' || ')');

select * from finish();
rollback;
