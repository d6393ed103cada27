//! Security monitoring: the refusals that the hot paths count (`signals`). Rules, alerts and
//! incidents are SQL (sql/monitoring/).

pub mod signals;
