-- The worker's side of provisioning: claim servers that need work (with a lease, so two
-- workers never work on one server at once), report what the cluster now has, record a
-- failure with exponential backoff and jitter, and after settings.server_max_attempts
-- failures leave the server 'failed' until an admin retries it. All admin-only.
--
-- A server is converged when the worker has applied its current generation and it rests
-- (ready or suspended); only unconverged servers are claimed, unless the worker resyncs.

create type entitlements.server_work as (
    server_id         uuid,
    customer_id       uuid,
    name              text,
    namespace         text,
    domains           text[],
    desired           text,
    resources         jsonb,
    applied_resources jsonb,
    generation        bigint,
    phase             text,
    attempts          integer,
    created_at        timestamptz,
    secrets           jsonb
);

-- One server as the worker needs it (the secrets included).
create function entitlements._server_work(r entitlements.server_records)
returns entitlements.server_work language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select r.id, r.customer_id, r.name, r.namespace, r.domains, st.desired, st.resources, r.applied_resources,
           st.generation, r.phase, r.attempts, r.created_at,
           (select jsonb_build_object('signing_key', x.signing_key,
                                      'registration_shared_secret', x.registration_shared_secret,
                                      'macaroon_secret_key', x.macaroon_secret_key)
              from entitlements.server_secrets x where x.server_id = r.id)
      from entitlements._server_state(r) st
$$;

create function entitlements._server_lease_name(server uuid)
returns text language sql immutable parallel safe strict
return 'server:' || server::text;

create function entitlements.provision_claim(holder text, lease interval, max_servers integer,
                                             include_converged boolean default false, resync_after uuid default null)
returns setof entitlements.server_work language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    r entitlements.server_records;
    v_work entitlements.server_work;
begin
    perform entitlements._require_admin('provision_claim');
    perform entitlements._require_not_null(holder, 'holder');
    if lease is null or lease < interval '1 second' or lease > interval '1 hour' then
        raise exception 'lease must be from 1 second to 1 hour, got %', coalesce(lease::text, 'NULL')
            using errcode = '22023';
    end if;
    if max_servers is null or max_servers not between 1 and 10000 then
        raise exception 'max_servers must be from 1 to 10000, got %', coalesce(max_servers::text, 'NULL')
            using errcode = '22023';
    end if;
    for r in
        select s.* from entitlements.server_records s
         where s.phase not in ('terminated', 'failed') and s.next_attempt_at <= entitlements.now()
           -- Not while anyone's lease lasts, the claimer's own included: a server is worked on
           -- once at a time, even within one worker.
           and not exists (select 1 from entitlements.leases l
                            where l.name = entitlements._server_lease_name(s.id) and l.until >= clock_timestamp())
           -- A resync walks the resting servers in id order from the worker's cursor, so each is
           -- looked at once per resync without writing anything to remember it.
           and (resync_after is null or s.phase not in ('ready', 'suspended') or s.id > resync_after)
           -- Otherwise a resting server is claimed only when it is not converged (decided here,
           -- so that no converged row is locked by an idle poll).
           and (include_converged or s.phase not in ('ready', 'suspended')
                or s.observed_generation is distinct from (entitlements._server_state(s)).generation)
         -- Servers with work first (a resync must not starve them), then the resting by id.
         order by s.phase in ('ready', 'suspended'),
                  case when s.phase in ('ready', 'suspended') then s.id end,
                  s.next_attempt_at, s.id
           for update of s skip locked
    loop
        v_work := entitlements._server_work(r);
        continue when not entitlements._take_free_lease(entitlements._server_lease_name(r.id), holder, lease);
        return next v_work;
        max_servers := max_servers - 1;
        exit when max_servers = 0;
    end loop;
end
$$;
comment on function entitlements.provision_claim(text, interval, integer, boolean, uuid) is
    'Lease up to max_servers servers that need work (all due ones when include_converged; resting ones '
    'after resync_after, in id order) to holder for lease, with what each should be and its secrets. '
    'The worker''s; admins only.';

-- What the customer hears about a server reaching a resting phase: server.ready the first
-- time, server.suspended each time access is lost, server.resumed when it is ready again
-- after that, server.terminated once. A plan change (ready, briefly provisioning, ready) says
-- nothing.
create function entitlements._server_event(r entitlements.server_records, phase text)
returns void language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_last entitlements.outbox;
    v_kind text;
    v_key text;
