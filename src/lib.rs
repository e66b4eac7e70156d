//! image-policy-agent: turns OpenShift ClusterImagePolicy / ImagePolicy
//! resources into the signature policy files CRI-O and containers/image read.
//!
//! Data flow: sources ([`manifests`], [`kubesource`], [`machineconfig`]) → snapshot → [`render`] (pure) →
//! [`preflight`] → [`apply`] → [`status`]; [`daemon`] runs the loop.

pub mod apply;
pub mod config;
pub mod crd;
pub mod crio;
pub mod ctl;
pub mod daemon;
pub mod fsroot;
pub mod kubesource;
pub mod logging;
pub mod machineconfig;
pub mod manifests;
pub mod model;
pub mod policy;
pub mod preflight;
pub mod registries_conf;
pub mod registries_d;
pub mod render;
pub mod scope;
pub mod status;
pub mod validate;
