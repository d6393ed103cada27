//! Kubernetes provisioning (issue #10): every server of a subscriber is a Matrix homeserver
//! (Synapse plus a CloudNativePG database) in a namespace of its own, sized by the plan's
//! `resources`.
//!
//! [`render`] turns one server's desired state into the Kubernetes objects to apply: a pure
//! function, with no database and no API calls, so the applier, `provision --dry-run` and the
//! tests all see exactly the same objects.

pub mod render;
