//! Property test: whatever an admin writes (random catalogs, grant values, quota boosts,
//! amounts and instants, valid or not), no call answers XX000 and every reader keeps
//! answering afterwards. What is refused is refused with a real SQLSTATE and writes nothing;
//! what is written can always be read (issue 8, "input that cannot poison reads").
//!
//! The cases come from a fixed seed, so every run tries the same inputs.
use integration_tests::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use sqlx::PgConnection;
use uuid::Uuid;

/// A JSON number as text: ordinary, huge, tiny, negative, long.
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        (0i64..1000).prop_map(|n| n.to_string()),
        (-1000i64..0).prop_map(|n| n.to_string()),
        (0.0f64..1e6).prop_map(|f| format!("{f}")),
        (1u32..400, any::<bool>()).prop_map(|(e, neg)| format!("{}1e{e}", if neg { "-" } else { "" })),
        (1u32..400).prop_map(|e| format!("1e-{e}")),
        "[1-9][0-9]{15,40}".prop_map(|s| s),
        Just("1e15".to_owned()),
        Just("1000000000000001".to_owned()),
    ]
}

/// A JSON value as text, nested up to `depth` deep (deeper than any reader takes).
fn json(depth: u32) -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        number(),
        Just("true".to_owned()),
        Just("false".to_owned()),
        Just("null".to_owned()),
        "[a-z]{0,8}".prop_map(|s| format!("\"{s}\"")),
    ];
    leaf.prop_recursive(depth, 64, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec(("[a-z_]{1,8}", inner), 0..4).prop_map(|v| {
                let fields: Vec<String> = v.into_iter().map(|(k, x)| format!("\"{k}\":{x}")).collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
    .boxed()
}

/// A value nested `n` arrays deep around a number.
fn deep(n: usize) -> String {
    format!("{}1{}", "[".repeat(n), "]".repeat(n))
}

#[derive(Debug, Clone)]
enum Call {
    /// A plan giving `feature` (of the demo catalog) this value.
    Catalog {
        feature: &'static str,
        value: String,
    },
    GrantFeature {
        feature: &'static str,
        value: String,
    },
    Override {
        feature: &'static str,
        value: String,
    },
    Boost {
        feature: &'static str,
        amount: String,
    },
    Consume {
        amount: String,
    },
    Subscribe {
        period_end: String,
    },
    Metadata {
        value: String,
    },
}

const FEATURES: [&str; 8] =
    ["advanced_agents", "audio_minutes", "api_requests", "api_concurrency", "kb_files", "seats", "sso", "support"];

fn feature() -> impl Strategy<Value = &'static str> {
    prop::sample::select(FEATURES.to_vec())
}

fn value() -> BoxedStrategy<String> {
    prop_oneof![4 => json(6), 1 => (20usize..300).prop_map(deep)].boxed()
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        (feature(), value()).prop_map(|(feature, value)| Call::Catalog { feature, value }),
        (feature(), value()).prop_map(|(feature, value)| Call::GrantFeature { feature, value }),
        (feature(), value()).prop_map(|(feature, value)| Call::Override { feature, value }),
        (feature(), number()).prop_map(|(feature, amount)| Call::Boost { feature, amount }),
        prop_oneof![number(), Just("NaN".to_owned()), Just("Infinity".to_owned())]
            .prop_map(|amount| Call::Consume { amount }),
        prop_oneof![
            Just("infinity".to_owned()),
            Just("-infinity".to_owned()),
            Just("2400-01-01".to_owned()),
            Just("294276-12-31".to_owned()),
            (1i64..10_000).prop_map(|d| format!("now + {d} days")),
        ]
        .prop_map(|period_end| Call::Subscribe { period_end }),
        value().prop_map(|value| Call::Metadata { value }),
    ]
}

