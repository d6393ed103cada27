//! The extension's own SQL statements, prepared once per backend, kept, and always run
//! with their generic plan.
//!
//! Why not pgrx's prepared statements: PostgreSQL plans a parameterized statement again
//! for each of its first executions and keeps doing so whenever the custom plan looks
//! cheaper, which for these index lookups it always does; re-planning cost more than
//! running them. `CURSOR_OPT_GENERIC_PLAN` plans once. Callers hold an SPI connection
//! (`Spi::connect`) while they run statements and read rows.

use crate::error::{Error, Result};
use pgrx::pg_sys;
use pgrx::{FromDatum, IntoDatum};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CString;

thread_local! {
    static KEPT: RefCell<HashMap<&'static str, pg_sys::SPIPlanPtr>> = RefCell::new(HashMap::new());
}

/// A statement and the types of its parameters.
pub struct Statement {
    pub sql: &'static str,
    pub args: &'static [pg_sys::Oid],
}

fn plan(st: &Statement) -> Result<pg_sys::SPIPlanPtr> {
    if let Some(p) = KEPT.with_borrow(|k| k.get(st.sql).copied()) {
        return Ok(p);
    }
    let sql = CString::new(st.sql).expect("statements are ours and contain no NUL");
    // SAFETY: inside an SPI connection; argument types outlive the call (they are 'static).
    let p = unsafe {
        pg_sys::SPI_prepare_cursor(
            sql.as_ptr(),
            st.args.len() as i32,
            st.args.as_ptr().cast_mut(),
            pg_sys::CURSOR_OPT_GENERIC_PLAN as i32,
        )
    };
    // SAFETY: p comes from SPI_prepare_cursor; SPI_keepplan moves it out of the SPI context.
    if p.is_null() || unsafe { pg_sys::SPI_keepplan(p) } != 0 {
        return Err(Error::CorruptState(format!("pg_entitlements: cannot prepare {}", st.sql.trim())));
    }
    KEPT.with_borrow_mut(|k| k.insert(st.sql, p));
    Ok(p)
}

/// What one execution returned: the rows of a SELECT or of RETURNING.
pub struct Rows {
    table: *mut pg_sys::SPITupleTable,
    len: usize,
}

impl Rows {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Column `col` (1-based) of row `row` (0-based); None for NULL.
    pub fn get<T: FromDatum>(&self, row: usize, col: i32) -> Option<T> {
        assert!(row < self.len, "row {row} of {}", self.len);
        // SAFETY: table is SPI_tuptable of the execution that made these Rows, still alive
        // inside the caller's SPI connection; row is in range; T matches the column type
        // by construction of the statement.
        unsafe {
            let t = &*self.table;
            let tuple = *t.vals.add(row);
            let mut is_null = false;
            let datum = pg_sys::SPI_getbinval(tuple, t.tupdesc, col, &mut is_null);
            T::from_datum(datum, is_null)
        }
    }
}

/// Run a statement. `read_only` statements see the snapshot of the calling statement,
/// others take a new one and may write, as SPI defines.
pub fn run(st: &Statement, args: Vec<Option<pg_sys::Datum>>, read_only: bool) -> Result<Rows> {
    assert_eq!(args.len(), st.args.len(), "arguments of {}", st.sql);
    let p = plan(st)?;
    let nulls: Vec<std::os::raw::c_char> = args.iter().map(|a| if a.is_some() { b' ' } else { b'n' } as _).collect();
    let mut values: Vec<pg_sys::Datum> = args.into_iter().map(|a| a.unwrap_or(pg_sys::Datum::from(0usize))).collect();
    // SAFETY: plan is kept and valid for this backend; values and nulls have one entry
    // per declared argument.
    let rc = unsafe { pg_sys::SPI_execute_plan(p, values.as_mut_ptr(), nulls.as_ptr(), read_only, 0) };
    if rc < 0 {
        return Err(Error::CorruptState(format!("pg_entitlements: SPI error {rc} in {}", st.sql.trim())));
    }
    // SAFETY: plain reads of SPI's globals right after the execution set them.
    let (table, len) = unsafe { (pg_sys::SPI_tuptable, pg_sys::SPI_processed as usize) };
    Ok(Rows { table, len: if table.is_null() { 0 } else { len } })
}

/// Shorthand for an argument.
pub fn arg<T: IntoDatum>(v: T) -> Option<pg_sys::Datum> {
    v.into_datum()
}
