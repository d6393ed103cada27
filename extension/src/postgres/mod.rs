//! Raw PostgreSQL internals, kept in one place: SPI statements with kept generic plans
//! (`spi`), relations and indexes opened behind guards that close them on drop, column
//! lookup and index insertion (`relation`), and the shape check that decides whether the
//! tables are still what the direct writes were written for (`shape`), and running as
//! another role (`run_as`).

pub mod relation;
pub mod shape;
pub mod spi;

use pgrx::pg_sys;

/// Run `f` as `role` (the extension owner, for reads around RLS), as SECURITY DEFINER would. Postgres also
/// restores the identity itself if an ERROR aborts the (sub)transaction.
pub fn run_as<R>(role: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    struct Restore(pg_sys::Oid, i32);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: restores exactly what GetUserIdAndSecContext returned.
            unsafe { pg_sys::SetUserIdAndSecContext(self.0, self.1) }
        }
    }
    let mut user = pg_sys::Oid::INVALID;
    let mut context = 0i32;
    // SAFETY: out-parameters are valid locals; `role` is an existing role.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(role, context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
    }
    let _restore = Restore(user, context);
    f()
}
