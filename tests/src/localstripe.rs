//! PyPI localstripe (installed by scripts/setup.sh): a stateful Stripe-compatible API server.
use crate::http::free_port;
use crate::wait::{eventually, WAIT};
use crate::worker::collect;
use serde_json::Value;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use tokio::process::{Child, Command};
use uuid::Uuid;

/// localstripe on a free port with no data yet (`--from-scratch`); killed when dropped. It only
/// speaks the pre-2025 API shape: periods on the subscription, `plan` on the items.
pub struct LocalStripe {
    _child: Child,
    /// `http://127.0.0.1:PORT`, for STRIPE_API_BASE.
    pub base: String,
    key: String,
    http: reqwest::Client,
    log: Arc<Mutex<String>>,
}

impl LocalStripe {
    /// Start it (LOCALSTRIPE_BIN, else `tests/localstripe/serve.py`: localstripe with Checkout
    /// and Billing Portal sessions added) and wait until it answers `GET /v1/customers` with
    /// `key`, the key the fixture's own calls use.
    pub async fn start(key: &str) -> LocalStripe {
        let port = free_port();
        let (bin, mut args) = match std::env::var("LOCALSTRIPE_BIN") {
            Ok(bin) => (bin, vec![]),
            Err(_) => {
                ("python3".to_owned(), vec![concat!(env!("CARGO_MANIFEST_DIR"), "/localstripe/serve.py").to_owned()])
            }
        };
        args.extend(["--port".to_owned(), port.to_string(), "--from-scratch".to_owned()]);
        let mut child = Command::new(bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("localstripe is installed (scripts/setup.sh: pip install localstripe)");
        let log = collect(child.stderr.take().unwrap());
        let ls = LocalStripe {
            _child: child,
            base: format!("http://127.0.0.1:{port}"),
            key: key.to_owned(),
            http: reqwest::Client::new(),
            log,
        };
        let what = format!("localstripe to answer on port {port}");
        eventually(WAIT, &what, || async {
            let r = ls.http.get(format!("{}/v1/customers", ls.base)).bearer_auth(&ls.key).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
        ls
    }

    /// What localstripe logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// POST a form; the call must succeed.
    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> Value {
        let r = self.http.post(format!("{}{path}", self.base)).bearer_auth(&self.key).form(form).send().await.unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "localstripe POST {path}: {status} {body}");
        body
    }

    pub async fn delete(&self, path: &str) -> Value {
        let r = self.http.delete(format!("{}{path}", self.base)).bearer_auth(&self.key).send().await.unwrap();
        r.json().await.unwrap()
    }

    /// The demo catalog's monthly prices (as localstripe plans).
    pub async fn plans(&self) {
        for (id, amount) in [("price_pro_monthly", "1900"), ("price_business_monthly", "4900")] {
            self.post(
                "/v1/plans",
                &[("id", id), ("amount", amount), ("currency", "usd"), ("interval", "month"), ("product[name]", id)],
            )
            .await;
        }
    }

    /// A customer with a card, and metadata.entitlements_customer_id when `owner` is given.
    pub async fn customer(&self, owner: Option<Uuid>) -> String {
        let card = [
            ("card[number]", "4242424242424242"),
            ("card[exp_month]", "12"),
            ("card[exp_year]", "2035"),
            ("card[cvc]", "123"),
        ];
        let token = self.post("/v1/tokens", &card).await;
        let owner = owner.map(|o| o.to_string());
        let mut form = vec![("source", token["id"].as_str().unwrap())];
        if let Some(o) = owner.as_deref() {
            form.push(("metadata[entitlements_customer_id]", o));
        }
        self.post("/v1/customers", &form).await["id"].as_str().unwrap().to_owned()
    }

    pub async fn subscribe(&self, customer: &str, plan: &str) -> Value {
        self.post("/v1/subscriptions", &[("customer", customer), ("items[0][plan]", plan)]).await
    }
}
