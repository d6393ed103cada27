//! The SQL checks: `has_feature` (the RLS hot path), `entitlements(customer)` (the
//! resolved view for a profile page), the Supabase access-token hook, and the limit
//! lookup the seat check uses. All read through the per-backend cache (cache.rs).

pub mod cache;
pub mod cache_size;

use crate::clock::{self, Micros};
use crate::error::{Error, OrRaise, Result};
use crate::metering::limits;
use crate::rules::{Catalog, CustomerData, Kind, Resolved, Value};
use crate::security::access;
use crate::security::identity;
use pgrx::prelude::*;
use pgrx::{JsonB, Uuid};
use serde_json::{json, Map, Value as Json};

fn bytes(u: &Uuid) -> [u8; 16] {
    *u.as_bytes()
}

/// Is `feature` on for `customer` right now? Unknown features raise 22023.
#[pg_extern(stable, strict, parallel_safe, name = "has_feature")]
fn has_feature_for(customer: Uuid, feature: &str) -> bool {
    cache::has_feature(&bytes(&customer), feature, clock::statement_now()).or_raise()
}

/// Is `feature` on for the calling user (see `current_user_id()`)? False when nobody is signed in.
#[pg_extern(stable, strict, parallel_safe, name = "has_feature")]
fn has_feature_current(feature: &str) -> bool {
    let now = clock::statement_now();
    match identity::current().or_raise() {
        Some(me) => cache::has_feature(&me, feature, now).or_raise(),
        None => {
            // Still refuse a misspelt feature, so a typo in a policy fails loudly.
            let cat = cache::catalog().or_raise();
            cache::feature_index(&cat, feature).or_raise();
            false
        }
    }
}

/// The numeric limit of a `limit`/`concurrency` feature: NULL = unlimited, 0 = not granted.
#[pg_extern(stable, strict, parallel_safe, name = "_feature_limit")]
fn feature_limit(customer: Uuid, feature: &str) -> Option<f64> {
    let now = clock::statement_now();
    access::require_may_act_for(&bytes(&customer), now).or_raise();
    let cat = cache::catalog().or_raise();
    let idx = cache::feature_index(&cat, feature).or_raise();
    cache::with_customer(&bytes(&customer), now, |_, _, r| match &r.values[idx] {
        Some(Value::Limit(l)) | Some(Value::Concurrency(l)) => *l,
        Some(v) if v.enabled() => None,
        _ => Some(0.0),
    })
    .or_raise()
}

/// The resolved value of a `config` feature (the plan's `resources` for provisioning): NULL
/// when the customer has no granting source of it, or the feature is not a config feature
/// (or not in the catalog at all).
#[pg_extern(stable, strict, parallel_safe, name = "_feature_config")]
fn feature_config(customer: Uuid, feature: &str) -> Option<JsonB> {
    let now = clock::statement_now();
    access::require_may_act_for(&bytes(&customer), now).or_raise();
    let cat = cache::catalog().or_raise();
    // A catalog that never declared the feature grants nobody its value.
    let Ok(idx) = cache::feature_index(&cat, feature) else { return None };
    cache::with_customer(&bytes(&customer), now, |_, _, r| match &r.values[idx] {
        Some(Value::Config(c)) if !c.is_null() => Some(JsonB(c.clone())),
        _ => None,
    })
    .or_raise()
}

/// This backend's cache: customers held, their approximate bytes (cache_size.rs), the
/// budget (`entitlements.cache_max_kb`) and evictions so far.
#[pg_extern(volatile, parallel_unsafe)]
fn cache_stats() -> JsonB {
    let (customers, bytes, budget, evictions) = cache::stats();
    JsonB(json!({"customers": customers, "approx_bytes": bytes, "budget_bytes": budget, "evictions": evictions}))
}

/// Called by triggers when this backend writes to a table the checks read.
#[pg_extern(volatile, parallel_unsafe, name = "_cache_touch")]
fn cache_touch() {
    cache::touch();
}

