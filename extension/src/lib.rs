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
mod postgres;
mod rules;
mod security;
mod subscriptions;

::pgrx::pg_module_magic!();

extension_sql_file!("../../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!(
    "../../sql/security.sql",
    name = "security",
    requires = ["schema", security::identity::current_user_id]
);
extension_sql_file!("../../sql/audit.sql", name = "audit", requires = ["security", security::identity::outer_role]);
extension_sql_file!("../../sql/cache.sql", name = "cache", requires = ["audit", checks::cache_touch]);
extension_sql_file!(
    "../../sql/checked_json.sql",
    name = "checked_json",
    requires =
        ["cache", catalog::normalize_catalog, catalog::normalize_feature_value, checks::custom_access_token_hook]
);
extension_sql_file!("../../sql/catalog.sql", name = "catalog", requires = ["checked_json"]);
extension_sql_file!(
    "../../sql/subscriptions.sql",
    name = "subscriptions",
    requires = ["catalog", checks::feature_limit]
);
extension_sql_file!("../../sql/grants.sql", name = "grants", requires = ["subscriptions"]);
extension_sql_file!(
    "../../sql/metering.sql",
    name = "metering",
    requires = [
        "grants",
        metering::limits::meter_limits,
        metering::limits::window_start,
        security::identity::outer_role,
        security::access::may_meter
    ]
);
extension_sql_file!("../../sql/stripe.sql", name = "stripe", requires = ["subscriptions"]);
extension_sql_file!(
    "../../sql/maintenance.sql",
    name = "maintenance",
    requires = ["grants", checks::feature_limit, subscriptions::grants_until]
);
extension_sql_file!("../../sql/retention.sql", name = "retention", requires = ["maintenance", "stripe", "metering"]);
extension_sql_file!("../../sql/leases.sql", name = "leases", requires = ["retention"]);
extension_sql_file!(
    "../../sql/consume.sql",
    name = "consume",
    requires = ["metering", metering::counting::consume_fast, metering::counting::take_pending]
);
extension_sql_file!("../../sql/privileges.sql", name = "privileges", finalize);

/// Hooks for `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
