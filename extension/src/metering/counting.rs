//! `consume` and `try_consume`: the common case in Rust, the rest in SQL.
//!
//! The common case is a call without an idempotency key, for a customer the caller may
//! meter, where every window of the feature has a stripe with room (see the striped
//! counters in sql/metering/tables.sql). For a customer this backend has not resolved, it
//! counts on a stamped window without the executor (stamps.rs, ledger.rs). Otherwise it
//! runs here on kept generic plans, inside one subtransaction: one UPDATE per window with
//! the limits from the per-backend cache (opening a window on its first use), and the
//! ledger INSERT, in the same statement when the feature has one limited period. Everything else (bad input and its errors,
//! rebalancing stripes, refusals with their HINT and DETAIL, overage, idempotency keys)
//! is `entitlements._meter`, the one place those rules are written; this file never
//! decides a refusal itself.

use crate::checks::cache;
use crate::clock::{self, Micros};
use crate::error::{OrRaise, Result};
use crate::metering::ledger;
use crate::metering::limits::{self, Window};
use crate::metering::stamps;
use crate::postgres::spi::{self, arg, Statement};
use crate::security::access;
use pgrx::prelude::*;
use pgrx::{pg_sys, AnyNumeric, IntoDatum, Uuid};
use std::cell::RefCell;
use std::collections::HashSet;

type Usage = pgrx::composite_type!('static, "entitlements.usage");

/// Count `amount` on a stripe with room, chosen among those nobody holds (SKIP LOCKED),
/// starting at a stripe of this backend's own so concurrent backends rarely meet, and
/// stamp it (see usage_counters.stamp). Returns the window's total after counting: this
/// stripe plus the others as the statement's snapshot sees them. Every statement here
/// runs as the owner with the caller's search_path, so every operator, function and type
/// is qualified. A macro so that `COUNT_AND_RECORD` can embed the same text.
macro_rules! count_on_stripe_sql {
    () => {
        "
    update entitlements.usage_counters c set used = c.used operator(pg_catalog.+) $5,
           stamp = $8, valid_until = $9, sole = $10
     where c.customer_id operator(pg_catalog.=) $1 and c.feature_key operator(pg_catalog.=) $2
       and c.period operator(pg_catalog.=) $3 and c.window_start operator(pg_catalog.=) $4
       and c.stripe operator(pg_catalog.=) (
           select s.stripe from entitlements.usage_counters s
            where s.customer_id operator(pg_catalog.=) $1 and s.feature_key operator(pg_catalog.=) $2
              and s.period operator(pg_catalog.=) $3 and s.window_start operator(pg_catalog.=) $4
              and s.basis operator(pg_catalog.=) $6 and s.split operator(pg_catalog.=) $11
              and s.used operator(pg_catalog.+) $5 operator(pg_catalog.<) s.cap
            order by (s.stripe operator(pg_catalog.+) $7) operator(pg_catalog.%) 16
              for update skip locked
            limit 1)
    returning c.used operator(pg_catalog.+) coalesce((
        select pg_catalog.sum(o.used) from entitlements.usage_counters o
         where o.customer_id operator(pg_catalog.=) $1 and o.feature_key operator(pg_catalog.=) $2
           and o.period operator(pg_catalog.=) $3 and o.window_start operator(pg_catalog.=) $4
           and o.stripe operator(pg_catalog.<>) c.stripe), 0) as total"
    };
}

const COUNT_ON_STRIPE: Statement = Statement {
    sql: count_on_stripe_sql!(),
    args: &[
        pg_sys::UUIDOID,
        pg_sys::TEXTOID,
        pg_sys::TEXTOID,
        pg_sys::TIMESTAMPTZOID,
        pg_sys::NUMERICOID,
        pg_sys::NUMERICOID,
        pg_sys::INT2OID,
        pg_sys::INT8OID,
        pg_sys::TIMESTAMPTZOID,
        pg_sys::BOOLOID,
        pg_sys::INT8OID,
    ],
};

/// `COUNT_ON_STRIPE` and the ledger row in one statement, for a feature with one limited
/// period (the common case): one execution instead of two.
const COUNT_AND_RECORD: Statement = Statement {
    sql: concat!(
        "with counted as (",
        count_on_stripe_sql!(),
        "), logged as (
             insert into entitlements.usage_ledger (at, customer_id, feature_key, amount, periods, billing_window, actor)
             select $13, $1, $2, $5, array[$3],
                    case when $3 operator(pg_catalog.=) 'billing_period' then $4 end, $12
               from counted)
         select k.total from counted k"
    ),
    args: &[
        pg_sys::UUIDOID,
        pg_sys::TEXTOID,
        pg_sys::TEXTOID,
        pg_sys::TIMESTAMPTZOID,
        pg_sys::NUMERICOID,
        pg_sys::NUMERICOID,
        pg_sys::INT2OID,
        pg_sys::INT8OID,
        pg_sys::TIMESTAMPTZOID,
        pg_sys::BOOLOID,
        pg_sys::INT8OID,
        pg_sys::UUIDOID,
        pg_sys::TIMESTAMPTZOID,
    ],
};

