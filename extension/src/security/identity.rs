//! Who is asking: the `sub` claim PostgREST/Supabase put in `request.jwt.claims`, else the
//! GUC `entitlements.user_id`. Parsed once per distinct setting and role, not once per row.
//!
//! Any role can set those two settings, so they are believed only for the roles that
//! speak for signed-in users: members of `entitlements_api` (anon, authenticated,
//! service_role by default, sql/security/roles.sql), superusers and the extension owner. Any
//! other login role is itself and nobody else: its user id is NULL. The role asked about
//! is the one in effect outside SECURITY DEFINER functions (what SET ROLE chose), so a
//! definer function of ours never lends its owner's trust to its caller's settings.

use crate::error::{Error, OrRaise, Result};
use pgrx::prelude::*;
use pgrx::{pg_sys, Uuid};
use std::cell::RefCell;
use std::ffi::CStr;

fn guc(name: &CStr) -> Option<&'static [u8]> {
    // SAFETY: missing_ok = true returns NULL for an unknown placeholder; the string lives
    // in GUC memory until the setting changes, and we copy what we keep.
    unsafe {
        let p = pg_sys::GetConfigOption(name.as_ptr(), true, false);
        if p.is_null() {
            None
        } else {
            Some(CStr::from_ptr(p).to_bytes())
        }
    }
}

pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = s.trim().bytes().filter(|b| *b != b'-').collect();
    if hex.len() != 32 || !hex.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

fn compute(claims: Option<&[u8]>, user_id: Option<&[u8]>) -> Result<Option<[u8; 16]>> {
    if let Some(c) = claims.filter(|c| !c.is_empty()) {
        let v: serde_json::Value = serde_json::from_slice(c)
            .map_err(|e| Error::InvalidText(format!("request.jwt.claims is not valid JSON: {e}")))?;
        // An anonymous token has no `sub`; a non-uuid `sub` is not one of our customers.
        return Ok(v.get("sub").and_then(|s| s.as_str()).and_then(parse_uuid));
    }
    match user_id.filter(|u| !u.is_empty()) {
        None => Ok(None),
        Some(u) => {
            let s = String::from_utf8_lossy(u);
            parse_uuid(&s)
                .map(Some)
                .ok_or_else(|| Error::InvalidText(format!("entitlements.user_id is not a uuid: \"{s}\"")))
        }
    }
}

#[derive(Default)]
struct Memo {
    claims: Option<Vec<u8>>,
    user_id: Option<Vec<u8>>,
    role: pg_sys::Oid,
    restricted: bool,
    result: Option<[u8; 16]>,
    valid: bool,
}

/// May `role` say who the user is? Superuser, the extension owner, or a role with the
/// privileges of `entitlements_api`; never inside a security-restricted operation (an index
/// expression or materialized view that VACUUM, ANALYZE or REFRESH evaluates for someone
/// else's table, where the role in effect is not the one whose code runs).
fn speaks_for_users(role: pg_sys::Oid, restricted: bool) -> Result<bool> {
    if restricted {
        return Ok(false);
    }
    let owner = crate::checks::cache::owner()?;
    // SAFETY: syscache lookups inside a transaction.
    let superuser_or_owner = unsafe { pg_sys::superuser_arg(role) || pg_sys::has_privs_of_role(role, owner) };
    Ok(superuser_or_owner || crate::security::access::has_privs_of_named_role(role, c"entitlements_api"))
}

thread_local! {
    static MEMO: RefCell<Memo> = RefCell::new(Memo::default());
}

/// The caller's customer id, or None when neither setting is present.
pub fn current() -> Result<Option<[u8; 16]>> {
    let claims = guc(c"request.jwt.claims");
    let user_id = guc(c"entitlements.user_id");
    // SAFETY: plain reads of backend state.
    let (role, restricted) = unsafe { (pg_sys::GetOuterUserId(), pg_sys::InSecurityRestrictedOperation()) };
    MEMO.with_borrow_mut(|m| {
        if m.valid
            && m.role == role
            && m.restricted == restricted
            && m.claims.as_deref() == claims
            && m.user_id.as_deref() == user_id
        {
            return Ok(m.result);
        }
        let result = if speaks_for_users(role, restricted)? { compute(claims, user_id)? } else { None };
        *m = Memo {
            claims: claims.map(<[u8]>::to_vec),
            user_id: user_id.map(<[u8]>::to_vec),
            role,
            restricted,
            result,
            valid: true,
        };
        Ok(result)
    })
}

/// The caller's id from `request.jwt.claims` (`sub`), else `entitlements.user_id`; NULL when neither is set.
#[pg_extern(stable, parallel_safe)]
fn current_user_id() -> Option<Uuid> {
    current().or_raise().map(Uuid::from_bytes)
}

/// The role in effect outside any SECURITY DEFINER function (the session user, or what
/// SET ROLE chose, as PostgREST does): who is really calling, for the access checks
/// that definer functions must make about their caller.
#[pg_extern(stable, parallel_safe, name = "_outer_role")]
fn outer_role() -> pg_sys::Oid {
    // SAFETY: a plain read of backend state, valid in any backend running SQL.
    unsafe { pg_sys::GetOuterUserId() }
}
