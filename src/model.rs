//! The internal model of ClusterImagePolicy / ImagePolicy, shared by every API
//! version. Objects only reach this model through [`crate::validate`], so a
//! value of these types is always valid.

use std::fmt;

pub const API_GROUP: &str = "config.openshift.io";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    ClusterImagePolicy,
    ImagePolicy,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ClusterImagePolicy => "ClusterImagePolicy",
            Kind::ImagePolicy => "ImagePolicy",
        }
    }

    pub fn from_kind(s: &str) -> Option<Kind> {
        match s {
            "ClusterImagePolicy" => Some(Kind::ClusterImagePolicy),
            "ImagePolicy" => Some(Kind::ImagePolicy),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The served versions of the two CRDs. Their shapes are identical; only the
/// validation rules differ (v1alpha1 has no PEM checks on keys, and a few
/// messages are worded differently).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ApiVersion {
    V1,
    V1Alpha1,
}

impl ApiVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiVersion::V1 => "config.openshift.io/v1",
            ApiVersion::V1Alpha1 => "config.openshift.io/v1alpha1",
        }
    }

    pub fn parse(s: &str) -> Option<ApiVersion> {
        match s {
            "config.openshift.io/v1" => Some(ApiVersion::V1),
            "config.openshift.io/v1alpha1" => Some(ApiVersion::V1Alpha1),
            _ => None,
        }
    }
}

/// Identity of an object: what status, logs and `agentctl` name it by.
/// Ordering is (kind, namespace, name), the order requirements are emitted in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: Kind,
    /// `None` for ClusterImagePolicy.
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    /// `KIND NAMESPACE/NAME`, or `KIND NAME` for cluster-scoped objects.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind, ns, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyObject {
    pub id: ObjectRef,
    pub api_version: ApiVersion,
    pub scopes: Vec<String>,
    pub root_of_trust: RootOfTrust,
    pub signed_identity: SignedIdentity,
}

/// Key and certificate fields hold the decoded bytes (the PEM text); they are
/// re-encoded as standard base64 when written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootOfTrust {
    PublicKey {
        key_data: Vec<u8>,
        rekor_key_data: Option<Vec<u8>>,
    },
    FulcioCAWithRekor {
        fulcio_ca_data: Vec<u8>,
        rekor_key_data: Vec<u8>,
        oidc_issuer: String,
        signed_email: String,
    },
    Pki {
        ca_roots_data: Vec<u8>,
        ca_intermediates_data: Option<Vec<u8>>,
        email: Option<String>,
        hostname: Option<String>,
    },
}

impl RootOfTrust {
    pub fn policy_type(&self) -> &'static str {
        match self {
            RootOfTrust::PublicKey { .. } => "PublicKey",
            RootOfTrust::FulcioCAWithRekor { .. } => "FulcioCAWithRekor",
            RootOfTrust::Pki { .. } => "PKI",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SignedIdentity {
    #[default]
    MatchRepoDigestOrExact,
    MatchRepository,
    ExactRepository {
        repository: String,
    },
    RemapIdentity {
        prefix: String,
        signed_prefix: String,
    },
}