begin
    select * into v_last from entitlements.outbox o
     where o.customer_id = r.customer_id and o.payload ->> 'server_id' = r.id::text
     order by o.id desc limit 1;
    if phase = 'ready' and r.ready_at is null then
        v_kind := 'server.ready';
        v_key := format('server.ready:%s', r.id);
    elsif phase = 'ready' and v_last.kind = 'server.suspended' then
        v_kind := 'server.resumed';
        v_key := format('server.resumed:%s:%s', r.id, v_last.id);
    elsif phase = 'suspended' and v_last.kind is distinct from 'server.suspended' then
        v_kind := 'server.suspended';
        v_key := format('server.suspended:%s:%s', r.id, coalesce(v_last.id, 0));
    elsif phase = 'terminated' then
        v_kind := 'server.terminated';
        v_key := format('server.terminated:%s', r.id);
    else
        return;
    end if;
    perform entitlements._outbox_record(v_kind, r.customer_id, v_key,
        jsonb_build_object('server_id', r.id, 'name', r.name, 'domains', to_jsonb(r.domains)));
end
$$;

-- Report an attempt that did not fail. False, and nothing changed, when holder lost the lease.
create function entitlements.provision_report(server_id uuid, holder text, generation bigint, phase text,
                                              conditions jsonb, applied_resources jsonb,
                                              requeue_after interval default null)
returns boolean language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_old entitlements.server_records;
    v_converged boolean := phase in ('ready', 'suspended', 'terminated');
begin
    perform entitlements._require_admin('provision_report');
    perform entitlements._require_not_null(server_id, 'server_id');
    perform entitlements._require_not_null(holder, 'holder');
    perform entitlements._require_not_null(generation, 'generation');
    if jsonb_typeof(conditions) is distinct from 'array' and conditions is not null then
        raise exception 'conditions must be a JSON array, got %', jsonb_typeof(conditions) using errcode = '22023';
    end if;
    if jsonb_typeof(applied_resources) is distinct from 'object' and applied_resources is not null then
        raise exception 'applied_resources must be a JSON object, got %', jsonb_typeof(applied_resources)
            using errcode = '22023';
    end if;
    if phase is null or phase not in ('provisioning', 'ready', 'suspended', 'terminating', 'terminated') then
        raise exception 'phase must be provisioning, ready, suspended, terminating or terminated, got %',
            coalesce(phase, 'NULL') using errcode = '22023';
    end if;
    if requeue_after < interval '0' or requeue_after > interval '1 day' then
        raise exception 'requeue_after must be from 0 to 1 day, got %', requeue_after using errcode = '22023';
    end if;
    -- The server's row first, then its lease: the order provision_claim takes them in, so the
    -- two never deadlock.
    select * into v_old from entitlements.server_records r where r.id = server_id for update;
    if not found then
        raise exception 'server % does not exist', server_id using errcode = 'P0002';
    end if;
    if not entitlements.release_lease(entitlements._server_lease_name(server_id), holder) then
        return false;
    end if;
    -- Only what changed is written: a converged server resynced costs no row version (and no
    -- audit row).
    update entitlements.server_records r
       set phase = provision_report.phase,
           conditions = coalesce(provision_report.conditions, '[]'),
           applied_resources = coalesce(provision_report.applied_resources, r.applied_resources),
           observed_generation = case when v_converged then provision_report.generation else r.observed_generation end,
           attempts = 0, last_error = null,
           next_attempt_at = entitlements.now() + coalesce(requeue_after, interval '0'),
           ready_at = case when provision_report.phase = 'ready' then coalesce(r.ready_at, entitlements.now()) else r.ready_at end,
           terminated_at = case when provision_report.phase = 'terminated' then coalesce(r.terminated_at, entitlements.now()) end,
           updated_at = entitlements.now()
     where r.id = server_id
       and ((r.phase, r.conditions, r.applied_resources, r.observed_generation, r.attempts, r.last_error)
            is distinct from
            (provision_report.phase, coalesce(provision_report.conditions, '[]'),
             coalesce(provision_report.applied_resources, r.applied_resources),
             case when v_converged then provision_report.generation else r.observed_generation end, 0, null::text)
            or (requeue_after > interval '0' and r.next_attempt_at < entitlements.now() + requeue_after));
    if phase is distinct from v_old.phase and phase in ('ready', 'suspended', 'terminated') then
        perform entitlements._server_event(v_old, phase);
    end if;
    return true;
end
$$;
comment on function entitlements.provision_report(uuid, text, bigint, text, jsonb, jsonb, interval) is
    'The worker reports a server''s phase and conditions after an attempt; gives the lease back. '
    'requeue_after: when to look again (a server still converging). False when the lease was lost.';

-- Record a failed attempt: the next waits 2^attempts seconds (at most an hour), +-25% so that
-- servers failing together do not retry together. After settings.server_max_attempts
-- failures, or at once when `permanent` (a mistake in the server's own data that retrying
-- cannot mend), the server is 'failed' (NULL returned) until retry_server.
create function entitlements.provision_failed(server_id uuid, holder text, error text,
                                              permanent boolean default false)
