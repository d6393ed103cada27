\set ON_ERROR_STOP 1
\set QUIET 1
-- Console admin tokens (issue #14): made by global admins for admin users, shown once, kept
-- as a hash, checked by the worker's role at sign-in, read by their user (the console's
-- session check), revocable by their user or a global admin; refusals for everyone else.
begin;
select plan(38);

\set gadmin '''00000000-0000-0000-0000-00000000c001'''
\set tadmin '''00000000-0000-0000-0000-00000000c002'''
\set user1  '''00000000-0000-0000-0000-00000000c003'''
\set tenant '''00000000-0000-0000-0000-00000000c0a1'''

create function pg_temp.outcome(stmt text) returns text language plpgsql as $f$
begin
    execute stmt;
    return 'ok';
exception when others then
    return sqlstate;
end
$f$;
grant execute on function pg_temp.outcome(text) to public;

select entitlements.add_admin(:gadmin);
select entitlements.add_admin(:tadmin, :tenant);

-- Made by a database admin role (this superuser) for an admin user --------------------------
select entitlements.create_admin_token(:gadmin, '  laptop  ', now() + interval '1 day') as gtoken \gset
select ok(:'gtoken' ~ '^eat_[0-9a-f]{64}$', 'a token is eat_ and 64 hex digits');
select is((select count(*) from entitlements.admin_tokens where token_hash = sha256(convert_to(:'gtoken', 'UTF8'))),
          1::bigint, 'only its SHA-256 is kept');
select is((select count(*) from entitlements.admin_tokens t where t::text like '%' || :'gtoken' || '%'), 0::bigint,
          'the token itself is stored nowhere in the row');
select is((select label from entitlements.admin_tokens where user_id = :gadmin), 'laptop', 'the label, trimmed');
select is((select created_role from entitlements.admin_tokens where user_id = :gadmin), 'postgres',
          'made by a database role: which one is recorded');
select isnt(entitlements.create_admin_token(:gadmin, 'again', now() + interval '1 day'), :'gtoken',
            'each token is new');

-- Bad input: 22023, nothing written
select is(pg_temp.outcome(format('select entitlements.create_admin_token(%L, %L, now() + interval ''1 day'')', :user1, 'x')),
          '22023', 'a user who is no admin gets no token');
select is(pg_temp.outcome(format('select entitlements.create_admin_token(NULL, %L, now() + interval ''1 day'')', 'x')),
          '22023', 'NULL user');
select is(pg_temp.outcome(format('select entitlements.create_admin_token(%L, %L, now() + interval ''1 day'')', :gadmin, '   ')),
          '22023', 'a blank label');
select is(pg_temp.outcome(format('select entitlements.create_admin_token(%L, %L, now() + interval ''1 day'')', :gadmin, repeat('x', 201))),
          '22023', 'a label over 200 characters');
select is(pg_temp.outcome(format('select entitlements.create_admin_token(%L, %L, now() - interval ''1 second'')', :gadmin, 'x')),
          '22023', 'an end in the past');
select is(pg_temp.outcome(format('select entitlements.create_admin_token(%L, %L, ''infinity'')', :gadmin, 'x')),
          '22023', 'no end (infinity)');
select is(pg_temp.outcome(format('select entitlements.create_admin_token(%L, %L, now() + interval ''13 months'')', :gadmin, 'x')),
          '22023', 'more than a year');
select is((select count(*) from entitlements.admin_tokens), 2::bigint, 'refused calls wrote nothing');