/// Run one call in its own transaction; the SQLSTATE it raised, if any.
async fn run(conn: &mut PgConnection, customer: Uuid, call: &Call) -> Option<String> {
    let result = match call {
        Call::Catalog { feature, value } => {
            // The demo catalog plus a plan "fuzz" naming one of its features with a random value.
            sqlx::query(
                "select entitlements.apply_catalog(jsonb_set($3::jsonb, '{plans}', ($3::jsonb -> 'plans') || jsonb_build_array(
                     jsonb_build_object('key', 'fuzz', 'name', 'Fuzz', 'entitlements',
                                        jsonb_build_object($1::text, $2::text::jsonb)))))",
            )
            .bind(feature)
            .bind(value)
            .bind(DEMO_CATALOG)
            .execute(&mut *conn)
            .await
        }
        Call::GrantFeature { feature, value } => {
            sqlx::query("select entitlements.grant_feature($1, $2, $3::text::jsonb, reason => 'fuzz')")
                .bind(customer)
                .bind(feature)
                .bind(value)
                .execute(&mut *conn)
                .await
        }
        Call::Override { feature, value } => {
            sqlx::query("select entitlements.override_feature($1, $2, $3::text::jsonb, reason => 'fuzz')")
                .bind(customer)
                .bind(feature)
                .bind(value)
                .execute(&mut *conn)
                .await
        }
        Call::Boost { feature, amount } => {
            sqlx::query("select entitlements.boost_quota($1, $2, $3::text::numeric, reason => 'fuzz')")
                .bind(customer)
                .bind(feature)
                .bind(amount)
                .execute(&mut *conn)
                .await
        }
        Call::Consume { amount } => {
            sqlx::query("select * from entitlements.try_consume($1, 'audio_minutes', $2::text::numeric)")
                .bind(customer)
                .bind(amount)
                .execute(&mut *conn)
                .await
        }
        Call::Subscribe { period_end } => {
            let at = match period_end.strip_prefix("now + ") {
                Some(days) => format!("select now() + interval '{days}'"),
                None => format!("select '{period_end}'::timestamptz"),
            };
            sqlx::query(sqlx::AssertSqlSafe(format!("select entitlements.subscribe($1, 'pro', period_end => ({at}))")))
                .bind(customer)
                .execute(&mut *conn)
                .await
        }
        Call::Metadata { value } => {
            sqlx::query("update entitlements.customers set metadata = $2::text::jsonb where id = $1")
                .bind(customer)
                .bind(value)
                .execute(&mut *conn)
                .await
        }
    };
    result.err().map(|e| sqlstate(&e).unwrap_or_else(|| format!("not a database error: {e}")))
}

/// Every reader of the customer, for every feature: none may fail.
async fn read_all(conn: &mut PgConnection, customer: Uuid) -> Result<(), String> {
    let reads = [
        "select entitlements.entitlements($1)::text",
        "select entitlements.has_feature($1, f.key)::text from entitlements.features f",
        "select (entitlements.check($1, f.key))::text from entitlements.features f where f.kind = 'metered'",
        "select entitlements.slots_in_use($1, f.key)::text from entitlements.features f where f.kind = 'concurrency'",
    ];
    for sql in reads {
        if let Err(e) = sqlx::query(sql).bind(customer).fetch_all(&mut *conn).await {
            return Err(format!("{sql}: {} ({e})", sqlstate(&e).unwrap_or_default()));
        }
    }
    Ok(())
}

#[test]
fn random_writes_never_poison_reads() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let db = rt.block_on(TestDb::create("poisoned_input"));
    let config = Config { cases: 256, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let outcome = runner.run(&prop::collection::vec(call(), 1..6), |calls| {
        rt.block_on(async {
            let mut conn = db.session().await;
            let customer = Uuid::new_v4();
            sqlx::query("select entitlements.subscribe($1, 'free')").bind(customer).execute(&mut conn).await.unwrap();
            for call in &calls {
                if let Some(code) = run(&mut conn, customer, call).await {
                    prop_assert!(code != "XX000" && !code.starts_with("not a"), "{call:?} answered {code}");
                }
                if let Err(e) = read_all(&mut conn, customer).await {
                    prop_assert!(false, "after {call:?} a reader failed: {e}");
                }
            }
            Ok(())
        })
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
}
