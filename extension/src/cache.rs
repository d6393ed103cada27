//! Per-backend cache of the catalog and of customers' sources, so a check called once
//! per row by an RLS policy costs a hash lookup instead of queries.
//!
//! Coherence, without shared memory:
//! * Every committed change to a table the checks read bumps `entitlements.cache_version`
//!   (deferred trigger, sql/cache.sql). The version is re-read whenever the active
//!   snapshot differs from the last one seen (so once per statement, not per row), and
//!   the cache is dropped when it moved. A commit by another session is therefore seen by
//!   this session's very next statement, exactly as MVCC would show it.
//! * This backend's own uncommitted writes call `_cache_touch()` (statement trigger),
//!   which drops the cache at once and marks it tainted until the writing transaction
//!   is over, so neither its own changes nor a rolled-back change is ever served stale.
//! * Data is read as the extension owner (RLS is for callers, not for the rules), so
//!   the cache is the same whatever role the backend runs as.

use crate::clock::Micros;
use crate::error::{Error, Result};
use crate::rules::{Catalog, CustomerData, Feature, Grant, Kind, Party, Plan, Resolved, Subscription};
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::{pg_sys, JsonB, PgBuiltInOids, PgOid, Uuid};
use serde_json::Value as Json;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// Above this many cached customers the map is cleared rather than grown.
const MAX_CUSTOMERS: usize = 200_000;

#[derive(Clone, Copy, PartialEq, Eq)]
struct SnapshotKey {
    xmin: pg_sys::TransactionId,
    xmax: pg_sys::TransactionId,
    xcnt: u32,
    curcid: pg_sys::CommandId,
    completions: u64,
    lxid: pg_sys::LocalTransactionId,
}

pub struct CustomerEntry {
    pub data: CustomerData,
    pub resolved: Option<Resolved>,
}

#[derive(Default)]
struct State {
    snapshot: Option<SnapshotKey>,
    owner: pg_sys::Oid,
    catalog: Option<Rc<Catalog>>,
    customers: HashMap<[u8; 16], CustomerEntry>,
    /// Top-level xid of a transaction of this backend that wrote to our tables.
    tainted_by: Option<pg_sys::TransactionId>,
    /// Last feature name looked up and its index: RLS asks for the same one every row.
    last_feature: Option<(String, usize)>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
    static PLANS: RefCell<HashMap<&'static str, Rc<OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
}

fn snapshot_key() -> Option<SnapshotKey> {
    // SAFETY: GetActiveSnapshot is only dereferenced when ActiveSnapshotSet says one exists;
    // MyProc is valid in any backend that runs SQL.
    unsafe {
        if !pg_sys::ActiveSnapshotSet() {
            return None;
        }
        let s = &*pg_sys::GetActiveSnapshot();
        Some(SnapshotKey {
            xmin: s.xmin,
            xmax: s.xmax,
            xcnt: s.xcnt,
            curcid: s.curcid,
            completions: s.snapXactCompletionCount,
            lxid: (*pg_sys::MyProc).lxid,
        })
    }
}

fn top_xid() -> Option<pg_sys::TransactionId> {
    // SAFETY: plain read of the current transaction state.
    let xid = unsafe { pg_sys::GetTopTransactionIdIfAny() };
    (xid != pg_sys::InvalidTransactionId).then_some(xid)
}

/// Run `f` with the extension owner's identity, as SECURITY DEFINER would. Postgres also
/// restores the identity itself if an ERROR aborts the (sub)transaction.
fn as_owner<R>(owner: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    struct Restore(pg_sys::Oid, i32);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: restores exactly what GetUserIdAndSecContext returned.
            unsafe { pg_sys::SetUserIdAndSecContext(self.0, self.1) }
        }
    }
    let mut user = pg_sys::Oid::INVALID;
    let mut context = 0i32;
    // SAFETY: out-parameters are valid locals; owner is an existing role (from pg_namespace).
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(owner, context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
    }
    let _restore = Restore(user, context);
    f()
}

/// Version and owner, read as the caller (the function pins its search_path).
fn read_version() -> Result<(i64, pg_sys::Oid)> {
    Spi::connect(|c| {
        let plan = kept_plan(c, "select version, owner from entitlements._cache_state()", &[])?;
        let t = c.select(&*plan, Some(1), &[])?;
        let row = t.first();
        let v = row.get::<i64>(1)?.ok_or_else(|| Error::CorruptState("entitlements.cache_version is empty".into()))?;
        let o = row.get::<pg_sys::Oid>(2)?.ok_or_else(|| Error::CorruptState("schema entitlements has no owner".into()))?;
        Ok((v, o))
    })
}

