//! What a page answers when it cannot show what was asked: the status a browser and a test
//! can check, and words a person can act on. The database's own message is shown for what
//! the caller can fix (refused input, missing rights: the extension words those for people);
//! anything else is logged and shown as a general failure with its SQLSTATE.
use super::html;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

#[derive(Debug)]
pub struct PageError {
    pub status: StatusCode,
    pub title: &'static str,
    pub message: String,
}

impl PageError {
    pub fn new(status: StatusCode, title: &'static str, message: impl Into<String>) -> PageError {
        PageError { status, title, message: message.into() }
    }

    pub fn forbidden(message: impl Into<String>) -> PageError {
        PageError::new(StatusCode::FORBIDDEN, "Not allowed", message)
    }

    pub fn bad_request(message: impl Into<String>) -> PageError {
        PageError::new(StatusCode::BAD_REQUEST, "Cannot do that", message)
    }

    pub fn not_found(message: impl Into<String>) -> PageError {
        PageError::new(StatusCode::NOT_FOUND, "Not found", message)
    }
}

impl From<sqlx::Error> for PageError {
    fn from(e: sqlx::Error) -> PageError {
        let Some(db) = e.as_database_error() else {
            return match e {
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) => {
                    tracing::warn!(error = %e, "console: database unavailable");
                    PageError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Database unavailable",
                        "The database did not answer. Try again in a moment.",
                    )
                }
                // An answer this worker does not understand (a version mismatch): ours to fix.
                _ => {
                    tracing::error!(error = %e, "console: unexpected answer from the database");
                    PageError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "Something went wrong",
                        "The database's answer was not understood; the worker's log has the details.",
                    )
                }
            };
        };
        let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
        let message = db.message().to_owned();
        let (status, title) = match code.as_str() {
            "42501" | "PT403" => (StatusCode::FORBIDDEN, "Not allowed"),
            "PT429" => (StatusCode::TOO_MANY_REQUESTS, "Over the limit"),
            "55000" | "23505" => (StatusCode::CONFLICT, "Not possible now"),
            "40001" | "40P01" | "55P03" | "57014" => (StatusCode::SERVICE_UNAVAILABLE, "Busy"),
            c if c.starts_with("22") || c.starts_with("23") || c == "P0002" || c == "42704" => {
                (StatusCode::BAD_REQUEST, "Cannot do that")
            }
            _ => {
                tracing::error!(sqlstate = %code, error = %message, "console: database error");
                return PageError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong",
                    format!("The database failed (SQLSTATE {code}); the worker's log has the details."),
                );
            }
        };
        PageError::new(status, title, format!("{message} (SQLSTATE {code})"))
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let body = html::error_page(self.status, self.title, &self.message);
        (self.status, [(header::CACHE_CONTROL, "no-store")], body).into_response()
    }
}

pub type PageResult<T> = Result<T, PageError>;
