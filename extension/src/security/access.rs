//! Who may act for a customer: read its resolved entitlements, meter its usage, take its
//! slots. The customer themself, members of the organization, privileged roles, and
//! admins of the customer's tenant. Shared by the checks (checks/), the metering functions
//! and RLS (`can_see_customer`), and written in Rust because they ask on every call or row.

use crate::checks::cache;
use crate::clock::Micros;
use crate::error::Result;
use crate::security::identity;
use pgrx::prelude::*;
use pgrx::{pg_sys, Uuid};

/// A role row security does not bind on the extension's tables: superuser, BYPASSRLS, or
/// the tables' owner (or a role with its privileges).
pub fn role_is_rls_exempt(role: pg_sys::Oid, owner: pg_sys::Oid) -> bool {
    // SAFETY: catalog lookups through the syscache; valid inside a transaction.
    unsafe {
        pg_sys::superuser_arg(role) || pg_sys::has_bypassrls_privilege(role) || pg_sys::has_privs_of_role(role, owner)
    }
}

/// An RLS-exempt role, or one with the privileges of `entitlements_admin`: who administers
/// everything. SQL asks it as `entitlements._role_is_privileged`.
pub fn role_is_privileged(role: pg_sys::Oid, owner: pg_sys::Oid) -> bool {
    role_is_rls_exempt(role, owner) || has_privs_of_named_role(role, c"entitlements_admin")
}

/// Does `role` have the privileges of the role called `name` (false when there is none)?
pub fn has_privs_of_named_role(role: pg_sys::Oid, name: &std::ffi::CStr) -> bool {
    // SAFETY: syscache lookups inside a transaction; missing_ok for the role name.
    unsafe {
        let named = pg_sys::get_role_oid(name.as_ptr(), true);
        named != pg_sys::InvalidOid && pg_sys::has_privs_of_role(role, named)
    }
}

/// May `role` (signed in as `current_user_id()`) act for `customer` at `now`?
pub fn may_act_for(customer: &[u8; 16], role: pg_sys::Oid, now: Micros) -> Result<bool> {
    if role_is_privileged(role, cache::owner()?) {
        return Ok(true);
    }
    // Nobody signed in (or a role that is only itself) is listed nowhere.
    let Some(me) = identity::current()? else { return Ok(false) };
    if &me == customer {
        return Ok(true);
    }
    if cache::with_customer(&me, now, |_, d, _| d.organizations.iter().any(|(o, _)| &o.id == customer))? {
        return Ok(true);
    }
    // Listed in entitlements.admins? Asked once per statement, not per row: RLS asks this for
    // every row an admin's query reads (a dashboard over 100,000 customers).
    match listing(&me)? {
        Listing::None => return Ok(false),
        Listing::Global => return Ok(true),
        Listing::Tenants => {}
    }
    // An admin of some tenants: is this customer in one of them?
    let uuid = Uuid::from_bytes(*customer);
    let listed = Spi::connect(|c| {
        c.select("select entitlements._is_listed_admin_of($1)", Some(1), &[uuid.into()])?.first().get::<bool>(1)
    })?;
    Ok(listed == Some(true))
}

/// How the signed-in user is listed in entitlements.admins.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Listing {
    None,
    Global,
    Tenants,
}

/// One statement of one backend, as seen by one user: what `listing` is remembered for. A
/// new statement (its start time), a command that wrote (its command id) or a new
/// transaction reads entitlements.admins again.
type StatementKey = ([u8; 16], pg_sys::LocalTransactionId, pg_sys::CommandId, pg_sys::TimestampTz);

thread_local! {
    static LISTED: std::cell::Cell<Option<(StatementKey, Listing)>> = const { std::cell::Cell::new(None) };
}

