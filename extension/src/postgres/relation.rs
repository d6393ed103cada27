//! Relations and indexes opened behind guards, and the few heap and index operations the
//! writes without the executor (metering/stamps.rs, metering/ledger.rs) share.
//!
//! A guard closes its relation when dropped, on every path out, including the unwinding
//! of a PostgreSQL ERROR turned into a Rust panic; the lock taken on open is kept until
//! the transaction ends, as the executor keeps its own.

use pgrx::pg_sys;
use std::ffi::CStr;

/// A table opened with a lock; closed on drop.
pub struct Table(pg_sys::Relation);

impl Table {
    /// # Safety
    /// Inside a transaction; `relid` is a table (or partitioned table) that exists.
    pub unsafe fn open(relid: pg_sys::Oid, lockmode: u32) -> Table {
        Table(pg_sys::table_open(relid, lockmode as pg_sys::LOCKMODE))
    }

    pub fn rel(&self) -> pg_sys::Relation {
        self.0
    }

    /// # Safety
    /// The relation is open (it is, for the guard's life).
    pub unsafe fn desc(&self) -> pg_sys::TupleDesc {
        (*self.0).rd_att
    }

    /// Does nothing run on a write but the write itself: no trigger, no rule, no forced
    /// row security?
    ///
    /// # Safety
    /// The relation is open.
    pub unsafe fn is_bare(&self) -> bool {
        (*self.0).trigdesc.is_null() && (*self.0).rd_rules.is_null() && !(*(*self.0).rd_rel).relforcerowsecurity
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        // SAFETY: opened by `Table::open` and closed only here; the lock stays until the
        // transaction ends.
        unsafe { pg_sys::table_close(self.0, pg_sys::NoLock as pg_sys::LOCKMODE) }
    }
}

/// An index opened with a lock, with its IndexInfo; closed on drop.
pub struct Index {
    rel: pg_sys::Relation,
    info: *mut pg_sys::IndexInfo,
}

impl Index {
    /// # Safety
    /// Inside a transaction; `oid` is an index that exists.
    pub unsafe fn open(oid: pg_sys::Oid, lockmode: u32) -> Index {
        let rel = pg_sys::index_open(oid, lockmode as pg_sys::LOCKMODE);
        Index { rel, info: pg_sys::BuildIndexInfo(rel) }
    }

    pub fn rel(&self) -> pg_sys::Relation {
        self.rel
    }

    /// Is the key made of plain columns (no expression, no predicate, no exclusion
    /// constraint), checked immediately, and the index valid and ready? Only such an
    /// index can take an entry without an executor state.
    ///
    /// # Safety
    /// The index is open.
    pub unsafe fn is_plain(&self) -> bool {
        let info = &*self.info;
        let index = &*(*self.rel).rd_index;
        info.ii_Expressions.is_null()
            && info.ii_Predicate.is_null()
            && info.ii_ExclusionOps.is_null()
            && index.indimmediate
            && index.indisvalid
            && index.indisready
    }

    /// Add the entry of `tuple` (a new row version of `heap`, stored in `slot`), as the
    /// executor does after an insert or a non-HOT update and CatalogIndexInsert does for
    /// catalogs. `unchanged`: an UPDATE that did not change the key (a hint to btree).
    ///
    /// # Safety
    /// The index `is_plain` (no estate is passed), `slot` holds `tuple`.
    pub unsafe fn insert(
        &self,
        heap: &Table,
        slot: *mut pg_sys::TupleTableSlot,
        tuple: pg_sys::HeapTuple,
        unchanged: bool,
    ) {
        let mut key = [pg_sys::Datum::from(0usize); pg_sys::INDEX_MAX_KEYS as usize];
        let mut nulls = [false; pg_sys::INDEX_MAX_KEYS as usize];
        pg_sys::FormIndexDatum(self.info, slot, std::ptr::null_mut(), key.as_mut_ptr(), nulls.as_mut_ptr());
        let check = if (*(*self.rel).rd_index).indisunique {
            pg_sys::IndexUniqueCheck::UNIQUE_CHECK_YES
        } else {
            pg_sys::IndexUniqueCheck::UNIQUE_CHECK_NO
        };
        pg_sys::index_insert(
            self.rel,
            key.as_mut_ptr(),
            nulls.as_mut_ptr(),
            &mut (*tuple).t_self,
            heap.rel(),
            check,
            unchanged,
            self.info,
        );
    }
}

impl Drop for Index {
    fn drop(&mut self) {
        // SAFETY: opened by `Index::open` and closed only here.
        unsafe { pg_sys::index_close(self.rel, pg_sys::NoLock as pg_sys::LOCKMODE) }
    }
}

/// A heap tuple in a single-slot table slot, for index insertion; the slot is dropped
/// with the guard (the tuple is not: it belongs to the caller's memory context).
pub struct Slot(*mut pg_sys::TupleTableSlot);

impl Slot {
    /// # Safety
    /// `tuple` has the shape of `table`'s rows.
    pub unsafe fn holding(table: &Table, tuple: pg_sys::HeapTuple) -> Slot {
        let slot = pg_sys::MakeSingleTupleTableSlot(table.desc(), &pg_sys::TTSOpsHeapTuple);
        pg_sys::ExecStoreHeapTuple(tuple, slot, false);
        Slot(slot)
    }

