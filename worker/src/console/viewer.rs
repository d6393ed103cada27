//! Who is looking, and their transaction: every page reads and acts in one transaction that
//! runs as the console role (`authenticated` by default) with the signed-in user's claims,
//! exactly as PostgREST would run their request. RLS, tenant scoping, the admin checks and the
//! audit log's actor are the database's; the worker lends none of its own rights.
use super::error::{PageError, PageResult};
use super::session::{self, Session};
use crate::Context;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

/// A signed-in request. Without a valid session, pages redirect to the sign-in form (and
/// come back), other requests answer 401.
pub struct Viewer {
    pub session: Session,
    /// This session's CSRF token, for the forms a page renders.
    pub csrf: String,
}

pub struct SignInFirst {
    path: String,
    page: bool,
}

impl IntoResponse for SignInFirst {
    fn into_response(self) -> Response {
        if self.page {
            let next: String = url_escape(&self.path);
            Redirect::to(&format!("/sign-in?next={next}")).into_response()
        } else {
            PageError::new(StatusCode::UNAUTHORIZED, "Sign in first", "This needs a console session.").into_response()
        }
    }
}

/// Percent-encode everything but unreserved characters and `/`.
pub fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl FromRequestParts<Context> for Viewer {
    type Rejection = SignInFirst;

    async fn from_request_parts(parts: &mut Parts, ctx: &Context) -> Result<Self, Self::Rejection> {
        let key = &ctx.config.console.secret;
        match session::cookie(&parts.headers, session::COOKIE).and_then(|v| Session::decode(v, key)) {
            Some(session) => {
                let csrf = session.csrf(key);
                Ok(Viewer { session, csrf })
            }
            None => Err(SignInFirst {
                path: parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/admin".into()),
                page: parts.method == axum::http::Method::GET
                    && parts
                        .headers
                        .get(header::ACCEPT)
                        .and_then(|a| a.to_str().ok())
                        .is_none_or(|a| a.contains("text/html") || a.contains("*/*")),
            }),
        }
    }
}

/// What an admin may see: every tenant, or some.
#[derive(Debug, Clone, PartialEq)]
pub enum Scope {
    Global,
    Tenants(Vec<Uuid>),
}

impl Scope {
    /// The tenant a form acts for: the one chosen, when the admin administers it (global
    /// admins: any, or none for everyone's); a tenant admin who chose none acts for their only
    /// tenant. Anything else is refused, never swapped for another tenant.
    pub fn acting_tenant(&self, chosen: Option<Uuid>) -> PageResult<Option<Uuid>> {
        match (self, chosen) {
            (Scope::Global, c) => Ok(c),
            (Scope::Tenants(ts), Some(c)) if ts.contains(&c) => Ok(Some(c)),
            (Scope::Tenants(ts), None) if ts.len() == 1 => Ok(Some(ts[0])),
            (Scope::Tenants(_), None) => Err(PageError::bad_request("Choose the tenant to act for.")),
            (Scope::Tenants(_), Some(c)) => Err(PageError::forbidden(format!("You do not administer tenant {c}."))),
        }
    }

    /// The tenant revenue functions are asked about: none for a global admin (everything),
    /// the chosen one of a tenant admin's (the first when none was chosen).
    pub fn tenant(&self, chosen: Option<Uuid>) -> Option<Uuid> {
        match self {
            Scope::Global => chosen,
            Scope::Tenants(ts) => chosen.filter(|c| ts.contains(c)).or_else(|| ts.first().copied()),
        }
    }
}

impl Viewer {
    pub fn user(&self) -> Uuid {
        self.session.user
    }

    /// A transaction as this user (see `begin_as`).
    pub async fn begin(&self, ctx: &Context) -> PageResult<Transaction<'static, Postgres>> {
        begin_as(ctx, self.session.user, self.session.token).await
    }

    /// The admin scope of the user, read as the user (their own rows of entitlements.admins);
    /// 403 for someone who administers nothing.
    pub async fn scope(tx: &mut Transaction<'static, Postgres>) -> PageResult<Scope> {
        let (global, tenants): (bool, Vec<Uuid>) = sqlx::query_as(
            "select coalesce(bool_or(tenant_id is null), false),
                    coalesce(array_agg(tenant_id order by tenant_id) filter (where tenant_id is not null), '{}')
               from entitlements.admins where user_id = entitlements.current_user_id()",
        )
        .fetch_one(&mut **tx)
        .await?;
        match (global, tenants.is_empty()) {
            (true, _) => Ok(Scope::Global),
            (false, false) => Ok(Scope::Tenants(tenants)),
            (false, true) => Err(PageError::forbidden(
                "The console's admin pages are for entitlements admins. Your account page is at /account.",
            )),
        }
    }

    /// A form's CSRF token must be this session's.
    pub fn check_csrf(&self, ctx: &Context, given: &str) -> PageResult<()> {
        if self.session.csrf_matches(&ctx.config.console.secret, given) {
            Ok(())
        } else {
            tracing::warn!(user = %self.session.user, "console: a form came without this session's CSRF token");
            Err(PageError::forbidden(
                "This form is out of date or did not come from this console (CSRF token missing or wrong). \
                 Reload the page and try again.",
            ))
        }
    }
}

/// A transaction as `user`: the console role with their claims, as PostgREST would run their
/// request. A session made with an admin token (`token`) ends when the token was revoked or
/// expired (checked here, as the user, on every request).
pub async fn begin_as(ctx: &Context, user: Uuid, token: Option<Uuid>) -> PageResult<Transaction<'static, Postgres>> {
    let mut tx = ctx.pool.begin().await?;
    let claims = serde_json::json!({"sub": user, "role": ctx.config.console.role}).to_string();
    // A page gives up after a minute: the overview's twelve months of movements over a
    // hundred thousand customers take seconds (bench/README.md), nothing should take minutes.
    sqlx::query(
        "select set_config('role', $1, true), set_config('request.jwt.claims', $2, true),
                set_config('statement_timeout', '60s', true)",
    )
    .bind(&ctx.config.console.role)
    .bind(claims)
    .execute(&mut *tx)
    .await?;
    if let Some(token) = token {
        let active: bool = sqlx::query_scalar(
            "select exists (select 1 from entitlements.admin_tokens
                             where id = $1 and user_id = entitlements.current_user_id()
                               and revoked_at is null and expires_at > entitlements.now())",
        )
        .bind(token)
        .fetch_one(&mut *tx)
        .await?;
        if !active {
            return Err(PageError::new(
                StatusCode::UNAUTHORIZED,
                "Session ended",
                "The admin token of this session was revoked or has expired. Sign in again.",
            ));
        }
    }
    Ok(tx)
}
