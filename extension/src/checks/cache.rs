//! Per-backend cache of the catalog and of customers' sources, so a check called once
//! per row by an RLS policy costs a hash lookup instead of queries.
//!
//! Coherence, without shared memory:
//! * Every committed change to a table the checks read bumps `entitlements.cache_version`
//!   (deferred trigger, sql/checks/cache.sql). The version is re-read whenever the active
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
use crate::postgres::spi::{self, Statement};
use crate::rules::{Catalog, CustomerData, Feature, Grant, Kind, Party, Plan, Resolved, Subscription};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB, Uuid};
use serde_json::Value as Json;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// The cache's budget in bytes when `entitlements.cache_max_kb` is not set: 64 MiB.
const DEFAULT_BUDGET_KB: usize = 65_536;

#[derive(Clone, Copy, PartialEq, Eq)]
struct SnapshotKey {
    xmin: pg_sys::TransactionId,
    xmax: pg_sys::TransactionId,
    xcnt: u32,
    curcid: pg_sys::CommandId,
    completions: u64,
    lxid: pg_sys::LocalTransactionId,
    /// ROLLBACK TO SAVEPOINT starts a new subtransaction: what was cached inside the one
    /// rolled back must not be served, even when nothing else in the snapshot moved (no
    /// command counted, no transaction finished anywhere in the meantime).
    subxact: pg_sys::SubTransactionId,
}

pub struct CustomerEntry {
    pub data: CustomerData,
    pub resolved: Option<Resolved>,
    /// Its weight when cached (cache_size.rs), given back when it is evicted.
    bytes: usize,
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
    /// Approximate bytes of `customers` (cache_size.rs), and customers evicted to stay
    /// within the budget since the backend started.
    bytes: usize,
    evictions: u64,
    /// The test clock's generation the customers were loaded under (clock.rs): what was
    /// loaded at one instant (subscriptions that had not ended) is dropped when it moves.
    clock: u64,
}

impl State {
    fn forget_customers(&mut self) {
        self.customers.clear();
        self.bytes = 0;
    }
}

/// The budget: `entitlements.cache_max_kb` (any session may set its own; it is this
/// backend's memory), else DEFAULT_BUDGET_KB. At least 64 kB.
fn budget_bytes() -> usize {
    // SAFETY: missing_ok = true gives NULL for an unset placeholder; the string is copied.
    let kb = unsafe {
        let p = pg_sys::GetConfigOption(c"entitlements.cache_max_kb".as_ptr(), true, false);
        if p.is_null() {
            None
        } else {
            std::ffi::CStr::from_ptr(p).to_str().ok().and_then(|s| s.trim().parse::<usize>().ok())
        }
    };
    kb.unwrap_or(DEFAULT_BUDGET_KB).max(64) * 1024
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
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
            subxact: pg_sys::GetCurrentSubTransactionId(),
        })
    }
}

fn top_xid() -> Option<pg_sys::TransactionId> {
    // SAFETY: plain read of the current transaction state.
    let xid = unsafe { pg_sys::GetTopTransactionIdIfAny() };
    (xid != pg_sys::InvalidTransactionId).then_some(xid)
}

/// The cache version, read as the caller once per statement: a direct query on a kept
/// generic plan (a helper function with a pinned search_path would cost a GUC save and
/// restore per call), every name qualified instead.
const READ_VERSION: Statement = Statement { sql: "select c.version from entitlements.cache_version c", args: &[] };

/// Version and owner of the extension's schema (from the syscache).
fn read_version() -> Result<(i64, pg_sys::Oid)> {
    let version = Spi::connect(|_| {
        let rows = spi::run(&READ_VERSION, vec![], true)?;
        (!rows.is_empty())
            .then(|| rows.get::<i64>(0, 1))
            .flatten()
            .ok_or_else(|| Error::CorruptState("entitlements.cache_version is empty".into()))
    })?;
    Ok((version, schema_owner()?))
}

fn schema_owner() -> Result<pg_sys::Oid> {
    // SAFETY: a syscache lookup by name inside a transaction; the tuple is released
    // before returning and only its fixed-size part is read.
    unsafe {
        let tuple = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::NAMESPACENAME as i32,
            pg_sys::Datum::from(c"entitlements".as_ptr()),
        );
        if tuple.is_null() {
            return Err(Error::CorruptState("schema entitlements does not exist".into()));
        }
        let owner = (*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_namespace>(tuple)).nspowner;
        pg_sys::ReleaseSysCache(tuple);
        Ok(owner)
    }
}