/// Customers whose stamped stripe this backend found taken by another transaction
/// (stamps.rs never waits for it). From then on they are resolved and counted on every
/// stripe: their sessions run concurrently, and stripe 0 alone would make them queue.
const BUSY_MAX: usize = 100_000;
thread_local! {
    static BUSY: RefCell<HashSet<[u8; 16]>> = RefCell::new(HashSet::new());
}

/// Should this call try the stamps?
fn try_stamps(customer: &[u8; 16]) -> bool {
    BUSY.with_borrow(|busy| !busy.contains(customer))
}

fn mark_busy(customer: &[u8; 16]) {
    BUSY.with_borrow_mut(|busy| {
        if busy.len() >= BUSY_MAX {
            busy.clear();
        }
        busy.insert(*customer);
    });
}

/// A window's total over its stripes, when it has several.
const WINDOW_TOTAL: Statement = Statement {
    sql: "select pg_catalog.sum(o.used) from entitlements.usage_counters o
           where o.customer_id operator(pg_catalog.=) $1 and o.feature_key operator(pg_catalog.=) $2
             and o.period operator(pg_catalog.=) $3 and o.window_start operator(pg_catalog.=) $4",
    args: &[pg_sys::UUIDOID, pg_sys::TEXTOID, pg_sys::TEXTOID, pg_sys::TIMESTAMPTZOID],
};

/// First use of a window: stripe 0 takes the whole quota up to the first usage threshold
/// (`_quota_bound`) and counts `amount`, as `_meter` would. No row: the window exists but
/// had no free stripe with room (a conflict), or `amount` reaches a threshold, which only
/// `_meter` crosses.
const OPEN_WINDOW: Statement = Statement {
    sql: "insert into entitlements.usage_counters
                 (customer_id, feature_key, period, window_start, window_end, stripe, used, cap, basis, stamp, valid_until, sole, split)
          select $1, $2, $3, $4, $5, 0, $6, b.bound, $7, $8, $9, $10, $12
            from (select entitlements._quota_bound($7, $11::pg_catalog.numeric[], 0) as bound) b
           where $6 operator(pg_catalog.<) b.bound
          on conflict do nothing
          returning used",
    args: &[
        pg_sys::UUIDOID,
        pg_sys::TEXTOID,
        pg_sys::TEXTOID,
        pg_sys::TIMESTAMPTZOID,
        pg_sys::TIMESTAMPTZOID,
        pg_sys::NUMERICOID,
        pg_sys::NUMERICOID,
        pg_sys::INT8OID,
        pg_sys::TIMESTAMPTZOID,
        pg_sys::BOOLOID,
        pg_sys::TEXTARRAYOID,
        pg_sys::INT8OID,
    ],
};

const RECORD: Statement = Statement {
    sql: "insert into entitlements.usage_ledger (at, customer_id, feature_key, amount, periods, billing_window, actor)
          values ($7, $1, $2, $3, $4, $5, $6)",
    args: &[
        pg_sys::UUIDOID,
        pg_sys::TEXTOID,
        pg_sys::NUMERICOID,
        pg_sys::TEXTARRAYOID,
        pg_sys::TIMESTAMPTZOID,
        pg_sys::UUIDOID,
        pg_sys::TIMESTAMPTZOID,
    ],
};

