//! pg_entitlements: plans, subscriptions and entitlement checks inside PostgreSQL.
//!
//! Tables and the write path (catalog, subscriptions, members, grants, audit, RLS) are
//! hand-written SQL in `sql/`; the read path that RLS policies call per row is Rust.

use pgrx::prelude::*;

mod catalog;
mod checks;
mod clock;
mod error;
mod metering;
mod monitoring;
mod postgres;
mod rules;
mod security;
mod subscriptions;

::pgrx::pg_module_magic!();

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    clock::define_guc();
    monitoring::signals::define_guc();
}

// The SQL, by concept, in the order it must be created. `requires` names the Rust
// functions each file calls when it is created (SQL-language bodies are checked then).
extension_sql_file!("../../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!(
    "../../sql/security/roles.sql",
    name = "security",
    requires = [
        "schema",
        security::identity::current_user_id,
        security::access::can_see_customer,
        security::access::role_is_privileged_sql,
        security::access::current_role_is_privileged
    ]
);
extension_sql_file!(
    "../../sql/audit/audit.sql",
    name = "audit",
    requires = ["security", security::identity::outer_role]
);
extension_sql_file!("../../sql/checks/cache.sql", name = "cache", requires = ["audit", checks::cache_touch]);
extension_sql_file!(
    "../../sql/security/checked_json.sql",
    name = "checked_json",
    requires =
        ["cache", catalog::normalize_catalog, catalog::normalize_feature_value, checks::custom_access_token_hook]
);
extension_sql_file!("../../sql/catalog/catalog.sql", name = "catalog", requires = ["checked_json"]);
extension_sql_file!(
    "../../sql/subscriptions/lifecycle.sql",
    name = "subscriptions",
    requires = ["catalog", checks::feature_limit]
);
extension_sql_file!("../../sql/subscriptions/members.sql", name = "members", requires = ["subscriptions"]);
extension_sql_file!("../../sql/subscriptions/profile.sql", name = "profile", requires = ["members"]);
extension_sql_file!("../../sql/grants/grants.sql", name = "grants", requires = ["members"]);
extension_sql_file!("../../sql/metering/tables.sql", name = "metering_tables", requires = ["grants"]);
extension_sql_file!(
    "../../sql/metering/meter.sql",
    name = "metering",
    requires = [
        "metering_tables",
        metering::limits::meter_limits,
        metering::limits::window_start,
        security::identity::outer_role,
        security::access::may_meter
    ]
);
extension_sql_file!("../../sql/metering/slots.sql", name = "slots", requires = ["metering"]);
extension_sql_file!(
    "../../sql/metering/ledger.sql",
    name = "ledger",
    requires = ["slots", metering::limits::window_start]
);
extension_sql_file!("../../sql/stripe/objects.sql", name = "stripe", requires = ["members"]);
extension_sql_file!("../../sql/stripe/events.sql", name = "stripe_events", requires = ["stripe"]);
extension_sql_file!(
    "../../sql/maintenance/tasks.sql",
    name = "maintenance",
    requires = ["grants", checks::feature_limit, subscriptions::grants_until]
);
extension_sql_file!(
    "../../sql/maintenance/retention.sql",
    name = "retention",
    requires = ["maintenance", "stripe_events", "ledger"]
);
extension_sql_file!("../../sql/maintenance/leases.sql", name = "leases", requires = ["retention"]);
extension_sql_file!(
    "../../sql/metering/consume.sql",
    name = "consume",
    requires = ["ledger", metering::counting::consume_fast, metering::counting::take_pending]
);
extension_sql_file!("../../sql/outbox/outbox.sql", name = "outbox", requires = ["profile", "leases"]);
extension_sql_file!("../../sql/outbox/delivery.sql", name = "delivery", requires = ["outbox"]);
extension_sql_file!("../../sql/outbox/access.sql", name = "access_notices", requires = ["delivery", "retention"]);
extension_sql_file!("../../sql/outbox/events.sql", name = "outbox_events", requires = ["access_notices", "grants"]);
extension_sql_file!(
    "../../sql/provisioning/servers.sql",
    name = "servers",
    requires = ["outbox", "leases", "cache", checks::feature_config, subscriptions::grants_until]
);
extension_sql_file!("../../sql/provisioning/applier.sql", name = "provisioning", requires = ["servers"]);
extension_sql_file!(
    "../../sql/revenue/history.sql",
    name = "revenue_history",
    requires = ["outbox_events", "provisioning", security::access::can_see_customer]
);
extension_sql_file!("../../sql/revenue/discounts.sql", name = "discounts", requires = ["revenue_history"]);
extension_sql_file!("../../sql/revenue/metrics.sql", name = "revenue_metrics", requires = ["discounts"]);
extension_sql_file!("../../sql/revenue/costs.sql", name = "revenue_costs", requires = ["revenue_metrics", "metering"]);
extension_sql_file!(
    "../../sql/monitoring/signals.sql",
    name = "security_signals",
    requires = ["revenue_costs", monitoring::signals::note_refusal, monitoring::signals::principal_sql]
);
extension_sql_file!("../../sql/monitoring/rules.sql", name = "security_rules", requires = ["security_signals"]);
extension_sql_file!("../../sql/monitoring/alerts.sql", name = "security_alerts", requires = ["security_rules"]);
extension_sql_file!("../../sql/privacy/export.sql", name = "privacy_export", requires = ["security_alerts"]);
extension_sql_file!("../../sql/privacy/erasure.sql", name = "privacy_erasure", requires = ["privacy_export"]);
extension_sql_file!("../../sql/console/tokens.sql", name = "console_tokens", requires = ["privacy_erasure"]);
extension_sql_file!("../../sql/console/search.sql", name = "console_search", requires = ["console_tokens"]);
extension_sql_file!("../../sql/catalog/document.sql", name = "catalog_document", requires = ["console_search"]);
extension_sql_file!("../../sql/scaleout/replicas.sql", name = "replicas", requires = ["catalog_document"]);
extension_sql_file!("../../sql/security/privileges.sql", name = "privileges", finalize);

/// Hooks for `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
