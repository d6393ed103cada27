\set ON_ERROR_STOP 1
\set QUIET 1
begin;
select plan(23);
\ir fixtures/catalog.sql

\set org '''00000000-0000-0000-0000-0000000000a0'''
\set u1  '''00000000-0000-0000-0000-0000000000a1'''
\set u2  '''00000000-0000-0000-0000-0000000000a2'''
\set u3  '''00000000-0000-0000-0000-0000000000a3'''

-- Organization entitlements flow to members; the most generous value wins.
select entitlements.subscribe(:org, 'team', quantity => 2) as sub_org \gset
select entitlements.subscribe(:u1, 'pro') is not null as s \gset
select entitlements.add_member(:org, :u1, 'admin');
select is(entitlements.entitlements(:u1) -> 'features' -> 'files' -> 'limit', 'null'::jsonb,
          'pro (15 files) + team organization (unlimited): unlimited wins');
select is(entitlements.entitlements(:u1) -> 'features' -> 'theme' -> 'value', '"custom"'::jsonb,
          'config comes from the member''s own plan when the organization''s plan has none');
select is(entitlements.entitlements(:u1) -> 'features' -> 'slots' -> 'limit', '10'::jsonb, 'concurrency: the larger wins');
select is(entitlements.entitlements(:u1) ->> 'plan', 'pro', 'the headline plan is the member''s own');
select ok(not entitlements.has_feature(:u2, 'agents'), 'a non-member on the default plan has no agents');
select entitlements.add_member(:org, :u2);
select ok(entitlements.has_feature(:u2, 'agents'), 'once a member, the organization''s plan grants agents');
select is(entitlements.entitlements(:u2) ->> 'source', 'organization', 'entitlements() says where the plan comes from');
select entitlements.remove_member(:org, :u2);
select ok(not entitlements.has_feature(:u2, 'agents'), 'removed members lose the organization''s features at once');

-- Seats: team gives 5 per unit, quantity 2 = 10 seats (1 used by u1).
select is(entitlements._feature_limit(:org, 'seats'), 10::float8, 'per-unit seats multiply by quantity');
select entitlements.add_member(:org, ('00000000-0000-0000-0000-0000000001' || lpad(i::text, 2, '0'))::uuid)
  from generate_series(1, 9) i;
select is((select count(*) from entitlements.members where organization_id = :org), 10::bigint, 'ten seats filled');
select throws_ok($$select entitlements.add_member('00000000-0000-0000-0000-0000000000a0', '00000000-0000-0000-0000-0000000000a3')$$,
                 'PT403', NULL, 'the eleventh member is refused with PT403');
select is((select count(*) from entitlements.members where organization_id = :org), 10::bigint, 'and not added');
select lives_ok($$select entitlements.add_member('00000000-0000-0000-0000-0000000000a0', '00000000-0000-0000-0000-0000000000a1', 'owner')$$,
                'changing an existing member''s role needs no seat');
update entitlements.subscriptions set quantity = 3 where id = :'sub_org';
select lives_ok($$select entitlements.add_member('00000000-0000-0000-0000-0000000000a0', '00000000-0000-0000-0000-0000000000a3')$$,
                'buying more seats (quantity 3) makes room');

-- Grants: a feature grant with expiry, a quota boost, an override, and a deny that beats all.
\set g '''00000000-0000-0000-0000-0000000000b1'''
select entitlements.grant_feature(:g, 'agents', expires_at => clock_timestamp() + interval '1 second',
                                  reason => 'beta tester') as grant_id \gset
select ok(entitlements.has_feature(:g, 'agents'), 'a feature grant switches the feature on');
select pg_sleep(1.2);
select ok(not entitlements.has_feature(:g, 'agents'), 'and off when it expires, with no job');
select entitlements.boost_quota(:g, 'files', 10, reason => 'migration') is not null as b \gset
select is(entitlements.entitlements(:g) -> 'features' -> 'files' -> 'limit', '13'::jsonb, 'a quota boost adds to the plan limit (3 + 10)');
select entitlements.override_feature(:g, 'files', '1', reason => 'abuse') as override_id \gset
select is(entitlements.entitlements(:g) -> 'features' -> 'files' -> 'limit', '1'::jsonb, 'an override replaces the value');
select entitlements.revoke_grant(:'override_id', 'resolved');
select is(entitlements.entitlements(:g) -> 'features' -> 'files' -> 'limit', '13'::jsonb, 'revoking the override restores it');

select entitlements.deny_feature(:u1, 'agents', reason => 'chargeback') is not null as d \gset
select ok(not entitlements.has_feature(:u1, 'agents'), 'a deny beats the own plan and the organization''s plan');
select ok(entitlements.has_feature(:u2, 'slots'), 'other customers are unaffected');

select throws_ok($$select entitlements.grant_feature('00000000-0000-0000-0000-0000000000b1', 'agents', reason => '')$$,
                 '22023', 'a reason is required', 'grants need a reason');
select throws_ok($$select entitlements.boost_quota('00000000-0000-0000-0000-0000000000b1', 'agents', 5, reason => 'x')$$,
                 '22023', NULL, 'a flag takes no quota boost');

select * from finish();
rollback;
