//! Supabase access tokens (JWTs), verified with the project's HS256 secret or its JWKS
//! (asymmetric keys: RS256, ES256). The worker trusts what it verified the way PostgREST
//! does: the user is the `sub`; what they may do is the database's business.
use crate::config::ConsoleConfig;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use uuid::Uuid;

/// A key set is fetched again after this long, or at once for a key id it lacks (at most
/// once per `REFETCH_AT_MOST`, so tokens naming made-up key ids cannot make the worker hammer
/// the auth server).
const JWKS_TTL: Duration = Duration::from_secs(600);
const REFETCH_AT_MOST: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
}

/// The verified user and when their token ends (unix seconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verified {
    pub user: Uuid,
    pub expires: u64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Refused {
    #[error("access tokens are not accepted here (no SUPABASE_JWT_SECRET or SUPABASE_JWKS_URL)")]
    NotConfigured,
    #[error("the access token does not verify")]
    Invalid,
    #[error("the access token has no user (sub)")]
    NoUser,
    #[error("the signing keys could not be fetched")]
    KeysUnavailable,
}

pub struct Verifier {
    secret: Option<DecodingKey>,
    jwks_url: Option<String>,
    http: reqwest::Client,
    keys: Mutex<Option<(JwkSet, Instant)>>,
}

impl Verifier {
    pub fn new(config: &ConsoleConfig) -> Verifier {
        Verifier {
            // An HMAC key of any length is accepted, so this cannot fail.
            secret: config.jwt_secret.as_ref().and_then(|s| DecodingKey::from_secret(s.expose().as_bytes()).ok()),
            jwks_url: config.jwks_url.clone(),
            http: reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap_or_default(),
            keys: Mutex::new(None),
        }
    }

    pub fn configured(&self) -> bool {
        self.secret.is_some() || self.jwks_url.is_some()
    }

    pub async fn verify(&self, token: &str) -> Result<Verified, Refused> {
        if !self.configured() {
            return Err(Refused::NotConfigured);
        }
        let header = decode_header(token).map_err(|_| Refused::Invalid)?;
        // Supabase issues tokens for the `authenticated` audience (and `anon` has no `sub`).
        let validation = |alg| {
            let mut v = Validation::new(alg);
            v.set_audience(&["authenticated"]);
            v.leeway = 30;
            v
        };
        let claims = match header.alg {
            Algorithm::HS256 => {
                let key = self.secret.as_ref().ok_or(Refused::Invalid)?;
                decode::<Claims>(token, key, &validation(Algorithm::HS256)).map_err(|_| Refused::Invalid)?.claims
            }
            alg @ (Algorithm::RS256 | Algorithm::ES256) => {
                let kid = header.kid.ok_or(Refused::Invalid)?;
                let key = self.key(&kid).await?;
                decode::<Claims>(token, &key, &validation(alg)).map_err(|_| Refused::Invalid)?.claims
            }
            _ => return Err(Refused::Invalid),
        };
        let user = Uuid::parse_str(&claims.sub).map_err(|_| Refused::NoUser)?;
        Ok(Verified { user, expires: claims.exp })
    }

    async fn key(&self, kid: &str) -> Result<DecodingKey, Refused> {
        let url = self.jwks_url.as_deref().ok_or(Refused::Invalid)?;
        let mut cached = self.keys.lock().await;
        let stale = match &*cached {
            None => true,
            Some((set, at)) => at.elapsed() > JWKS_TTL || (set.find(kid).is_none() && at.elapsed() > REFETCH_AT_MOST),
        };
        if stale {
            match self.fetch(url).await {
                Some(set) => *cached = Some((set, Instant::now())),
                None if cached.is_none() => return Err(Refused::KeysUnavailable),
                None => tracing::warn!("the JWKS could not be fetched again; using the keys fetched before"),
            }
        }
        let (set, _) = cached.as_ref().ok_or(Refused::KeysUnavailable)?;
        let jwk = set.find(kid).ok_or(Refused::Invalid)?;
        DecodingKey::from_jwk(jwk).map_err(|_| Refused::Invalid)
    }

    async fn fetch(&self, url: &str) -> Option<JwkSet> {
        let answer = self.http.get(url).send().await.ok()?.error_for_status().ok()?;
        answer.json::<JwkSet>().await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn config(secret: &str) -> ConsoleConfig {
        ConsoleConfig {
            enabled: true,
            secret: Secret::new("s".repeat(32)),
            secret_generated: false,
            role: "authenticated".into(),
            public_url: "http://127.0.0.1:8080".into(),
            jwt_secret: Some(Secret::new(secret)),
            jwks_url: None,
            session: Duration::from_secs(3600),
            sign_in_per_minute: 10,
        }
    }

    fn token(secret: &str, claims: serde_json::Value) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes()).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn hs256_tokens_verify_with_the_project_secret_only() {
        let v = Verifier::new(&config("project-secret"));
        let user = Uuid::new_v4();
        let exp = super::super::session::now_unix() + 600;
        let claims = serde_json::json!({"sub": user, "exp": exp, "aud": "authenticated", "role": "authenticated"});
        assert_eq!(v.verify(&token("project-secret", claims.clone())).await, Ok(Verified { user, expires: exp }));
        assert_eq!(v.verify(&token("another-secret", claims.clone())).await, Err(Refused::Invalid));
        let mut expired = claims.clone();
        expired["exp"] = serde_json::json!(exp - 3600);
        assert_eq!(v.verify(&token("project-secret", expired)).await, Err(Refused::Invalid));
        let mut anon = claims.clone();
        anon["aud"] = serde_json::json!("anon");
        assert_eq!(v.verify(&token("project-secret", anon)).await, Err(Refused::Invalid));
        let mut no_user = claims;
        no_user["sub"] = serde_json::json!("not-a-uuid");
        assert_eq!(v.verify(&token("project-secret", no_user)).await, Err(Refused::NoUser));
        assert_eq!(v.verify("not.a.token").await, Err(Refused::Invalid));
    }

    #[tokio::test]
    async fn without_a_secret_or_keys_nothing_verifies() {
        let mut c = config("x");
        c.jwt_secret = None;
        assert_eq!(Verifier::new(&c).verify("a.b.c").await, Err(Refused::NotConfigured));
    }
}
