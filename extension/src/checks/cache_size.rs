//! How much memory a cached customer takes, approximately, so the per-backend cache
//! (cache.rs) can hold to a budget in bytes instead of a count of customers: one customer
//! with forty grants and five organizations weighs what a hundred plain ones do.
//!
//! Counted: the entry and its key as the map stores them (with the map's spare capacity),
//! every vector's and string's heap capacity, JSON values by their text length, and the
//! resolution (one value and one flag per feature of the catalog) that is computed on
//! first use. Allocator overhead is not counted; bench/README.md compares the estimate
//! with the backend's measured memory.

use crate::rules::{CustomerData, Grant, Party, Subscription};
use serde_json::Value as Json;
use std::mem::size_of;

/// What a resolved feature value holds on the heap besides itself, on average (a metered
/// value's periods and their strings, a config value's JSON), allocator overhead included;
/// calibrated against the backend's measured memory (bench/cache/memory.sh).
const PER_FEATURE_HEAP: usize = 112;
/// The allocator's bookkeeping per heap allocation (glibc malloc: 16 bytes).
const PER_ALLOCATION: usize = 16;

/// The bytes a cached customer takes once resolved, for a catalog of `features`.
pub fn customer(data: &CustomerData, features: usize) -> usize {
    // Map slot (key + entry), at the map's load factor of 7/8.
    let slot = (16 + size_of::<crate::checks::cache::CustomerEntry>()) * 8 / 7;
    let resolved = size_of::<crate::rules::Resolved>()
        + features * (size_of::<Option<crate::rules::Value>>() + size_of::<bool>() + PER_FEATURE_HEAP);
    slot + party(&data.own)
        + data.organizations.capacity() * size_of::<(Party, String)>()
        + data.organizations.iter().map(|(p, role)| party(p) + role.capacity()).sum::<usize>()
        + resolved
}

fn party(p: &Party) -> usize {
    2 * PER_ALLOCATION
        + p.subscriptions.capacity() * size_of::<Subscription>()
        + p.subscriptions
            .iter()
            .map(|s| s.id.capacity() + s.plan.capacity() + s.status.capacity() + 3 * PER_ALLOCATION)
            .sum::<usize>()
        + p.grants.capacity() * size_of::<Grant>()
        + p.grants.iter().map(grant).sum::<usize>()
}

fn grant(g: &Grant) -> usize {
    g.kind.capacity() + g.feature.as_ref().map_or(0, String::capacity) + json(&g.value) + 3 * PER_ALLOCATION
}

/// A JSON value's heap, by its text: about twice its length for maps and vectors.
fn json(v: &Json) -> usize {
    match v {
        Json::Null | Json::Bool(_) | Json::Number(_) => 0,
        other => 2 * other.to_string().len(),
    }
}
