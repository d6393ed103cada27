//! The admin console and the account page in a real browser (headless chromium through
//! chromium-driver), against the worker and a real database: sign in, read the overview (its
//! MRR is entitlements.mrr()), find a customer, boost a quota through the form (seen in SQL and
//! in the audit log with the admin as actor), change the catalog through the plan editor, refuse
//! forged and missing CSRF tokens, refuse a plain user, keep a tenant admin to their tenant,
//! count refused sign-ins and limit them, show the account page's usage as entitlements() does,
//! and send the Checkout and Billing Portal buttons to (local) Stripe. Every page's screenshot
//! lands in tests/screenshots/.
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use integration_tests::browser::{wait_for_title, wait_for_url, Browser};
use integration_tests::{LocalStripe, TestDb, Worker};
use serde_json::{json, Value};
use sha2::Sha256;
use uuid::Uuid;

const SECRET: &str = "console-test-secret-0123456789abcdef";
const JWT_SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters";

/// A Supabase access token for `user`, signed here (HS256) independently of the worker's code.
fn access_token(user: Uuid, valid_for: i64) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let exp = chrono::Utc::now().timestamp() + valid_for;
    let claims =
        json!({"sub": user, "exp": exp, "aud": "authenticated", "role": "authenticated", "email": "u@example.org"});
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = Hmac::<Sha256>::new_from_slice(JWT_SECRET.as_bytes()).unwrap();
    mac.update(format!("{header}.{payload}").as_bytes());
    format!("{header}.{payload}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

async fn token_for(db: &TestDb, user: Uuid, tenant: Option<Uuid>) -> String {
    sqlx::query("select entitlements.add_admin($1, $2)").bind(user).bind(tenant).execute(&db.pool).await.unwrap();
    sqlx::query_scalar("select entitlements.create_admin_token($1, 'console test', now() + interval '1 day')")
        .bind(user)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

async fn customer(db: &TestDb, email: &str, plan: &str, tenant: Option<Uuid>) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query("insert into entitlements.customers (id, tenant_id) values ($1, $2)")
        .bind(id)
        .bind(tenant)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("select entitlements.set_profile($1, $2, $3)")
        .bind(id)
        .bind(email)
        .bind(email.split('@').next().unwrap())
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("select entitlements.subscribe($1, $2)").bind(id).bind(plan).execute(&db.pool).await.unwrap();
    id
}

async fn console_worker(db: &TestDb, extra: &[(&str, &str)]) -> Worker {
    let mut env = vec![("ENTITLEMENTS_CONSOLE_SECRET", SECRET), ("SUPABASE_JWT_SECRET", JWT_SECRET)];
    env.extend_from_slice(extra);
    Worker::serve(&db.url, &env).await
}

async fn sign_in_with_token(b: &Browser, w: &Worker, token: &str, next: &str) {
    b.goto(&w.url(next)).await;
    wait_for_url(b, "/sign-in").await;
    b.fill("#token", token).await;
    b.click("#sign-in-token button[type=submit]").await;
}

async fn sign_in_with_access_token(b: &Browser, w: &Worker, jwt: &str, next: &str) {
    b.goto(&w.url(&format!("/sign-in?next={next}"))).await;
    b.fill("#access_token", jwt).await;
    b.click("#sign-in-access-token button[type=submit]").await;
}

/// The session cookie the browser holds, for requests made around the browser.
async fn session_cookie(b: &Browser) -> String {
    let cookies = b.client.get_all_cookies().await.unwrap();
    let c = cookies.iter().find(|c| c.name() == "entitlements_session").expect("signed in");
    assert!(c.http_only().unwrap_or(false), "the session cookie is HttpOnly");
    assert_eq!(format!("{:?}", c.same_site()), "Some(Strict)", "and SameSite=Strict");
    format!("entitlements_session={}", c.value())
}

#[tokio::test]
async fn an_admin_reads_the_overview_finds_a_customer_boosts_a_quota_and_changes_the_catalog() {
    let db = TestDb::create("console_admin").await;
    let admin = Uuid::new_v4();
    let token = token_for(&db, admin, None).await;
    let ada = customer(&db, "ada@example.org", "pro", None).await;
    customer(&db, "bob@example.org", "business", None).await;
    customer(&db, "cy@example.org", "free", None).await;
    let w = console_worker(&db, &[]).await;
    let b = Browser::start().await;

    // Signed out: the console sends you to sign in, and back.
    sign_in_with_token(&b, &w, &token, "/admin").await;
    wait_for_title(&b, "Overview · Entitlements").await;
    let mrr: i64 = sqlx::query_scalar("select entitlements.mrr()").fetch_one(&db.pool).await.unwrap();
    assert_eq!(mrr, 1900 + 4900, "pro and business");
    assert_eq!(b.attr("#mrr", "data-cents").await.unwrap(), mrr.to_string(), "the overview's MRR is mrr()");
    assert_eq!(b.text("#mrr").await, "$68.00");
    assert_eq!(b.attr("#arr", "data-cents").await.unwrap(), (mrr * 12).to_string());
    assert!(b.text("#subscriptions-by-status").await.contains("business"));
    assert!(b.exists("svg#mrr-chart").await && b.exists("svg#movements-chart").await, "the charts are drawn");
    b.screenshot("overview").await;

    // Find a customer by the start of their email, open them.
    b.goto(&w.url("/admin/customers?q=ADA@")).await;
    let rows = b.text("#customers tbody").await;
    assert!(rows.contains("ada@example.org") && !rows.contains("bob@"), "{rows}");
    b.screenshot("customers").await;
    b.click(&format!("a[href='/admin/customers/{ada}']")).await;
    wait_for_url(&b, &format!("/admin/customers/{ada}")).await;
    assert!(b.text("#plan").await.starts_with("pro"));
    b.screenshot("customer").await;

    // Boost a quota through the form.
    b.select("#boost-feature", "audio_minutes").await;
    b.fill("#boost-amount", "40").await;
    b.fill("#boost-reason", "support ticket 42").await;
    b.click("#boost-form button[type=submit]").await;
    wait_for_url(&b, "done=").await;
    assert!(b.text("[role=status]").await.contains("Boosted audio_minutes by 40"));
    let limit: Value =
        sqlx::query_scalar("select entitlements.entitlements($1) -> 'features' -> 'audio_minutes' -> 'limit'")
            .bind(ada)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(limit, json!(340), "pro's 300 and the boost's 40, in SQL");
    assert_eq!(b.attr("tr[data-feature=audio_minutes] .usage", "data-limit").await.unwrap(), "340", "and on the page");
    let (actor, reason): (Option<Uuid>, Option<String>) = sqlx::query_as(
        "select actor, reason from entitlements.audit_log where table_name = 'entitlements.grants' and new_values ->> 'customer_id' = $1::text
          order by id desc limit 1",
    )
    .bind(ada)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((actor, reason.as_deref()), (Some(admin), Some("support ticket 42")), "the admin is the actor");
    assert!(b.text("#audit").await.contains("support ticket 42"));

    // Bad input: the extension's own message, nothing written.
    b.fill("#boost-amount", "-5").await;
    b.fill("#boost-reason", "oops").await;
    b.click("#boost-form button[type=submit]").await;
    wait_for_url(&b, "/actions").await;
    assert_eq!(b.page_status().await, 400);
    assert!(b.text("[role=alert]").await.contains("22023"), "{}", b.text("[role=alert]").await);
    b.screenshot("refused-input").await;
    let grants = db.count(&format!("select count(*) from entitlements.grants where customer_id = '{ada}'")).await;
    assert_eq!(grants, 1);

    // Forged and missing CSRF tokens (the browser's own cookie, a form from elsewhere).
    let cookie = session_cookie(&b).await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    for form in [
        vec![
            ("csrf", "forged"),
            ("action", "boost"),
            ("feature", "audio_minutes"),
            ("amount", "1000"),
            ("reason", "x"),
        ],
        vec![("action", "boost"), ("feature", "audio_minutes"), ("amount", "1000"), ("reason", "x")],
    ] {
        let r = http
            .post(w.url(&format!("/admin/customers/{ada}/actions")))
            .header("cookie", &cookie)
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{form:?}");
    }
    assert_eq!(db.count(&format!("select count(*) from entitlements.grants where customer_id = '{ada}'")).await, 1);

    // What every page tells the browser: no framing, no foreign scripts, no sniffing.
    let r = http.get(w.url("/admin")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let csp = r.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"), "{csp}");

    // The plan editor: a price change previewed (nothing written), then applied.
    b.goto(&w.url("/admin/plans")).await;
    b.screenshot("plans").await;
    b.eval(r#"const t = document.getElementById('catalog'); t.value = t.value.replace('"price_cents": 1900', '"price_cents": 2900');"#)
        .await;
    b.click("#catalog-form button[type=submit]").await;
    wait_for_url(&b, "/admin/plans/preview").await;
    assert!(b.text("#catalog-outcome").await.contains("pro"));
    let diff = b.text("#catalog-diff").await;
    let changed: Vec<&str> = diff.lines().filter(|l| l.starts_with('-') || l.starts_with('+')).collect();
    assert_eq!(changed.len(), 2, "one line out, one in: {changed:?}");
    assert!(changed[0].starts_with('-') && changed[0].contains("\"price_cents\": 1900"), "{changed:?}");
    assert!(changed[1].starts_with('+') && changed[1].contains("\"price_cents\": 2900"), "{changed:?}");
    b.screenshot("plans-preview").await;
    let price = || async {
        sqlx::query_scalar::<_, i64>("select price_cents from entitlements.plans where key = 'pro'")
            .fetch_one(&db.pool)
            .await
            .unwrap()
    };
    assert_eq!(price().await, 1900, "a preview writes nothing");
    b.click("#catalog-form button[type=submit]").await;
    wait_for_url(&b, "done=Applied").await;
    assert_eq!(price().await, 2900, "applied through apply_catalog");

    for (path, name) in
        [("/admin/revenue", "revenue"), ("/admin/security", "security"), ("/admin/operations", "operations")]
    {
        b.goto(&w.url(path)).await;
        assert_eq!(b.page_status().await, 200, "{path}: {}", w.log());
        b.screenshot(name).await;
    }

    // Signing out ends the session.
    b.goto(&w.url("/admin")).await;
    b.click("form[action='/sign-out'] button").await;
    wait_for_url(&b, "/sign-in").await;
    b.goto(&w.url("/admin")).await;
    wait_for_url(&b, "/sign-in?next=").await;
    b.screenshot("sign-in").await;

    // Revoking the token ends a session made with it at its next request.
    sign_in_with_token(&b, &w, &token, "/admin").await;
    wait_for_title(&b, "Overview · Entitlements").await;
    sqlx::query("update entitlements.admin_tokens set revoked_at = now()").execute(&db.pool).await.unwrap();
    b.goto(&w.url("/admin")).await;
    assert_eq!(b.page_status().await, 401);
    b.close().await;
}

#[tokio::test]
async fn plain_users_are_refused_tenant_admins_see_their_tenant_and_sign_ins_are_counted_and_limited() {
    let db = TestDb::create("console_scopes").await;
    let (t1, t2) = (Uuid::new_v4(), Uuid::new_v4());
    let mine = customer(&db, "mine@t1.example", "pro", Some(t1)).await;
    let theirs = customer(&db, "theirs@t2.example", "pro", Some(t2)).await;
    let tenant_admin = Uuid::new_v4();
    let token = token_for(&db, tenant_admin, Some(t1)).await;
    let w = console_worker(&db, &[]).await;

    // A plain user (Supabase session): 403 on the admin pages, their account page works.
    let user = customer(&db, "plain@example.org", "pro", None).await;
    sqlx::query("select entitlements.consume($1, 'audio_minutes', 25)").bind(user).execute(&db.pool).await.unwrap();
    let b = Browser::start().await;
    sign_in_with_access_token(&b, &w, &access_token(user, 3600), "/admin").await;
    wait_for_title(&b, "Not allowed · Entitlements").await;
    assert_eq!(b.page_status().await, 403, "a plain user is refused");
    b.screenshot("forbidden").await;
    b.goto(&w.url("/account")).await;
    assert_eq!(b.text("#plan").await, "pro");
    let resolved: Value =
        sqlx::query_scalar("select entitlements.entitlements($1)").bind(user).fetch_one(&db.pool).await.unwrap();
    let mut bars = 0;
    for (feature, f) in resolved["features"].as_object().unwrap() {
        if let Some(used) = f.get("used").and_then(Value::as_f64) {
            let css = format!("tr[data-feature={feature}] .usage");
            assert_eq!(b.attr(&css, "data-used").await.unwrap().parse::<f64>().unwrap(), used, "{feature} used");
            let limit = f.get("limit").and_then(Value::as_f64).map(|l| l.to_string()).unwrap_or_default();
            let shown = b.attr(&css, "data-limit").await.unwrap();
            assert_eq!(shown.parse::<f64>().ok().map(|l| l.to_string()).unwrap_or_default(), limit, "{feature} limit");
            bars += 1;
        }
    }
    assert!(bars >= 2, "metered features have bars: {resolved}");
    assert_eq!(b.attr("tr[data-feature=audio_minutes] .usage", "data-used").await.unwrap(), "25");
    b.screenshot("account").await;
    b.close().await;

    // A tenant admin: their tenant's customers only, and no action on another tenant's.
    let b = Browser::start().await;
    sign_in_with_token(&b, &w, &token, "/admin/customers").await;
    wait_for_title(&b, "Customers · Entitlements").await;
    let rows = b.text("#customers tbody").await;
    assert!(rows.contains("mine@t1.example") && !rows.contains("theirs@t2.example"), "{rows}");
    b.goto(&w.url(&format!("/admin/customers/{theirs}"))).await;
    assert_eq!(b.page_status().await, 404, "another tenant's customer is not found");
    b.goto(&w.url(&format!("/admin/customers/{mine}"))).await;
    let csrf = b.attr("#boost-form input[name=csrf]", "value").await.unwrap();
    let cookie = session_cookie(&b).await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = http
        .post(w.url(&format!("/admin/customers/{theirs}/actions")))
        .header("cookie", &cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("action", "boost"),
            ("feature", "audio_minutes"),
            ("amount", "5"),
            ("reason", "x"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a valid form of theirs, for another tenant's customer: {}", r.text().await.unwrap());
    assert_eq!(db.count(&format!("select count(*) from entitlements.grants where customer_id = '{theirs}'")).await, 0);
    // Nor a catalog for another tenant: refused, never applied to their own tenant instead.
    let store_plans = "select count(*) from entitlements.plans where tenant_id is not null and active";
    let before = db.count(store_plans).await;
    let r = http
        .post(w.url("/admin/plans/apply"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str()), ("tenant", &t2.to_string()), ("catalog", r#"{"plans": []}"#)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a catalog for a tenant they do not administer");
    assert_eq!(db.count(store_plans).await, before, "nothing retired anywhere");
    b.close().await;

    // Refused sign-ins are counted for the security rules, and limited per address (a worker of
    // its own, so that this test's earlier sign-ins do not count against the limit).
    let w = console_worker(&db, &[("ENTITLEMENTS_SIGN_IN_PER_MINUTE", "3")]).await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let mut statuses = vec![];
    for _ in 0..3 {
        // A fresh form each time (its CSRF cookie), a wrong token.
        let page = http.get(w.url("/sign-in")).send().await.unwrap();
        let cookie = page.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
        let body = page.text().await.unwrap();
        let csrf = body.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
        let r = http
            .post(w.url("/sign-in"))
            .header("cookie", cookie)
            .form(&[("csrf", csrf.as_str()), ("token", "eat_0000"), ("next", "/admin")])
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, vec![401, 401, 401], "three wrong tokens");
    let r = http.post(w.url("/sign-in")).form(&[("token", &token)]).send().await.unwrap();
    assert_eq!(r.status(), 429, "the fourth attempt in a minute, even with a good token");
    assert_eq!(r.headers()["retry-after"], "60");
    let counted: i64 = sqlx::query_scalar(
        "select coalesce(sum(count), 0)::bigint from entitlements.security_signals where kind = 'sign_in_refused'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(counted, 4, "three wrong tokens and one over the limit");
}

#[tokio::test]
async fn the_account_page_sends_checkout_and_billing_portal_to_stripe() {
    let db = TestDb::create("console_billing").await;
    let stripe = LocalStripe::start("sk_test_console").await;
    stripe.plans().await;
    let user = customer(&db, "payer@example.org", "free", None).await;
    // A store's public plan, with a Stripe price: for that store's customers only.
    let store = Uuid::new_v4();
    sqlx::query("select entitlements.apply_catalog($1, $2)")
        .bind(json!({"plans": [{"key": "store_gold", "name": "Store Gold", "price_cents": 700, "public": true,
                                "stripe_price_ids": ["price_business_monthly_store"], "entitlements": {}}]}))
        .bind(store)
        .execute(&db.pool)
        .await
        .unwrap();
    let stripe_customer = stripe.customer(Some(user)).await;
    db.link_stripe_customer(user, &stripe_customer).await;
    let w = console_worker(&db, &[("STRIPE_SECRET_KEY", "sk_test_console"), ("STRIPE_API_BASE", &stripe.base)]).await;
    let jwt = access_token(user, 3600);

    let b = Browser::start().await;
    sign_in_with_access_token(&b, &w, &jwt, "/account").await;
    wait_for_title(&b, "My account · Entitlements").await;
    assert_eq!(b.text("#plan").await, "free");
    assert!(!b.exists("tr[data-plan=store_gold]").await, "another store's plan is not offered");
    b.click("tr[data-plan=pro] form button").await;
    wait_for_url(&b, "/c/pay/cs_").await;
    assert_eq!(b.text("#price").await, "price_pro_monthly");
    assert_eq!(b.text("#customer").await, stripe_customer);
    assert_eq!(b.text("#entitlements_customer_id").await, user.to_string());
    assert!(b.text("#success_url").await.starts_with(&w.url("/account")));
    b.screenshot("checkout").await;

    b.goto(&w.url("/account")).await;
    b.click("#portal-form button").await;
    wait_for_url(&b, "/p/session/bps_").await;
    assert_eq!(b.text("#customer").await, stripe_customer);
    assert_eq!(b.text("#return_url").await, w.url("/account"));
    b.screenshot("billing-portal").await;
    b.close().await;

    // The same for apps with their own UI: JSON with the user's access token.
    let http = reqwest::Client::new();
    let r = http
        .post(w.url("/api/account/checkout"))
        .bearer_auth(&jwt)
        .json(&json!({"plan": "business"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let url = r.json::<Value>().await.unwrap()["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with(&format!("{}/c/pay/cs_", stripe.base)), "{url}");
    let r = http.post(w.url("/api/account/checkout")).json(&json!({"plan": "business"})).send().await.unwrap();
    assert_eq!(r.status(), 401, "no access token");
    let r = http
        .post(w.url("/api/account/checkout"))
        .bearer_auth(access_token(user, -120))
        .json(&json!({"plan": "pro"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "an expired access token");
    let r = http
        .post(w.url("/api/account/checkout"))
        .bearer_auth(&jwt)
        .json(&json!({"plan": "enterprise"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "a plan that is not public");
    let r = http
        .post(w.url("/api/account/checkout"))
        .bearer_auth(&jwt)
        .json(&json!({"plan": "store_gold"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "nor a store's plan to someone who is not its customer");
    let r = http
        .post(w.url("/api/account/portal"))
        .bearer_auth(&jwt)
        .json(&json!({"return_url": "https://app.example/billing"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A user without a Stripe customer has no portal yet.
    let newcomer = customer(&db, "new@example.org", "free", None).await;
    let r = http
        .post(w.url("/api/account/portal"))
        .bearer_auth(access_token(newcomer, 3600))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
}
