\set ON_ERROR_STOP 1
\set QUIET 1
-- GDPR export and erasure (issue #13): one person, Zelda, with everything the engine can hold
-- about her (profile, Supabase address, subscription and plan change, coupon, grants, usage,
-- an organization, events with a pending email, Stripe events, an audited app table), exported
-- and then erased; the revenue of every past instant must read the same afterwards.
-- Rows about her are found by her ids only: once she gave herself Otto's address and the name
-- "usd", and neither Otto's rows nor anyone's currencies, keys or pending emails may change.
begin;
select plan(83);
\ir fixtures/catalog.sql

\set zed    '''00000000-0000-0000-0000-00000000e701'''
\set org    '''00000000-0000-0000-0000-00000000e702'''
\set other  '''00000000-0000-0000-0000-00000000e703'''
\set tadmin '''00000000-0000-0000-0000-00000000e704'''
\set gadmin '''00000000-0000-0000-0000-00000000e70a'''
\set xadmin '''00000000-0000-0000-0000-00000000e705'''
\set vic    '''00000000-0000-0000-0000-00000000e706'''
\set fresh  '''00000000-0000-0000-0000-00000000e707'''
\set nobody '''00000000-0000-0000-0000-00000000e7ff'''
\set t1     '''00000000-0000-0000-0000-00000000e7a1'''
\set t2     '''00000000-0000-0000-0000-00000000e7a2'''
\set email      '''zelda.privacyson@example.org'''
\set auth_email '''zp@auth.example.org'''
\set name       '''Zelda Privacyson'''
create temp table needles (needle text);
insert into needles values (:email), (:auth_email), (:name);
grant select on needles to public;

-- The SQLSTATE a statement fails with, or 'ok'.
create function pg_temp.outcome(stmt text) returns text language plpgsql as $f$
begin
    execute stmt;
    return 'ok';
exception when others then
    return sqlstate;
end
$f$;
grant execute on function pg_temp.outcome(text) to public;
-- Every row of every table of the engine (ledger partitions included) and of the app table
-- that holds any needle: the table, and the row's id (else its customer_id).
create function pg_temp.holding() returns table (rel text, row_id text) language plpgsql as $f$
declare
    r record;
begin
    for r in select c.oid::regclass as rel from pg_class c
              where c.relnamespace = 'entitlements'::regnamespace and c.relkind = 'r'
             union all select 'public.privacy_crm'::regclass
    loop
        return query execute format(
            'select %L::text, coalesce(to_jsonb(t) ->> ''id'', to_jsonb(t) ->> ''customer_id'') from %s t
              where exists (select 1 from pg_temp.needles n where strpos(lower(t::text), lower(n.needle)) > 0)',
            r.rel, r.rel);
    end loop;
end
$f$;
-- Everything the engine holds, as one hash: "changed nothing".
create function pg_temp.snapshot() returns text language plpgsql as $f$
declare
    r record;
    v_part text;
    v_all text := '';
begin
    for r in select c.oid::regclass as rel from pg_class c
              where c.relnamespace = 'entitlements'::regnamespace and c.relkind = 'r' order by c.relname
    loop
        execute format('select md5(coalesce(string_agg(t::text, '','' order by t::text), '''')) from %s t', r.rel) into v_part;
        v_all := v_all || r.rel::text || ':' || v_part || ';';
    end loop;
    return md5(v_all);
end
$f$;
-- Rows of others (Otto, her organization, other Stripe customers, the app's row 2) that an
-- erasure of Zelda must leave exactly as they are, as one hash.
create function pg_temp.others() returns text language sql as $f$
    select md5(string_agg(x, ',' order by x)) from (
        select c::text from entitlements.customers c
         where c.id in ('00000000-0000-0000-0000-00000000e702', '00000000-0000-0000-0000-00000000e703')
        union all select s::text from entitlements.subscriptions s where s.customer_id = '00000000-0000-0000-0000-00000000e703'
        union all select a::text from entitlements.audit_log a
         where a.row_key in ('00000000-0000-0000-0000-00000000e702', '00000000-0000-0000-0000-00000000e703')
            or a.new_values ->> 'customer_id' = '00000000-0000-0000-0000-00000000e703'
            or (a.table_name = 'public.privacy_crm' and a.row_key = '2')
        union all select o::text from entitlements.outbox o where o.customer_id = '00000000-0000-0000-0000-00000000e703'
        union all select d::text from entitlements.deliveries d join entitlements.outbox o on o.id = d.event_id
         where o.customer_id = '00000000-0000-0000-0000-00000000e703'
        union all select e::text from entitlements.stripe_events e where e.id in ('evt_otto', 'evt_inv9', 'evt_ref7')
        union all select i::text from entitlements.usage_idempotency i where i.customer_id = '00000000-0000-0000-0000-00000000e702'
        union all select l::text from entitlements.usage_ledger l
         where l.customer_id = '00000000-0000-0000-0000-00000000e702' and l.actor is null) o(x)
$f$;
create temp table docs (who text, doc jsonb);
grant select, insert on docs to public;

-- Building Zelda --------------------------------------------------------------------------------------
set entitlements.clock = '2025-01-01 00:00:00+00';
insert into entitlements.customers (id, tenant_id, email, display_name, locale, metadata)
values (:zed, :t1, :email, :name, 'en', jsonb_build_object('phone', '+1 555 0100', 'note', 'VIP: ' || :name));
insert into entitlements.customers (id, kind, tenant_id, email, display_name)
values (:org, 'organization', :t1, 'billing@corp.example.com', 'Corp Ltd'),
       (:other, 'user', :t2, 'other@example.com', 'Otto');
insert into entitlements.admins (user_id, tenant_id) values (:tadmin, :t1), (:xadmin, :t2), (:gadmin, null);
-- Supabase's auth.users address, copied by the trigger the operator attaches.
create schema auth;
create table auth.users (id uuid primary key, email varchar(255));
create trigger entitlements_email after insert or update of email on auth.users
    for each row execute function entitlements.sync_auth_email();
insert into auth.users values (:zed, :auth_email), (:vic, 'vic@auth.example.org');
select entitlements.add_webhook_endpoint('https://app.example.com/hooks', array['*']) is not null as ep \gset
select entitlements.link_stripe_customer(:zed, 'cus_zed1') is null as linked \gset
select entitlements.subscribe(:zed, 'pro') as sub \gset
select entitlements.subscribe(:org, 'team', quantity => 3) is not null as org_sub \gset
select entitlements.add_member(:org, :zed, 'admin') is null as member \gset
select entitlements.create_coupon('ZED10', percent_off => 10) is not null as coupon \gset
select entitlements.redeem(:'sub', 'ZED10') is not null as redeemed \gset
select entitlements.grant_discount(:zed, 20, reason => 'goodwill for ' || :email) is not null as discount \gset
select entitlements.grant_feature(:zed, 'agents', reason => 'pilot with ' || :name) is not null as feature_grant \gset
-- The subscription.created email: the worker tried once, the server said the mailbox was full.
select delivery_id as d_email from entitlements.delivery_claim('w1', '1 minute', 10, array['email']) where target = :auth_email \gset
select (entitlements.delivery_failed(:d_email, 'w1', '452 4.2.2 <' || :auth_email || '> mailbox full', 452)).outcome as failed \gset
select is((select array[status, target] from entitlements.deliveries where id = :d_email), array['pending', :auth_email],
          'a pending email to Zelda''s (Supabase) address, to be retried');

set entitlements.clock = '2025-01-15 00:00:00+00';
select ledger_id as l1 from entitlements.record_usage(:zed, 'minutes', 5, metadata => jsonb_build_object('by', :email, 'who', :name)) \gset
select (entitlements.consume(:zed, 'minutes', 2, :email || ':call-1')).used as used \gset
-- Her organization's usage: once recorded by her (naming her), once by the app with a key that
-- names her (the organization's key: not hers to erase).
select set_config('entitlements.user_id', :zed, true) is not null as c \gset
select ledger_id as l2 from entitlements.record_usage(:org, 'minutes', 1, metadata => jsonb_build_object('user', :email, 'n', 1)) \gset
select set_config('entitlements.user_id', '', true) is not null as c \gset
select ledger_id as l3 from entitlements.record_usage(:org, 'minutes', 1, idempotency_key => :email || ':org-call') \gset
-- A failed attempt of her email with the longest error there is, full of a name of hers.
insert into entitlements.delivery_attempts (delivery_id, at, ok, status_code, error, worker)
values (:d_email, entitlements.now(), false, 452, rtrim(repeat('usd ', 500)) || ' ', 'w1');
-- Otto: a pro subscription (in usd) whose welcome email to his address waits.
select entitlements.subscribe(:other, 'pro') is not null as otto_sub \gset
update entitlements.subscriptions set metadata = jsonb_build_object('usd', 1, 'contact', :email, 'note', 'pays in usd')
 where id = :'sub';
-- Stripe: her customer object, and someone else's invoice sent to her address.
select entitlements.stripe_record_event(jsonb_build_object('id', 'evt_zed1', 'object', 'event', 'type', 'customer.updated',
    'created', 1736899200, 'data', jsonb_build_object('object', jsonb_build_object(
        'id', 'cus_zed1', 'object', 'customer', 'email', :email, 'name', :name, 'phone', '+1 555 0100',
        'address', jsonb_build_object('line1', '1 Privacy Way', 'city', 'Springfield'),
        'metadata', jsonb_build_object('entitlements_customer_id', :zed))))) as stored \gset
select is(entitlements.stripe_apply_event('evt_zed1'), 'unchanged', 'the Stripe customer event applies (already linked)');
select entitlements.stripe_record_event(jsonb_build_object('id', 'evt_inv9', 'object', 'event', 'type', 'invoice.paid',
    'created', 1736899300, 'data', jsonb_build_object('object', jsonb_build_object(
        'id', 'in_9', 'object', 'invoice', 'customer', 'cus_someone9', 'customer_email', :email,
        'lines', jsonb_build_object('data', '[]'::jsonb))))) as stored \gset
-- Her checkout (found by her uuid alone), someone's charge whose description quotes her uuid,
-- and Otto's Stripe customer (his address, in usd).
select entitlements.stripe_record_event(jsonb_build_object('id', 'evt_cs1', 'object', 'event', 'type', 'checkout.session.completed',
    'created', 1736899400, 'data', jsonb_build_object('object', jsonb_build_object(
        'id', 'cs_1', 'object', 'checkout.session', 'client_reference_id', :zed, 'currency', 'usd',
        'customer_details', jsonb_build_object('email', :email, 'name', :name))))) as stored \gset
select entitlements.stripe_record_event(jsonb_build_object('id', 'evt_ref7', 'object', 'event', 'type', 'charge.succeeded',
    'created', 1736899500, 'data', jsonb_build_object('object', jsonb_build_object(
        'id', 'ch_7', 'object', 'charge', 'customer', 'cus_someone9', 'description', 'refers to ' || :zed)))) as stored \gset
select entitlements.stripe_record_event(jsonb_build_object('id', 'evt_otto', 'object', 'event', 'type', 'customer.updated',
    'created', 1736899600, 'data', jsonb_build_object('object', jsonb_build_object(
        'id', 'cus_otto', 'object', 'customer', 'email', 'other@example.com', 'name', 'Otto', 'currency', 'usd')))) as stored \gset
-- An app table audited by the engine: the app holds her address, then removes its own copies.
create table public.privacy_crm (id integer primary key, user_id uuid, contact text, notes jsonb);
select entitlements.enable_audit('public.privacy_crm');
insert into public.privacy_crm values (1, :zed, :email, jsonb_build_object('name', :name)),
                                      (2, null, 'someone@else.example.com', jsonb_build_object('cc', jsonb_build_array('Cc: ' || :email)));
delete from public.privacy_crm where id = 1;
update public.privacy_crm set notes = '{"cc": []}' where id = 2;

-- She gives herself Otto's address and the name "usd" (nobody checks a name or an address):
-- her export still holds only her own Stripe events, not Otto's. Then back.
set local role authenticated;
select set_config('request.jwt.claims', json_build_object('sub', :zed, 'role', 'authenticated')::text, true) is not null as c \gset
select entitlements.set_profile(:zed, 'other@example.com', 'usd') is null as hijacked \gset
select is((select string_agg(e ->> 'id', ',' order by e ->> 'id') from jsonb_array_elements(entitlements.export_customer(:zed) #> '{stripe,events}') e),
          'evt_cs1,evt_zed1', 'with Otto''s address as hers, her export still has her Stripe events only');
select entitlements.set_profile(:zed, :email, :name, 'en') is null as restored \gset
reset role;
select set_config('request.jwt.claims', '', true) is not null as c \gset

set entitlements.clock = '2025-02-10 00:00:00+00';
select entitlements.change_plan(:'sub', 'team', 'upgrade') is null as changed \gset
set entitlements.clock = '2025-03-15 00:00:00+00';

-- Revenue before: MRR at past instants (all, and her tenant's), movements by month and week.
create temp table before_mrr as
select t, entitlements.mrr(t) as mrr, entitlements.mrr(t, 'usd', :t1) as tenant_mrr
  from unnest(array['2025-01-01 00:00:00+00', '2025-01-15 00:00:00+00', '2025-02-01 00:00:00+00', '2025-02-10 00:00:00+00',
                    '2025-02-15 00:00:00+00', '2025-03-01 00:00:00+00', '2025-03-15 00:00:00+00']::timestamptz[]) t;
create temp table before_mv as
select * from entitlements.revenue_movements('2025-01-01 00:00:00+00', '2025-03-15 00:00:00+00')
union all
select * from entitlements.revenue_movements('2025-01-01 00:00:00+00', '2025-03-15 00:00:00+00', 'week');
create temp table before_usage as
select customer_id, feature_key, sum(amount) as amount, sum(coalesce(usage_cost_cents, 0)) as cost, count(*) as n
  from entitlements.usage_ledger group by 1, 2;
select ok((select mrr from before_mrr where t = '2025-01-15 00:00:00+00') > 0
          and (select mrr from before_mrr where t = '2025-02-15 00:00:00+00')
              > (select mrr from before_mrr where t = '2025-02-01 00:00:00+00'),
          'the revenue before: a discounted pro, then team (an expansion)');
select ok(array(select rel from pg_temp.holding()) @> array['entitlements.customers', 'entitlements.audit_log', 'entitlements.auth_emails',
                                     'entitlements.deliveries', 'entitlements.delivery_attempts', 'entitlements.grants',
                                     'entitlements.stripe_events', 'entitlements.usage_idempotency',
                                     'entitlements.usage_ledger_default', 'entitlements.subscriptions'],
          'before: her address and name are in the profile, audit log, deliveries, grants, Stripe events, usage');

-- Export ----------------------------------------------------------------------------------------------
insert into docs select 'admin', entitlements.export_customer(:zed);
select is((select doc #>> '{profile,email}' from docs where who = 'admin'), :email, 'export: the profile');
select is((select doc #>> '{auth_email,email}' from docs where who = 'admin'), :auth_email, 'the Supabase address');
select is((select jsonb_array_length(doc #> '{memberships,as_user}') from docs where who = 'admin'), 1, 'her membership');
select is((select array[jsonb_array_length(doc #> '{subscriptions,0,history}')::text, doc #>> '{subscriptions,0,plan_key}']
             from docs where who = 'admin'), array['2', 'team'], 'her subscription with its history (pro, then team)');
select is((select doc #>> '{discounts,0,coupon,code}' from docs where who = 'admin'), 'ZED10', 'her coupon redemption');
select is((select jsonb_array_length(doc -> 'grants') from docs where who = 'admin'), 2, 'her grants');
select is((select array[jsonb_array_length(doc #> '{usage,ledger}'), jsonb_array_length(doc #> '{usage,idempotency_keys}')]
             from docs where who = 'admin'), array[2, 1], 'her usage ledger rows and keys');
select ok((select jsonb_array_length(doc #> '{usage,counters}') > 0 from docs where who = 'admin'), 'and counters');
select ok((select doc #> '{notifications,events}' @> jsonb_build_array(jsonb_build_object(
                    'kind', 'subscription.created', 'deliveries', jsonb_build_array(jsonb_build_object(
                        'channel', 'email', 'target', :auth_email,
                        'attempts', jsonb_build_array(jsonb_build_object('status_code', 452))))))
             from docs where who = 'admin'), 'her events, with the email sent to her and its attempts');
select ok((select not (doc #> '{notifications,events}')::text like '%app.example.com%' from docs where who = 'admin'),
          'but not the app''s webhook URLs');
select is((select array[doc #>> '{stripe,customer_id}',
                        (select string_agg(e ->> 'id', ',' order by e ->> 'id') from jsonb_array_elements(doc #> '{stripe,events}') e)]
             from docs where who = 'admin'), array['cus_zed1', 'evt_cs1,evt_zed1'],
          'her Stripe customer id and her Stripe events (by her Stripe id or uuid; not others'' naming her address or uuid)');
select ok((select doc -> 'audit' @> '[{"table_name": "entitlements.customers", "action": "insert"}]'
                  and doc -> 'audit' @> '[{"table_name": "public.privacy_crm", "action": "delete"}]'
                  and doc -> 'audit' @> '[{"table_name": "entitlements.members", "action": "insert"}]'
                  and strpos((doc -> 'audit')::text, 'someone@else.example.com') = 0
             from docs where who = 'admin'), 'the audit rows about her, app tables'' included (not others'' rows naming her)');

-- Herself (signed in through PostgREST), her tenant's admin; nobody else.
set local role authenticated;
select set_config('request.jwt.claims', json_build_object('sub', :zed, 'role', 'authenticated')::text, true) is not null as c \gset
insert into docs select 'self', entitlements.export_customer(:zed);
select is(pg_temp.outcome(format('select entitlements.export_customer(%L)', :org)), '42501',
          'a member may not export her organization');
select set_config('request.jwt.claims', json_build_object('sub', :tadmin, 'role', 'authenticated')::text, true) is not null as c \gset
-- Export and erasure reach beyond a tenant (app tables' audit rows, Stripe events), and a
-- tenant admin controls its customers' names and addresses: global admins only.
select is(pg_temp.outcome(format('select entitlements.export_customer(%L)', :zed)), '42501',
          'her tenant''s admin: 42501 (global admins only)');
select is(pg_temp.outcome(format('select entitlements.export_customer(%L)', :nobody)), '42501',
          'a tenant admin asking about an unknown customer: 42501, nothing revealed');
select set_config('request.jwt.claims', json_build_object('sub', :gadmin, 'role', 'authenticated')::text, true) is not null as c \gset
insert into docs select 'global admin user', entitlements.export_customer(:zed);
select set_config('request.jwt.claims', json_build_object('sub', :xadmin, 'role', 'authenticated')::text, true) is not null as c \gset
select is(pg_temp.outcome(format('select entitlements.export_customer(%L)', :zed)), '42501', 'another tenant''s admin: 42501');
select set_config('request.jwt.claims', json_build_object('sub', :other, 'role', 'authenticated')::text, true) is not null as c \gset
select is(pg_temp.outcome(format('select entitlements.export_customer(%L)', :zed)), '42501', 'another signed-in user: 42501');
-- A tenant admin may not make someone the engine knows (here by a Supabase address) their
-- tenant's customer, and so theirs to export or erase; a new id is fine, but not as a
-- way to rename a customer into a known id.
select set_config('request.jwt.claims', json_build_object('sub', :tadmin, 'role', 'authenticated')::text, true) is not null as c \gset
select is(pg_temp.outcome(format('insert into entitlements.customers (id, tenant_id) values (%L, %L)', :vic, :t1)), '42501',
          'a tenant admin cannot claim a known user id for their tenant');
select is(pg_temp.outcome(format('select entitlements.export_customer(%L)', :vic)), '42501', 'nor export that user');
select is(pg_temp.outcome(format('insert into entitlements.customers (id, tenant_id) values (%L, %L)', :fresh, :t1)), 'ok',
          'a new id they may add');
select is(pg_temp.outcome(format('update entitlements.customers set id = %L where id = %L', :vic, :fresh)), '42501',
          'but not move it onto a known id');
select set_config('request.jwt.claims', '{"role": "anon"}', true) is not null as c \gset
set local role anon;
select is(pg_temp.outcome(format('select entitlements.export_customer(%L)', :zed)), '42501', 'anon: 42501');
reset role;
select is(pg_temp.outcome(format('insert into entitlements.customers (id, tenant_id) values (%L, %L)', :vic, :t2)), 'ok',
          'a global admin may place a known user in a tenant');
create role privacy_plain login;
set local role privacy_plain;
select set_config('entitlements.user_id', :zed, true) is not null as c \gset
select is(pg_temp.outcome(format('select entitlements.export_customer(%L)', :zed)), '42501',
          'a plain login role claiming to be her: 42501');
reset role;
select set_config('entitlements.user_id', '', true) is not null as c \gset
select set_config('request.jwt.claims', '', true) is not null as c \gset
select is((select array_agg(who order by who) from docs where doc = (select doc from docs where who = 'admin')),
          array['admin', 'global admin user', 'self'], 'she, a global admin user and a global admin role get the same document');
select throws_ok($$select entitlements.export_customer(null)$$, '22004', NULL, 'export: NULL customer is 22004');
select throws_ok(format('select entitlements.export_customer(%L)', :nobody), '22023', NULL, 'an unknown customer is 22023 (to admins)');

-- Refused erasures write nothing -------------------------------------------------------------------------
select pg_temp.snapshot() as snap0 \gset
set local role authenticated;
select set_config('request.jwt.claims', json_build_object('sub', :xadmin, 'role', 'authenticated')::text, true) is not null as c \gset
select is(pg_temp.outcome(format('select entitlements.erase_customer(%L, %L)', :zed, 'GDPR request')), '42501',
          'erase: another tenant''s admin gets 42501');
select set_config('request.jwt.claims', json_build_object('sub', :zed, 'role', 'authenticated')::text, true) is not null as c \gset
select is(pg_temp.outcome(format('select entitlements.erase_customer(%L, %L)', :zed, 'GDPR request')), '42501',
          'a plain user (even herself) gets 42501');
select set_config('request.jwt.claims', json_build_object('sub', :tadmin, 'role', 'authenticated')::text, true) is not null as c \gset
select is(pg_temp.outcome(format('select entitlements.erase_customer(%L, %L)', :nobody, 'GDPR request')), '42501',
          'an unknown customer, to a tenant admin: 42501');
select is(pg_temp.outcome(format('select entitlements.erase_customer(%L, %L)', :zed, 'GDPR request')), '42501',
          'her tenant''s admin may not erase her either (global admins only)');
select set_config('request.jwt.claims', json_build_object('sub', :gadmin, 'role', 'authenticated')::text, true) is not null as c \gset
select is(pg_temp.outcome(format('select entitlements.erase_customer(%L, %L)', :zed, 'asked by ' || upper(:email))), '22023',
          'a reason containing her address (in any case) is refused: 22023');
select is(pg_temp.outcome(format('select entitlements.erase_customer(%L, %L)', :zed, 'asked by zelda privacyson')), '22023',
          'so is one containing her name');
select is(pg_temp.outcome(format('select entitlements.erase_customer(%L, %L)', :zed, 'Privacyson asked')), '22023',
          'or any word of it');
select is(pg_temp.outcome(format('select entitlements.erase_customer(%L, %L)', :zed, 'refund in USD')), '22023',
          'or a name her own profile history holds');
select is(pg_temp.outcome(format('select entitlements.erase_customer(%L, %L)', :zed, repeat('x', 1001))), '22023',
          'a reason over 1000 characters: 22023');
select is(pg_temp.outcome(format('select entitlements.erase_customer(%L, %L)', :zed, '  ')), '22023', 'a blank reason: 22023');
select is(pg_temp.outcome(format('select entitlements.erase_customer(%L, null)', :zed)), '22023', 'a NULL reason: 22023');
select is(pg_temp.outcome($$select entitlements.erase_customer(null, 'x')$$), '22004', 'a NULL customer: 22004');
reset role;
set local role privacy_plain;
select is(pg_temp.outcome(format('select entitlements.erase_customer(%L, %L)', :zed, 'GDPR request')), '42501',
          'a plain login role: 42501');
reset role;
select set_config('request.jwt.claims', '', true) is not null as c \gset
select throws_ok(format('select entitlements.erase_customer(%L, %L)', :nobody, 'GDPR request'), '22023', NULL,
                 'an unknown customer, to an admin: 22023');
select is(pg_temp.snapshot(), :'snap0', 'the refused calls wrote nothing');

-- Erasure, by a global admin (a user) ----------------------------------------------------------------------
select count(*) as audit_before from entitlements.audit_log \gset
select pg_temp.others() as others_before \gset
select count(*) as pending_before from entitlements.deliveries d join entitlements.outbox o on o.id = d.event_id
 where o.customer_id = :zed and d.status = 'pending' \gset
set local role authenticated;
select set_config('request.jwt.claims', json_build_object('sub', :gadmin, 'role', 'authenticated')::text, true) is not null as c \gset
insert into docs select 'erased', entitlements.erase_customer(:zed, 'GDPR erasure request #4711');
reset role;
select set_config('request.jwt.claims', '', true) is not null as c \gset
select is((select array[doc ->> 'already_erased', doc #>> '{changed,deliveries_canceled}', doc #>> '{changed,auth_emails}']
             from docs where who = 'erased'), array['false', :'pending_before', '1'],
          'erased: the summary counts what changed (every pending delivery of her events canceled)');
select set_eq($$select * from pg_temp.holding()$$,
              $$select 'entitlements.stripe_events' as rel, 'evt_inv9' as row_id
                union all select 'entitlements.audit_log', id::text from entitlements.audit_log
                           where table_name = 'public.privacy_crm' and row_key = '2'
                union all select 'entitlements.usage_idempotency', '00000000-0000-0000-0000-00000000e702'
                union all select 'entitlements.usage_ledger_default', id::text from entitlements.usage_ledger
                           where customer_id = '00000000-0000-0000-0000-00000000e702' and idempotency_key like 'zelda%'$$,
              'no row about her (ledger partitions and the app table included) holds her address or name: only others'' rows '
              'that mention it (someone''s invoice sent to her address, the app''s cc row, her organization''s key)');
select is(pg_temp.others(), :'others_before',
          'Otto''s rows, her organization''s, other Stripe customers'' and the app''s row 2 are exactly as they were');
select is((select array[d.status, d.target] from entitlements.deliveries d join entitlements.outbox o on o.id = d.event_id
            where o.customer_id = :other and d.channel = 'email'), array['pending', 'other@example.com'],
          'Otto''s pending email to the address she once claimed still waits');
select is((select idempotency_key from entitlements.usage_idempotency where customer_id = :org), :email || ':org-call',
          'her organization''s idempotency key naming her is the organization''s: kept');
select ok((select bool_and(idempotency_key like 'erased:%') from entitlements.usage_idempotency where customer_id = :zed)
          and (select count(*) = 1 from entitlements.usage_ledger where customer_id = :zed and idempotency_key like 'erased:%'),
          'her own key naming her is replaced, in the key table and the ledger alike');
select is((select metadata from entitlements.subscriptions where id = :'sub'),
          '{"usd": 1, "contact": "[erased]", "note": "pays in usd"}'::jsonb,
          'a JSON value that is wholly her address goes; keys, and values that merely contain a name of hers, stay');
select is((select payload #>> '{data,object,currency}' from entitlements.stripe_events where id = 'evt_cs1'), 'usd',
          'her checkout''s currency stays usd (a name of hers is never taken for a currency)');
select is((select array_agg(left(error, 26) || ' (' || length(error) || ')' order by id) from entitlements.delivery_attempts
            where delivery_id = :d_email),
          array['452 4.2.2 <[erased]> mailb (33)', '[erased] [erased] [erased] (2000)'],
          'free text loses her address and names word by word, within its 2000 characters');
select is((select payload #> '{data,object,customer_details}' from entitlements.stripe_events where id = 'evt_cs1'), 'null'::jsonb,
          'her checkout, found by her uuid, loses her details');
select is((select array[email, display_name, locale, metadata::text, (erased_at = entitlements.now())::text]
             from entitlements.customers where id = :zed), array[null, null, null, '{}', 'true'],
          'her profile is empty and marked erased');
select is((select array[stripe_customer_id, tenant_id::text, kind] from entitlements.customers where id = :zed),
          array['cus_zed1', :t1, 'user'], 'her ids stay');
select results_eq($$select t, mrr, tenant_mrr from before_mrr order by t$$,
                  $$select t, entitlements.mrr(t), entitlements.mrr(t, 'usd', '00000000-0000-0000-0000-00000000e7a1') from before_mrr order by t$$,
                  'MRR at every past instant is unchanged (all, and her tenant''s)');
select set_eq($$select * from before_mv$$,
              $$select * from entitlements.revenue_movements('2025-01-01 00:00:00+00', '2025-03-15 00:00:00+00')
                union all
                select * from entitlements.revenue_movements('2025-01-01 00:00:00+00', '2025-03-15 00:00:00+00', 'week')$$,
              'revenue movements by month and by week are unchanged');
select set_eq($$select * from before_usage$$,
              $$select customer_id, feature_key, sum(amount) as amount, sum(coalesce(usage_cost_cents, 0)) as cost, count(*) as n
                  from entitlements.usage_ledger group by 1, 2$$, 'usage amounts and costs are unchanged');
select is((select array_agg(coalesce(metadata::text, 'null') order by id) from entitlements.usage_ledger where id in (:l1, :l2)),
          array['null', '{"n": 1, "user": "[erased]"}'], 'her ledger rows lose their metadata; what she recorded for her organization no longer names her');
select is((select array[status, target, last_error] from entitlements.deliveries where id = :d_email),
          array['canceled', '[erased]', 'customer erased'], 'the pending email is canceled, its address gone');
set entitlements.clock = '2025-06-01 00:00:00+00';
select is((select count(*)::int from entitlements.delivery_claim('w1', '1 minute', 100) c
            join entitlements.outbox o on o.id = c.event_id where o.customer_id = :zed), 0, 'the worker is handed none of her deliveries');
select is(entitlements.retry_delivery(:d_email), false, 'and an admin cannot send it again');
select is((select count(*)::int from entitlements.deliveries where id = :d_email and status = 'canceled'), 1, '(still canceled)');
set entitlements.clock = '2025-03-15 00:00:00+00';
select is((select count(*)::int from entitlements.audit_log where action = 'erase'), 1, 'exactly one erase audit row');
select is((select array[actor::text, table_name, row_key, reason] from entitlements.audit_log where action = 'erase'),
          array[:gadmin, 'entitlements.customers', :zed, 'GDPR erasure request #4711'], 'who, what and why');
select ok((select not exists (select 1 from pg_temp.needles n where strpos(lower(a::text), lower(n.needle)) > 0)
             from entitlements.audit_log a where action = 'erase'), 'and nothing personal');
select is((select count(*)::int from entitlements.audit_log a where a.id > :audit_before and a.action <> 'erase'
              and a.table_name = 'entitlements.customers' and a.new_values ->> 'erased_at' is not null), 1,
          'the trigger''s row of the profile update is kept, scrubbed');
select is((select payload #>> '{data,object,id}' from entitlements.stripe_events where id = 'evt_zed1'), 'cus_zed1',
          'Stripe events keep their ids');

-- A second call changes nothing ---------------------------------------------------------------------------
select pg_temp.snapshot() as snap1 \gset
select is((select entitlements.erase_customer(:zed, 'again') ->> 'already_erased'), 'true', 'a second call says it was already erased');
select is(pg_temp.snapshot(), :'snap1', 'and changed nothing (no audit row either)');

-- Nothing brings her details back -----------------------------------------------------------------------
select throws_ok(format('select entitlements.set_profile(%L, %L, %L)', :zed, 'zelda@new.example.org', 'Zelda'), '55000', NULL,
                 'set_profile refuses an erased customer');
select throws_ok(format('update entitlements.customers set metadata = %L where id = %L', '{"phone": "1"}', :zed), '55000', NULL,
                 'so does a direct write of her profile');
select throws_ok(format('update entitlements.customers set erased_at = null where id = %L', :zed), '42501', NULL,
                 'erased_at is erase_customer''s alone');
update auth.users set email = 'zelda.again@auth.example.org' where id = :zed;
select is((select count(*)::int from entitlements.auth_emails where user_id = :zed), 0, 'auth.users'' address is not copied again');
select entitlements.cancel(:'sub', false) is null as canceled \gset
select is((select array_agg(d.channel order by d.id) from entitlements.deliveries d join entitlements.outbox o on o.id = d.event_id
            where o.customer_id = :zed and o.kind = 'subscription.canceled'), array['webhook'],
          'a later event about her is sent to the app, but no email');
select entitlements.stripe_record_event(jsonb_build_object('id', 'evt_zed2', 'object', 'event', 'type', 'customer.updated',
    'created', 1742000000, 'data', jsonb_build_object('object', jsonb_build_object(
        'id', 'cus_zed1', 'object', 'customer', 'email', 'zelda.again@example.org', 'name', :name)))) as stored \gset
select is((select array[payload #>> '{data,object,email}', payload #>> '{data,object,name}', payload #>> '{data,object,id}']
             from entitlements.stripe_events where id = 'evt_zed2'), array[null, null, 'cus_zed1'],
          'a later Stripe event about her is stored without her details');
select is((select array[doc #>> '{profile,email}', (doc #>> '{profile,erased_at}' is not null)::text,
                        (doc -> 'audit' @> '[{"action": "erase"}]')::text]
             from (select entitlements.export_customer(:zed) as doc) x), array[null, 'true', 'true'],
          'an export after the erasure shows it');

-- Regression (second attack review): a value nested 1,000 deep in an audited app table (any
-- login role can write one about anyone) neither blocks the erasure nor keeps the address.
select '00000000-0000-0000-0000-00000000e7d0' as deep \gset
select entitlements.subscribe(:'deep', 'free') is not null as s \gset
update entitlements.customers set email = 'deep.person@example.org' where id = :'deep';
create table public.deep_notes (id uuid primary key, v jsonb);
select entitlements.enable_audit('public.deep_notes');
insert into public.deep_notes values (:'deep', (repeat('[', 1000) || '"deep.person@example.org"' || repeat(']', 1000))::jsonb);
select lives_ok(format('select entitlements.erase_customer(%L, %L)', :'deep', 'GDPR request'),
                'erasing past a 1,000-deep value works');
select is((select count(*) from entitlements.audit_log where table_name = 'public.deep_notes'
             and new_values::text like '%deep.person@example.org%'), 0::bigint, 'and the address is gone from it');

select * from finish();
rollback;