fn listing(me: &[u8; 16]) -> Result<Listing> {
    // SAFETY: plain reads of backend state, valid in any backend running SQL.
    let key = unsafe {
        (*me, (*pg_sys::MyProc).lxid, pg_sys::GetCurrentCommandId(false), pg_sys::GetCurrentStatementStartTimestamp())
    };
    if let Some((k, l)) = LISTED.with(|c| c.get()) {
        if k == key {
            return Ok(l);
        }
    }
    // As the current role: an API role reads its own rows of admins (RLS), the owner all.
    let row = Spi::connect(|c| {
        let rows = c.select(
            "select coalesce(bool_or(a.tenant_id is null), false), count(*) > 0
               from entitlements.admins a where a.user_id = $1",
            Some(1),
            &[Uuid::from_bytes(*me).into()],
        )?;
        let first = rows.first();
        Ok::<_, pgrx::spi::Error>((first.get::<bool>(1)?, first.get::<bool>(2)?))
    })?;
    let l = match row {
        (Some(true), _) => Listing::Global,
        (_, Some(true)) => Listing::Tenants,
        _ => Listing::None,
    };
    LISTED.with(|c| c.set(Some((key, l))));
    Ok(l)
}

/// Raise 42501 unless the real caller may act for `customer`: for the internals that read
/// a customer's limits around RLS (`_feature_limit`, `_meter_limits`).
pub fn require_may_act_for(customer: &[u8; 16], now: crate::clock::Micros) -> Result<()> {
    // SAFETY: plain read of backend state.
    let outer = unsafe { pg_sys::GetOuterUserId() };
    if may_act_for(customer, outer, now)? {
        Ok(())
    } else {
        let action = "read a customer's limits";
        crate::monitoring::signals::note(
            crate::monitoring::signals::Kind::Permission,
            &crate::monitoring::signals::principal(),
            action,
        );
        Err(crate::error::Error::InsufficientPrivilege(
            "permission denied: not allowed to read this customer's limits".into(),
        ))
    }
}

/// For SECURITY DEFINER metering functions: may the real caller (the role outside any
/// definer function, see `_outer_role`) act for `customer`?
#[pg_extern(stable, strict, parallel_safe, name = "_may_meter")]
fn may_meter(customer: Uuid) -> bool {
    use crate::error::OrRaise;
    // SAFETY: plain read of backend state.
    let outer = unsafe { pg_sys::GetOuterUserId() };
    may_act_for(customer.as_bytes(), outer, crate::clock::statement_now()).or_raise()
}

/// `entitlements._role_is_privileged(role)`: `role_is_privileged` for SQL.
#[pg_extern(stable, strict, parallel_safe, name = "_role_is_privileged")]
fn role_is_privileged_sql(role: pg_sys::Oid) -> bool {
    use crate::error::OrRaise;
    role_is_privileged(role, cache::owner().or_raise())
}

/// `entitlements._role_is_rls_exempt(role)`: `role_is_rls_exempt` for SQL (the audit
/// triggers step aside for such a role loading a dump with row security off).
#[pg_extern(stable, strict, parallel_safe, name = "_role_is_rls_exempt")]
fn role_is_rls_exempt_sql(role: pg_sys::Oid) -> bool {
    use crate::error::OrRaise;
    role_is_rls_exempt(role, cache::owner().or_raise())
}

/// `entitlements._is_privileged_role()`: is the current role (what RLS and SQL functions
/// run as) privileged?
#[pg_extern(stable, strict, parallel_safe, name = "_is_privileged_role")]
fn current_role_is_privileged() -> bool {
    use crate::error::OrRaise;
    // SAFETY: plain read of backend state.
    role_is_privileged(unsafe { pg_sys::GetUserId() }, cache::owner().or_raise())
}

/// `entitlements.can_see_customer(customer)`: may the current role, signed in as
/// `current_user_id()`, act for `customer`? What the RLS policies of customer-keyed
/// tables ask, per row.
#[pg_extern(stable, strict, parallel_safe)]
fn can_see_customer(customer: Uuid) -> bool {
    use crate::error::OrRaise;
    // SAFETY: plain read of backend state.
    let role = unsafe { pg_sys::GetUserId() };
    may_act_for(customer.as_bytes(), role, crate::clock::statement_now()).or_raise()
}
