//! Signing in and out. Two ways in: an admin token made in SQL
//! (`entitlements.create_admin_token`, checked by `entitlements.admin_token_sign_in` with the
//! worker's own role, as PostgREST's authenticator checks a JWT), or a Supabase access token
//! (verified here). Attempts are limited per client address; every refusal is counted in the
//! database (`sign_in_refused`) for the `sign_in_failures` security rule.
use super::error::{PageError, PageResult};
use super::html::{self, Frame};
use super::session::{self, Session};
use super::viewer::Viewer;
use crate::listener::ClientAddr;
use crate::Context;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use maud::html;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use uuid::Uuid;

const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most; past it, windows that ended are forgotten first.
const MAX_TRACKED: usize = 10_000;

/// Sign-in attempts per client per minute (a fixed window per client; an IPv6 client is its
/// /64, which one host usually holds whole).
pub struct Limiter {
    per_minute: u32,
    seen: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

#[derive(Debug, PartialEq)]
pub enum Verdict {
    Allowed,
    /// Over the limit; `first` for the first refusal of this window (the one counted in the
    /// database, so a flood does not become a write per request).
    Limited {
        first: bool,
    },
}

/// The key an address is limited under.
fn client_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
        IpAddr::V6(v6) => IpAddr::V4(v6.to_ipv4_mapped().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED)),
        v4 => v4,
    }
}

impl Limiter {
    pub fn new(per_minute: u32) -> Limiter {
        Limiter { per_minute, seen: Mutex::new(HashMap::new()) }
    }

    /// Count an attempt of `addr`.
    pub fn check(&self, addr: IpAddr) -> Verdict {
        let key = client_key(addr);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if seen.len() >= MAX_TRACKED && !seen.contains_key(&key) {
            seen.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if seen.len() >= MAX_TRACKED {
                // Every slot is a live window (a flood from very many addresses): new ones
                // wait for a slot, known ones keep their own count.
                return Verdict::Limited { first: false };
            }
        }
        let entry = seen.entry(key).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        match entry.1.checked_sub(self.per_minute) {
            None | Some(0) => Verdict::Allowed,
            Some(over) => Verdict::Limited { first: over == 1 },
        }
    }
}

#[derive(Deserialize)]
pub struct Next {
    next: Option<String>,
}

/// Only the console's own pages: never an absolute URL or `//host` (no open redirect).
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n)
            if (n.starts_with("/admin") || n.starts_with("/account"))
                && !n.contains("//")
                && n.len() <= 2000
                // Printable ASCII only: it goes into a Location header as it is.
                && n.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') =>
        {
            n
        }
        _ => "/admin",
    }
}

fn form(ctx: &Context, next: &str, nonce: &str, message: Option<&str>) -> maud::Markup {
    let csrf = session::pre_csrf(&ctx.config.console.secret, nonce);
    let jwt = ctx.console.verifier.configured();
    html! {
        @if let Some(m) = message { p role="alert" class="error" { (m) } }
        form method="post" action="/sign-in" class="action" id="sign-in-token" {
            input type="hidden" name="csrf" value=(csrf);
            input type="hidden" name="next" value=(next);
            fieldset {
                legend { "Admin token" }
                label for="token" { "Token (from entitlements.create_admin_token)"
                    input type="password" id="token" name="token" autocomplete="off" required size="50";
                }
                button type="submit" { "Sign in" }
            }
        }
        @if jwt {
            form method="post" action="/sign-in" class="action" id="sign-in-access-token" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="next" value=(next);
                fieldset {
                    legend { "Supabase session" }
                    label for="access_token" { "Access token (a signed-in user's JWT)"
                        input type="password" id="access_token" name="access_token" autocomplete="off" required size="50";
                    }
                    button type="submit" { "Sign in" }
                }
            }
        }
    }
}