/// The common case of `consume` and `try_consume` (sql/metering/consume.sql): the usage after
/// counting, or NULL when this is not the common case and `_meter` must decide. `_meter`
/// is called from SQL, not from here, so its errors (PT429, PT403) reach the caller
/// with their own SQLSTATE; when this answers NULL it keeps its arguments for
/// `_take_pending`.
#[pg_extern(volatile, parallel_unsafe, name = "_consume_fast", requires = ["metering"])]
pub fn consume_fast(
    customer: Option<Uuid>,
    feature: Option<&str>,
    amount: Option<AnyNumeric>,
    idempotency_key: Option<&str>,
) -> Option<pgrx::composite_type!('static, "entitlements.usage")> {
    let counted = match (customer, feature, &amount, idempotency_key) {
        (Some(c), Some(f), Some(a), None) => fast_path(c, f, a).or_raise(),
        _ => None,
    };
    // Owned copies only (AnyNumeric owns its bytes), tagged with this statement: whatever
    // a cancelled statement left here is refused by the next `_take_pending`, and a call
    // counted here clears what an earlier one left.
    PENDING.set(counted.is_none().then(|| Pending {
        statement: statement_tag(),
        customer,
        feature: feature.map(str::to_owned),
        amount,
        key: idempotency_key.map(str::to_owned),
    }));
    counted
}

/// This backend's transaction and statement: a hand-off is valid only within both.
fn statement_tag() -> (pg_sys::LocalTransactionId, pg_sys::TimestampTz) {
    // SAFETY: MyProc is valid in any backend that runs SQL; the timestamp is a plain read.
    unsafe { ((*pg_sys::MyProc).lxid, pg_sys::GetCurrentStatementStartTimestamp()) }
}

/// The arguments of the last call `_consume_fast` left to `_meter`. consume's SQL body
/// names each argument once (so PostgreSQL inlines it whatever expression the caller
/// passes, `auth.uid()` included) and `_meter_pending` picks them up from here, right
/// after, in the same COALESCE.
struct Pending {
    statement: (pg_sys::LocalTransactionId, pg_sys::TimestampTz),
    customer: Option<Uuid>,
    feature: Option<String>,
    amount: Option<AnyNumeric>,
    key: Option<String>,
}

thread_local! {
    static PENDING: RefCell<Option<Pending>> = const { RefCell::new(None) };
}

/// Hands the kept arguments over, once.
#[pg_extern(volatile, parallel_unsafe, name = "_take_pending")]
// pgrx reads the result columns' names from this signature, so it cannot be a type alias.
#[allow(clippy::type_complexity)]
fn take_pending() -> TableIterator<
    'static,
    (
        name!(customer, Option<Uuid>),
        name!(feature, Option<String>),
        name!(amount, Option<AnyNumeric>),
        name!(idempotency_key, Option<String>),
    ),
> {
    let Some(p) = PENDING.take().filter(|p| p.statement == statement_tag()) else {
        crate::error::Error::CorruptState("pg_entitlements: no consume call is waiting to be metered".into()).raise()
    };
    TableIterator::once((p.customer, p.feature, p.amount, p.key))
}

/// The binding window's figures after counting: the one with the least remaining.
struct Outcome {
    limit: Option<f64>,
    used: AnyNumeric,
    resets_at: Option<Micros>,
}

