//! Load generator for `make bench` (bench/webhooks/run.sh): posts signed Stripe deliveries to
//! a running worker over HTTP and measures how many per second are verified and stored, then
//! how many per second are applied. `--raw` is the baseline: the same events inserted straight
//! into a plain table with the same number of connections, no HTTP, no verification.
//!
//!   webhook_load --url http://127.0.0.1:PORT/webhooks/stripe --secret whsec_... \
//!                --database-url postgres://... [--events 20000] [--connections 16] [--raw]
use integration_tests::stripe::{now, signature, subscription};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

/// Event `i`: an update of one of `subs` subscriptions; later events are newer states.
fn event(run: &str, i: usize, subs: usize, t0: i64) -> String {
    let s = i % subs;
    let status = if (i / subs).is_multiple_of(2) { "active" } else { "past_due" };
    let sub = subscription(
        &format!("sub_bench{s}"),
        &format!("cus_bench{s}"),
        "price_pro_monthly",
        status,
        t0 - 86400,
        t0 + 29 * 86400,
    );
    integration_tests::stripe::event(
        &format!("evt_{run}_{i}"),
        "customer.subscription.updated",
        t0 + (i / subs) as i64,
        sub,
    )
}

#[tokio::main]
async fn main() {
    let events: usize = arg("--events").map(|v| v.parse().unwrap()).unwrap_or(20_000);
    let connections: usize = arg("--connections").map(|v| v.parse().unwrap()).unwrap_or(16);
    let subs: usize = arg("--subscriptions").map(|v| v.parse().unwrap()).unwrap_or(1000);
    let db_url = arg("--database-url").expect("--database-url");
    let raw = std::env::args().any(|a| a == "--raw");
    let run = format!("{}", now());
    let t0 = now() - 3600;
    let bodies: Arc<Vec<String>> = Arc::new((0..events).map(|i| event(&run, i, subs, t0)).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let pool =
        sqlx::postgres::PgPoolOptions::new().max_connections(connections as u32 + 1).connect(&db_url).await.unwrap();

    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (bodies, next, pool) = (bodies.clone(), next.clone(), pool.clone());
        let url = arg("--url");
        let secret = arg("--secret");
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                if raw {
                    sqlx::query("insert into bench.raw_events (id, payload) values ($1, ($2::text)::jsonb) on conflict do nothing")
                        .bind(format!("evt_{i}"))
                        .bind(body)
                        .execute(&pool)
                        .await
                        .unwrap();
                } else {
                    let r = http
                        .post(url.as_deref().expect("--url"))
                        .header("content-type", "application/json")
                        .header("Stripe-Signature", signature(secret.as_deref().expect("--secret"), now(), body))
                        .body(body.clone())
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status().as_u16(), 200, "delivery {i} refused");
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stored = started.elapsed().as_secs_f64();
    if raw {
        println!("raw {events} {stored:.3} {:.0}", events as f64 / stored);
        return;
    }
    // Applied: until nothing of this run is pending.
    loop {
        let pending: i64 =
            sqlx::query_scalar("select count(*) from entitlements.stripe_events where applied_at is null")
                .fetch_one(&pool)
                .await
                .unwrap();
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let applied = started.elapsed().as_secs_f64();
    let failed: i64 = sqlx::query_scalar("select count(*) from entitlements.stripe_events where attempts > 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    println!(
        "webhook {events} {stored:.3} {:.0} {applied:.3} {:.0} {failed}",
        events as f64 / stored,
        events as f64 / applied
    );
}