/// Make the cache agree with the current snapshot. Cheap when the snapshot is unchanged.
fn refresh(st: &mut State) -> Result<()> {
    let key = snapshot_key();
    if key.is_some() && key == st.snapshot {
        return Ok(());
    }
    if let Some(xid) = st.tainted_by {
        // Our own transaction wrote (or did and ended): nothing cached may outlive a snapshot.
        st.customers.clear();
        st.catalog = None;
        if top_xid() != Some(xid) {
            st.tainted_by = None;
        }
    }
    let (version, owner) = read_version()?;
    if st.catalog.as_ref().is_none_or(|c| c.version != version) || st.owner != owner {
        st.catalog = None;
        st.customers.clear();
        st.last_feature = None;
    }
    st.owner = owner;
    st.snapshot = key;
    if st.catalog.is_none() {
        st.catalog = Some(Rc::new(load_catalog(owner, version)?));
    }
    Ok(())
}

/// Drop everything this backend cached (our own write happened).
pub fn touch() {
    STATE.with_borrow_mut(|st| {
        st.customers.clear();
        st.catalog = None;
        st.snapshot = None;
        st.last_feature = None;
        if let Some(xid) = top_xid() {
            st.tainted_by = Some(xid);
        }
    });
}

/// The current catalog (loading it if needed).
pub fn catalog() -> Result<Rc<Catalog>> {
    STATE.with_borrow_mut(|st| {
        refresh(st)?;
        Ok(st.catalog.clone().expect("refresh loads the catalog"))
    })
}

/// Index of a feature by key; unknown features are an error, not a silent false.
pub fn feature_index(cat: &Catalog, key: &str) -> Result<usize> {
    cat.feature_index.get(key).copied().ok_or_else(|| {
        let mut known: Vec<&str> = cat.features.iter().map(|f| f.key.as_str()).collect();
        known.sort_unstable();
        Error::invalid_with_hint(format!("unknown feature \"{key}\""), format!("known features: {}", known.join(", ")))
    })
}

/// The hot path: is `feature` on for `customer` now?
pub fn has_feature(customer: &[u8; 16], feature: &str, now: Micros) -> Result<bool> {
    STATE.with_borrow_mut(|st| {
        refresh(st)?;
        let cat = st.catalog.clone().expect("refresh loads the catalog");
        let idx = match &st.last_feature {
            Some((k, i)) if k == feature => *i,
            _ => {
                let i = feature_index(&cat, feature)?;
                st.last_feature = Some((feature.to_owned(), i));
                i
            }
        };
        let entry = entry(st, customer)?;
        Ok(resolved(entry, &cat, now).enabled[idx])
    })
}

fn entry<'a>(st: &'a mut State, customer: &[u8; 16]) -> Result<&'a mut CustomerEntry> {
    if !st.customers.contains_key(customer) {
        if st.customers.len() >= MAX_CUSTOMERS {
            st.customers.clear();
        }
        let data = load_customer(st.owner, customer)?;
        st.customers.insert(*customer, CustomerEntry { data, resolved: None });
    }
    Ok(st.customers.get_mut(customer).expect("inserted above"))
}

fn resolved<'a>(entry: &'a mut CustomerEntry, cat: &Catalog, now: Micros) -> &'a Resolved {
    if !entry.resolved.as_ref().is_some_and(|r| r.valid_at(now)) {
        entry.resolved = Some(crate::rules::resolve(cat, &entry.data, now));
    }
    entry.resolved.as_ref().expect("set above")
}

/// Run `f` on a customer's sources and resolution at `now`.
pub fn with_customer<R>(customer: &[u8; 16], now: Micros, f: impl FnOnce(&Catalog, &CustomerData, &Resolved) -> R) -> Result<R> {
    STATE.with_borrow_mut(|st| {
        refresh(st)?;
        let cat = st.catalog.clone().expect("refresh loads the catalog");
        let entry = entry(st, customer)?;
        resolved(entry, &cat, now);
        let r = entry.resolved.as_ref().expect("resolved above");
        Ok(f(&cat, &entry.data, r))
    })
}

/// The role owning the extension's schema.
pub fn owner() -> Result<pg_sys::Oid> {
    STATE.with_borrow_mut(|st| refresh(st).map(|_| st.owner))
}

/// Run a query returning one jsonb as the extension owner (reads around RLS; callers
/// decide who may see the answer).
pub fn load_as_owner(sql: &'static str, arg: Option<Uuid>) -> Result<Json> {
    load_json(owner()?, sql, arg)
}

// --- Loading -------------------------------------------------------------------------

/// A plan prepared once per backend and kept: the read path runs the same few queries
/// for every statement, and parsing and planning them each time cost more than the check.
/// Kept plans are re-planned by PostgreSQL when what they depend on changes.
pub fn kept_plan(c: &pgrx::spi::SpiClient<'_>, sql: &'static str, args: &[PgOid]) -> Result<Rc<OwnedPreparedStatement>> {
    if let Some(p) = PLANS.with_borrow(|m| m.get(sql).cloned()) {
        return Ok(p);
    }
    let plan = Rc::new(c.prepare(sql, args)?.keep());
    PLANS.with_borrow_mut(|m| m.insert(sql, plan.clone()));
    Ok(plan)
}