/// None: not the common case, let `_meter` decide.
fn fast_path(customer: Uuid, feature: &str, amount: &AnyNumeric) -> Result<Option<Usage>> {
    // A hot standby counts nothing: `_meter` refuses there with 25006 (sql/scaleout/replicas.sql).
    // SAFETY: a read of shared recovery state, valid in any backend.
    if unsafe { pg_sys::RecoveryInProgress() } {
        return Ok(None);
    }
    if !f64::try_from(amount.clone()).is_ok_and(|a| a > 0.0 && a <= crate::catalog::MAX_NUMBER) {
        return Ok(None);
    }
    let now = clock::statement_now();
    let id = customer.as_bytes();
    // SAFETY: plain read of backend state.
    let caller = unsafe { pg_sys::GetOuterUserId() };
    if !access::may_act_for(id, caller, now)? {
        return Ok(None);
    }
    let owner = cache::owner()?;
    let actor = crate::security::identity::current()?.map(Uuid::from_bytes);
    // SAFETY: this backend's PGPROC slot number, a plain read.
    let home = (unsafe { (*pg_sys::MyProc).pgprocno } % 16) as i16;

    // A customer this backend has not resolved: try the stamps first. stamps.rs
    // compares them with the version itself, so the cache need not be refreshed.
    if !cache::is_tainted() && !cache::is_cached(id) && try_stamps(id) {
        let stamped =
            crate::postgres::run_as(owner, || Spi::connect(|_| count_on_stamped(customer, feature, amount, actor)))?;
        if let Some(o) = stamped {
            return usage(o).map(Some);
        }
    }
    let version = cache::clean_version()?;

    let cat = cache::catalog()?;
    let Some(idx) = cat.feature_index.get(feature).copied() else { return Ok(None) };
    let Some(split) = cat.features[idx].thresholds_key else { return Ok(None) };
    let thresholds = cat.features[idx].thresholds.clone();
    let Some((windows, valid_until)) = cache::with_customer(id, now, |_, _, r| {
        limits::windows(r.values[idx].as_ref(), now, r).map(|w| (w, r.valid_until))
    })?
    else {
        return Ok(None);
    };
    let stamp = Stamp { version, valid_until, sole: windows.len() == 1, thresholds, split };
    let counted = crate::postgres::run_as(owner, || {
        Spi::connect(|_| -> Result<Option<Outcome>> {
            let Some((best, recorded)) = count_all(customer, feature, amount, &windows, &stamp, home, actor)? else {
                return Ok(None);
            };
            if !recorded {
                record(customer, feature, amount.clone(), &windows, actor)?;
            }
            Ok(Some(best))
        })
    })?;
    // Built after SPI is closed: SPI_finish frees what was allocated while connected.
    counted.map(usage).transpose()
}

/// What a normal count writes on the stripe it counts on (see usage_counters.stamp).
struct Stamp {
    version: Option<i64>,
    valid_until: Micros,
    sole: bool,
    /// The feature's usage thresholds: a new window's stripe stops at the first one.
    thresholds: Vec<String>,
    /// Which they are (usage_counters.split): counted only on stripes split under them.
    split: i64,
}

/// The shortcut for customers this backend has not resolved: count on the stamped
/// window directly (stamps.rs), then write the ledger row (directly too, ledger.rs,
/// when nothing but the row itself must happen on an insert).
fn count_on_stamped(
    customer: Uuid,
    feature: &str,
    amount: &AnyNumeric,
    actor: Option<Uuid>,
) -> Result<Option<Outcome>> {
    let c = match stamps::count(customer, feature, amount) {
        Ok(c) => c,
        Err(stamps::Miss::Busy) => {
            mark_busy(customer.as_bytes());
            return Ok(None);
        }
        Err(stamps::Miss::NotStamped) => return Ok(None),
    };
    let billing = (c.period == "billing_period").then(|| clock::to_timestamptz(c.window_start));
    let start = clock::to_timestamptz(c.window_start);
    let period = c.period;
    let row = ledger::Row {
        customer,
        feature,
        amount,
        period: &period,
        billing_window: (period == "billing_period").then(|| clock::to_pg(c.window_start)),
        actor,
    };
    if !ledger::record(&row) {
        let args = vec![
            arg(customer),
            arg(feature),
            arg(amount.clone()),
            arg(vec![period.as_str()]),
            arg(billing),
            arg(actor),
            arg(clock::to_timestamptz(clock::statement_now())),
        ];
        spi::run(&RECORD, args, false)?;
    }
    let used = if c.stripes == 1 {
        c.used
    } else {
        let rows = spi::run(&WINDOW_TOTAL, vec![arg(customer), arg(feature), arg(period), arg(start)], false)?;
        (!rows.is_empty()).then(|| rows.get::<AnyNumeric>(0, 1)).flatten().ok_or_else(|| corrupt("a window's total"))?
    };
    let limit = f64::try_from(c.basis).ok().filter(|l| l.is_finite());
    Ok(Some(Outcome { limit, used, resets_at: c.window_end }))
}

