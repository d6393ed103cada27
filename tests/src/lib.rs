//! The fixtures every integration test in tests/tests uses (and the webhook load generator in
//! tests/examples): one place for the cluster, the worker process, localstripe and Stripe
//! payloads, so a test file says only what it tests.
//!
//! - [`TestDb`]: a fresh database per test in the cluster at ENTITLEMENTS_TEST_ADMIN_URL
//!   (`it_<test>_<pid>`, so runs sharing a cluster never meet), with the extension created and
//!   the demo catalog (examples/catalog.json) applied; dropped when the test passes, kept after a
//!   failure.
//! - [`Worker`]: `entitlements-worker` as a child process with a clean environment: spawned on a
//!   free port, ready once /healthz answers, its stderr captured, stopped with SIGTERM.
//! - [`LocalStripe`]: PyPI localstripe on a free port, ready once it answers.
//! - [`stripe`]: events and subscriptions as Stripe shapes them, and `Stripe-Signature`
//!   computed here (hmac/sha2), independently of the worker's code.
//! - [`FakeHttp`]: a scripted HTTP/1.1 server that records what it was asked.
//! - [`KubeFake`]: a fake Kubernetes API server (and controllers) on a real socket.
//! - [`SmtpServer`]: PyPI aiosmtpd on a free port, every message it is given parsed and kept.
//! - [`WebhookReceiver`]: an app's webhook endpoint that verifies Standard Webhooks signatures
//!   (hmac/sha2/base64 here, independently of the worker) and answers as scripted.
//! - [`Replica`]: a streaming hot standby of the test cluster (pg_basebackup), on a free port.
//! - [`browser::Browser`]: headless chromium through chromium-driver (fantoccini), screenshots
//!   in tests/screenshots/.
//! - [`eventually`], [`TestDb::wait_until`], [`race`]: waiting for a condition with a bound,
//!   never a fixed sleep; sessions that start racing together.
pub mod browser;
mod db;
mod http;
pub mod kube_fake;
mod localstripe;
mod replica;
mod smtp;
pub mod stripe;
mod wait;
pub mod webhooks;
mod worker;

pub use db::{admin_url, demo_catalog, has_feature, sqlstate, subscribe, TestDb, DEMO_CATALOG};
pub use http::{free_addr, free_port, get_json, http_get, FakeHttp, Request};
pub use kube_fake::{Calls, Fault, FaultKind, FieldManager, KubeFake, RequestRecord};
pub use localstripe::LocalStripe;
pub use replica::Replica;
pub use smtp::{Message, SmtpServer};
pub use wait::{eventually, race, WAIT};
pub use webhooks::{Answer, Received, WebhookReceiver};
pub use worker::{sample, worker_bin, worker_command, Worker, WORKER_SETTINGS};