fn load_json(owner: pg_sys::Oid, sql: &'static str, arg: Option<Uuid>) -> Result<Json> {
    as_owner(owner, || {
        Spi::connect(|c| {
            let t = match arg {
                Some(u) => c.select(&*kept_plan(c, sql, &[PgOid::BuiltIn(PgBuiltInOids::UUIDOID)])?, Some(1), &[u.into()])?,
                None => c.select(&*kept_plan(c, sql, &[])?, Some(1), &[])?,
            };
            Ok(t.first().get::<JsonB>(1)?.map(|j| j.0).unwrap_or(Json::Null))
        })
    })
}

fn corrupt(what: &str) -> Error {
    Error::CorruptState(format!("pg_entitlements: cannot read {what}"))
}

fn load_catalog(owner: pg_sys::Oid, version: i64) -> Result<Catalog> {
    let doc = load_json(owner, "select entitlements._catalog_snapshot()", None)?;
    let mut features = Vec::new();
    let mut feature_index = HashMap::new();
    for f in doc["features"].as_array().ok_or_else(|| corrupt("features"))? {
        let key = f["key"].as_str().ok_or_else(|| corrupt("feature key"))?.to_owned();
        let kind = Kind::parse(f["kind"].as_str().unwrap_or_default()).ok_or_else(|| corrupt("feature kind"))?;
        feature_index.insert(key.clone(), features.len());
        features.push(Feature { key, kind, unit: f["unit"].as_str().map(str::to_owned) });
    }
    let mut plans = HashMap::new();
    let mut default_plan = None;
    for p in doc["plans"].as_array().ok_or_else(|| corrupt("plans"))? {
        let key = p["key"].as_str().ok_or_else(|| corrupt("plan key"))?.to_owned();
        let mut specs = vec![None; features.len()];
        if let Some(ents) = p["entitlements"].as_object() {
            for (fk, spec) in ents {
                if let Some(&i) = feature_index.get(fk) {
                    specs[i] = Some(spec.clone());
                }
            }
        }
        if p["is_default"].as_bool() == Some(true) {
            default_plan = Some(key.clone());
        }
        plans.insert(
            key.clone(),
            Plan {
                name: p["name"].as_str().unwrap_or(&key).to_owned(),
                key,
                price_cents: p["price_cents"].as_i64().unwrap_or(0),
                grace_days: p["grace_days"].as_i64().unwrap_or(0),
                specs,
            },
        );
    }
    Ok(Catalog { version, features, feature_index, plans, default_plan })
}

fn micros(v: &Json) -> Option<Micros> {
    v.as_i64()
}

fn uuid_bytes(v: &Json) -> Option<[u8; 16]> {
    let s = v.as_str()?;
    let hex: Vec<u8> = s.bytes().filter(|b| *b != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

fn parse_party(v: &Json, id: [u8; 16]) -> Party {
    let subscriptions = v["subscriptions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| {
                    Some(Subscription {
                        id: s["id"].as_str()?.to_owned(),
                        plan: s["plan"].as_str()?.to_owned(),
                        status: s["status"].as_str()?.to_owned(),
                        quantity: s["quantity"].as_i64().unwrap_or(1),
                        period_start: micros(&s["period_start"]),
                        period_end: micros(&s["period_end"]),
                        trial_end: micros(&s["trial_end"]),
                        cancel_at_period_end: s["cancel_at_period_end"].as_bool().unwrap_or(false),
                        status_changed_at: micros(&s["status_changed_at"]).unwrap_or(0),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let grants = v["grants"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|g| {
                    Some(Grant {
                        kind: g["kind"].as_str()?.to_owned(),
                        feature: g["feature"].as_str().map(str::to_owned),
                        value: g["value"].clone(),
                        starts_at: micros(&g["starts_at"]).unwrap_or(0),
                        expires_at: micros(&g["expires_at"]),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Party { id, subscriptions, grants }
}

fn load_customer(owner: pg_sys::Oid, customer: &[u8; 16]) -> Result<CustomerData> {
    let uuid = Uuid::from_bytes(*customer);
    let doc = load_json(owner, "select entitlements._customer_snapshot($1)", Some(uuid))?;
    let organizations = doc["organizations"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|o| {
                    let id = uuid_bytes(&o["id"])?;
                    Some((parse_party(o, id), o["role"].as_str().unwrap_or("member").to_owned()))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(CustomerData { exists: doc["exists"].as_bool().unwrap_or(false), own: parse_party(&doc, *customer), organizations })
}