/// Count on every window, all or nothing: one subtransaction, so a window without room
/// undoes the others and releases any stripe lock taken on the way (a lock kept while
/// `_meter` later waits for stripes could deadlock with another consumer).
/// Returns the binding window's figures and whether the ledger row was written too
/// (one window: `COUNT_AND_RECORD`).
fn count_all(
    customer: Uuid,
    feature: &str,
    amount: &AnyNumeric,
    windows: &[Window],
    stamp: &Stamp,
    home: i16,
    actor: Option<Uuid>,
) -> Result<Option<(Outcome, bool)>> {
    SubTransaction::run(std::panic::AssertUnwindSafe(|| {
        let mut best: Option<(f64, Outcome)> = None;
        let mut recorded = false;
        for w in windows {
            let mut args = vec![
                arg(customer),
                arg(feature),
                arg(w.meter.period.as_str()),
                arg(clock::to_timestamptz(w.start)),
                arg(amount.clone()),
                arg(basis(w.meter.limit)?),
                arg(home),
                arg(stamp.version),
                arg(clock::to_timestamptz_or_infinity(stamp.valid_until)),
                arg(stamp.sole),
                arg(stamp.split),
            ];
            let rows = if windows.len() == 1 {
                args.push(arg(actor));
                args.push(arg(clock::to_timestamptz(clock::statement_now())));
                spi::run(&COUNT_AND_RECORD, args, false)?
            } else {
                spi::run(&COUNT_ON_STRIPE, args, false)?
            };
            let mut total = (!rows.is_empty()).then(|| rows.get::<AnyNumeric>(0, 1)).flatten();
            recorded = windows.len() == 1 && total.is_some();
            if total.is_none() && w.meter.limit.is_none_or(|l| f64::try_from(amount.clone()).is_ok_and(|a| a <= l)) {
                let args = vec![
                    arg(customer),
                    arg(feature),
                    arg(w.meter.period.as_str()),
                    arg(clock::to_timestamptz(w.start)),
                    arg(w.resets_at.map(clock::to_timestamptz)),
                    arg(amount.clone()),
                    arg(basis(w.meter.limit)?),
                    arg(stamp.version),
                    arg(clock::to_timestamptz_or_infinity(stamp.valid_until)),
                    arg(stamp.sole),
                    arg(stamp.thresholds.iter().map(String::as_str).collect::<Vec<_>>()),
                    arg(stamp.split),
                ];
                let rows = spi::run(&OPEN_WINDOW, args, false)?;
                total = (!rows.is_empty()).then(|| rows.get::<AnyNumeric>(0, 1)).flatten();
            }
            let Some(total) = total else {
                return Ok(None);
            };
            let left =
                w.meter.limit.map_or(f64::INFINITY, |l| l - f64::try_from(total.clone()).unwrap_or(f64::INFINITY));
            if best.as_ref().is_none_or(|(b, _)| left < *b) {
                best = Some((left, Outcome { limit: w.meter.limit, used: total, resets_at: w.resets_at }));
            }
        }
        Ok(best.map(|(_, o)| (o, recorded)))
    }))
}

/// The limit the stripes' caps were split from, as `_meter` writes it.
fn basis(limit: Option<f64>) -> Result<AnyNumeric> {
    match limit {
        Some(l) => AnyNumeric::try_from(l).map_err(|e| crate::error::Error::CorruptState(format!("limit {l}: {e}"))),
        None => Ok(AnyNumeric::try_from("Infinity").expect("numeric Infinity")),
    }
}

fn record(customer: Uuid, feature: &str, amount: AnyNumeric, windows: &[Window], actor: Option<Uuid>) -> Result<()> {
    let periods: Vec<&str> = windows.iter().map(|w| w.meter.period.as_str()).collect();
    let billing = windows.iter().find(|w| w.meter.period == "billing_period").map(|w| clock::to_timestamptz(w.start));
    let at = clock::to_timestamptz(clock::statement_now());
    let args = vec![arg(customer), arg(feature), arg(amount), arg(periods), arg(billing), arg(actor), arg(at)];
    spi::run(&RECORD, args, false)?;
    Ok(())
}

