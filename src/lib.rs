//! image-policy-agent: turns OpenShift ClusterImagePolicy / ImagePolicy
//! resources into the signature policy files CRI-O and containers/image read.
//!
//! Data flow: sources → snapshot → [`render`] (pure) → [`preflight`] → apply.

pub mod ctl;
pub mod manifests;
pub mod model;
pub mod policy;
pub mod preflight;
pub mod registries_d;
pub mod render;
pub mod scope;
pub mod validate;
