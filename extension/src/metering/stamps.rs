//! Counting on a stamped window (see usage_counters.stamp) without the executor.
//!
//! When many customers call, most calls count on a stamped window (counting.rs): the
//! backend has not resolved the customer, and no other transaction holds the row. As a
//! planned data-modifying statement that cost more than the whole hand-written baseline:
//! executor start-up, a CTE, and a subtransaction so that a failed attempt keeps no row
//! lock. Here it is one index lookup and one `heap_update`, as PostgreSQL's own catalog
//! updates do.
//!
//! Nothing is written unless every check passes. A row that another transaction has
//! changed or holds is not waited for: `heap_update` gives up at once without keeping a
//! lock, and the caller takes the normal path (striped, SKIP LOCKED, rechecking rows the
//! way UPDATE does) for that customer from then on. The caller writes the ledger row.
//!
//! Used only when nothing else must run on an UPDATE of usage_counters: no trigger, no
//! rule, no forced row security, every column as this code reads it (postgres/shape.rs), and no
//! index but its primary key (an operator may add
//! any of these; then the normal path, through the executor, takes over).

use crate::clock::{self, Micros};
use crate::postgres::relation::{column, deform, lookup, Index, Slot, Table};
use pgrx::{pg_sys, AnyNumeric, FromDatum, IntoDatum, Uuid};

/// Stripe 0 of the window after counting on it.
pub struct Counted {
    pub basis: AnyNumeric,
    pub stripes: i16,
    pub used: AnyNumeric,
    pub window_end: Option<Micros>,
    pub period: String,
    pub window_start: Micros,
}

/// Why nothing was counted; either way nothing was written.
pub enum Miss {
    /// No current stamped window with room, or the tables are not bare (module comment).
    NotStamped,
    /// Another transaction has changed or holds the row.
    Busy,
}

/// Count `amount` on stripe 0 of the customer's current window of `feature` if its stamp
/// is current, it was the feature's sole limited period and it has room.
pub fn count(customer: Uuid, feature: &str, amount: &AnyNumeric) -> Result<Counted, Miss> {
    // SAFETY: catalog lookups, a snapshot pushed and popped around the work, relations
    // opened behind guards. An ERROR inside aborts the transaction, whose cleanup
    // releases what is still held (locks, pins, the snapshot).
    unsafe {
        // A read-only transaction (or a standby) must get the executor's error.
        if pg_sys::XactReadOnly {
            return Err(Miss::NotStamped);
        }
        let (Some(counters), Some(version)) = (lookup(c"usage_counters"), lookup(c"cache_version")) else {
            return Err(Miss::NotStamped);
        };
        // As SPI does before a statement that writes: see this transaction's own
        // earlier changes, under a snapshot taken now (READ COMMITTED).
        pg_sys::CommandCounterIncrement();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        pg_sys::UpdateActiveSnapshotCommandId();
        let snapshot = pg_sys::GetActiveSnapshot();
        let counted = match current_version(version, snapshot) {
            Some(v) => count_on(counters, snapshot, v, customer, feature, amount),
            None => Err(Miss::NotStamped),
        };
        pg_sys::PopActiveSnapshot();
        counted
    }
}

/// Attribute numbers (0-based) of the columns read, by name.
struct Columns {
    customer_id: usize,
    feature_key: usize,
    period: usize,
    window_start: usize,
    window_end: usize,
    stripe: usize,
    used: usize,
    cap: usize,
    basis: usize,
    stamp: usize,
    valid_until: usize,
    sole: usize,
    stripes: usize,
}

unsafe fn columns(desc: pg_sys::TupleDesc) -> Option<Columns> {
    Some(Columns {
        customer_id: column(desc, c"customer_id")?,
        feature_key: column(desc, c"feature_key")?,
        period: column(desc, c"period")?,
        window_start: column(desc, c"window_start")?,
        window_end: column(desc, c"window_end")?,
        stripe: column(desc, c"stripe")?,
        used: column(desc, c"used")?,
        cap: column(desc, c"cap")?,
        basis: column(desc, c"basis")?,
        stamp: column(desc, c"stamp")?,
        valid_until: column(desc, c"valid_until")?,
        sole: column(desc, c"sole")?,
        stripes: column(desc, c"stripes")?,
    })
}

