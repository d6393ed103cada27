//! Console sessions: a cookie the worker signs (HMAC-SHA256 with the console secret), so any
//! replica with the same secret can read it and nothing is stored per session. It names the
//! user, how they signed in (an admin token, whose row is checked on every request so that
//! revoking it ends the session, or a Supabase access token, whose expiry bounds it), and a
//! nonce from which the session's CSRF token is derived.
use crate::config::Secret;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::time::{SystemTime, UNIX_EPOCH};
use uuid::Uuid;

/// The session cookie. `__Host-` would pin it to the host and path `/`, but browsers accept
/// that prefix only over TLS, so the name is plain and the attributes say the same.
pub const COOKIE: &str = "entitlements_session";
/// The sign-in form's own CSRF cookie (double submit), before there is a session.
pub const PRE_COOKIE: &str = "entitlements_sign_in";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Session {
    /// The signed-in user (the `sub` their actions run with).
    #[serde(rename = "u")]
    pub user: Uuid,
    /// The admin token it came from; None for a Supabase access token.
    #[serde(rename = "t")]
    pub token: Option<Uuid>,
    /// Unix seconds after which the cookie is refused.
    #[serde(rename = "e")]
    pub expires: u64,
    /// Random, per sign-in: the CSRF token is derived from it.
    #[serde(rename = "n")]
    pub nonce: String,
}

pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// 244 random bits, hex.
pub fn random_hex() -> String {
    format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

fn mac(key: &Secret, purpose: &str, data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.expose().as_bytes()).expect("HMAC takes keys of any length");
    mac.update(purpose.as_bytes());
    mac.update(b"\0");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// Equal in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Session {
    pub fn new(user: Uuid, token: Option<Uuid>, expires: u64) -> Session {
        Session { user, token, expires, nonce: random_hex() }
    }

    /// `payload.signature`, both base64url.
    pub fn encode(&self, key: &Secret) -> String {
        let payload = serde_json::to_vec(self).expect("a session serializes");
        let signature = mac(key, "session", &payload);
        format!("{}.{}", URL_SAFE_NO_PAD.encode(&payload), URL_SAFE_NO_PAD.encode(signature))
    }

    /// The session when the signature holds and it has not expired.
    pub fn decode(value: &str, key: &Secret) -> Option<Session> {
        let (payload, signature) = value.split_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        if !same(&signature, &mac(key, "session", &payload)) {
            return None;
        }
        let session: Session = serde_json::from_slice(&payload).ok()?;
        (session.expires > now_unix()).then_some(session)
    }

    /// The CSRF token every form of this session carries.
    pub fn csrf(&self, key: &Secret) -> String {
        URL_SAFE_NO_PAD.encode(mac(key, "csrf", self.nonce.as_bytes()))
    }

    pub fn csrf_matches(&self, key: &Secret, given: &str) -> bool {
        same(self.csrf(key).as_bytes(), given.as_bytes())
    }
}

/// The sign-in form's token for the nonce in its cookie.
pub fn pre_csrf(key: &Secret, nonce: &str) -> String {
    URL_SAFE_NO_PAD.encode(mac(key, "sign-in", nonce.as_bytes()))
}

pub fn pre_csrf_matches(key: &Secret, nonce: &str, given: &str) -> bool {
    !nonce.is_empty() && same(pre_csrf(key, nonce).as_bytes(), given.as_bytes())
}

/// A cookie's value from the request's Cookie headers.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A Set-Cookie value: HttpOnly, SameSite=Strict, path /, Secure over TLS; `max_age` 0 clears.
pub fn set_cookie(name: &str, value: &str, max_age: u64, secure: bool) -> String {
    format!(
        "{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Secret {
        Secret::new("k".repeat(32))
    }

    #[test]
    fn a_session_round_trips_and_a_changed_byte_is_refused() {
        let s = Session::new(Uuid::new_v4(), Some(Uuid::new_v4()), now_unix() + 60);
        let encoded = s.encode(&key());
        assert_eq!(Session::decode(&encoded, &key()), Some(s.clone()));
        assert_eq!(Session::decode(&encoded, &Secret::new("x".repeat(32))), None, "another key");
        let (payload, signature) = encoded.split_once('.').unwrap();
        let mut forged = serde_json::to_value(&s).unwrap();
        forged["u"] = serde_json::json!(Uuid::new_v4());
        let forged = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        assert_eq!(Session::decode(&format!("{forged}.{signature}"), &key()), None, "another user, old signature");
        assert_eq!(Session::decode(payload, &key()), None, "no signature");
    }

    #[test]
    fn an_expired_session_is_refused() {
        let s = Session::new(Uuid::new_v4(), None, now_unix() - 1);
        assert_eq!(Session::decode(&s.encode(&key()), &key()), None);
    }

    #[test]
    fn csrf_tokens_belong_to_their_session() {
        let a = Session::new(Uuid::new_v4(), None, now_unix() + 60);
        let b = Session::new(a.user, None, now_unix() + 60);
        assert!(a.csrf_matches(&key(), &a.csrf(&key())));
        assert!(!a.csrf_matches(&key(), &b.csrf(&key())), "another session of the same user");
        assert!(!a.csrf_matches(&key(), ""));
        assert!(!pre_csrf_matches(&key(), "", &pre_csrf(&key(), "")), "no nonce, no match");
    }

    #[test]
    fn cookies_are_http_only_strict_and_secure_over_tls() {
        let plain = set_cookie(COOKIE, "v", 60, false);
        assert_eq!(plain, "entitlements_session=v; Path=/; Max-Age=60; HttpOnly; SameSite=Strict");
        assert!(set_cookie(COOKIE, "v", 60, true).ends_with("; Secure"));
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = axum::http::HeaderMap::new();
        h.append(axum::http::header::COOKIE, "a=1; entitlements_session=xyz.abc".parse().unwrap());
        assert_eq!(cookie(&h, COOKIE), Some("xyz.abc"));
        assert_eq!(cookie(&h, "b"), None);
    }
}