returns entitlements.failure language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_max integer := (entitlements._settings()).server_max_attempts;
    r entitlements.server_records;
begin
    perform entitlements._require_admin('provision_failed');
    perform entitlements._require_not_null(server_id, 'server_id');
    perform entitlements._require_not_null(holder, 'holder');
    -- Row, then lease: provision_claim's order.
    perform 1 from entitlements.server_records s where s.id = server_id for update;
    if not found then
        raise exception 'server % does not exist', server_id using errcode = 'P0002';
    end if;
    if not entitlements.release_lease(entitlements._server_lease_name(server_id), holder) then
        -- Someone else has the server now; their outcome counts.
        return row('lease_lost', null)::entitlements.failure;
    end if;
    update entitlements.server_records s
       set attempts = s.attempts + 1, last_error = left(coalesce(error, 'unknown error'), 2000),
           next_attempt_at = entitlements.now() + entitlements._backoff(s.attempts),
           -- A server being deleted stays terminating (retried, its error kept): failed would let
           -- its desired state follow the customer's access again.
           phase = case when (s.attempts + 1 >= v_max or coalesce(permanent, false)) and s.phase <> 'terminating'
                        then 'failed' else s.phase end,
           updated_at = entitlements.now()
     where s.id = server_id
    returning * into r;
    if r.phase = 'failed' then
        perform entitlements._outbox_record('server.failed', r.customer_id,
            format('server.failed:%s:%s', r.id, entitlements._us(r.updated_at)),
            -- The error stays in servers.last_error (admins): it is the cluster's text, not the customer's.
            jsonb_build_object('server_id', r.id, 'name', r.name, 'domains', to_jsonb(r.domains), 'attempts', r.attempts));
        return row('final', null)::entitlements.failure;
    end if;
    return row('retry', r.next_attempt_at)::entitlements.failure;
end
$$;
comment on function entitlements.provision_failed(uuid, text, text, boolean) is
    'The worker records a failed attempt: retry (backoff with jitter), final (the server is failed: after '
    'settings.server_max_attempts, or at once when permanent), or lease_lost (not recorded). Admins only.';

create function entitlements.retry_server(server uuid)
returns boolean language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_admin('retry_server');
    perform entitlements._require_not_null(server, 'server');
    if not exists (select 1 from entitlements.server_records r where r.id = server) then
        raise exception 'server % does not exist', server using errcode = 'P0002';
    end if;
    update entitlements.server_records r
       set phase = case when r.phase = 'failed' then 'pending' else r.phase end,
           attempts = 0, next_attempt_at = entitlements.now(), updated_at = entitlements.now()
     where r.id = server and r.phase <> 'terminated';
    if found then
        perform pg_notify('entitlements_provision', '');
    end if;
    return found;
end
$$;
comment on function entitlements.retry_server(uuid) is
    'Try a failed (or backing-off) server again now, attempts counted from zero; false once terminated. '
    'Global admins only.';

-- What the worker would work on for one customer now, without leasing: provision --dry-run.
create function entitlements.server_specs(customer uuid)
returns setof entitlements.server_work language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_admin('server_specs');
    perform entitlements._require_not_null(customer, 'customer');
    return query select (entitlements._server_work(r)).*
                   from entitlements.server_records r
                  where r.customer_id = customer and r.phase <> 'terminated'
                  order by r.created_at, r.name;
end
$$;
comment on function entitlements.server_specs(uuid) is
    'What each of a customer''s servers should be now (as provision_claim gives it, without a lease). Admins only.';

-- For /metrics: servers needing work, servers by phase.
create function entitlements.provision_stats()
returns jsonb language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_admin('provision_stats');
    return (
        select jsonb_build_object(
            'queue_depth', count(*) filter (where s.phase not in ('failed', 'terminated')
                                              and (s.observed_generation is distinct from s.generation
                                                   or s.phase not in ('ready', 'suspended'))),
            'failed', count(*) filter (where s.phase = 'failed'),
            'phases', (select jsonb_object_agg(ph.name, coalesce(c.n, 0))
                         from unnest(array['pending', 'provisioning', 'ready', 'suspended', 'terminating',
                                           'terminated', 'failed']) as ph(name)
                         left join (select x.phase, count(*) as n from entitlements.server_records x
                                     group by x.phase) c on c.phase = ph.name))
          from entitlements.servers s);
end
$$;
comment on function entitlements.provision_stats() is
    'Servers needing work (queue_depth), failed, and how many are in each phase. Admins only.';