/// entitlements.cache_version as `snapshot` sees it.
unsafe fn current_version(relid: pg_sys::Oid, snapshot: pg_sys::Snapshot) -> Option<i64> {
    let table = Table::open(relid, pg_sys::AccessShareLock);
    let desc = table.desc();
    let scan = pg_sys::table_beginscan(table.rel(), snapshot, 0, std::ptr::null_mut());
    let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
    let version = match column(desc, c"version") {
        Some(at) if !tuple.is_null() => {
            let (values, nulls) = deform(tuple, desc);
            i64::from_datum(values[at], nulls[at])
        }
        _ => None,
    };
    pg_sys::table_endscan(scan);
    version
}

/// May usage_counters be updated without the executor (module comment)? Its primary key
/// if so.
unsafe fn bare_primary_key(table: &Table) -> Option<pg_sys::Oid> {
    if !table.is_bare() {
        return None;
    }
    let indexes = pg_sys::RelationGetIndexList(table.rel());
    let pk = pg_sys::RelationGetPrimaryKeyIndex(table.rel());
    (pg_sys::list_length(indexes) == 1 && pk != pg_sys::InvalidOid).then_some(pk)
}

unsafe fn count_on(
    relid: pg_sys::Oid,
    snapshot: pg_sys::Snapshot,
    version: i64,
    customer: Uuid,
    feature: &str,
    amount: &AnyNumeric,
) -> Result<Counted, Miss> {
    let table = Table::open(relid, pg_sys::RowExclusiveLock);
    let fit = crate::postgres::shape::fits(relid);
    let Some((cols, pk_oid)) =
        columns(table.desc()).filter(|_| fit).and_then(|c| bare_primary_key(&table).map(|pk| (c, pk)))
    else {
        return Err(Miss::NotStamped);
    };
    let pk = Index::open(pk_oid, pg_sys::RowExclusiveLock);
    find_and_count(&table, &pk, &cols, snapshot, version, customer, feature, amount)
}

#[allow(clippy::too_many_arguments)]
unsafe fn find_and_count(
    table: &Table,
    pk: &Index,
    cols: &Columns,
    snapshot: pg_sys::Snapshot,
    version: i64,
    customer: Uuid,
    feature: &str,
    amount: &AnyNumeric,
) -> Result<Counted, Miss> {
    let index = &*(*pk.rel()).rd_index;
    let keys_lead = index.indkey.values.as_slice(2);
    if index.indnkeyatts < 2 || keys_lead != [cols.customer_id as i16 + 1, cols.feature_key as i16 + 1] {
        return Err(Miss::NotStamped);
    }
    let read = || -> Option<_> {
        let (found, values, nulls) = find(table, pk, cols, snapshot, version, customer, feature)?;
        let used = AnyNumeric::from_datum(values[cols.used], nulls[cols.used])?;
        let cap = AnyNumeric::from_datum(values[cols.cap], nulls[cols.cap])?;
        let basis = AnyNumeric::from_datum(values[cols.basis], nulls[cols.basis])?;
        let period = String::from_datum(values[cols.period], nulls[cols.period])?;
        let window_start = i64::from_datum(values[cols.window_start], nulls[cols.window_start])?;
        let window_end = i64::from_datum(values[cols.window_end], nulls[cols.window_end]);
        let stripes = i16::from_datum(values[cols.stripes], nulls[cols.stripes])?;
        let after = used + amount.clone();
        // Strictly below: reaching the cap is the slow path's (a usage threshold may be there).
        (after < cap).then_some((found, after, basis, stripes, period, window_start, window_end))
    };
    let Some((found, after, basis, stripes, period, window_start, window_end)) = read() else {
        return Err(Miss::NotStamped);
    };

    // The new version of the row: only `used` changes.
    let natts = (*table.desc()).natts as usize;
    let mut replace = vec![false; natts];
    let mut new_values = vec![pg_sys::Datum::from(0usize); natts];
    let mut new_nulls = vec![false; natts];
    replace[cols.used] = true;
    new_values[cols.used] = after.clone().into_datum().ok_or(Miss::NotStamped)?;
    let newtup = pg_sys::heap_modify_tuple(
        found,
        table.desc(),
        new_values.as_mut_ptr(),
        new_nulls.as_mut_ptr(),
        replace.as_mut_ptr(),
    );
    let mut otid = (*found).t_self;
    let mut failure: pg_sys::TM_FailureData = std::mem::zeroed();
    let mut tuple_lock: pg_sys::LockTupleMode::Type = 0;
    let result = pg_sys::heap_update(
        table.rel(),
        &mut otid,
        newtup,
        pg_sys::GetCurrentCommandId(true),
        std::ptr::null_mut(),
        false,
        &mut failure,
        &mut tuple_lock,
    );
    if result != pg_sys::TM_Result::TM_Ok {
        // Held by another transaction, or changed since the snapshot: nothing written,
        // no lock kept, no wait.
        return Err(Miss::Busy);
    }
    if (*(*newtup).t_data).t_infomask2 as u32 & pg_sys::HEAP_ONLY_TUPLE == 0 {
        // Not a HOT update: the primary key needs an entry for the new version (its key
        // columns did not change).
        let slot = Slot::holding(table, newtup);
        pk.insert(table, slot.ptr(), newtup, true);
    }
    Ok(Counted {
        basis,
        stripes,
        used: after,
        window_end: window_end.map(clock::from_pg),
        period,
        window_start: clock::from_pg(window_start),
    })
}

