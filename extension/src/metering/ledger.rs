//! The ledger row of a count through a stamp (stamps.rs), written without the executor.
//!
//! An INSERT through SPI costs executor start-up and routing into the partitioned ledger
//! on every call, as much as the count itself. Here the row goes straight into the
//! partition that holds `at` (found in the partition bounds PostgreSQL keeps, the
//! default partition otherwise) with `heap_insert`, and into each of its indexes, the
//! way PostgreSQL's own catalog inserts do. The column defaults are computed as the
//! table declares them: `id` from usage_ledger_id_seq, `txid` as txid_current().
//!
//! Used only when nothing else must run on an INSERT: no trigger, rule or forced row
//! security on the ledger or the partition, no CHECK constraint or generated column, no
//! column this code does not know, every column of the type, typmod, NOT NULL and default
//! it was written for and the partition on the heap access method (postgres/shape.rs), and indexes
//! on plain columns only. Otherwise `false`, and the caller
//! inserts through SPI.

use crate::postgres::relation::{leaf_partition_for, lookup, Index, Slot, Table};
use pgrx::{pg_sys, AnyNumeric, IntoDatum, Uuid};
use std::ffi::CStr;

/// One consumption, as the caller counted it.
pub struct Row<'a> {
    pub customer: Uuid,
    pub feature: &'a str,
    pub amount: &'a AnyNumeric,
    pub period: &'a str,
    /// The billing window's start when the period is billing_period (raw TimestampTz).
    pub billing_window: Option<pg_sys::TimestampTz>,
    pub actor: Option<Uuid>,
}

/// The ledger's columns, each with how this code fills it.
const COLUMNS: [&CStr; 15] = [
    c"id",
    c"at",
    c"customer_id",
    c"feature_key",
    c"amount",
    c"idempotency_key",
    c"periods",
    c"billing_window",
    c"overage",
    c"unit_price_cents",
    c"cost_cents",
    c"actor",
    c"txid",
    // NULL from here: consumption carries no cost of its own nor metadata.
    c"usage_cost_cents",
    c"metadata",
];

/// Write the row; false when nothing was written and the caller must use SPI.
pub fn record(row: &Row) -> bool {
    // SAFETY: catalog lookups and relations opened behind guards. An ERROR inside
    // aborts the transaction, whose cleanup releases what is still held.
    unsafe {
        if pg_sys::XactReadOnly {
            return false;
        }
        let (Some(ledger), Some(sequence)) = (lookup(c"usage_ledger"), lookup(c"usage_ledger_id_seq")) else {
            return false;
        };
        let parent = Table::open(ledger, pg_sys::RowExclusiveLock);
        let at = crate::clock::to_pg(crate::clock::statement_now());
        let Some(oid) =
            (if crate::postgres::shape::fits(ledger) { leaf_partition_for(&parent, c"at", at) } else { None })
        else {
            return false;
        };
        let part = Table::open(oid, pg_sys::RowExclusiveLock);
        // Locking the partition processed what changed meanwhile: a partition attached
        // concurrently (its ATTACH held the default partition until it committed) now
        // takes `at`, and the row must not land in the default.
        crate::postgres::shape::fits(oid)
            && leaf_partition_for(&parent, c"at", at) == Some(oid)
            && insert_into(&part, sequence, at, row)
    }
}

unsafe fn insert_into(part: &Table, sequence: pg_sys::Oid, at: pg_sys::TimestampTz, row: &Row) -> bool {
    let desc = part.desc();
    let constr = (*desc).constr;
    if (*(*part.rel()).rd_rel).relkind as u8 != pg_sys::RELKIND_RELATION
        || !part.is_bare()
        || (!constr.is_null() && ((*constr).num_check > 0 || (*constr).has_generated_stored))
    {
        return false;
    }
    // Every live column must be one this code fills.
    let natts = (*desc).natts as usize;
    let mut slots = [usize::MAX; COLUMNS.len()];
    let mut live = 0;
    for (i, a) in (*desc).attrs.as_slice(natts).iter().enumerate() {
        if a.attisdropped {
            continue;
        }
        live += 1;
        let name = CStr::from_ptr(a.attname.data.as_ptr());
        match COLUMNS.iter().position(|c| *c == name) {
            Some(k) => slots[k] = i,
            None => return false,
        }
    }
    if live != COLUMNS.len() {
        return false;
    }
    let Some(indexes) = plain_indexes(part) else { return false };

    let mut values = vec![pg_sys::Datum::from(0usize); natts];
    let mut nulls = vec![true; natts];
    let mut set = |k: usize, d: Option<pg_sys::Datum>| {
        if let Some(d) = d {
            values[slots[k]] = d;
            nulls[slots[k]] = false;
        }
    };
    set(
        0,
        Some(pg_sys::OidFunctionCall1Coll(
            pg_sys::Oid::from(pg_sys::F_NEXTVAL),
            pg_sys::InvalidOid,
            pg_sys::Datum::from(sequence),
        )),
    );
    set(1, Some(pg_sys::Datum::from(at)));
    set(2, row.customer.into_datum());
    set(3, row.feature.into_datum());
    set(4, row.amount.clone().into_datum());
    set(6, vec![row.period].into_datum());
    set(7, row.billing_window.map(pg_sys::Datum::from));
    set(8, AnyNumeric::from(0).into_datum());
    set(10, AnyNumeric::from(0).into_datum());
    set(11, row.actor.into_datum());
    set(12, Some(pg_sys::Datum::from(pg_sys::GetTopFullTransactionId().value as i64)));

    let tuple = pg_sys::heap_form_tuple(desc, values.as_mut_ptr(), nulls.as_mut_ptr());
    pg_sys::heap_insert(part.rel(), tuple, pg_sys::GetCurrentCommandId(true), 0, std::ptr::null_mut());
    let slot = Slot::holding(part, tuple);
    for index in &indexes {
        index.insert(part, slot.ptr(), tuple, false);
    }
    true
}

/// The partition's indexes, open, if each is plain (Index::is_plain); None otherwise.
unsafe fn plain_indexes(part: &Table) -> Option<Vec<Index>> {
    let list = pg_sys::RelationGetIndexList(part.rel());
    let n = pg_sys::list_length(list);
    let mut open = Vec::with_capacity(n as usize);
    for i in 0..n {
        let index = Index::open(pg_sys::list_nth_oid(list, i), pg_sys::RowExclusiveLock);
        if !index.is_plain() {
            return None;
        }
        open.push(index);
    }
    Some(open)
}
