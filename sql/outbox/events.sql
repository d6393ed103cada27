-- What writes events: triggers on the tables whose changes are facts worth telling, so every
-- path (subscribe, cancel, change_plan, Stripe applies, grants, direct writes by admins)
-- writes them in its own transaction. A rollback writes none.
--
--   subscription.created    a subscription is made
--   subscription.updated    its plan, status, quantity or period changed
--   subscription.canceled   it was canceled (now or at period end)
--   payment.failed          it became past_due (a payment failed)
--   entitlements.changed    a grant was given or revoked; a member joined or left an
--                           organization (the member's entitlements follow the organization's)
--   access.suspended        it stopped granting, access.restored it grants again (access.sql;
--                           by time alone: the time_events task), trial.ending (the task)
--   server.*                provisioning/applier.sql

-- Definer: the event is written whoever made the change (a tenant admin, the Stripe applier);
-- it reads only the old and new rows of the extension's own table.
create function entitlements._subscription_events()
returns trigger language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_payload jsonb;
    v_tx text := txid_current()::text;
begin
    perform entitlements._require_own_table(tg_relid, 'entitlements._subscription_events');
    if entitlements._bulk_loading() then
        return null;
    end if;
    v_payload := jsonb_build_object('subscription_id', new.id, 'plan', new.plan_key, 'status', new.status,
                                    'quantity', new.quantity, 'current_period_end', new.current_period_end,
                                    'trial_end', new.trial_end, 'cancel_at_period_end', new.cancel_at_period_end,
                                    'source', new.source);
    if tg_op = 'INSERT' then
        perform entitlements._outbox_record('subscription.created', new.customer_id,
                                            format('subscription.created:%s', new.id), v_payload);
        perform entitlements._access_notice(new);
        return null;
    end if;
    -- Access lost or back by this change (access.sql). When the old row had already lapsed
    -- by time (the expiry task tidying it up), that is why.
    perform entitlements._access_notice(new,
        case when entitlements._lapsed(old, (select p.grace_days from entitlements.plans p where p.key = old.plan_key))
             then entitlements._access_lost_reason(old.status, old.cancel_at_period_end) end);
    -- Canceled once per cancellation: at period end, or at once; not again when a cancellation
    -- at period end takes effect. Undone and made again, it is a new one.
    if (new.cancel_at_period_end and not old.cancel_at_period_end and old.status <> 'canceled')
       or (new.status = 'canceled' and old.status <> 'canceled' and not old.cancel_at_period_end) then
        perform entitlements._outbox_record('subscription.canceled', new.customer_id,
            format('subscription.canceled:%s:%s', new.id, v_tx), v_payload);
    end if;
    if new.status = 'past_due' and old.status <> 'past_due' then
        perform entitlements._outbox_record('payment.failed', new.customer_id,
            format('payment.failed:%s:%s', new.id, entitlements._us(new.status_changed_at)),
            v_payload || jsonb_build_object('previous_status', old.status));
    end if;
    if (new.plan_key, new.status, new.quantity, new.current_period_end, new.trial_end, new.cancel_at_period_end)
       is distinct from
       (old.plan_key, old.status, old.quantity, old.current_period_end, old.trial_end, old.cancel_at_period_end) then
        -- One per subscription and transaction: the same change is one fact.
        perform entitlements._outbox_record('subscription.updated', new.customer_id,
            format('subscription.updated:%s:%s', new.id, v_tx),
            v_payload || jsonb_build_object('previous', jsonb_build_object(
                'plan', old.plan_key, 'status', old.status, 'quantity', old.quantity,
                'current_period_end', old.current_period_end)));
    end if;
    return null;
end
$$;
create trigger subscriptions_events after insert or update on entitlements.subscriptions
    for each row execute function entitlements._subscription_events();

create function entitlements._grant_events()
returns trigger language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_own_table(tg_relid, 'entitlements._grant_events');
    if entitlements._bulk_loading() then
        return null;
    end if;
    if tg_op = 'INSERT' or new.revoked_at is distinct from old.revoked_at then
        perform entitlements._outbox_record('entitlements.changed', new.customer_id,
            format('entitlements.changed:%s:%s', new.id, case when new.revoked_at is null then 'granted' else 'revoked' end),
            jsonb_build_object('grant_id', new.id, 'grant_kind', new.kind, 'feature', new.feature_key,
                               'value', new.value, 'expires_at', new.expires_at,
                               'change', case when new.revoked_at is null then 'granted' else 'revoked' end));
    end if;
    return null;
end
$$;
create trigger grants_events after insert or update on entitlements.grants
    for each row execute function entitlements._grant_events();

-- Joining or leaving an organization changes the member's entitlements (they get the
-- organization's): entitlements.changed for the member, once per change and transaction.
create function entitlements._member_events()
returns trigger language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_row entitlements.members := case when tg_op = 'DELETE' then old else new end;
    v_change text := case tg_op when 'INSERT' then 'joined' when 'DELETE' then 'left' else 'role_changed' end;
begin
    perform entitlements._require_own_table(tg_relid, 'entitlements._member_events');
    if entitlements._bulk_loading() or (tg_op = 'UPDATE' and new.role is not distinct from old.role) then
        return null;
    end if;
    perform entitlements._outbox_record('entitlements.changed', v_row.user_id,
        format('entitlements.changed:member:%s:%s:%s:%s', v_row.organization_id, v_row.user_id, v_change, txid_current()),
        jsonb_build_object('change', v_change, 'organization_id', v_row.organization_id, 'role', v_row.role));
    return null;
end
$$;
create trigger members_events after insert or update or delete on entitlements.members
    for each row execute function entitlements._member_events();