fn iso(t: Option<Micros>) -> Json {
    t.map(|t| Json::String(clock::to_iso8601(t))).unwrap_or(Json::Null)
}

fn uuid_string(b: &[u8; 16]) -> String {
    Uuid::from_bytes(*b).to_string()
}

fn limit_json(l: Option<f64>) -> Json {
    match l {
        None => Json::Null,
        Some(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => json!(n as i64),
        Some(n) => json!(n),
    }
}

/// Units counted for (period, window start) of the feature being rendered.
type UsedIn<'a> = &'a dyn Fn(&str, Micros) -> f64;

fn feature_json(
    kind: Kind,
    unit: Option<&str>,
    value: Option<&Value>,
    now: Micros,
    r: &Resolved,
    used_in: UsedIn,
) -> Json {
    let enabled = value.is_some_and(Value::enabled);
    let mut out = json!({"kind": kind.as_str(), "enabled": enabled});
    match (kind, value) {
        (Kind::Flag, v) => out["value"] = json!(matches!(v, Some(Value::Flag(true)))),
        (Kind::Limit | Kind::Concurrency, Some(Value::Limit(l) | Value::Concurrency(l))) => {
            out["limit"] = limit_json(*l);
            out["unlimited"] = json!(l.is_none());
        }
        (Kind::Limit | Kind::Concurrency, _) => {
            out["limit"] = json!(0);
            out["unlimited"] = json!(false);
        }
        (Kind::Metered, v) => {
            let windows = limits::windows(v, now, r).unwrap_or_default();
            let limits: Vec<Json> = windows
                .iter()
                .map(|w| {
                    let m = &w.meter;
                    let used = used_in(&m.period, w.start);
                    json!({
                        "period": m.period, "limit": limit_json(m.limit), "used": limit_json(Some(used)),
                        "remaining": limit_json(m.limit.map(|l| (l - used).max(0.0))),
                        "window_start": clock::to_iso8601(w.start),
                        "resets_at": iso(w.resets_at),
                        "overage": m.overage, "unit_price_cents": m.unit_price_cents,
                    })
                })
                .collect();
            // Headline usage: the shortest period's count (all periods count every unit).
            let used = limits.first().and_then(|l| l["used"].as_f64()).unwrap_or(0.0);
            // The headline numbers are those of the limit that binds first.
            let binding = limits.iter().filter(|l| !l["limit"].is_null()).min_by(|a, b| {
                a["remaining"].as_f64().partial_cmp(&b["remaining"].as_f64()).unwrap_or(std::cmp::Ordering::Equal)
            });
            match (v, binding) {
                (None, _) => {
                    out["limit"] = json!(0);
                    out["remaining"] = json!(0);
                    out["resets_at"] = Json::Null;
                }
                (Some(_), Some(b)) => {
                    out["limit"] = b["limit"].clone();
                    out["remaining"] = b["remaining"].clone();
                    out["resets_at"] = b["resets_at"].clone();
                }
                (Some(_), None) => {
                    out["limit"] = Json::Null;
                    out["remaining"] = Json::Null;
                    out["resets_at"] = Json::Null;
                }
            }
            out["used"] = limit_json(Some(used));
            out["limits"] = Json::Array(limits);
            out["unit"] = unit.map(Json::from).unwrap_or(Json::Null);
        }
        (Kind::Config, Some(Value::Config(c))) => out["value"] = c.clone(),
        (Kind::Config, _) => out["value"] = Json::Null,
    }
    out
}

fn render(
    customer: &[u8; 16],
    cat: &Catalog,
    data: &CustomerData,
    r: &Resolved,
    now: Micros,
    usage: &[(String, String, Micros, f64)],
) -> Json {
    let sub = r.primary.as_ref().and_then(|p| p.subscription.as_ref());
    let mut features = Map::new();
    for (i, f) in cat.features.iter().enumerate() {
        let used_in = |period: &str, start: Micros| {
            usage
                .iter()
                .filter(|(uf, up, us, _)| *uf == f.key && up == period && *us == start)
                .map(|u| u.3)
                .sum::<f64>()
        };
        features.insert(f.key.clone(), feature_json(f.kind, f.unit.as_deref(), r.values[i].as_ref(), now, r, &used_in));
    }
    let plan = r.primary.as_ref().and_then(|p| cat.plans.get(&p.plan));
    json!({
        "customer": uuid_string(customer),
        "known_customer": data.exists,
        "plan": plan.map(|p| p.key.clone()),
        "plan_name": plan.map(|p| p.name.clone()),
        "source": r.primary.as_ref().map(|p| p.origin),
        "organization": r.primary.as_ref().and_then(|p| p.organization.as_ref()).map(uuid_string),
        "subscription_id": sub.map(|s| s.id.clone()),
        "status": sub.map(|s| s.status.clone()),
        "period_end": iso(sub.and_then(|s| s.period_end)),
        "trial_end": iso(sub.and_then(|s| s.trial_end)),
        "cancel_at_period_end": sub.map(|s| s.cancel_at_period_end),
        "organizations": data.organizations.iter().map(|(o, role)| json!({"id": uuid_string(&o.id), "role": role})).collect::<Vec<_>>(),
        "features": features,
        "as_of": clock::to_iso8601(now),
        "changes_at": iso((r.valid_until != i64::MAX).then_some(r.valid_until)),
    })
}

/// May the caller read this customer's resolved entitlements?
fn ensure_can_read(customer: &[u8; 16], now: Micros) -> Result<()> {
    // SAFETY: plain read of backend state.
    let role = unsafe { pgrx::pg_sys::GetUserId() };
    if access::may_act_for(customer, role, now)? {
        Ok(())
    } else {
        Err(Error::InsufficientPrivilege(
            "permission denied: you may read only your own entitlements and those of your organizations".into(),
        ))
    }
}

/// The resolved view of a customer: plan, status, period end, and every feature's value,
/// limit, usage, remaining and reset time.
#[pg_extern(stable, parallel_safe, name = "entitlements")]
fn entitlements_view(customer: default!(Option<Uuid>, "entitlements.current_user_id()")) -> JsonB {
    let Some(customer) = customer else {
        Error::NullValue("customer must not be NULL (sign in, or pass a customer id)".into()).raise()
    };
    let id = bytes(&customer);
    let now = clock::statement_now();
    ensure_can_read(&id, now).or_raise();
    let usage = limits::usage(&id).or_raise();
    JsonB(cache::with_customer(&id, now, |cat, data, r| render(&id, cat, data, r, now, &usage)).or_raise())
}

/// Supabase custom access token hook: adds an `entitlements` claim with the plan key and
/// the enabled features. The claim is for UI; RLS must call has_feature(). Called through
/// `entitlements.custom_access_token_hook` (sql/security/checked_json.sql), which first refuses an
/// event this function could not decode.
#[pg_extern(stable, parallel_safe, name = "_access_token_claims")]
fn custom_access_token_hook(event: Option<JsonB>) -> JsonB {
    let Some(JsonB(mut event)) = event else { Error::NullValue("event must not be NULL".into()).raise() };
    let user = event
        .get("user_id")
        .and_then(Json::as_str)
        .and_then(identity::parse_uuid)
        .ok_or_else(|| Error::invalid("event.user_id must be a uuid"))
        .or_raise();
    let now = clock::statement_now();
    let claim = cache::with_customer(&user, now, |cat, _, r| {
        let features: Vec<&str> =
            cat.features.iter().zip(&r.enabled).filter(|(_, on)| **on).map(|(f, _)| f.key.as_str()).collect();
        json!({"plan": r.primary.as_ref().map(|p| p.plan.clone()), "features": features})
    })
    .or_raise();
    match event.get_mut("claims") {
        Some(Json::Object(claims)) => {
            claims.insert("entitlements".into(), claim);
        }
        _ => Error::invalid("event.claims must be an object").raise(),
    }
    JsonB(event)
}
