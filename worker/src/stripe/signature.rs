//! `Stripe-Signature` verification on the raw body: `t=<unix>,v1=<hex hmac>[,v1=...]`, where
//! each `v1` is HMAC-SHA256 of `"{t}.{body}"` keyed with an endpoint secret. Any secret we
//! hold may match any `v1`, so a secret can be rolled (Stripe signs with old and new while
//! both are live) and several endpoints can share one worker.
//!
//! Not async-stripe-webhook's `Webhook::construct_event` (1.0.0-rc.10), which would lose:
//! - the refusal reasons: a header without `t` or without any `v1` and a signature that
//!   does not match are both `BadSignature`, so `malformed_signature` and `bad_signature`
//!   (the metric's label, the 400's `reason`) could not be told apart;
//! - several secrets: it takes one, so a roll would parse the header once per secret;
//! - the intake's speed and tolerance of any event: on success it decodes the whole event
//!   into its typed structs (and warns on every event whose `api_version` is not the SDK's),
//!   while the worker stores the raw body for the extension; an event of a shape the SDK
//!   does not model would come back as a parse error after a good signature.
//!
//! The scheme is the same: a unit test below checks `sign` against its `generate_test_header`.
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Stripe's own libraries default to five minutes.
pub const TOLERANCE_SECONDS: i64 = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `Stripe-Signature` header.
    Missing,
    /// A header without a timestamp or without any `v1`.
    Malformed,
    /// The timestamp is further than the tolerance from now (a replay, or a wrong clock).
    Stale,
    /// No `v1` matches any of our secrets.
    Mismatch,
}

impl Refusal {
    /// The `reason` label of `entitlements_webhooks_refused_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Missing => "missing_signature",
            Refusal::Malformed => "malformed_signature",
            Refusal::Stale => "stale",
            Refusal::Mismatch => "bad_signature",
        }
    }
}

/// The endpoint secrets from `STRIPE_WEBHOOK_SECRET`: one or several, comma-separated.
pub fn parse_secrets(value: &str) -> Vec<Vec<u8>> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.as_bytes().to_vec()).collect()
}

/// Verify a delivery; `now` in Unix seconds. Returns the signed timestamp.
pub fn verify(header: Option<&str>, body: &[u8], secrets: &[Vec<u8>], now: i64) -> Result<i64, Refusal> {
    let header = header.ok_or(Refusal::Missing)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let Some((key, value)) = part.trim().split_once('=') else { return Err(Refusal::Malformed) };
        match key {
            "t" if timestamp.is_none() => timestamp = Some(value.parse::<i64>().map_err(|_| Refusal::Malformed)?),
            "t" => return Err(Refusal::Malformed),
            // A v1 that is not hex cannot match; other schemes (v0 is Stripe's test scheme) are ignored.
            "v1" => signatures.extend(hex::decode(value).ok().filter(|s| s.len() == 32)),
            _ => {}
        }
    }
    let t = timestamp.ok_or(Refusal::Malformed)?;
    if signatures.is_empty() {
        return Err(Refusal::Malformed);
    }
    if (now - t).abs() > TOLERANCE_SECONDS {
        return Err(Refusal::Stale);
    }
    for secret in secrets {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        for sig in &signatures {
            // Constant-time comparison.
            if mac.clone().verify_slice(sig).is_ok() {
                return Ok(t);
            }
        }
    }
    Err(Refusal::Mismatch)
}

/// The header Stripe would send for `body` at `t` (tests, benchmarks, and the docs' curl example).
pub fn sign(secret: &[u8], t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn accepts_any_matching_v1_from_any_secret() {
        let secrets = parse_secrets("whsec_old, whsec_new");
        let body = br#"{"id":"evt_1"}"#;
        let good = sign(b"whsec_new", NOW, body);
        let other = sign(b"whsec_unrelated", NOW, body);
        let both = format!("{},{}", other, good.split_once(',').unwrap().1);
        assert_eq!(verify(Some(&good), body, &secrets, NOW), Ok(NOW));
        assert_eq!(verify(Some(&both), body, &secrets, NOW + 10), Ok(NOW));
        assert_eq!(verify(Some(&other), body, &secrets, NOW), Err(Refusal::Mismatch));
    }

    #[test]
    fn signs_as_async_stripe_does() {
        let body = r#"{"id":"evt_1","object":"event"}"#;
        let theirs = stripe_webhook::Webhook::generate_test_header(body, "whsec_a", Some(NOW));
        assert_eq!(sign(b"whsec_a", NOW, body.as_bytes()), theirs);
        assert_eq!(verify(Some(&theirs), body.as_bytes(), &parse_secrets("whsec_a"), NOW), Ok(NOW));
    }

    #[test]
    fn refuses_tampered_stale_and_malformed() {
        let secrets = parse_secrets("whsec_a");
        let body = br#"{"id":"evt_1"}"#;
        let h = sign(b"whsec_a", NOW, body);
        assert_eq!(verify(Some(&h), br#"{"id":"evt_2"}"#, &secrets, NOW), Err(Refusal::Mismatch));
        assert_eq!(verify(Some(&h), body, &secrets, NOW + 301), Err(Refusal::Stale));
        assert_eq!(verify(Some(&h), body, &secrets, NOW - 301), Err(Refusal::Stale));
        assert_eq!(verify(Some(&h), body, &secrets, NOW + 300), Ok(NOW));
        assert_eq!(verify(None, body, &secrets, NOW), Err(Refusal::Missing));
        assert_eq!(verify(Some("v1=00"), body, &secrets, NOW), Err(Refusal::Malformed));
        assert_eq!(verify(Some(&format!("t={NOW}")), body, &secrets, NOW), Err(Refusal::Malformed));
        assert_eq!(verify(Some("t=abc,v1=00"), body, &secrets, NOW), Err(Refusal::Malformed));
        assert_eq!(
            verify(Some(&format!("t={NOW},t={NOW},{}", &h[h.find("v1").unwrap()..])), body, &secrets, NOW),
            Err(Refusal::Malformed)
        );
    }
}
