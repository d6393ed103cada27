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
            // Absent claims are not checked by default: require them, and honour nbf.
            v.set_required_spec_claims(&["exp", "aud", "sub"]);
            v.validate_nbf = true;
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
    use base64::Engine;
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
        let mut no_audience = claims.clone();
        no_audience.as_object_mut().unwrap().remove("aud");
        assert_eq!(v.verify(&token("project-secret", no_audience)).await, Err(Refused::Invalid), "no aud");
        let mut not_yet = claims.clone();
        not_yet["nbf"] = serde_json::json!(exp);
        assert_eq!(v.verify(&token("project-secret", not_yet)).await, Err(Refused::Invalid), "not valid before");
        let mut no_user = claims;
        no_user["sub"] = serde_json::json!("not-a-uuid");
        assert_eq!(v.verify(&token("project-secret", no_user)).await, Err(Refused::NoUser));
        assert_eq!(v.verify("not.a.token").await, Err(Refused::Invalid));
    }

    /// A P-256 key made for this test only (PKCS#8 DER), and its public half as a JWK.
    const EC_KEY: &str = "308187020100301306072a8648ce3d020106082a8648ce3d030107046d306b0201010420de784d1a31cf75403cb4e2a03482fb869325ff97397045e097d0aeaadd667ba8a144034200041e6544f0d218cf8d6d8a6977dab6b2faf06cf9362906b0254d57949435730e55478d2f3f4f7fe34a18600026cc3081c8e282865f8d0078acf125d76c01c8aa80";
    const EC_X: &str = "HmVE8NIYz41timl32ray-vBs-TYpBrAlTVeUlDVzDlU";
    const EC_Y: &str = "R40vP09_40oYYAAmzDCByOKChl-NAHis8SXXbAHIqoA";

    /// A JWKS served over HTTP (as Supabase serves it), counting how often it was fetched.
    async fn jwks_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let fetched = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = fetched.clone();
        let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "x": EC_X, "y": EC_Y, "kid": "k1", "alg": "ES256", "use": "sig"}]});
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let jwks = jwks.clone();
                async move { axum::Json(jwks) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, fetched)
    }

    fn es256(kid: &str, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        encode(&header, claims, &EncodingKey::from_ec_der(&hex::decode(EC_KEY).unwrap())).unwrap()
    }

    #[tokio::test]
    async fn es256_tokens_verify_against_the_projects_jwks_fetched_once() {
        let (url, fetched) = jwks_server().await;
        let mut c = config("unused");
        c.jwt_secret = None;
        c.jwks_url = Some(url);
        let v = Verifier::new(&c);
        let user = Uuid::new_v4();
        let exp = super::super::session::now_unix() + 600;
        let claims = serde_json::json!({"sub": user, "exp": exp, "aud": "authenticated"});
        assert_eq!(v.verify(&es256("k1", &claims)).await, Ok(Verified { user, expires: exp }));
        assert_eq!(v.verify(&es256("k1", &claims)).await, Ok(Verified { user, expires: exp }));
        assert_eq!(fetched.load(std::sync::atomic::Ordering::SeqCst), 1, "the key set is kept");
        assert_eq!(v.verify(&es256("unknown", &claims)).await, Err(Refused::Invalid), "a key id the set lacks");
        assert_eq!(fetched.load(std::sync::atomic::Ordering::SeqCst), 1, "and made-up key ids do not refetch at once");
        // An HS256 token when only the JWKS is configured: no secret to check it with.
        assert_eq!(v.verify(&token("anything", claims.clone())).await, Err(Refused::Invalid));
        // A token whose payload was changed after signing.
        let signed = es256("k1", &claims);
        let mut parts: Vec<&str> = signed.split('.').collect();
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::json!({"sub": Uuid::new_v4(), "exp": exp, "aud": "authenticated"}).to_string());
        parts[1] = &forged;
        assert_eq!(v.verify(&parts.join(".")).await, Err(Refused::Invalid));
    }

    #[tokio::test]
    async fn without_a_secret_or_keys_nothing_verifies() {
        let mut c = config("x");
        c.jwt_secret = None;
        assert_eq!(Verifier::new(&c).verify("a.b.c").await, Err(Refused::NotConfigured));
    }
}