-- Sign-in (the worker's role: an admin) ----------------------------------------------------
select is((select user_id from entitlements.admin_token_sign_in(:'gtoken')), :gadmin::uuid,
          'an active token signs its user in');
select isnt((select last_used_at from entitlements.admin_tokens where token_hash = sha256(convert_to(:'gtoken', 'UTF8'))),
            null, 'and its last use is recorded');
select is((select count(*) from entitlements.admin_token_sign_in('eat_' || repeat('0', 64))), 0::bigint,
          'an unknown token signs nobody in');
select is((select count(*) from entitlements.admin_token_sign_in(NULL)), 0::bigint, 'NULL signs nobody in');
select is((select count(*) from entitlements.admin_token_sign_in(repeat('x', 100000))), 0::bigint,
          'a huge token is not even hashed');

-- A tenant admin's token, then their admin rights withdrawn: the token no longer signs in.
select entitlements.create_admin_token(:tadmin, 'tenant desk', now() + interval '1 hour') as ttoken \gset
select is((select user_id from entitlements.admin_token_sign_in(:'ttoken')), :tadmin::uuid, 'a tenant admin signs in');
delete from entitlements.admins where user_id = :tadmin;
select is((select count(*) from entitlements.admin_token_sign_in(:'ttoken')), 0::bigint,
          'once no longer an admin, their token signs nobody in');
select entitlements.add_admin(:tadmin, :tenant);

-- Expiry by the engine clock.
set local entitlements.clock = '2100-01-01 00:00:00+00';
select is((select count(*) from entitlements.admin_token_sign_in(:'gtoken')), 0::bigint, 'an expired token signs nobody in');
reset entitlements.clock;

-- A signed-in user of the API roles --------------------------------------------------------
set local role authenticated;
select set_config('request.jwt.claims', json_build_object('sub', :tadmin::text, 'role', 'authenticated')::text, true) is not null as u \gset
select is((select count(*) from entitlements.admin_tokens), 1::bigint, 'a user reads their own tokens only');
select is(pg_temp.outcome(format('select entitlements.admin_token_sign_in(%L)', :'gtoken')), '42501',
          'the API roles cannot call the sign-in check');
select is(pg_temp.outcome(format('select entitlements.create_admin_token(%L, %L, now() + interval ''1 day'')', :tadmin, 'mine')),
          '42501', 'a tenant admin cannot make tokens');
select is(pg_temp.outcome('update entitlements.admin_tokens set expires_at = expires_at + interval ''1 year'''), '42501',
          'nor extend one directly');
select is(pg_temp.outcome('delete from entitlements.admin_tokens'), '42501', 'nor delete one');
select is(pg_temp.outcome(format('select entitlements.revoke_admin_token(id) from entitlements.admin_tokens where user_id <> %L', :tadmin)),
          'ok', 'rows of others are not even visible to revoke');
select is(pg_temp.outcome(format('select entitlements.revoke_admin_token(%L)',
          (select id from entitlements.admin_tokens where user_id = :gadmin limit 1))), '42501',
          'revoking a global admin''s token (its id known) is refused');
select ok(entitlements.revoke_admin_token((select id from entitlements.admin_tokens where user_id = :tadmin)),
          'a user revokes their own token');
select ok(not entitlements.revoke_admin_token((select id from entitlements.admin_tokens where user_id = :tadmin)),
          'twice: it was no longer active');

-- A global admin user revokes anyone's.
select set_config('request.jwt.claims', json_build_object('sub', :gadmin::text, 'role', 'authenticated')::text, true) is not null as g \gset
select is((select count(*) from entitlements.admin_tokens), 3::bigint, 'a global admin reads every token');
select ok(entitlements.revoke_admin_token((select id from entitlements.admin_tokens where token_hash = sha256(convert_to(:'gtoken', 'UTF8')))),
          'a global admin revokes a token');
reset role;
select is((select count(*) from entitlements.admin_token_sign_in(:'gtoken')), 0::bigint, 'a revoked token signs nobody in');
select is((select count(*) from entitlements.admin_token_sign_in(:'ttoken')), 0::bigint, 'nor one its user revoked');

-- A plain login role ------------------------------------------------------------------------
create role console_plain login;
set local role console_plain;
select set_config('request.jwt.claims', json_build_object('sub', :gadmin::text, 'role', 'authenticated')::text, true) is not null as p \gset
select is(array[pg_temp.outcome('select count(*) from entitlements.admin_tokens'),
                pg_temp.outcome(format('select entitlements.create_admin_token(%L, %L, now() + interval ''1 day'')', :gadmin, 'x')),
                pg_temp.outcome(format('select entitlements.admin_token_sign_in(%L)', :'gtoken')),
                pg_temp.outcome(format('select entitlements.revoke_admin_token(%L)', gen_random_uuid()))],
          array['42501', '42501', '42501', '42501'],
          'a plain login role claiming a global admin''s id: every token function and the table refuse');
reset role;

-- Refused sign-ins the worker counts feed the sign_in_failures rule ----------------------------
select entitlements.record_signal('sign_in_refused', '203.0.113.9', 'admin_token', 9);
select (entitlements.run_task('security_scan')).outcome as scanned \gset
select is((select count(*) from entitlements.security_alerts where rule = 'sign_in_failures'), 0::bigint,
          'nine refused sign-ins from one address: below the threshold');
select entitlements.record_signal('sign_in_refused', '203.0.113.9', 'rate_limited');
select entitlements.record_signal('sign_in_refused', '198.51.100.1', 'admin_token', 3);
select (entitlements.run_task('security_scan')).outcome as scanned \gset
select is((select array_agg(subject || ':' || severity) from entitlements.security_alerts where rule = 'sign_in_failures'),
          array['203.0.113.9:high'], 'the tenth makes a high alert about that address only');

select * from finish();
rollback;
