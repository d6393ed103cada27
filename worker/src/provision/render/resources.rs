//! A plan's `resources` and exact quantities come from `entitlements-resources`, the one
//! home of that contract (the extension checks catalogs with it). Here: the Kubernetes
//! spelling of a quantity.

pub use entitlements_resources::{Quantity, Resources, ResourcesError, MAX_DATABASE_INSTANCES};

/// A quantity as k8s-openapi takes it.
pub(super) trait ToK8s {
    fn k8s(&self) -> k8s_openapi::apimachinery::pkg::api::resource::Quantity;
}

impl ToK8s for Quantity {
    fn k8s(&self) -> k8s_openapi::apimachinery::pkg::api::resource::Quantity {
        k8s_openapi::apimachinery::pkg::api::resource::Quantity(self.as_str().to_owned())
    }
}

impl From<ResourcesError> for super::RenderError {
    fn from(e: ResourcesError) -> Self {
        super::RenderError::InvalidResources { path: e.path, message: e.message }
    }
}
