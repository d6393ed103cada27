//! Are the tables the writes without the executor touch (metering/stamps.rs: usage_counters,
//! metering/ledger.rs: usage_ledger and its partitions) still the shape that code was written for?
//!
//! Those writes read and build rows datum by datum, so a column whose type, typmod,
//! NOT NULL, default, generation or identity an operator changed, or a table on another
//! access method, must send the count through the executor instead. The shape is compared
//! in SQL (`entitlements._direct_writes_fit`, sql/metering/ledger.sql, which lists the shapes the
//! code was written for) once per relation, and again after any relcache invalidation:
//! every ALTER TABLE sends one, and the callers ask only after locking the relation, which
//! processes the invalidations pending for it.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

thread_local! {
    /// Bumped by every relcache invalidation this backend processes.
    static GENERATION: Cell<u64> = const { Cell::new(0) };
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
    /// Verdict per relation, with the generation it was reached at.
    static VERDICTS: RefCell<HashMap<pg_sys::Oid, (u64, bool)>> = RefCell::new(HashMap::new());
}

/// Called by PostgreSQL while it processes invalidations: touches one counter, nothing
/// that could fail or be borrowed at the time.
unsafe extern "C-unwind" fn invalidated(_arg: pg_sys::Datum, _relid: pg_sys::Oid) {
    GENERATION.set(GENERATION.get().wrapping_add(1));
}

/// Does `relid` (locked by the caller) still fit the writes without the executor?
pub fn fits(relid: pg_sys::Oid) -> bool {
    if !REGISTERED.get() {
        // SAFETY: registers a plain function for the life of the backend (PostgreSQL keeps
        // a fixed array of callbacks; one per backend is registered here, once).
        unsafe { pg_sys::CacheRegisterRelcacheCallback(Some(invalidated), pg_sys::Datum::from(0usize)) };
        REGISTERED.set(true);
    }
    let generation = GENERATION.get();
    if let Some((seen, fit)) = VERDICTS.with_borrow(|v| v.get(&relid).copied()) {
        if seen == generation {
            return fit;
        }
    }
    // A library newer than the installed SQL (before ALTER EXTENSION ... UPDATE) finds no
    // function to ask: then nothing fits, and the executor counts.
    let known =
        Spi::get_one::<bool>("select pg_catalog.to_regprocedure('entitlements._direct_writes_fit(oid)') is not null")
            .ok()
            .flatten()
            .unwrap_or(false);
    let fit = known
        && Spi::get_one_with_args::<bool>("select entitlements._direct_writes_fit($1)", &[relid.into()])
            .ok()
            .flatten()
            .unwrap_or(false);
    // Kept with the generation read before asking: an invalidation during the query
    // makes the next call ask again.
    VERDICTS.with_borrow_mut(|v| v.insert(relid, (generation, fit)));
    fit
}
