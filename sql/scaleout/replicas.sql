-- Read replicas. A streaming hot standby answers every check (has_feature, entitlements(),
-- check, the access-token hook) from its replayed copy: the per-backend cache is keyed by
-- entitlements.cache_version, which replays with the commit that moved it, so a change is
-- seen on a replica by the first statement after the replica has replayed that commit.
-- Counting and slots are the primary's alone: a slot taken on a replica (an advisory lock
-- there) would not count against the primary's, and a replica sees none of the primary's
-- slots, so acquire and slots_in_use refuse instead of answering.
-- Every other write fails with PostgreSQL's own 25006 naming the statement.

-- No SET clause (a SET costs every call of _meter and acquire a GUC save and restore): the
-- one name it uses is qualified.
create function entitlements._require_primary(verb text)
returns void language plpgsql stable
as $$
begin
    if pg_catalog.pg_is_in_recovery() then
        raise exception '% cannot run on a read replica: this server is a hot standby', verb
            using errcode = '25006',
                  detail = 'Usage counts and concurrency slots are kept by the primary only.',
                  hint = 'Send consume, try_consume, acquire and every change to the primary; '
                         'has_feature, entitlements() and check answer on replicas.';
    end if;
end
$$;
comment on function entitlements._require_primary(text) is
    'Refuse (25006) a counting verb on a hot standby, naming it.';