/// Make the cache agree with the current snapshot. Cheap when the snapshot is unchanged.
fn refresh(st: &mut State) -> Result<()> {
    let key = snapshot_key();
    let clock = crate::clock::generation();
    if key.is_some() && key == st.snapshot && clock == st.clock {
        return Ok(());
    }
    if clock != st.clock {
        st.forget_customers();
        st.clock = clock;
    }
    if let Some(xid) = st.tainted_by {
        // Our own transaction wrote (or did and ended): nothing cached may outlive a snapshot.
        st.forget_customers();
        st.catalog = None;
        if top_xid() != Some(xid) {
            st.tainted_by = None;
        }
    }
    let (version, owner) = read_version()?;
    if st.catalog.as_ref().is_none_or(|c| c.version != version) || st.owner != owner {
        st.catalog = None;
        st.forget_customers();
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
        st.forget_customers();
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
        let data = load_customer(st.owner, customer)?;
        let features = st.catalog.as_ref().map_or(0, |c| c.features.len());
        let size = crate::checks::cache_size::customer(&data, features);
        let budget = budget_bytes();
        if st.bytes + size > budget {
            // Make room for a tenth of the budget at once, so a scan over many customers
            // does not evict on every row; which ones go is the map's (random) order.
            let target = (budget - budget / 10).saturating_sub(size);
            let mut victims = Vec::new();
            let mut freed = 0;
            for (id, e) in &st.customers {
                if st.bytes - freed <= target {
                    break;
                }
                freed += e.bytes;
                victims.push(*id);
            }
            for id in &victims {
                st.customers.remove(id);
            }
            st.bytes -= freed;
            st.evictions += victims.len() as u64;
        }
        st.bytes += size;
        st.customers.insert(*customer, CustomerEntry { data, resolved: None, bytes: size });
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
pub fn with_customer<R>(
    customer: &[u8; 16],
    now: Micros,
    f: impl FnOnce(&Catalog, &CustomerData, &Resolved) -> R,
) -> Result<R> {
    STATE.with_borrow_mut(|st| {
        refresh(st)?;
        let cat = st.catalog.clone().expect("refresh loads the catalog");
        let entry = entry(st, customer)?;
        resolved(entry, &cat, now);
        let r = entry.resolved.as_ref().expect("resolved above");
        Ok(f(&cat, &entry.data, r))
    })
}

/// The cache version this backend's answers are as of, or None while this transaction
/// has written to the tables the rules read (its answers then differ from what the
/// version stands for until it commits).
pub fn clean_version() -> Result<Option<i64>> {
    if is_tainted() {
        return Ok(None);
    }
    STATE.with_borrow_mut(|st| {
        refresh(st)?;
        Ok(Some(st.catalog.as_ref().expect("refresh loads the catalog").version))
    })
}

/// Has this transaction written to the tables the rules read? Needs no refresh.
pub fn is_tainted() -> bool {
    STATE.with_borrow(|st| st.tainted_by.is_some_and(|x| top_xid() == Some(x)))
}

/// What this backend's cache holds: customers, their approximate bytes, the budget, and
/// how many were evicted to stay within it.
pub fn stats() -> (usize, usize, usize, u64) {
    STATE.with_borrow(|st| (st.customers.len(), st.bytes, budget_bytes(), st.evictions))
}

/// Does this backend hold `customer` in its cache? Without a refresh, so possibly from
/// an older version: callers only use it to choose a path, and the cached path refreshes.
pub fn is_cached(customer: &[u8; 16]) -> bool {
    STATE.with_borrow(|st| st.customers.contains_key(customer))
}

/// The role owning the extension's schema.
pub fn owner() -> Result<pg_sys::Oid> {
    schema_owner()
}

/// Run a query returning one jsonb as the extension owner (reads around RLS; callers
/// decide who may see the answer).
pub fn load_as_owner(st: &Statement, arg: Option<Uuid>) -> Result<Json> {
    load_json(owner()?, st, arg)
}

// --- Loading -------------------------------------------------------------------------

fn load_json(owner: pg_sys::Oid, st: &Statement, arg: Option<Uuid>) -> Result<Json> {
    crate::postgres::run_as(owner, || {
        Spi::connect(|_| {
            let args = if st.args.is_empty() { vec![] } else { vec![spi::arg(arg)] };
            let rows = spi::run(st, args, true)?;
            Ok(if rows.is_empty() { Json::Null } else { rows.get::<JsonB>(0, 1).map_or(Json::Null, |j| j.0) })
        })
    })
}

fn corrupt(what: &str) -> Error {
    Error::CorruptState(format!("pg_entitlements: cannot read {what}"))
}

fn load_catalog(owner: pg_sys::Oid, version: i64) -> Result<Catalog> {
    const CATALOG: Statement = Statement { sql: "select entitlements._catalog_snapshot()", args: &[] };
    let doc = load_json(owner, &CATALOG, None)?;
    let mut features = Vec::new();
    let mut feature_index = HashMap::new();
    for f in doc["features"].as_array().ok_or_else(|| corrupt("features"))? {
        let key = f["key"].as_str().ok_or_else(|| corrupt("feature key"))?.to_owned();
        let kind = Kind::parse(f["kind"].as_str().unwrap_or_default()).ok_or_else(|| corrupt("feature kind"))?;
        feature_index.insert(key.clone(), features.len());
        // As text, so the bound a new window gets is computed in numeric exactly as _meter's.
        let thresholds = f["thresholds"]
            .as_array()
            .map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        let thresholds_key = f["thresholds_key"].as_i64();
        features.push(Feature { key, kind, unit: f["unit"].as_str().map(str::to_owned), thresholds, thresholds_key });
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

// A customer's sources, read row by row with kept plans: a cold customer costs a few
// index lookups by equality, not a JSON document built in PL/pgSQL and parsed again
// here. These run as the owner with the caller's search_path, so every operator and
// function is qualified with pg_catalog.

const LOAD_EXISTS: Statement = Statement {
    sql: "select exists (select from entitlements.customers c where c.id operator(pg_catalog.=) $1)",
    args: &[pg_sys::UUIDOID],
};

const LOAD_MEMBERSHIPS: Statement = Statement {
    sql: "select m.organization_id, m.role from entitlements.members m
           where m.user_id operator(pg_catalog.=) $1 order by m.organization_id",
    args: &[pg_sys::UUIDOID],
};

const LOAD_SUBSCRIPTIONS: Statement = Statement {
    sql: "select s.id::pg_catalog.text, s.plan_key, s.status, s.quantity, s.current_period_start,
                 s.current_period_end, s.trial_end, s.cancel_at_period_end, s.status_changed_at
            from entitlements.subscriptions s
           where s.customer_id operator(pg_catalog.=) $1
             and (s.ended_at is null or s.ended_at operator(pg_catalog.>) $2)
           order by s.created_at, s.id",
    args: &[pg_sys::UUIDOID, pg_sys::TIMESTAMPTZOID],
};

const LOAD_GRANTS: Statement = Statement {
    sql: "select g.kind, g.feature_key, g.value, g.starts_at, g.expires_at
            from entitlements.grants g
           where g.customer_id operator(pg_catalog.=) $1
             and g.revoked_at is null and g.kind operator(pg_catalog.<>) 'discount'
           order by g.created_at, g.id",
    args: &[pg_sys::UUIDOID],
};

fn micros(t: Option<TimestampWithTimeZone>) -> Option<Micros> {
    t.map(crate::clock::from_timestamptz)
}

fn load_party(id: [u8; 16]) -> Result<Party> {
    let uuid = Uuid::from_bytes(id);
    // Those that had not ended by now (the test clock's, which is why a clock change
    // drops what is cached).
    let now = crate::clock::to_timestamptz(crate::clock::statement_now());
    let rows = spi::run(&LOAD_SUBSCRIPTIONS, vec![spi::arg(uuid), spi::arg(now)], true)?;
    let mut subscriptions = Vec::with_capacity(rows.len());
    for i in 0..rows.len() {
        let (Some(id), Some(plan), Some(status)) = (rows.get(i, 1), rows.get(i, 2), rows.get(i, 3)) else {
            return Err(corrupt("a subscription"));
        };
        subscriptions.push(Subscription {
            id,
            plan,
            status,
            quantity: rows.get::<i32>(i, 4).unwrap_or(1).into(),
            period_start: micros(rows.get(i, 5)),
            period_end: micros(rows.get(i, 6)),
            trial_end: micros(rows.get(i, 7)),
            cancel_at_period_end: rows.get::<bool>(i, 8).unwrap_or(false),
            status_changed_at: micros(rows.get(i, 9)).unwrap_or(0),
        });
    }
    let rows = spi::run(&LOAD_GRANTS, vec![spi::arg(uuid)], true)?;
    let mut grants = Vec::with_capacity(rows.len());
    for i in 0..rows.len() {
        let Some(kind) = rows.get::<String>(i, 1) else { return Err(corrupt("a grant")) };
        grants.push(Grant {
            kind,
            feature: rows.get::<String>(i, 2),
            value: rows.get::<JsonB>(i, 3).map_or(Json::Null, |j| j.0),
            starts_at: micros(rows.get(i, 4)).unwrap_or(0),
            expires_at: micros(rows.get(i, 5)),
        });
    }
    Ok(Party { id, subscriptions, grants })
}

fn load_customer(owner: pg_sys::Oid, customer: &[u8; 16]) -> Result<CustomerData> {
    let uuid = Uuid::from_bytes(*customer);
    crate::postgres::run_as(owner, || {
        Spi::connect(|_| {
            let rows = spi::run(&LOAD_MEMBERSHIPS, vec![spi::arg(uuid)], true)?;
            let mut memberships = Vec::with_capacity(rows.len());
            for i in 0..rows.len() {
                let (Some(org), Some(role)) = (rows.get::<Uuid>(i, 1), rows.get::<String>(i, 2)) else {
                    return Err(corrupt("a membership"));
                };
                memberships.push((*org.as_bytes(), role));
            }
            let own = load_party(*customer)?;
            let organizations =
                memberships.into_iter().map(|(org, role)| Ok((load_party(org)?, role))).collect::<Result<Vec<_>>>()?;
            // A customer with a subscription or a grant exists; ask only otherwise.
            let exists = !own.subscriptions.is_empty() || !own.grants.is_empty() || {
                let rows = spi::run(&LOAD_EXISTS, vec![spi::arg(uuid)], true)?;
                !rows.is_empty() && rows.get::<bool>(0, 1) == Some(true)
            };
            Ok(CustomerData { exists, own, organizations })
        })
    })
}
