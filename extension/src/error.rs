//! One error type for the extension. Every variant maps to a real SQLSTATE, so no
//! Rust failure reaches a user as XX000.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiError;

#[derive(Debug)]
pub enum Error {
    /// 22023: a value is out of the accepted set (unknown feature, malformed catalog).
    InvalidParameter { message: String, hint: Option<String> },
    /// 22004: a required argument is NULL.
    NullValue(String),
    /// 42501: the caller may not see or do this.
    InsufficientPrivilege(String),
    /// 22P02: text that should be a uuid is not one.
    InvalidText(String),
    /// XX000 is reserved for "cannot happen": SPI status codes outside the documented set.
    Spi(SpiError),
    /// The extension's own tables hold something the code cannot read (55000).
    CorruptState(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidParameter { message: message.into(), hint: None }
    }

    pub fn invalid_with_hint(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::InvalidParameter { message: message.into(), hint: Some(hint.into()) }
    }

    fn report(self) -> ErrorReport {
        use PgSqlErrorCode::*;
        let (code, message, hint) = match self {
            Error::InvalidParameter { message, hint } => (ERRCODE_INVALID_PARAMETER_VALUE, message, hint),
            Error::NullValue(m) => (ERRCODE_NULL_VALUE_NOT_ALLOWED, m, None),
            Error::InsufficientPrivilege(m) => (ERRCODE_INSUFFICIENT_PRIVILEGE, m, None),
            Error::InvalidText(m) => (ERRCODE_INVALID_TEXT_REPRESENTATION, m, None),
            Error::Spi(e) => (ERRCODE_INTERNAL_ERROR, format!("pg_entitlements: SPI failed: {e}"), None),
            Error::CorruptState(m) => (ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, m, None),
        };
        let report = ErrorReport::new(code, message, "pg_entitlements");
        match hint {
            Some(h) => report.set_hint(h),
            None => report,
        }
    }

    /// Raise as a PostgreSQL ERROR; unwinds (running Drop guards) then longjmps.
    pub fn raise(self) -> ! {
        self.report().report(PgLogLevel::ERROR);
        unreachable!("ERROR does not return")
    }
}

impl From<SpiError> for Error {
    fn from(e: SpiError) -> Self {
        Error::Spi(e)
    }
}

/// Unwrap or raise: the boundary between Rust results and SQL errors.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T> {
    fn or_raise(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) => e.raise(),
        }
    }
}