fn render_form(ctx: &Context, next: &str, status: StatusCode, message: Option<&str>) -> Response {
    let nonce = session::random_hex();
    let secure = ctx.config.console.secure_cookies();
    let mut response = html::page(
        Frame { title: "Sign in", section: None, csrf: None, admin: false },
        form(ctx, next, &nonce, message),
    );
    *response.status_mut() = status;
    if let Ok(v) = session::set_cookie(session::PRE_COOKIE, &nonce, 3600, secure).parse() {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

pub async fn show(State(ctx): State<Context>, Query(q): Query<Next>) -> Response {
    render_form(&ctx, safe_next(q.next.as_deref()), StatusCode::OK, None)
}

#[derive(Deserialize)]
pub struct Attempt {
    #[serde(default)]
    csrf: String,
    next: Option<String>,
    token: Option<String>,
    access_token: Option<String>,
}

pub async fn submit(
    State(ctx): State<Context>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    Form(attempt): Form<Attempt>,
) -> Response {
    let addr = client.map(|c| c.0 .0).unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let next = safe_next(attempt.next.as_deref()).to_owned();
    if let Verdict::Limited { first } = ctx.console.limiter.check(addr) {
        if first {
            refused(&ctx, addr, "rate_limited").await;
        }
        let mut r = render_form(
            &ctx,
            &next,
            StatusCode::TOO_MANY_REQUESTS,
            Some("Too many sign-in attempts from this address. Wait a minute and try again."),
        );
        r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("60"));
        return r;
    }
    let key = &ctx.config.console.secret;
    let nonce = session::cookie(&headers, session::PRE_COOKIE).unwrap_or("");
    if !session::pre_csrf_matches(key, nonce, &attempt.csrf) {
        refused(&ctx, addr, "csrf").await;
        return render_form(
            &ctx,
            &next,
            StatusCode::FORBIDDEN,
            Some("This sign-in form is out of date or did not come from this console. Try again."),
        );
    }
    let ttl = ctx.config.console.session.as_secs();
    let now = session::now_unix();
    let outcome: Result<Session, &'static str> = match (attempt.token.as_deref(), attempt.access_token.as_deref()) {
        (Some(token), _) if !token.trim().is_empty() => match admin_token(&ctx, token.trim()).await {
            Ok(Some((id, user, expires))) => Ok(Session::new(user, Some(id), expires.min(now + ttl))),
            Ok(None) => Err("admin_token"),
            Err(e) => return e.into_response(),
        },
        (_, Some(jwt)) if !jwt.trim().is_empty() => match ctx.console.verifier.verify(jwt.trim()).await {
            Ok(v) => Ok(Session::new(v.user, None, v.expires.min(now + ttl))),
            Err(super::access_token::Refused::KeysUnavailable) => {
                return PageError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Cannot check access tokens",
                    "The signing keys (SUPABASE_JWKS_URL) could not be fetched. Try again later.",
                )
                .into_response()
            }
            Err(_) => Err("access_token"),
        },
        _ => Err("empty"),
    };
    match outcome {
        Ok(session) => {
            tracing::info!(user = %session.user, admin_token = ?session.token, "console: signed in");
            let max_age = session.expires.saturating_sub(now);
            let cookie = session::set_cookie(
                session::COOKIE,
                &session.encode(key),
                max_age,
                ctx.config.console.secure_cookies(),
            );
            let clear = session::set_cookie(session::PRE_COOKIE, "", 0, ctx.config.console.secure_cookies());
            let mut r = Redirect::to(&next).into_response();
            for c in [cookie, clear] {
                if let Ok(v) = c.parse() {
                    r.headers_mut().append(header::SET_COOKIE, v);
                }
            }
            r
        }
        Err(why) => {
            refused(&ctx, addr, why).await;
            render_form(
                &ctx,
                &next,
                StatusCode::UNAUTHORIZED,
                Some("That did not sign you in: the token is unknown, expired or revoked."),
            )
        }
    }
}

/// The token's id, user and expiry (unix seconds) when it is active.
async fn admin_token(ctx: &Context, token: &str) -> PageResult<Option<(Uuid, Uuid, u64)>> {
    let row: Option<(Uuid, Uuid, f64)> = sqlx::query_as(
        "select token_id, user_id, extract(epoch from expires_at)::float8 from entitlements.admin_token_sign_in($1)",
    )
    .bind(token)
    .fetch_optional(&ctx.pool)
    .await?;
    Ok(row.map(|(id, user, expires)| (id, user, expires.max(0.0) as u64)))
}

/// Count a refused sign-in for the security rules; a failure to count is logged, never shown.
async fn refused(ctx: &Context, addr: IpAddr, why: &str) {
    tracing::warn!(client = %addr, reason = why, "console: sign-in refused");
    let counted = sqlx::query("select entitlements.record_signal('sign_in_refused', $1, $2)")
        .bind(addr.to_string())
        .bind(why)
        .execute(&ctx.pool)
        .await;
    if let Err(e) = counted {
        tracing::warn!(error = %crate::Error::from(e), "console: could not count a refused sign-in");
    }
}

#[derive(Deserialize)]
pub struct SignOut {
    #[serde(default)]
    csrf: String,
}

pub async fn sign_out(State(ctx): State<Context>, viewer: Viewer, Form(form): Form<SignOut>) -> PageResult<Response> {
    viewer.check_csrf(&ctx, &form.csrf)?;
    let clear = session::set_cookie(session::COOKIE, "", 0, ctx.config.console.secure_cookies());
    let mut r = Redirect::to("/sign-in").into_response();
    if let Ok(v) = clear.parse() {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_per_address_and_per_minute() {
        let l = Limiter::new(3);
        let a = IpAddr::from([10, 0, 0, 1]);
        let b = IpAddr::from([10, 0, 0, 2]);
        assert!((0..3).all(|_| l.check(a) == Verdict::Allowed));
        assert_eq!(l.check(a), Verdict::Limited { first: true }, "the fourth in a minute");
        assert_eq!(l.check(a), Verdict::Limited { first: false }, "counted once");
        assert_eq!(l.check(b), Verdict::Allowed, "another address is not held back");
    }

    #[test]
    fn an_ipv6_client_is_its_64() {
        let l = Limiter::new(1);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(l.check(a), Verdict::Allowed);
        assert_eq!(l.check(b), Verdict::Limited { first: true }, "the same /64");
        assert_eq!(l.check(c), Verdict::Allowed, "another /64");
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        assert_eq!(client_key(mapped), IpAddr::from([10, 0, 0, 7]));
    }

    #[test]
    fn next_stays_in_the_console() {
        assert_eq!(safe_next(Some("/admin/customers?q=x")), "/admin/customers?q=x");
        assert_eq!(safe_next(Some("/account")), "/account");
        for bad in [
            "https://evil.example",
            "//evil.example",
            "/admin//evil",
            "/\\evil",
            "/other",
            "/admin\u{1}",
            "/admin\u{7f}",
            "/admin x",
        ] {
            assert_eq!(safe_next(Some(bad)), "/admin", "{bad}");
        }
    }
}