/// The current stamped stripe 0 of (customer, feature), copied, with its columns.
#[allow(clippy::type_complexity)]
unsafe fn find(
    table: &Table,
    pk: &Index,
    cols: &Columns,
    snapshot: pg_sys::Snapshot,
    version: i64,
    customer: Uuid,
    feature: &str,
) -> Option<(pg_sys::HeapTuple, Vec<pg_sys::Datum>, Vec<bool>)> {
    let mut keys: [pg_sys::ScanKeyData; 2] = std::mem::zeroed();
    let strategy = pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber;
    pg_sys::ScanKeyInit(&mut keys[0], 1, strategy, pg_sys::Oid::from(pg_sys::F_UUID_EQ), customer.into_datum()?);
    pg_sys::ScanKeyInit(&mut keys[1], 2, strategy, pg_sys::Oid::from(pg_sys::F_TEXTEQ), feature.into_datum()?);
    // Compare as the index sorts (ScanKeyInit assumes the C collation).
    keys[1].sk_collation = *(*pk.rel()).rd_indcollation.add(1);
    let scan = pg_sys::index_beginscan(table.rel(), pk.rel(), snapshot, 2, 0);
    pg_sys::index_rescan(scan, keys.as_mut_ptr(), 2, std::ptr::null_mut(), 0);
    let slot = pg_sys::table_slot_create(table.rel(), std::ptr::null_mut());
    let now = pg_sys::GetCurrentStatementStartTimestamp();
    let mut found = None;
    while pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot) {
        let mut should_free = false;
        let tuple = pg_sys::ExecFetchSlotHeapTuple(slot, false, &mut should_free);
        let (values, nulls) = deform(tuple, table.desc());
        let int2 = |c: usize| i16::from_datum(values[c], nulls[c]);
        let int8 = |c: usize| i64::from_datum(values[c], nulls[c]);
        let current = int2(cols.stripe) == Some(0)
            && bool::from_datum(values[cols.sole], nulls[cols.sole]) == Some(true)
            && int8(cols.stamp) == Some(version)
            && int8(cols.valid_until).is_some_and(|t| t > now)
            && int8(cols.window_start).is_some_and(|t| t <= now)
            && int8(cols.window_end).is_none_or(|t| t > now);
        if current {
            // Copied: the slot's tuple lives in a shared buffer only while pinned.
            let copy = pg_sys::heap_copytuple(tuple);
            let (values, nulls) = deform(copy, table.desc());
            found = Some((copy, values, nulls));
            break;
        }
    }
    pg_sys::ExecDropSingleTupleTableSlot(slot);
    pg_sys::index_endscan(scan);
    found
}