    pub fn ptr(&self) -> *mut pg_sys::TupleTableSlot {
        self.0
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // SAFETY: made by `Slot::holding`, dropped only here.
        unsafe { pg_sys::ExecDropSingleTupleTableSlot(self.0) }
    }
}

/// The leaf partition of `parent` that takes a row whose `column` (a timestamp) is `at`, if
/// `parent` is partitioned by range on that column alone and nothing runs on an insert into
/// it (`Table::is_bare`); the default partition when no range holds `at`.
///
/// # Safety
/// The parent is open (it is, for the guard's life), inside a transaction.
pub unsafe fn leaf_partition_for(parent: &Table, column_name: &CStr, at: pg_sys::TimestampTz) -> Option<pg_sys::Oid> {
    if !parent.is_bare() {
        return None;
    }
    let at_column = column(parent.desc(), column_name)? as i16 + 1;
    if !range_on((*parent.rel()).rd_id, at_column) {
        return None;
    }
    let desc = pg_sys::RelationGetPartitionDesc(parent.rel(), true);
    if desc.is_null() {
        return None;
    }
    let bounds = (*desc).boundinfo;
    if bounds.is_null() || (*bounds).strategy as u8 != pg_sys::PARTITION_STRATEGY_RANGE {
        return None;
    }
    // The greatest bound <= at (-1: none); the partition after it holds `at`.
    let below = |i: i32| -> bool {
        let kind = if (*bounds).kind.is_null() { 0 } else { **(*bounds).kind.add(i as usize) };
        match kind {
            k if k < 0 => true,  // MINVALUE
            k if k > 0 => false, // MAXVALUE
            _ => (**(*bounds).datums.add(i as usize)).value() as i64 <= at,
        }
    };
    let (mut lo, mut hi) = (-1i32, (*bounds).ndatums - 1);
    while lo < hi {
        let mid = (lo + hi + 1) / 2;
        if below(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let index = *(*bounds).indexes.add((lo + 1) as usize);
    let index = if index >= 0 { index } else { (*bounds).default_index };
    (index >= 0 && *(*desc).is_leaf.add(index as usize)).then(|| *(*desc).oids.add(index as usize))
}

/// Is `relid` partitioned by range on exactly the column `attnum`?
unsafe fn range_on(relid: pg_sys::Oid, attnum: i16) -> bool {
    let tuple = pg_sys::SearchSysCache1(pg_sys::SysCacheIdentifier::PARTRELID as i32, pg_sys::Datum::from(relid));
    if tuple.is_null() {
        return false;
    }
    // pg_partitioned_table: partrelid, partstrat, partnatts, partdefid, partattrs, ...
    let mut null = false;
    let strategy = pg_sys::SysCacheGetAttr(pg_sys::SysCacheIdentifier::PARTRELID as i32, tuple, 2, &mut null);
    let strategy_ok = !null && strategy.value() as u8 == pg_sys::PARTITION_STRATEGY_RANGE;
    let attrs = pg_sys::SysCacheGetAttr(pg_sys::SysCacheIdentifier::PARTRELID as i32, tuple, 5, &mut null);
    let attrs_ok = !null && {
        let v = attrs.cast_mut_ptr::<pg_sys::int2vector>();
        (*v).dim1 == 1 && (*v).values.as_slice(1)[0] == attnum
    };
    pg_sys::ReleaseSysCache(tuple);
    strategy_ok && attrs_ok
}

/// The oid of the relation `name` in schema `entitlements`, if both exist.
///
/// # Safety
/// Inside a transaction (catalog lookups).
pub unsafe fn lookup(name: &CStr) -> Option<pg_sys::Oid> {
    let nsp = pg_sys::get_namespace_oid(c"entitlements".as_ptr(), true);
    let oid = pg_sys::get_relname_relid(name.as_ptr(), nsp);
    (nsp != pg_sys::InvalidOid && oid != pg_sys::InvalidOid).then_some(oid)
}

/// The 0-based position of a live column, by name.
///
/// # Safety
/// `desc` is a valid tuple descriptor.
pub unsafe fn column(desc: pg_sys::TupleDesc, name: &CStr) -> Option<usize> {
    let natts = (*desc).natts as usize;
    (*desc)
        .attrs
        .as_slice(natts)
        .iter()
        .position(|a| !a.attisdropped && CStr::from_ptr(a.attname.data.as_ptr()) == name)
}

/// Every column of `tuple` as datums and null flags.
///
/// # Safety
/// `tuple` has the shape `desc` describes.
pub unsafe fn deform(tuple: pg_sys::HeapTuple, desc: pg_sys::TupleDesc) -> (Vec<pg_sys::Datum>, Vec<bool>) {
    let natts = (*desc).natts as usize;
    let mut values = vec![pg_sys::Datum::from(0usize); natts];
    let mut nulls = vec![true; natts];
    pg_sys::heap_deform_tuple(tuple, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
    (values, nulls)
}