fn usage(o: Outcome) -> Result<Usage> {
    let limit = o.limit.map(|l| AnyNumeric::try_from(l).expect("a finite limit"));
    let remaining = limit.clone().map(|l| {
        let r = l - o.used.clone();
        if r < AnyNumeric::from(0) {
            AnyNumeric::from(0)
        } else {
            r
        }
    });
    let desc =
        pgrx::PgTupleDesc::for_composite_type_by_oid(usage_type()?).ok_or_else(|| corrupt("entitlements.usage"))?;
    let datums = [
        true.into_datum(),
        limit.into_datum(),
        o.used.into_datum(),
        remaining.into_datum(),
        o.resets_at.map(clock::to_timestamptz).into_datum(),
    ];
    // SAFETY: the datums match the columns of entitlements.usage (sql/metering/tables.sql) in order.
    unsafe { PgHeapTuple::from_datums(desc, datums) }.map_err(corrupt)
}

/// The oid of entitlements.usage, by two syscache lookups (naming it as text would run
/// the SQL parser on every call).
fn usage_type() -> Result<pg_sys::Oid> {
    // SAFETY: syscache lookups by name inside a transaction.
    let oid = unsafe {
        let nsp = pg_sys::get_namespace_oid(c"entitlements".as_ptr(), true);
        pg_sys::GetSysCacheOid(
            pg_sys::SysCacheIdentifier::TYPENAMENSP as i32,
            pg_sys::Anum_pg_type_oid as i16,
            pg_sys::Datum::from(c"usage".as_ptr()),
            pg_sys::Datum::from(nsp),
            pg_sys::Datum::from(0usize),
            pg_sys::Datum::from(0usize),
        )
    };
    (oid != pg_sys::InvalidOid).then_some(oid).ok_or_else(|| corrupt("type entitlements.usage"))
}

fn corrupt(e: impl std::fmt::Display) -> crate::error::Error {
    crate::error::Error::CorruptState(format!("pg_entitlements: unexpected metering state: {e}"))
}

/// An internal subtransaction, as PL/pgSQL's BEGIN ... EXCEPTION block uses: its row
/// locks and writes go away on rollback. Run the work with [`SubTransaction::run`], which
/// rolls it back on an ERROR (a lock or statement timeout, a cancel, a deadlock) before the
/// error goes on: left open, the caller's transaction could never end cleanly.
struct SubTransaction {
    context: pg_sys::MemoryContext,
    owner: pg_sys::ResourceOwner,
}

impl SubTransaction {
    fn begin() -> Self {
        // SAFETY: inside a transaction; we restore the memory context and resource owner
        // that BeginInternalSubTransaction switches, as PL/pgSQL does.
        unsafe {
            let context = pg_sys::CurrentMemoryContext;
            let owner = pg_sys::CurrentResourceOwner;
            pg_sys::BeginInternalSubTransaction(std::ptr::null());
            pg_sys::MemoryContextSwitchTo(context);
            SubTransaction { context, owner }
        }
    }

    fn commit(self) {
        // SAFETY: ends the subtransaction begun above, then restores the caller's state.
        unsafe {
            pg_sys::ReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(self.context);
            pg_sys::CurrentResourceOwner = self.owner;
        }
    }

    fn rollback(self) {
        // SAFETY: as in commit.
        unsafe {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(self.context);
            pg_sys::CurrentResourceOwner = self.owner;
        }
    }

    /// `work` inside a new subtransaction: committed when it answers Some, rolled back when
    /// it answers None, returns an error, or raises.
    fn run<T>(work: impl FnOnce() -> Result<Option<T>> + std::panic::UnwindSafe) -> Result<Option<T>> {
        let subxact = SubTransaction::begin();
        let (context, owner) = (subxact.context, subxact.owner);
        let outcome = PgTryBuilder::new(work)
            .catch_others(|e| {
                // SAFETY: the subtransaction begun above is the current one (everything
                // inside it has unwound); restore the caller's state as PL/pgSQL does.
                unsafe {
                    pg_sys::RollbackAndReleaseCurrentSubTransaction();
                    pg_sys::MemoryContextSwitchTo(context);
                    pg_sys::CurrentResourceOwner = owner;
                }
                e.rethrow()
            })
            .execute();
        match outcome {
            Ok(Some(v)) => {
                subxact.commit();
                Ok(Some(v))
            }
            other => {
                subxact.rollback();
                other
            }
        }
    }
}
